/* nbdkit-relocate: the filter's callbacks.
 *
 * nbdkit --filter=relocate nbd uri=... relocate-file=FILE
 *
 * Clients never open the plugin: .open does not call next, so every
 * callback answers without it and all reads of the source go through
 * the shared context in upstream.c.  Until the relocation starts
 * (standby) reads pass through and nothing is stored; then blocks are
 * fetched on demand and in the background into the local file (blk.c,
 * bgcopy.c); once all are present the source is no longer used.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "relocate.h"
#include "bgcopy.h"
#include "bitmap.h"
#include "blk.h"
#include "control.h"
#include "upstream.h"

struct config cfg = {
  .control_mode = 0600,
  .start = START_ON_WRITE,
  .background = true,
  .workers = 8,
  .request_size = 4 * 1024 * 1024,
  .timeout = 60,
  .sync_interval = 5,
  .readahead = 4 * 1024 * 1024,
  .zero_detect = true,
  .direct = true,
};
struct stats stats;

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static enum reloc_state state;
static bool paused;
static uint64_t rate;
static double started_at, completed_at;   /* monotonic seconds */
static bool bitmap_is_new;                /* no bitmap file before us */
static char *failure;                     /* why it cannot complete */
static unsigned client_inflight;          /* client requests in progress */
static double client_last;                /* when the last one ended */

double
relocate_now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Log a line that is news, not an error (the completion summary). */
static void __attribute__ ((format (printf, 1, 2)))
notice (const char *fmt, ...)
{
  g_autofree char *msg = NULL;
  va_list ap;

  va_start (ap, fmt);
  msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  nbdkit_debug ("relocate: %s", msg);
  fprintf (stderr, "nbdkit: relocate: %s\n", msg);
}

/* ---- Parameters ---- */

/* Make path absolute: nbdkit changes to / when it daemonizes. */
static char *
absolute (const char *param, const char *value)
{
  char *r = nbdkit_absolute_path (value);

  if (r == NULL)
    nbdkit_error ("%s=%s: cannot make the path absolute", param, value);
  return r;
}

/* The nbd plugin's parameters that say which export is the source. */
static void
note_source (const char *key, const char *value)
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

static int
parse_bool (const char *value, bool *out)
{
  int r = nbdkit_parse_bool (value);

  if (r == -1)
    return -1;
  *out = r;
  return 0;
}

#define MAX_SIZE (32 * 1024 * 1024)

static int
relocate_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  uint64_t sz;

  if (strcmp (key, "relocate-file") == 0)
    return (cfg.file = absolute (key, value)) ? 0 : -1;
  if (strcmp (key, "relocate-bitmap") == 0)
    return (cfg.bitmap = absolute (key, value)) ? 0 : -1;
  if (strcmp (key, "relocate-control") == 0)
    return (cfg.control = absolute (key, value)) ? 0 : -1;
  if (strcmp (key, "relocate-control-mode") == 0) {
    char *end;
    errno = 0;
    unsigned long m = strtoul (value, &end, 8);
    if (errno || *end || end == value || m > 0777) {
      nbdkit_error ("relocate-control-mode=%s: not an octal mode like 0600",
                    value);
      return -1;
    }
    cfg.control_mode = m;
    return 0;
  }
  if (strcmp (key, "relocate-block-size") == 0) {
    int64_t bs = nbdkit_parse_size (value);
    if (bs == -1)
      return -1;
    if (bs < 4096 || bs > MAX_SIZE || (bs & (bs - 1)) != 0) {
      nbdkit_error ("relocate-block-size=%s: must be a power of 2 "
                    "between 4K and 32M", value);
      return -1;
    }
    cfg.block_size = bs;
    return 0;
  }
  if (strcmp (key, "relocate-start") == 0) {
    if (strcmp (value, "immediate") == 0) cfg.start = START_IMMEDIATE;
    else if (strcmp (value, "on-write") == 0) cfg.start = START_ON_WRITE;
    else if (strcmp (value, "manual") == 0) cfg.start = START_MANUAL;
    else {
      nbdkit_error ("relocate-start=%s: must be immediate, on-write "
                    "or manual", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "relocate-background") == 0)
    return parse_bool (value, &cfg.background);
  if (strcmp (key, "relocate-zero-detect") == 0)
    return parse_bool (value, &cfg.zero_detect);
  if (strcmp (key, "relocate-direct") == 0)
    return parse_bool (value, &cfg.direct);
  if (strcmp (key, "relocate-workers") == 0)
    return parse_unsigned (key, value, 1, 64, &cfg.workers);
  if (strcmp (key, "relocate-timeout") == 0)
    return parse_unsigned (key, value, 1, 86400, &cfg.timeout);
  if (strcmp (key, "relocate-sync-interval") == 0)
    return parse_unsigned (key, value, 1, 3600, &cfg.sync_interval);
  if (strcmp (key, "relocate-rate") == 0)
    return parse_size (key, value, 0, INT64_MAX, &cfg.rate);
  if (strcmp (key, "relocate-request-size") == 0) {
    if (parse_size (key, value, 4096, MAX_SIZE, &sz) == -1)
      return -1;
    cfg.request_size = sz;
    return 0;
  }
  if (strcmp (key, "relocate-readahead") == 0) {
    if (parse_size (key, value, 0, MAX_SIZE, &sz) == -1)
      return -1;
    cfg.readahead = sz;
    return 0;
  }
  if (strncmp (key, "relocate-", 9) == 0) {
    nbdkit_error ("%s: unknown parameter (see nbdkit-relocate-filter(1))", key);
    return -1;
  }

  note_source (key, value);
  return next (nxdata, key, value);
}

/* Can we create files in the directory holding path? */
static int
check_dir_writable (const char *param, const char *path)
{
  g_autofree char *dir = g_path_get_dirname (path);

  if (access (dir, W_OK | X_OK) == -1) {
    nbdkit_error ("%s=%s: directory %s is not writable: %m", param, path, dir);
    return -1;
  }
  return 0;
}

/* Everything that can be checked without the source, before nbdkit
 * forks: a failure here changes no file.
 */
static int
relocate_config_complete (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata)
{
  struct bitmap_info info;
  struct stat st;
  bool have_file;

  if (cfg.file == NULL) {
    nbdkit_error ("relocate-file parameter is required");
    return -1;
  }
  if (cfg.bitmap == NULL) {
    cfg.bitmap = g_strdup_printf ("%s.bitmap", cfg.file);
  }
  if (cfg.request_size < cfg.block_size)
    cfg.request_size = cfg.block_size;
  rate = cfg.rate;

  have_file = stat (cfg.file, &st) == 0;
  if (!have_file && errno != ENOENT) {
    nbdkit_error ("relocate-file %s: %m", cfg.file);
    return -1;
  }
  if (have_file && !S_ISREG (st.st_mode)) {
    nbdkit_error ("relocate-file %s: not a regular file", cfg.file);
    return -1;
  }

  if (access (cfg.bitmap, F_OK) == -1) {
    /* A fresh relocation. */
    if (have_file && st.st_size > 0) {
      nbdkit_error ("relocate-file %s exists and is not empty, but has no "
                    "bitmap %s: refusing to overwrite it", cfg.file, cfg.bitmap);
      return -1;
    }
    if (check_dir_writable ("relocate-file", cfg.file) == -1 ||
        check_dir_writable ("relocate-bitmap", cfg.bitmap) == -1)
      return -1;
    bitmap_is_new = true;
    return next (nxdata);
  }

  /* Resuming: the bitmap must describe this relocation. */
  if (bitmap_load (cfg.bitmap) == -1)
    return -1;
  info = *bitmap_info ();
  if (cfg.block_size && cfg.block_size != info.block_size) {
    nbdkit_error ("relocate-bitmap %s has block size %" PRIu32
                  ", but relocate-block-size=%" PRIu32 " was given",
                  cfg.bitmap, info.block_size, cfg.block_size);
    return -1;
  }
  if (strcmp (info.source, cfg.source_id) != 0) {
    nbdkit_error ("relocate-bitmap %s belongs to a relocation from "
                  "'%s', not from '%s'", cfg.bitmap, info.source,
                  cfg.source_id);
    return -1;
  }
  if (have_file && st.st_size > 0 && (uint64_t) st.st_size != info.size) {
    nbdkit_error ("relocate-file %s has size %" PRIu64 ", but its bitmap "
                  "%s is for an image of %" PRIu64 " bytes",
                  cfg.file, (uint64_t) st.st_size, cfg.bitmap, info.size);
    return -1;
  }
  if ((!have_file || st.st_size == 0) && bitmap_count () > 0) {
    nbdkit_error ("relocate-file %s is %s, but its bitmap %s says %" PRIu64
                  " blocks are present", cfg.file,
                  have_file ? "empty" : "missing", cfg.bitmap, bitmap_count ());
    return -1;
  }
  if (!have_file && check_dir_writable ("relocate-file", cfg.file) == -1)
    return -1;
  cfg.block_size = info.block_size;
  return next (nxdata);
}

#define relocate_config_help \
  "relocate-file=FILE         (required) The local copy of the disk.\n" \
  "relocate-bitmap=FILE       Bitmap of present blocks (default FILE.bitmap).\n" \
  "relocate-block-size=SIZE   Tracking granularity (default 64K).\n" \
  "relocate-start=MODE        immediate | on-write (default) | manual.\n" \
  "relocate-background=BOOL   Copy absent blocks in the background.\n" \
  "relocate-workers=N         Background requests in flight (default 8).\n" \
  "relocate-request-size=SIZE Background request size (default 4M).\n" \
  "relocate-rate=SIZE         Background bytes per second (0 = unlimited).\n" \
  "relocate-readahead=SIZE    Max readahead for sequential reads (default 4M).\n" \
  "relocate-zero-detect=BOOL  Store fetched zero blocks as holes (default true).\n" \
  "relocate-direct=BOOL       Write fetched data with O_DIRECT (default true).\n" \
  "relocate-timeout=SECS      Wait for the source this long (default 60).\n" \
  "relocate-sync-interval=SECS Persist progress this often (default 5).\n" \
  "relocate-control=SOCKET    Unix socket for relocatectl.\n" \
  "relocate-control-mode=MODE Its permissions (default 0600)."

/* Create the files of a fresh relocation, sized like the source. */
static int
create_relocation (int64_t size)
{
  struct bitmap_info info = { 0 };

  info.block_size = cfg.block_size ? cfg.block_size : 65536;
  info.size = size;
  info.nblocks = (size + info.block_size - 1) / info.block_size;
  info.flags = cfg.start == START_IMMEDIATE ? BITMAP_FLAG_STARTED : 0;
  g_strlcpy (info.source, cfg.source_id, sizeof info.source);
  if (bitmap_create (cfg.bitmap, &info) == -1)
    return -1;
  return bitmap_load (cfg.bitmap);
}

static int
relocate_after_fork (nbdkit_backend *backend)
{
  const struct bitmap_info *info;
  int64_t size;

  if (bitmap_is_new) {
    if (upstream_connect_once (backend, &size) == -1) {
      nbdkit_error ("relocate: cannot reach the source to learn its size; "
                    "a new relocation needs it");
      return -1;
    }
    if (create_relocation (size) == -1)
      return -1;
  }
  info = bitmap_info ();
  /* A resumed relocation may start without the source, not with a
   * source that changed: check before touching any file.
   */
  if (!(info->flags & BITMAP_FLAG_COMPLETE) && !bitmap_is_new &&
      upstream_connect_once (backend, &size) == 0 &&
      (uint64_t) size != info->size) {
    nbdkit_error ("relocate: the source has size %" PRIi64 ", but %s "
                  "holds %" PRIu64 " bytes", size, cfg.bitmap, info->size);
    return -1;
  }
  if (blk_open (cfg.file) == -1)
    return -1;

  if (info->flags & BITMAP_FLAG_COMPLETE) {
    state = STATE_COMPLETE;
    nbdkit_debug ("relocate: %s is complete; the source is not used",
                  cfg.file);
  }
  else {
    if (upstream_start (backend, info->size) == -1)
      return -1;
    if (info->flags & BITMAP_FLAG_STARTED) {
      state = STATE_RELOCATING;
      started_at = relocate_now ();
    }
    else
      state = STATE_STANDBY;
    if (bgcopy_start () == -1)
      return -1;
    if (state == STATE_STANDBY && cfg.start == START_IMMEDIATE &&
        relocate_start ("relocate-start=immediate") == -1)
      return -1;
  }
  if (cfg.control && control_start (cfg.control, cfg.control_mode) == -1)
    return -1;
  return 0;
}

static void
relocate_cleanup (nbdkit_backend *backend)
{
  int err;

  control_stop ();
  upstream_stop ();
  bgcopy_stop ();
  if (state != STATE_STANDBY)
    blk_flush (&err);          /* SIGTERM: leave the bitmap durable */
  blk_close ();
  bitmap_unload ();
}

/* ---- Relocation state ---- */

enum reloc_state
relocate_state (void)
{
  enum reloc_state s;

  pthread_mutex_lock (&state_lock);
  s = state;
  pthread_mutex_unlock (&state_lock);
  return s;
}

int
relocate_start (const char *why)
{
  int r = 0;

  pthread_mutex_lock (&state_lock);
  if (state == STATE_STANDBY) {
    /* Durable before anything is stored. */
    r = blk_persist_flag (BITMAP_FLAG_STARTED);
    if (r == 0) {
      state = STATE_RELOCATING;
      started_at = relocate_now ();
      nbdkit_debug ("relocate: relocation started (%s)", why);
    }
  }
  pthread_mutex_unlock (&state_lock);
  bgcopy_kick ();
  return r;
}

void
relocate_complete (void)
{
  int err;

  if (blk_flush (&err) == -1 || blk_persist_flag (BITMAP_FLAG_COMPLETE) == -1)
    return;                     /* the coordinator tries again */
  upstream_detach ();
  pthread_mutex_lock (&state_lock);
  state = STATE_COMPLETE;
  completed_at = relocate_now ();
  pthread_mutex_unlock (&state_lock);
  notice ("%s complete: %" PRIu64 " bytes in %.1f s "
                "(%" PRIu64 " fetched on demand, %" PRIu64 " in background, "
                "%" PRIu64 " skipped as zero, %" PRIu64 " written by clients); "
                "the source is no longer used",
                cfg.file, blk_export_size, completed_at - started_at,
                STAT_GET (fetched_demand), STAT_GET (fetched_background),
                STAT_GET (skipped_zero), STAT_GET (written));
}

void
relocate_set_failure (const char *why)
{
  pthread_mutex_lock (&state_lock);
  g_free (failure);
  failure = why ? g_strdup (why) : NULL;
  pthread_mutex_unlock (&state_lock);
}

char *
relocate_failure (void)
{
  char *r;

  pthread_mutex_lock (&state_lock);
  r = g_strdup (failure);
  pthread_mutex_unlock (&state_lock);
  return r;
}

void
relocate_set_paused (bool p)
{
  pthread_mutex_lock (&state_lock);
  paused = p;
  pthread_mutex_unlock (&state_lock);
  bgcopy_kick ();
}

bool
relocate_paused (void)
{
  bool p;

  pthread_mutex_lock (&state_lock);
  p = paused;
  pthread_mutex_unlock (&state_lock);
  return p;
}

void
relocate_set_rate (uint64_t r)
{
  __atomic_store_n (&rate, r, __ATOMIC_RELAXED);
  bgcopy_kick ();
}

uint64_t
relocate_rate (void)
{
  return __atomic_load_n (&rate, __ATOMIC_RELAXED);
}

double
relocate_elapsed (void)
{
  double r;

  pthread_mutex_lock (&state_lock);
  if (state == STATE_STANDBY || started_at == 0)
    r = 0;
  else if (state == STATE_COMPLETE)
    r = completed_at ? completed_at - started_at : 0;
  else
    r = relocate_now () - started_at;
  pthread_mutex_unlock (&state_lock);
  return r;
}

/* Client requests mark themselves, so the background copy can yield. */
static void
client_begin (void)
{
  __atomic_add_fetch (&client_inflight, 1, __ATOMIC_RELAXED);
}

static int
client_end (int r)
{
  double t = relocate_now ();

  __atomic_store (&client_last, &t, __ATOMIC_RELAXED);
  __atomic_sub_fetch (&client_inflight, 1, __ATOMIC_RELAXED);
  return r;
}

bool
relocate_client_active (void)
{
  double last;

  if (__atomic_load_n (&client_inflight, __ATOMIC_RELAXED) > 0)
    return true;
  __atomic_load (&client_last, &last, __ATOMIC_RELAXED);
  return relocate_now () - last < CLIENT_QUIET_SECONDS;
}

/* ---- Per-connection callbacks ---- */

/* A handle is needed, but clients share everything. */
static int handle;

static void *
relocate_open (nbdkit_next_open *next, nbdkit_context *nxdata,
               int readonly, const char *exportname, int is_tls)
{
  /* Deliberately not calling next: clients never open the plugin. */
  return &handle;
}

static int64_t
relocate_get_size (nbdkit_next *next, void *h)
{
  return blk_export_size;
}

static const char *
relocate_export_description (nbdkit_next *next, void *h)
{
  return "nbdkit-relocate";
}

static int
relocate_block_size (nbdkit_next *next, void *h,
                     uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  *minimum = 1;
  *preferred = 4096;
  *maximum = 0xffffffff;
  return 0;
}

static int relocate_one (nbdkit_next *next, void *h) { return 1; }
static int relocate_zero_flag (nbdkit_next *next, void *h) { return 0; }

static int
relocate_can_fua (nbdkit_next *next, void *h)
{
  return NBDKIT_FUA_NATIVE;
}

static int
relocate_can_zero (nbdkit_next *next, void *h)
{
  return NBDKIT_ZERO_NATIVE;
}

static int
relocate_can_cache (nbdkit_next *next, void *h)
{
  return NBDKIT_CACHE_NATIVE;
}

/* Before the relocation starts, a write must start it (on-write) or
 * is refused (manual): nothing may be stored in standby.
 */
static int
start_for_write (int *err)
{
  if (relocate_state () != STATE_STANDBY)
    return 0;
  if (cfg.start == START_MANUAL) {
    nbdkit_error ("relocate: write refused in standby "
                  "(relocate-start=manual): run relocatectl start first");
    *err = EROFS;
    return -1;
  }
  if (relocate_start ("first client write") == -1) {
    *err = EIO;
    return -1;
  }
  return 0;
}

static int
relocate_pread (nbdkit_next *next, void *h, void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  client_begin ();
  if (relocate_state () == STATE_STANDBY)
    return client_end (upstream_pread (buf, count, offset, cfg.timeout, err));
  return client_end (blk_read (buf, count, offset, err));
}

static int
relocate_pwrite (nbdkit_next *next, void *h, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags, int *err)
{
  if (start_for_write (err) == -1)
    return -1;
  client_begin ();
  return client_end (blk_write (buf, count, offset, flags & NBDKIT_FLAG_FUA,
                                err));
}

static int
relocate_zero (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  if (start_for_write (err) == -1)
    return -1;
  client_begin ();
  return client_end (blk_zero (count, offset, flags & NBDKIT_FLAG_MAY_TRIM,
                               flags & NBDKIT_FLAG_FUA, err));
}

static int
relocate_trim (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  if (start_for_write (err) == -1)
    return -1;
  return blk_trim (count, offset, flags & NBDKIT_FLAG_FUA, err);
}

static int
relocate_flush (nbdkit_next *next, void *h, uint32_t flags, int *err)
{
  if (relocate_state () == STATE_STANDBY)
    return 0;                   /* nothing stored yet */
  return blk_flush (err);
}

static int
relocate_extents (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  if (relocate_state () == STATE_STANDBY) {
    if (upstream_extents (count, offset, extents, err) == -1)
      return nbdkit_add_extent (extents, offset, count, 0);
    return 0;
  }
  return blk_extents (count, offset, extents, err);
}

static int
relocate_cache (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
                uint32_t flags, int *err)
{
  if (relocate_state () == STATE_STANDBY)
    return 0;                   /* caching now could store stale data */
  client_begin ();
  return client_end (blk_cache (count, offset, err));
}

static struct nbdkit_filter filter = {
  .name               = "relocate",
  .longname           = "nbdkit relocate filter",
  .config             = relocate_config,
  .config_complete    = relocate_config_complete,
  .config_help        = relocate_config_help,
  .after_fork         = relocate_after_fork,
  .cleanup            = relocate_cleanup,
  .open               = relocate_open,
  .get_size           = relocate_get_size,
  .export_description = relocate_export_description,
  .block_size         = relocate_block_size,
  .can_write          = relocate_one,
  .can_flush          = relocate_one,
  .is_rotational      = relocate_zero_flag,
  .can_trim           = relocate_one,
  .can_zero           = relocate_can_zero,
  .can_fast_zero      = relocate_zero_flag,
  .can_extents        = relocate_one,
  .can_fua            = relocate_can_fua,
  .can_multi_conn     = relocate_one,
  .can_cache          = relocate_can_cache,
  .pread              = relocate_pread,
  .pwrite             = relocate_pwrite,
  .zero               = relocate_zero,
  .trim               = relocate_trim,
  .flush              = relocate_flush,
  .extents            = relocate_extents,
  .cache              = relocate_cache,
};

NBDKIT_REGISTER_FILTER (filter)
