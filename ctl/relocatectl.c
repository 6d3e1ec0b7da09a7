/* relocatectl: control a running nbdkit relocate filter.
 *
 * relocatectl COMMAND [OPTIONS] SOCKET [ARGUMENT]
 *
 * It sends one request line to the filter's control socket and reads
 * one line of JSON back (see nbdkit-relocate-filter(1), CONTROL
 * PROTOCOL).  Exit status: 0 success, 1 failure, 2 usage error,
 * 3 wait timed out, 4 the relocation has failed.
 */

#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib.h>

#define EXIT_USAGE 2
#define EXIT_TIMEOUT 3
#define EXIT_FAILED 4

static gboolean opt_json, opt_progress;
static gint opt_timeout = -1;

static const GOptionEntry options[] = {
  { "json", 'j', 0, G_OPTION_ARG_NONE, &opt_json,
    "status: print the raw JSON", NULL },
  { "progress", 'p', 0, G_OPTION_ARG_NONE, &opt_progress,
    "wait: show a progress bar", NULL },
  { "timeout", 't', 0, G_OPTION_ARG_INT, &opt_timeout,
    "wait: give up after SECONDS (exit status 3)", "SECONDS" },
  { NULL }
};

/* Send one request, return the reply line (without newline) or NULL
 * after printing why.  If gone is not NULL and the socket does not
 * answer (it is missing, refuses the connection, or the connection
 * drops), return the reason in *gone instead of printing it.
 */
static char *
request (const char *path, const char *line, char **gone)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  GString *reply = g_string_new (NULL);
  char buf[4096];
  char *why;
  bool down = false;            /* the socket does not answer */
  ssize_t r;
  int fd;

  if (strlen (path) >= sizeof addr.sun_path) {
    why = g_strdup ("socket path too long");
    goto fail;
  }
  strcpy (addr.sun_path, path);
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 ||
      connect (fd, (struct sockaddr *) &addr, sizeof addr) == -1) {
    why = g_strdup_printf ("cannot connect: %s", g_strerror (errno));
    down = fd >= 0 && (errno == ENOENT || errno == ECONNREFUSED);
    if (fd >= 0)
      close (fd);
    goto fail;
  }
  if (send (fd, line, strlen (line), MSG_NOSIGNAL) != (ssize_t) strlen (line) ||
      send (fd, "\n", 1, MSG_NOSIGNAL) != 1) {
    why = g_strdup_printf ("send: %s", g_strerror (errno));
    down = true;
    close (fd);
    goto fail;
  }
  while (strchr (reply->str, '\n') == NULL &&
         (r = read (fd, buf, sizeof buf)) > 0)
    g_string_append_len (reply, buf, r);
  close (fd);
  if (strchr (reply->str, '\n') == NULL) {
    why = g_strdup ("no reply from the filter");
    down = true;
    goto fail;
  }
  *strchr (reply->str, '\n') = '\0';
  return g_string_free (reply, FALSE);

 fail:
  if (gone && down)
    *gone = why;
  else {
    fprintf (stderr, "relocatectl: %s: %s\n", path, why);
    g_free (why);
  }
  g_string_free (reply, TRUE);
  return NULL;
}

/* Parse the filter's flat JSON object into key -> value strings
 * (strings unescaped, numbers, booleans and arrays of numbers as
 * written).
 */
static GHashTable *
parse_reply (const char *s)
{
  GHashTable *h = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  GString *key = g_string_new (NULL), *val = g_string_new (NULL);
  GString *cur;

#define SKIP_WS() while (g_ascii_isspace (*s)) s++
  SKIP_WS ();
  if (*s++ != '{')
    goto bad;
  for (;;) {
    SKIP_WS ();
    if (*s == '}')
      break;
    for (int part = 0; part < 2; ++part) {
      cur = part == 0 ? key : val;
      g_string_truncate (cur, 0);
      SKIP_WS ();
      if (*s == '"') {
        for (s++; *s && *s != '"'; s++) {
          if (*s == '\\' && s[1] == 'u' && g_ascii_isxdigit (s[2]) &&
              g_ascii_isxdigit (s[3]) && g_ascii_isxdigit (s[4]) &&
              g_ascii_isxdigit (s[5])) {
            g_string_append_c (cur, (char) strtol ((char[]) { s[4], s[5], 0 }, NULL, 16));
            s += 5;
          }
          else if (*s == '\\' && s[1])
            g_string_append_c (cur, *++s);
          else
            g_string_append_c (cur, *s);
        }
        if (*s++ != '"')
          goto bad;
      }
      else if (part == 1 && *s == '[') {  /* an array of numbers, kept raw */
        while (*s && *s != ']')
          g_string_append_c (cur, *s++);
        if (*s != ']')
          goto bad;
        g_string_append_c (cur, *s++);
      }
      else if (part == 1) {
        while (*s && *s != ',' && *s != '}' && !g_ascii_isspace (*s))
          g_string_append_c (cur, *s++);
      }
      else
        goto bad;
      SKIP_WS ();
      if (part == 0 && *s++ != ':')
        goto bad;
    }
    g_hash_table_insert (h, g_strdup (key->str), g_strdup (val->str));
    SKIP_WS ();
    if (*s == ',')
      s++;
    else if (*s != '}')
      goto bad;
  }
#undef SKIP_WS
  g_string_free (key, TRUE);
  g_string_free (val, TRUE);
  return h;

 bad:
  g_string_free (key, TRUE);
  g_string_free (val, TRUE);
  g_hash_table_destroy (h);
  return NULL;
}

static const char *
get (GHashTable *h, const char *key)
{
  const char *v = g_hash_table_lookup (h, key);
  return v ? v : "";
}

static double
num (GHashTable *h, const char *key)
{
  return g_ascii_strtod (get (h, key), NULL);
}

/* Send a request; print the filter's error and return NULL if it
 * failed, else the parsed reply.  gone is as for request ().
 */
static GHashTable *
call (const char *path, const char *line, char **gone)
{
  g_autofree char *reply = request (path, line, gone);
  GHashTable *h;

  if (reply == NULL)
    return NULL;
  h = parse_reply (reply);
  if (h == NULL) {
    fprintf (stderr, "relocatectl: %s: malformed reply: %s\n", path, reply);
    return NULL;
  }
  if (strcmp (get (h, "ok"), "true") != 0) {
    fprintf (stderr, "relocatectl: %s: %s\n", path, get (h, "error"));
    g_hash_table_destroy (h);
    return NULL;
  }
  return h;
}

static char *
human (double bytes)
{
  static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
  size_t i = 0;

  while (bytes >= 1024 && i < G_N_ELEMENTS (units) - 1) {
    bytes /= 1024;
    i++;
  }
  return i == 0 ? g_strdup_printf ("%.0f B", bytes)
    : g_strdup_printf ("%.1f %s", bytes, units[i]);
}

/* "m:ss" from the JSON eta_seconds, or "unknown" for null. */
static char *
format_eta (const char *v)
{
  long sec;

  if (*v == '\0' || strcmp (v, "null") == 0)
    return g_strdup ("unknown");
  sec = (long) g_ascii_strtod (v, NULL);
  return g_strdup_printf ("%ld:%02ld", sec / 60, sec % 60);
}

static int
do_status (const char *path)
{
  g_autofree char *reply = NULL;
  GHashTable *h;
  double size, present, pct;

  if (opt_json) {
    reply = request (path, "status", NULL);
    if (reply == NULL)
      return EXIT_FAILURE;
    printf ("%s\n", reply);
    return EXIT_SUCCESS;
  }
  h = call (path, "status", NULL);
  if (h == NULL)
    return EXIT_FAILURE;
  size = num (h, "size");
  present = num (h, "present_bytes");
  pct = size > 0 ? 100.0 * present / size : 100.0;
  {
    g_autofree char *p = human (present), *s = human (size),
      *d = human (num (h, "fetched_demand_bytes")),
      *b = human (num (h, "fetched_background_bytes")),
      *z = human (num (h, "skipped_zero_bytes")),
      *w = human (num (h, "written_bytes")),
      *r = human (num (h, "rate")),
      *pc = human (num (h, "pace_cap")),
      *gs = human (num (h, "group_share")),
      *gd = human (num (h, "group_demand")),
      *cur = human (num (h, "current_bytes_per_second")),
      *avg = human (num (h, "average_bytes_per_second")),
      *eta = format_eta (get (h, "eta_seconds"));
    printf ("state:      %s%s\n", get (h, "state"),
            strcmp (get (h, "paused"), "true") == 0 ? " (paused)" : "");
    if (strcmp (get (h, "failed"), "true") == 0)
      printf ("FAILED:     %s\n", get (h, "failure"));
    printf ("file:       %s\n", get (h, "file"));
    printf ("present:    %s of %s (%.1f%%)\n", p, s, pct);
    printf ("fetched:    %s on demand, %s in background, %s skipped as zero\n",
            d, b, z);
    printf ("written:    %s by clients\n", w);
    printf ("throughput: %s/s now, %s/s average; ETA %s\n", cur, avg, eta);
    printf ("elapsed:    %.1f s\n", num (h, "elapsed_seconds"));
    if (num (h, "rate") > 0)
      printf ("rate cap:   %s/s\n", r);
    else
      printf ("rate cap:   unlimited\n");
    if (num (h, "group_share") > 0)
      printf ("rate group: %s/s, a share of the group's budget (%.0f "
              "relocations copying; guests fetch %s/s)\n", gs,
              num (h, "group_copying"), gd);
    if (num (h, "pace_cap") > 0)
      printf ("pacing:     %s/s while the guest flushes (its flushes "
              "%.2f x slower copying than held)\n", pc, num (h, "pace_ratio"));
    printf ("upstream:   %.0f of %.0f connections up%s%s\n",
            num (h, "connections"), num (h, "connections_wanted"),
            *get (h, "last_error") ? "; last error: " : "",
            get (h, "last_error"));
    if (num (h, "failed_blocks") > 0)
      printf ("failed:     %.0f blocks the source rejects (relocatectl retry)\n",
              num (h, "failed_blocks"));
  }
  g_hash_table_destroy (h);
  return EXIT_SUCCESS;
}

static void
draw_progress (GHashTable *h, double rate, bool final)
{
  double size = num (h, "size"), present = num (h, "present_bytes");
  double frac = size > 0 ? present / size : 1;
  int width = 30, filled = (int) (frac * width), i;
  g_autofree char *r = human (rate);
  char eta[32] = "--:--";

  if (rate > 0 && present < size) {
    long s = (long) ((size - present) / rate);
    snprintf (eta, sizeof eta, "%ld:%02ld", s / 60, s % 60);
  }
  printf ("\r[");
  for (i = 0; i < width; ++i)
    putchar (i < filled ? '#' : '.');
  printf ("] %5.1f%%  %s/s  ETA %s  ", 100 * frac, r, eta);
  if (final)
    putchar ('\n');
  fflush (stdout);
}

/* Poll the status until complete.  While the socket does not answer
 * (the server is restarting, or not started yet) keep trying, with one
 * line on stderr when it stops answering and one when it is back.
 */
static int
do_wait (const char *path)
{
  gint64 start = g_get_monotonic_time (), last_t = start, away_since = 0;
  double last_present = -1, rate = 0;
  bool tty = isatty (STDOUT_FILENO), away = false;

  for (;;) {
    g_autofree char *gone = NULL;
    GHashTable *h = call (path, "status", &gone);
    gint64 t = g_get_monotonic_time ();

    if (h == NULL && gone == NULL)
      return EXIT_FAILURE;
    if (h == NULL && !away) {
      if (opt_progress && tty)
        putchar ('\n');
      fprintf (stderr, "relocatectl: %s: not answering (%s); "
               "waiting for it to come back\n", path, gone);
      away = true;
      away_since = t;
      last_present = -1;        /* a restart may refetch some */
    }
    if (h != NULL) {
      bool done = strcmp (get (h, "state"), "complete") == 0;

      if (away)
        fprintf (stderr, "relocatectl: %s: answering again after %.1f s\n",
                 path, (t - away_since) / 1e6);
      away = false;
      if (strcmp (get (h, "failed"), "true") == 0) {
        if (opt_progress && tty)
          putchar ('\n');
        fprintf (stderr, "relocatectl: %s: the relocation has failed: %s\n",
                 path, get (h, "failure"));
        g_hash_table_destroy (h);
        return EXIT_FAILED;
      }
      if (last_present >= 0 && t > last_t) {
        double inst = (num (h, "present_bytes") - last_present) * 1e6 / (t - last_t);
        rate = rate > 0 ? 0.7 * rate + 0.3 * inst : inst;
      }
      last_present = num (h, "present_bytes");
      last_t = t;
      if (opt_progress && (tty || done))
        draw_progress (h, rate, done);
      g_hash_table_destroy (h);
      if (done)
        return EXIT_SUCCESS;
    }
    if (opt_timeout >= 0 && t - start >= (gint64) opt_timeout * 1000000) {
      if (opt_progress && tty && !away)
        putchar ('\n');
      fprintf (stderr, "relocatectl: %s: timed out after %d s\n",
               path, opt_timeout);
      return EXIT_TIMEOUT;
    }
    g_usleep ((away ? 250 : 100) * 1000);
  }
}

int
main (int argc, char *argv[])
{
  g_autoptr (GOptionContext) ctx = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree char *line = NULL;
  const char *cmd, *path;
  GHashTable *h;

  ctx = g_option_context_new ("COMMAND SOCKET [ARGUMENT]");
  g_option_context_set_summary (ctx,
    "Control a running nbdkit relocate filter through its control socket.");
  g_option_context_set_description (ctx,
    "Commands:\n"
    "  status [--json] SOCKET     show progress and state\n"
    "  wait [--progress] [--timeout SECONDS] SOCKET\n"
    "                             wait for completion (exit 3 on timeout)\n"
    "  start SOCKET               start a relocation in standby\n"
    "  pause SOCKET               pause the background copy\n"
    "  resume SOCKET              resume the background copy\n"
    "  rate SOCKET SIZE           cap the background copy (bytes/s, 0 = none)\n"
    "  reconnect SOCKET           reopen the connections to the source\n"
    "  retry SOCKET               fetch the blocks the source rejected again\n"
    "\nExit status: 0 success, 1 failure, 2 usage error, 3 timeout,\n"
    "4 the relocation has failed (wait).\n");
  g_option_context_add_main_entries (ctx, options, NULL);
  if (!g_option_context_parse (ctx, &argc, &argv, &error)) {
    fprintf (stderr, "relocatectl: %s\n", error->message);
    return EXIT_USAGE;
  }
  if (argc < 3) {
    fprintf (stderr, "relocatectl: usage: relocatectl COMMAND SOCKET "
             "[ARGUMENT] (see relocatectl --help)\n");
    return EXIT_USAGE;
  }
  cmd = argv[1];
  path = argv[2];

  if (strcmp (cmd, "status") == 0 && argc == 3)
    return do_status (path);
  if (strcmp (cmd, "wait") == 0 && argc == 3)
    return do_wait (path);
  if (strcmp (cmd, "rate") == 0 && argc == 4)
    line = g_strdup_printf ("rate %s", argv[3]);
  else if (argc == 3 && (strcmp (cmd, "start") == 0 ||
                         strcmp (cmd, "pause") == 0 ||
                         strcmp (cmd, "resume") == 0 ||
                         strcmp (cmd, "reconnect") == 0 ||
                         strcmp (cmd, "retry") == 0))
    line = g_strdup (cmd);
  else {
    fprintf (stderr, "relocatectl: unknown command or wrong arguments: %s "
             "(see relocatectl --help)\n", cmd);
    return EXIT_USAGE;
  }
  h = call (path, line, NULL);
  if (h == NULL)
    return EXIT_FAILURE;
  g_hash_table_destroy (h);
  return EXIT_SUCCESS;
}
