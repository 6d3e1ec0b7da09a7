/* nbdkit-relocate: the relocate-* parameters, parsed into one config.
 *
 * Bottom layer: depends on nothing else in filter/.  params_set is
 * called for each relocate-* key in .config, params_complete once in
 * .config_complete; after that cfg is read-only and every other file
 * reads its settings from it.
 */

#ifndef RELOCATE_PARAMS_H
#define RELOCATE_PARAMS_H

#include <stdbool.h>
#include <stdint.h>

/* When the relocation starts storing data (relocate-start). */
enum start_mode { START_IMMEDIATE, START_ON_WRITE, START_MANUAL };

struct config {
  const char *file;            /* relocate-file, absolute */
  const char *bitmap;          /* relocate-bitmap, absolute */
  const char *control;         /* relocate-control, absolute or NULL */
  unsigned control_mode;       /* relocate-control-mode */
  uint32_t block_size;         /* relocate-block-size, 0 = from bitmap */
  enum start_mode start;       /* relocate-start */
  bool background;             /* relocate-background */
  unsigned workers;            /* relocate-workers */
  unsigned connections;        /* relocate-connections */
  uint32_t request_size;       /* relocate-request-size */
  uint64_t rate;               /* relocate-rate, initial, 0 = unlimited */
  const char *rate_group;      /* relocate-rate-group, absolute or NULL */
  uint64_t rate_group_limit;   /* relocate-rate-group-limit, bytes/s */
  double pace;                 /* relocate-pace, 0 = off */
  uint32_t readahead;          /* relocate-readahead, max demand window */
  bool zero_detect;            /* relocate-zero-detect */
  bool direct;                 /* relocate-direct */
  unsigned timeout;            /* relocate-timeout, seconds */
  unsigned standby_timeout;    /* relocate-standby-timeout, seconds, 0 = never */
  unsigned sync_interval;      /* relocate-sync-interval, seconds */
  char source_id[256];         /* the nbd plugin's source parameters */
};
extern struct config cfg;

/* The block size of a new relocation when relocate-block-size is not given. */
#define DEFAULT_BLOCK_SIZE 65536

/* Is key one of ours (relocate-*)? */
bool params_is_ours (const char *key);

/* Parse one relocate-* parameter into cfg: 0, or -1 after nbdkit_error. */
int params_set (const char *key, const char *value);

/* Remember a plugin parameter that names the source (uri, socket, ...). */
void params_note_source (const char *key, const char *value);

/* Check what is required and fill in derived defaults. */
int params_complete (void);

#define PARAMS_HELP \
  "relocate-file=FILE         (required) The local copy of the disk.\n" \
  "relocate-bitmap=FILE       Bitmap of present blocks (default FILE.bitmap).\n" \
  "relocate-block-size=SIZE   Tracking granularity (default 64K).\n" \
  "relocate-start=MODE        immediate | on-write (default) | manual.\n" \
  "relocate-background=BOOL   Copy absent blocks in the background.\n" \
  "relocate-workers=N         Background requests in flight (default 8).\n" \
  "relocate-connections=N     Connections to the source (default 4).\n" \
  "relocate-request-size=SIZE Background request size (default 4M).\n" \
  "relocate-rate=SIZE         Background bytes per second (0 = unlimited).\n" \
  "relocate-rate-group=FILE   Share a budget with the relocations naming FILE.\n" \
  "relocate-rate-group-limit=SIZE The group's bytes per second.\n" \
  "relocate-pace=FACTOR       Slow the copy while it makes the guest's\n" \
  "                           flushes this much slower (default 1.5, 0 = off).\n" \
  "relocate-readahead=SIZE    Max readahead for sequential reads (default 4M).\n" \
  "relocate-zero-detect=BOOL  Store fetched zero blocks as holes (default true).\n" \
  "relocate-direct=BOOL       Write fetched data with O_DIRECT (default true).\n" \
  "relocate-timeout=SECS      Wait for the source this long (default 60).\n" \
  "relocate-standby-timeout=SECS Exit after this long in standby with no\n" \
  "                           client (default 0: never).\n" \
  "relocate-sync-interval=SECS Persist progress this often (default 5).\n" \
  "relocate-control=SOCKET    Unix socket for relocatectl.\n" \
  "relocate-control-mode=MODE Its permissions (default 0600)."

#endif /* RELOCATE_PARAMS_H */
