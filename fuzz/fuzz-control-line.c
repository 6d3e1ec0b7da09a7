/* libFuzzer target: the control socket's parsers in filter/control.c.
 *
 * Anyone who can connect to relocate-control sends request lines, so
 * control_parse() and control_parse_size() take untrusted input, and
 * control_json_string() quotes what ends up in replies.  The input is
 * made a NUL-terminated line (in a heap buffer of exactly that size,
 * so ASan catches any over-read; an embedded NUL ends the line early,
 * as it does in the socket server).
 *
 * Checks:
 *  - control_parse and control_parse_size agree with the simple
 *    reference parsers below (written from the man page's grammar);
 *  - a failed parse leaves a non-empty, NUL-terminated reason;
 *  - control_json_string's output is a well-formed JSON string (quotes
 *    at both ends, no raw control characters, only valid escapes) that
 *    decodes back to exactly the input.
 *
 * FUZZ_JSON_UTF8=1 also requires the JSON to be valid UTF-8, as RFC
 * 8259 does; control_json_string copies bytes >= 0x80 unchanged, so
 * this fails for any input that is not UTF-8 (see fuzz/README.md).
 */

#include <config.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "control.h"
#include "fuzz.h"


/* Reference for control_parse_size: [0-9]+[kKmMgGtT]?, no overflow. */
static int
ref_parse_size (const char *s, uint64_t *out)
{
  uint64_t v = 0, mult = 1;
  const char *p = s;

  if (!(*p >= '0' && *p <= '9'))
    return -1;
  for (; *p >= '0' && *p <= '9'; ++p) {
    if (__builtin_mul_overflow (v, 10, &v) ||
        __builtin_add_overflow (v, (uint64_t) (*p - '0'), &v))
      return -1;
  }
  switch (*p) {
  case '\0': break;
  case 'k': case 'K': mult = 1ULL << 10; p++; break;
  case 'm': case 'M': mult = 1ULL << 20; p++; break;
  case 'g': case 'G': mult = 1ULL << 30; p++; break;
  case 't': case 'T': mult = 1ULL << 40; p++; break;
  default: return -1;
  }
  if (*p != '\0' || __builtin_mul_overflow (v, mult, &v))
    return -1;
  *out = v;
  return 0;
}

/* Reference for control_parse: at most CONTROL_MAX_LINE printable
 * ASCII characters, words separated by spaces, a known verb, and
 * "rate" takes exactly one SIZE while the others take nothing.
 */
static int
ref_parse (const char *line, struct control_cmd *cmd)
{
  static const char *const names[] = {
    [CMD_STATUS] = "status", [CMD_START] = "start", [CMD_PAUSE] = "pause",
    [CMD_RESUME] = "resume", [CMD_RATE] = "rate",
    [CMD_RECONNECT] = "reconnect",
    [CMD_RETRY] = "retry",
  };
  char words[3][CONTROL_MAX_LINE + 1];
  size_t len = strlen (line), i, n = 0, w;

  if (len > CONTROL_MAX_LINE)
    return -1;
  for (i = 0; i < len; ++i)
    if (line[i] < 0x20 || line[i] > 0x7e)
      return -1;
  for (i = 0; i < len; ) {
    while (line[i] == ' ')
      i++;
    if (line[i] == '\0')
      break;
    w = strcspn (line + i, " ");
    if (n < 3) {
      memcpy (words[n], line + i, w);
      words[n][w] = '\0';
    }
    n++;
    i += w;
  }
  if (n == 0)
    return -1;
  for (i = 0; i < G_N_ELEMENTS (names); ++i)
    if (strcmp (words[0], names[i]) == 0)
      break;
  if (i == G_N_ELEMENTS (names))
    return -1;
  cmd->verb = i;
  if (i == CMD_RATE)
    return n == 2 ? ref_parse_size (words[1], &cmd->rate) : -1;
  return n == 1 ? 0 : -1;
}

static int
hexval (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Check that json[0, len) is one JSON string (RFC 8259 section 7)
 * and that it decodes to exactly want.  \u escapes below 0x100 are
 * decoded to bytes, which is all control_json_string produces (bytes
 * of a string that is not UTF-8 are sent as \u00XX, and relocatectl
 * decodes them so).
 */
static void
check_json_string (const char *json, size_t len, const char *want)
{
  GString *dec = g_string_new (NULL);
  size_t i;

  CHECK (len >= 2);
  CHECK (strlen (json) == len);
  CHECK (json[0] == '"' && json[len - 1] == '"');
  for (i = 1; i < len - 1; ++i) {
    unsigned char c = json[i];
    CHECK (c >= 0x20);               /* no raw control characters */
    CHECK (c != '"');                /* a bare quote ends the string */
    if (c != '\\') {
      g_string_append_c (dec, c);
      continue;
    }
    CHECK (i + 1 < len - 1);         /* the closing quote is not escaped */
    c = json[++i];
    switch (c) {
    case '"': case '\\': case '/': g_string_append_c (dec, c); break;
    case 'b': g_string_append_c (dec, '\b'); break;
    case 'f': g_string_append_c (dec, '\f'); break;
    case 'n': g_string_append_c (dec, '\n'); break;
    case 'r': g_string_append_c (dec, '\r'); break;
    case 't': g_string_append_c (dec, '\t'); break;
    case 'u': {
      unsigned v = 0, k;
      CHECK (i + 4 < len - 1);
      for (k = 1; k <= 4; ++k) {
        int h = hexval (json[i + k]);
        CHECK (h >= 0);
        v = v * 16 + h;
      }
      i += 4;
      CHECK (v != 0);                /* the input was a C string */
      CHECK (v < 0x100);             /* \u00XX: byte XX of a non-UTF-8 string */
      g_string_append_c (dec, (char) v);
      break;
    }
    default:
      CHECK (!"invalid escape");
    }
  }
  CHECK (strcmp (dec->str, want) == 0);
  g_string_free (dec, TRUE);
}

static void
json_one (const char *s)
{
  static int utf8 = -1;
  GString *out = g_string_new ("x");   /* it must append, not replace */

  if (utf8 == -1) {
    const char *e = getenv ("FUZZ_JSON_UTF8");
    utf8 = e && *e && strcmp (e, "0") != 0;
  }
  control_json_string (out, s);
  CHECK (out->str[0] == 'x');
  check_json_string (out->str + 1, out->len - 1, s);
  if (utf8)
    CHECK (g_utf8_validate (out->str, out->len, NULL));
  g_string_free (out, TRUE);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char *line = malloc (size + 1);
  struct control_cmd cmd, ref;
  char why[128];                  /* as in control.c's execute() */
  uint64_t v = 0xa5a5a5a5a5a5a5a5, rv = 0;
  int r;

  if (line == NULL)
    return 0;
  memcpy (line, data, size);
  line[size] = '\0';

  /* control_parse_size, on the whole line. */
  r = control_parse_size (line, &v);
  CHECK (r == 0 || r == -1);
  CHECK (r == ref_parse_size (line, &rv));
  if (r == 0)
    CHECK (v == rv);

  /* control_parse. */
  memset (&cmd, 0xa5, sizeof cmd);
  memset (why, 0xa5, sizeof why);
  r = control_parse (line, &cmd, why, sizeof why);
  CHECK (r == 0 || r == -1);
  CHECK (r == ref_parse (line, &ref));
  if (r == 0) {
    CHECK (cmd.verb >= CMD_STATUS && cmd.verb <= CMD_RETRY);
    CHECK (cmd.verb == ref.verb);
    if (cmd.verb == CMD_RATE)
      CHECK (cmd.rate == ref.rate);
  }
  else {
    CHECK (memchr (why, 0, sizeof why) != NULL);
    CHECK (why[0] != '\0');
    json_one (why);               /* the error reply quotes why */
  }

  /* control_json_string, on the line itself. */
  json_one (line);

  free (line);
  return 0;
}
