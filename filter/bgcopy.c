/* nbdkit-relocate: the background copy. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "relocate.h"
#include "bgcopy.h"
#include "blk.h"
#include "upstream.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t kick = PTHREAD_COND_INITIALIZER;
static bool stopping;
static uint64_t cursor;             /* where the next claim starts */
static uint64_t last_hint;          /* last demand hint acted on */
static double rate_next_free;       /* token bucket: when the link is free */
static unsigned inflight;           /* background fetches in progress */
static uint64_t mapped_blocks;      /* blocks before this have had block status */

/* Progress samples for the current throughput: one per coordinator
 * pass (about 50 ms), the last SAMPLES of them (two seconds).
 */
#define SAMPLES 40
static struct { double t; uint64_t present; } samples[SAMPLES];
static unsigned nsamples, next_sample;

static bool mapper_running;
static pthread_t mapper_thread;

/* Nice value of the background threads. */
#define BACKGROUND_NICE 10

/* Background requests allowed while the guest is doing I/O. */
#define QUIET_WORKERS(n) ((n) / 8 > 0 ? (n) / 8 : 1)

/* Block status is asked for this much of the source at a time. */
#define MAP_CHUNK (UINT64_C (1) << 30)

static bool coordinator_running;
static pthread_t coordinator_thread;
static pthread_t *worker_threads;
static unsigned nworkers;

/* The background threads run at a lower priority than the guest's. */
static void
lower_priority (void)
{
  if (setpriority (PRIO_PROCESS, syscall (SYS_gettid), BACKGROUND_NICE) == -1)
    nbdkit_debug ("relocate: setpriority: %m");
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

/* Claim the next run: after the guest's last demand fetch if it moved,
 * else where the copy left off.  Caller holds lock.
 */
static bool
claim_locked (uint64_t max, uint64_t *first, uint64_t *n)
{
  uint64_t hint = blk_demand_hint ();

  if (hint != last_hint) {
    last_hint = hint;
    cursor = hint;
  }
  return blk_claim_next (&cursor, max, mapped_blocks, first, n);
}

/* Let the workers copy everything before offset. */
static void
set_mapped (uint64_t offset)
{
  pthread_mutex_lock (&lock);
  mapped_blocks = offset >= blk_export_size ? blk_nblocks : offset / blk_size;
  pthread_cond_broadcast (&kick);
  pthread_mutex_unlock (&lock);
}

/* The mapper asks the source for block status ahead of the copy and
 * marks the ranges that read as zeroes present without fetching them.
 * The workers copy only blocks already mapped, so nothing that is a
 * hole at the source crosses the link.  A source without block status
 * reports everything as data and is mapped at once.
 */
static void *
mapper (void *arg)
{
  uint64_t offset = 0, end, zstart, zend;
  struct nbdkit_extents *exts;
  size_t i;
  int err;

  lower_priority ();
  while (offset < blk_export_size) {
    pthread_mutex_lock (&lock);
    while (!stopping && !copying ())
      wait_kick (1000);
    pthread_mutex_unlock (&lock);
    if (stopping)
      break;

    end = MIN (blk_export_size, offset + MAP_CHUNK);
    exts = nbdkit_extents_new (offset, end);
    if (exts == NULL || upstream_extents (end - offset, offset, exts, &err) == -1 ||
        nbdkit_extents_count (exts) == 0) {
      nbdkit_extents_free (exts);
      if (upstream_connected ()) {
        /* Connected, yet block status failed: copy this chunk as data. */
        nbdkit_debug ("relocate: block status failed at %" PRIu64
                      ": copying without it", offset);
        offset = end;
        set_mapped (offset);
        continue;
      }
      pthread_mutex_lock (&lock);
      if (!stopping)
        wait_kick (1000);       /* the source is away: try again */
      pthread_mutex_unlock (&lock);
      continue;
    }
    for (i = 0; i < nbdkit_extents_count (exts); ++i) {
      struct nbdkit_extent e = nbdkit_get_extent (exts, i);
      if (!(e.type & NBDKIT_EXTENT_ZERO))
        continue;
      /* The whole blocks inside the zero extent. */
      zstart = (e.offset + blk_size - 1) / blk_size;
      zend = e.offset + e.length >= blk_export_size
        ? blk_nblocks : (e.offset + e.length) / blk_size;
      if (zstart < zend)
        blk_mark_zero (zstart, zend - zstart, &err);
    }
    i = nbdkit_extents_count (exts) - 1;
    offset = nbdkit_get_extent (exts, i).offset + nbdkit_get_extent (exts, i).length;
    nbdkit_extents_free (exts);

    set_mapped (offset);
  }
  return arg;
}

/* How long a worker must wait before it may send a request: it
 * yields to the guest (while the guest does I/O only a quarter of the
 * workers may have a request in flight), to the rate cap, and to a
 * source that is away.  0 = go now; caller holds lock.
 */
static unsigned
wait_ms_locked (void)
{
  uint64_t rate = relocate_rate ();
  double t;

  if (!copying ())
    return 1000;
  if (inflight >= QUIET_WORKERS (cfg.workers) && relocate_client_active ())
    return 5;
  if (!upstream_connected ())
    return 500;
  t = relocate_now ();
  if (rate > 0 && rate_next_free > t)
    return MAX (1, (unsigned) ((rate_next_free - t) * 1000));
  return 0;
}

static void *
worker (void *arg)
{
  uint64_t max = MAX (1, cfg.request_size / blk_size);
  uint64_t first, n, rate;
  void *buf = blk_alloc_buffer (max * blk_size);
  unsigned ms;
  bool claimed;
  int err, r;

  if (buf == NULL) {
    nbdkit_error ("relocate: background copy: malloc: %m");
    return arg;
  }
  lower_priority ();
  pthread_mutex_lock (&lock);
  while (!stopping) {
    ms = wait_ms_locked ();
    if (ms > 0) {
      wait_kick (ms);
      continue;
    }
    /* Claim only now: a claimed block makes the guest wait for it.
     * While the guest does I/O, half-size requests: shorter bursts of
     * work for the threads that receive them.
     */
    claimed = claim_locked (relocate_client_active () ? MAX (1, max / 2) : max,
                            &first, &n);
    if (!claimed) {
      wait_kick (20);           /* the rest is busy, unmapped or present */
      continue;
    }
    rate = relocate_rate ();
    if (rate > 0)
      rate_next_free = MAX (relocate_now (), rate_next_free) + (double) n * blk_size / rate;
    inflight++;
    pthread_mutex_unlock (&lock);

    r = blk_fetch_claimed (first, n, buf, true, &err);

    pthread_mutex_lock (&lock);
    inflight--;
    pthread_cond_broadcast (&kick);
    if (r == -1 && !stopping)
      wait_kick (1000);         /* the source failed: not the same blocks at once */
  }
  pthread_mutex_unlock (&lock);
  free (buf);
  return arg;
}

/* Sync every relocate-sync-interval seconds; complete at the end. */
static void *
coordinator (void *arg)
{
  double last_sync = relocate_now ();
  int err;

  pthread_mutex_lock (&lock);
  while (!stopping) {
    samples[next_sample].t = relocate_now ();
    samples[next_sample].present = blk_present_bytes ();
    next_sample = (next_sample + 1) % SAMPLES;
    nsamples = MIN (nsamples + 1, SAMPLES);
    if (relocate_state () == STATE_RELOCATING) {
      pthread_mutex_unlock (&lock);
      if (blk_present_blocks () == blk_nblocks)
        relocate_complete ();
      else if (relocate_now () - last_sync >= cfg.sync_interval) {
        if (blk_flush (&err) == 0)
          last_sync = relocate_now ();
      }
      pthread_mutex_lock (&lock);
    }
    if (!stopping)
      wait_kick (50);
  }
  pthread_mutex_unlock (&lock);
  return arg;
}

double
bgcopy_current_rate (void)
{
  double r = 0;
  unsigned oldest, newest;

  pthread_mutex_lock (&lock);
  if (nsamples >= 2) {
    newest = (next_sample + SAMPLES - 1) % SAMPLES;
    oldest = (next_sample + SAMPLES - nsamples) % SAMPLES;
    if (samples[newest].t > samples[oldest].t)
      r = (samples[newest].present - samples[oldest].present) /
        (samples[newest].t - samples[oldest].t);
  }
  pthread_mutex_unlock (&lock);
  return r;
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
  if (cfg.background) {
    e = pthread_create (&mapper_thread, NULL, mapper, NULL);
    if (e)
      goto err;
    mapper_running = true;
  }
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
  if (mapper_running)
    pthread_join (mapper_thread, NULL);
  mapper_running = false;
  for (i = 0; i < nworkers; ++i)
    pthread_join (worker_threads[i], NULL);
  free (worker_threads);
  nworkers = 0;
}

void
bgcopy_kick (void)
{
  pthread_mutex_lock (&lock);
  rate_next_free = 0;           /* a new rate applies from now */
  pthread_cond_broadcast (&kick);
  pthread_mutex_unlock (&lock);
}
