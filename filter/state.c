/* nbdkit-relocate: the relocation's state, shared by every file. */

#include <config.h>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "lock.h"
#include "state.h"

struct stats stats;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static enum reloc_state state;
static bool paused;
static double started_at, completed_at;   /* monotonic seconds */
static double elapsed_before;             /* relocating, in earlier runs */
static char *failure[FAILURE_CAUSES];

static uint64_t rate;                     /* atomic */
static unsigned client_inflight;          /* atomic */
static double client_last;                /* atomic: when the last one ended */

double
state_now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

enum reloc_state
state_get (void)
{
  LOCK_FOR_SCOPE (&lock);

  return state;
}

void
state_set (enum reloc_state s)
{
  LOCK_FOR_SCOPE (&lock);

  if (s == STATE_RELOCATING && state != STATE_RELOCATING)
    started_at = state_now ();
  if (s == STATE_COMPLETE && state == STATE_RELOCATING)
    completed_at = state_now ();
  state = s;
}

double
state_elapsed (void)
{
  LOCK_FOR_SCOPE (&lock);

  switch (state) {
  case STATE_RELOCATING:
    return elapsed_before + state_now () - started_at;
  case STATE_COMPLETE:
    return elapsed_before + (completed_at ? completed_at - started_at : 0);
  default:
    return 0;
  }
}

void
state_save_counters (uint64_t c[STATE_NCOUNTERS])
{
  c[0] = STAT_GET (fetched_demand);
  c[1] = STAT_GET (fetched_background);
  c[2] = STAT_GET (skipped_zero);
  c[3] = STAT_GET (written);
  c[4] = state_elapsed () * 1000;
}

void
state_restore_counters (const uint64_t c[STATE_NCOUNTERS])
{
  LOCK_FOR_SCOPE (&lock);

  stats.fetched_demand = c[0];
  stats.fetched_background = c[1];
  stats.skipped_zero = c[2];
  stats.written = c[3];
  elapsed_before = c[4] / 1000.0;
}

void
state_set_paused (bool p)
{
  LOCK_FOR_SCOPE (&lock);

  paused = p;
}

bool
state_paused (void)
{
  LOCK_FOR_SCOPE (&lock);

  return paused;
}

void
state_set_rate (uint64_t r)
{
  __atomic_store_n (&rate, r, __ATOMIC_RELAXED);
}

uint64_t
state_rate (void)
{
  return __atomic_load_n (&rate, __ATOMIC_RELAXED);
}

void
state_set_failure (enum failure_cause cause, const char *why)
{
  LOCK_FOR_SCOPE (&lock);

  g_free (failure[cause]);
  failure[cause] = g_strdup (why);
}

void
state_clear_failure (enum failure_cause cause)
{
  state_set_failure (cause, NULL);
}

char *
state_failure (void)
{
  LOCK_FOR_SCOPE (&lock);
  size_t i;

  for (i = 0; i < FAILURE_CAUSES; ++i)
    if (failure[i])
      return g_strdup (failure[i]);
  return NULL;
}

void
state_client_begin (void)
{
  __atomic_add_fetch (&client_inflight, 1, __ATOMIC_RELAXED);
}

void
state_client_end (void)
{
  double t = state_now ();

  __atomic_store (&client_last, &t, __ATOMIC_RELAXED);
  __atomic_sub_fetch (&client_inflight, 1, __ATOMIC_RELAXED);
}

bool
state_client_active (void)
{
  double last;

  if (__atomic_load_n (&client_inflight, __ATOMIC_RELAXED) > 0)
    return true;
  __atomic_load (&client_last, &last, __ATOMIC_RELAXED);
  return state_now () - last < CLIENT_QUIET_SECONDS;
}

/* Nice value of the background threads. */
#define BACKGROUND_NICE 10

void
state_lower_priority (void)
{
  if (setpriority (PRIO_PROCESS, syscall (SYS_gettid), BACKGROUND_NICE) == -1)
    nbdkit_debug ("relocate: setpriority: %m");
}
