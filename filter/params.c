/* nbdkit-relocate: the relocate-* parameters, parsed into one config. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "params.h"

struct config cfg = {
  .control_mode = 0600,
  .start = START_ON_WRITE,
  .background = true,
  .workers = 8,
  .connections = 4,
  .request_size = 4 * 1024 * 1024,
  .timeout = 60,
  .sync_interval = 5,
  .pace = 1.5,
  .readahead = 4 * 1024 * 1024,
  .zero_detect = true,
  .direct = true,
};

#define MAX_SIZE (32 * 1024 * 1024)

bool
params_is_ours (const char *key)
{
  return strncmp (key, "relocate-", 9) == 0;
}

/* Make path absolute: nbdkit changes to / when it daemonizes. */
static int
parse_path (const char *key, const char *value, const char **out)
{
  char *r = nbdkit_absolute_path (value);

  if (r == NULL) {
    nbdkit_error ("%s=%s: cannot make the path absolute", key, value);
    return -1;
  }
  *out = r;
  return 0;
}

static int
parse_unsigned (const char *key, const char *value, unsigned min,
                unsigned max, unsigned *out)
{
  if (nbdkit_parse_unsigned (key, value, out) == -1)
    return -1;
  if (*out < min || *out > max) {
    nbdkit_error ("%s=%s: must be between %u and %u", key, value, min, max);
    return -1;
  }
  return 0;
}

/* A SIZE parameter within [min, max]. */
static int
parse_size (const char *key, const char *value, int64_t min, int64_t max,
            uint64_t *out)
{
  int64_t sz = nbdkit_parse_size (value);

  if (sz == -1)
    return -1;
  if (sz < min || sz > max) {
    nbdkit_error ("%s=%s: must be between %" PRIi64 " and %" PRIi64 " bytes",
                  key, value, min, max);
    return -1;
  }
  *out = sz;
  return 0;
}

/* A SIZE parameter that fits in 32 bits, within [min, max]. */
static int
parse_size32 (const char *key, const char *value, int64_t min, int64_t max,
              uint32_t *out)
{
  uint64_t sz;

  if (parse_size (key, value, min, max, &sz) == -1)
    return -1;
  *out = sz;
  return 0;
}

/* relocate-pace: 0 (off), or a factor of at least 1.1. */
static int
parse_pace (const char *key, const char *value, double *out)
{
  char *end;
  double d;

  errno = 0;
  d = g_ascii_strtod (value, &end);
  if (errno || end == value || *end || !(d == 0 || (d >= 1.1 && d <= 100))) {
    nbdkit_error ("%s=%s: must be 0 (off) or a factor between 1.1 and 100",
                  key, value);
    return -1;
  }
  *out = d;
  return 0;
}

static int
parse_bool (const char *value, bool *out)
{
  int r = nbdkit_parse_bool (value);

  if (r == -1)
    return -1;
  *out = r;
  return 0;
}

static int
parse_mode (const char *key, const char *value, unsigned *out)
{
  char *end;
  unsigned long m;

  errno = 0;
  m = strtoul (value, &end, 8);
  if (errno || *end || end == value || m > 0777) {
    nbdkit_error ("%s=%s: not an octal mode like 0600", key, value);
    return -1;
  }
  *out = m;
  return 0;
}

static int
parse_block_size (const char *key, const char *value, uint32_t *out)
{
  int64_t bs = nbdkit_parse_size (value);

  if (bs == -1)
    return -1;
  if (bs < 4096 || bs > MAX_SIZE || (bs & (bs - 1)) != 0) {
    nbdkit_error ("%s=%s: must be a power of 2 between 4K and 32M",
                  key, value);
    return -1;
  }
  *out = bs;
  return 0;
}

static int
parse_start (const char *key, const char *value, enum start_mode *out)
{
  if (strcmp (value, "immediate") == 0) *out = START_IMMEDIATE;
  else if (strcmp (value, "on-write") == 0) *out = START_ON_WRITE;
  else if (strcmp (value, "manual") == 0) *out = START_MANUAL;
  else {
    nbdkit_error ("%s=%s: must be immediate, on-write or manual", key, value);
    return -1;
  }
  return 0;
}

int
params_set (const char *key, const char *value)
{
  if (strcmp (key, "relocate-file") == 0)
    return parse_path (key, value, &cfg.file);
  if (strcmp (key, "relocate-bitmap") == 0)
    return parse_path (key, value, &cfg.bitmap);
  if (strcmp (key, "relocate-control") == 0)
    return parse_path (key, value, &cfg.control);
  if (strcmp (key, "relocate-control-mode") == 0)
    return parse_mode (key, value, &cfg.control_mode);
  if (strcmp (key, "relocate-block-size") == 0)
    return parse_block_size (key, value, &cfg.block_size);
  if (strcmp (key, "relocate-start") == 0)
    return parse_start (key, value, &cfg.start);
  if (strcmp (key, "relocate-background") == 0)
    return parse_bool (value, &cfg.background);
  if (strcmp (key, "relocate-zero-detect") == 0)
    return parse_bool (value, &cfg.zero_detect);
  if (strcmp (key, "relocate-direct") == 0)
    return parse_bool (value, &cfg.direct);
  if (strcmp (key, "relocate-workers") == 0)
    return parse_unsigned (key, value, 1, 64, &cfg.workers);
  if (strcmp (key, "relocate-connections") == 0)
    return parse_unsigned (key, value, 1, 16, &cfg.connections);
  if (strcmp (key, "relocate-standby-timeout") == 0)
    return parse_unsigned (key, value, 0, 7 * 86400, &cfg.standby_timeout);
  if (strcmp (key, "relocate-timeout") == 0)
    return parse_unsigned (key, value, 1, 86400, &cfg.timeout);
  if (strcmp (key, "relocate-sync-interval") == 0)
    return parse_unsigned (key, value, 1, 3600, &cfg.sync_interval);
  if (strcmp (key, "relocate-rate") == 0)
    return parse_size (key, value, 0, INT64_MAX, &cfg.rate);
  if (strcmp (key, "relocate-rate-group") == 0)
    return parse_path (key, value, &cfg.rate_group);
  if (strcmp (key, "relocate-rate-group-limit") == 0)
    return parse_size (key, value, 1, INT64_MAX, &cfg.rate_group_limit);
  if (strcmp (key, "relocate-pace") == 0)
    return parse_pace (key, value, &cfg.pace);
  if (strcmp (key, "relocate-request-size") == 0)
    return parse_size32 (key, value, 4096, MAX_SIZE, &cfg.request_size);
  if (strcmp (key, "relocate-readahead") == 0)
    return parse_size32 (key, value, 0, MAX_SIZE, &cfg.readahead);
  nbdkit_error ("%s: unknown parameter (see nbdkit-relocate-filter(1))", key);
  return -1;
}

void
params_note_source (const char *key, const char *value)
{
  static const char *const keys[] = {
    "uri", "socket", "hostname", "port", "vsock", "cid", "export", "command",
  };
  size_t i, len = strlen (cfg.source_id);

  for (i = 0; i < G_N_ELEMENTS (keys); ++i)
    if (strcmp (key, keys[i]) == 0)
      snprintf (cfg.source_id + len, sizeof cfg.source_id - len, "%s%s=%s",
                len ? " " : "", key, value);
}

int
params_complete (void)
{
  if (cfg.file == NULL) {
    nbdkit_error ("relocate-file parameter is required");
    return -1;
  }
  if (cfg.bitmap == NULL)
    cfg.bitmap = g_strdup_printf ("%s.bitmap", cfg.file);
  if ((cfg.rate_group == NULL) != (cfg.rate_group_limit == 0)) {
    nbdkit_error ("%s is required with %s", cfg.rate_group ?
                  "relocate-rate-group-limit" : "relocate-rate-group",
                  cfg.rate_group ? "relocate-rate-group" :
                  "relocate-rate-group-limit");
    return -1;
  }
  if (cfg.request_size < cfg.block_size)
    cfg.request_size = cfg.block_size;
  return 0;
}
