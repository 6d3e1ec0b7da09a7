/* nbdkit-relocate: settings and relocation state shared by every file. */

#ifndef RELOCATE_H
#define RELOCATE_H

#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>

/* When the relocation starts storing data (relocate-start). */
enum start_mode { START_IMMEDIATE, START_ON_WRITE, START_MANUAL };

/* The life of a relocation.  STANDBY and later states are persisted
 * in the bitmap header, so a restart carries on where it was.
 */
enum reloc_state {
  STATE_STANDBY,     /* reads pass through, nothing is stored */
  STATE_RELOCATING,  /* fetch on demand, copy in the background */
  STATE_COMPLETE,    /* every block present, upstream closed */
};

/* Parameters, set in .config and never changed afterwards. */
struct config {
  const char *file;            /* relocate-file, absolute */
  const char *bitmap;          /* relocate-bitmap, absolute */
  const char *control;         /* relocate-control, absolute or NULL */
  unsigned control_mode;       /* relocate-control-mode */
  uint32_t block_size;         /* relocate-block-size, 0 = from bitmap */
  enum start_mode start;       /* relocate-start */
  bool background;             /* relocate-background */
  unsigned workers;            /* relocate-workers */
  uint32_t request_size;       /* relocate-request-size */
  uint64_t rate;               /* relocate-rate, initial, 0 = unlimited */
  uint32_t readahead;          /* relocate-readahead, max demand window */
  bool zero_detect;            /* relocate-zero-detect */
  bool direct;                 /* relocate-direct */
  unsigned timeout;            /* relocate-timeout, seconds */
  unsigned sync_interval;      /* relocate-sync-interval, seconds */
  char source_id[256];         /* the nbd plugin's source parameters */
};
extern struct config cfg;

/* Counters shown by relocatectl status.  Updated atomically. */
struct stats {
  uint64_t fetched_demand;     /* bytes fetched for client requests */
  uint64_t fetched_background; /* bytes fetched by the background copy */
  uint64_t skipped_zero;       /* bytes marked present as known zeroes */
  uint64_t written;            /* bytes written by clients */
};
extern struct stats stats;

#define STAT_ADD(field, n) __atomic_add_fetch (&stats.field, (n), __ATOMIC_RELAXED)
#define STAT_GET(field) __atomic_load_n (&stats.field, __ATOMIC_RELAXED)

/* Runtime control of the relocation (relocate.c). */
enum reloc_state relocate_state (void);
int relocate_start (const char *why);   /* standby -> relocating */
void relocate_complete (void);          /* relocating -> complete */
void relocate_set_paused (bool paused);
bool relocate_paused (void);
void relocate_set_rate (uint64_t bytes_per_second);
uint64_t relocate_rate (void);
double relocate_elapsed (void);         /* seconds since relocating */
double relocate_now (void);             /* CLOCK_MONOTONIC in seconds */

/* Record that the relocation cannot complete (shown by status, and
 * relocatectl wait exits 4); NULL if it has not failed.
 */
void relocate_set_failure (const char *why);
char *relocate_failure (void);          /* a copy: g_free it */

/* Is a client request in flight, or did one end very recently? */
#define CLIENT_QUIET_SECONDS 0.05
bool relocate_client_active (void);

#endif /* RELOCATE_H */
