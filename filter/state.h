/* nbdkit-relocate: the relocation's state, shared by every file.
 *
 * Bottom layer: depends on nothing else in filter/.  Holds the life
 * cycle (standby, relocating, complete), what the operator set (pause,
 * rate), why the relocation cannot complete (failure), the counters
 * shown by status, and whether clients are busy.  Every function takes
 * the state's own lock for its own scope and calls nothing that locks.
 */

#ifndef RELOCATE_STATE_H
#define RELOCATE_STATE_H

#include <stdbool.h>
#include <stdint.h>

/* The life of a relocation.  It is persisted as bitmap header flags,
 * so a restart carries on where it was.
 */
enum reloc_state {
  STATE_STANDBY,     /* reads pass through, nothing is stored */
  STATE_RELOCATING,  /* fetch on demand, copy in the background */
  STATE_COMPLETE,    /* every block present, upstream closed */
};

/* Counters shown by relocatectl status.  Updated atomically. */
struct stats {
  uint64_t fetched_demand;     /* bytes fetched for client requests */
  uint64_t fetched_background; /* bytes fetched by the background copy */
  uint64_t skipped_zero;       /* bytes marked present as known zeroes */
  uint64_t written;            /* bytes written by clients */
  uint64_t reader_flushes;     /* flushes on connections that never
                                  wrote (this run) */
  uint64_t taken_over;         /* blocks a client took over from the
                                  background copy's fetch (this run) */
};
extern struct stats stats;

/* The counters and the seconds spent relocating, as the bitmap files
 * carry them across restarts: fetched_demand, fetched_background,
 * skipped_zero, written, elapsed milliseconds.
 */
#define STATE_NCOUNTERS 5
void state_save_counters (uint64_t c[STATE_NCOUNTERS]);
void state_restore_counters (const uint64_t c[STATE_NCOUNTERS]);

#define STAT_ADD(field, n) __atomic_add_fetch (&stats.field, (n), __ATOMIC_RELAXED)
#define STAT_GET(field) __atomic_load_n (&stats.field, __ATOMIC_RELAXED)

double state_now (void);                 /* CLOCK_MONOTONIC in seconds */

enum reloc_state state_get (void);
/* Enter s, recording when the relocation started or completed. */
void state_set (enum reloc_state s);
double state_elapsed (void);             /* seconds spent relocating */

void state_set_paused (bool paused);     /* relocatectl pause/resume */
bool state_paused (void);
void state_set_rate (uint64_t bytes_per_second); /* 0 = unlimited */
uint64_t state_rate (void);

/* Why the relocation cannot complete (status shows it, relocatectl
 * wait exits 4).  Each cause is set and cleared on its own, by what
 * saw it and by what cured it: a source that comes back clears only
 * the source's failure, never the local file's.
 */
enum failure_cause {
  FAILURE_LOCAL, FAILURE_SOURCE, FAILURE_BLOCKS, FAILURE_CAUSES
};
void state_set_failure (enum failure_cause cause, const char *why);
void state_clear_failure (enum failure_cause cause);
char *state_failure (void);   /* the first cause's, or NULL: g_free it */

/* Client requests mark themselves, so the background copy can yield:
 * is one in flight, or did one end within CLIENT_QUIET_SECONDS?
 */
#define CLIENT_QUIET_SECONDS 0.05
void state_client_begin (void);
void state_client_end (void);
bool state_client_active (void);

/* Run the calling thread (and the threads it starts) at the background
 * copy's lower priority: the guest's go first.
 */
void state_lower_priority (void);

#endif /* RELOCATE_STATE_H */
