/* nbdkit-relocate: the background copy. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <time.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "relocate.h"
#include "bgcopy.h"
#include "blk.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t kick = PTHREAD_COND_INITIALIZER;
static bool stopping;
static uint64_t cursor;             /* where the next claim starts */
static uint64_t last_hint;          /* last demand hint acted on */
static double rate_next_free;       /* token bucket: when the link is free */

static bool coordinator_running;
static pthread_t coordinator_thread;
static pthread_t *worker_threads;
static unsigned nworkers;

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
sleep_until (double t)
{
  struct timespec ts = { .tv_sec = (time_t) t,
                         .tv_nsec = (long) ((t - (time_t) t) * 1e9) };

  while (clock_nanosleep (CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
    ;
}

/* Should the workers be copying now? */
static bool
copying (void)
{
  return cfg.background && !relocate_paused () &&
    relocate_state () == STATE_RELOCATING;
}

/* Wait for a kick, or ms milliseconds; caller holds lock. */
static void
wait_kick (unsigned ms)
{
  struct timespec ts;

  clock_gettime (CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_cond_timedwait (&kick, &lock, &ts);
}

/* Reserve len bytes of the rate cap; returns when they may be sent. */
static void
rate_limit (uint64_t len)
{
  uint64_t rate = relocate_rate ();
  double t;

  if (rate == 0)
    return;
  pthread_mutex_lock (&lock);
  t = MAX (now (), rate_next_free);
  rate_next_free = t + (double) len / rate;
  pthread_mutex_unlock (&lock);
  sleep_until (t);
}

/* Claim the next run: after the guest's last demand fetch if it moved,
 * else where the copy left off.
 */
static bool
claim (uint64_t max, uint64_t *first, uint64_t *n)
{
  uint64_t hint = blk_demand_hint ();
  bool r;

  pthread_mutex_lock (&lock);
  if (hint != last_hint) {
    last_hint = hint;
    cursor = hint;
  }
  r = blk_claim_next (&cursor, max, first, n);
  pthread_mutex_unlock (&lock);
  return r;
}

static void *
worker (void *arg)
{
  uint64_t max = MAX (1, cfg.request_size / blk_size);
  uint64_t first, n;
  void *buf = malloc (max * blk_size);
  int err;

  if (buf == NULL) {
    nbdkit_error ("relocate: background copy: malloc: %m");
    return arg;
  }
  for (;;) {
    pthread_mutex_lock (&lock);
    while (!stopping && !copying ())
      wait_kick (1000);
    if (stopping) {
      pthread_mutex_unlock (&lock);
      break;
    }
    pthread_mutex_unlock (&lock);

    if (!claim (max, &first, &n)) {
      blk_wait_change (1000);   /* the rest is busy or all present */
      continue;
    }
    rate_limit ((uint64_t) n * blk_size);
    if (blk_fetch_claimed (first, n, buf, true, &err) == -1) {
      /* The source is away; the blocks are absent again.  Wait a
       * moment rather than spinning on the same blocks.
       */
      pthread_mutex_lock (&lock);
      if (!stopping)
        wait_kick (1000);
      pthread_mutex_unlock (&lock);
    }
  }
  free (buf);
  return arg;
}

/* Sync every relocate-sync-interval seconds; complete at the end. */
static void *
coordinator (void *arg)
{
  double last_sync = now ();
  int err;

  pthread_mutex_lock (&lock);
  while (!stopping) {
    if (relocate_state () == STATE_RELOCATING) {
      pthread_mutex_unlock (&lock);
      if (blk_present_blocks () == blk_nblocks)
        relocate_complete ();
      else if (now () - last_sync >= cfg.sync_interval) {
        if (blk_flush (&err) == 0)
          last_sync = now ();
      }
      pthread_mutex_lock (&lock);
    }
    if (!stopping)
      wait_kick (200);
  }
  pthread_mutex_unlock (&lock);
  return arg;
}

int
bgcopy_start (void)
{
  unsigned i;
  int e;

  e = pthread_create (&coordinator_thread, NULL, coordinator, NULL);
  if (e)
    goto err;
  coordinator_running = true;
  worker_threads = calloc (cfg.workers, sizeof *worker_threads);
  if (worker_threads == NULL) {
    e = errno;
    goto err;
  }
  for (i = 0; i < cfg.workers; ++i) {
    e = pthread_create (&worker_threads[i], NULL, worker, NULL);
    if (e)
      goto err;
    nworkers++;
  }
  return 0;

 err:
  errno = e;
  nbdkit_error ("relocate: cannot start the background copy: %m");
  return -1;
}

void
bgcopy_stop (void)
{
  unsigned i;

  pthread_mutex_lock (&lock);
  stopping = true;
  pthread_cond_broadcast (&kick);
  pthread_mutex_unlock (&lock);
  if (coordinator_running)
    pthread_join (coordinator_thread, NULL);
  coordinator_running = false;
  for (i = 0; i < nworkers; ++i)
    pthread_join (worker_threads[i], NULL);
  free (worker_threads);
  nworkers = 0;
}

void
bgcopy_kick (void)
{
  pthread_mutex_lock (&lock);
  pthread_cond_broadcast (&kick);
  pthread_mutex_unlock (&lock);
}
