/* nbdkit-relocate: the background copy. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "params.h"
#include "state.h"
#include "bitmap.h"
#include "bgcopy.h"
#include "lock.h"
#include "pace.h"
#include "group.h"
#include "blk.h"
#include "blkfile.h"
#include "buf.h"
#include "upstream.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t kick = PTHREAD_COND_INITIALIZER; /* made monotonic */
static bool stopping;
static uint64_t cursor;             /* where the next claim starts */
static uint64_t last_hint;          /* last demand hint acted on */
/* The rate cap's account: bytes sent beyond the cap, paid off at the
 * cap in force (it changes: pacing, the rate group), as of debt_t.
 */
static double rate_debt, rate_debt_t;
static unsigned inflight;           /* background fetches in progress */
static uint64_t inflight_bytes;     /* and their bytes */
static uint64_t most_inflight_bytes; /* the most at once, since nbdkit started */
static uint64_t demand_seen;        /* fetched_demand at the last pass */
static double demand_at;            /* when it last grew */
static uint64_t mapped_blocks;      /* blocks before this have had block status */

/* Progress samples for the current throughput: one per coordinator
 * pass (about 50 ms), the last SAMPLES of them (two seconds).
 */
#define SAMPLES 40
static struct { double t; uint64_t present; } samples[SAMPLES];
static unsigned nsamples, next_sample;

static bool mapper_running;
static pthread_t mapper_thread;

/* Background requests allowed while the guest is doing I/O. */
#define QUIET_WORKERS(n) ((n) / 8 > 0 ? (n) / 8 : 1)

/* The largest background request while the guest fetches on demand
 * (a fetch ended within FETCHING_SECONDS), or, in a rate group, any
 * member's guest: what the source sends for one goes into the same
 * bottleneck queue as the guest's fetches, ahead of them.
 */
#define QUIET_REQUEST (256 * 1024)
#define FETCHING_SECONDS 1.0

/* In a rate group a request carries at most this many seconds of the
 * cap: a relocation is then never more than that ahead of its share
 * (the first request of a burst goes at once), and relocations that
 * share a link queue little ahead of one another's guests.  Not under
 * relocate-rate or pacing alone: smaller requests cost the guest there
 * (bench/ab-write-latency: 0.85 x the IOPS at depth 16 with 1M
 * requests at relocate-rate=20M).
 */
#define RATE_SLICE (1.0 / 16)

/* In a rate group no more than this many seconds of the cap are in
 * flight (two requests at least): on a full link more would only wait
 * in a queue on the way, holding memory here and delaying every
 * guest's fetches behind it.
 */
#define RATE_WINDOW 0.25

/* Nor more than GROUP_WINDOW bytes, in requests of an eighth of it at
 * most (at least two on each connection; a block larger than that is
 * one request, alone in flight): the memory for its data that a
 * relocation has on a host moving many disks at once, also in the
 * moments it has the whole budget to itself (the first to start, the
 * last to finish).  Its data is most of a relocation's memory: with a
 * quarter second of a 1 Gbit/s budget in flight (32 MiB) the first of
 * 8 relocations of 512 MiB peaked at 35 MiB, at 25 with this.  Enough
 * for the whole of 1 Gbit/s over a 20 ms round trip; over 100 ms a
 * relocation alone in its group gets 0.86 x of it.
 */
#define GROUP_WINDOW (16 * 1024 * 1024)

/* Block status is asked for this much of the source at a time. */
#define MAP_CHUNK (UINT64_C (1) << 30)

static bool coordinator_running;
static pthread_t coordinator_thread;
static pthread_t *worker_threads;
static unsigned nworkers;

/* Should the workers be copying now? */
static bool
copying (void)
{
  return cfg.background && !state_paused () &&
    state_get () == STATE_RELOCATING;
}

/* Wait for a kick, or ms milliseconds (monotonic: a step of the wall
 * clock never stretches it); caller holds lock.
 */
static void
wait_kick (unsigned ms)
{
  cond_wait_until (&kick, &lock, state_now () + ms / 1000.0);
}

/* How long a thread with nothing to do waits before it looks again:
 * ms, or, once the relocation is complete (for good), until it is
 * kicked at the stop: a complete relocation uses no CPU.
 */
static unsigned
idle_ms (unsigned ms)
{
  return state_get () == STATE_COMPLETE ? 3600 * 1000 : ms;
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

  state_lower_priority ();
  while (offset < blk_export_size) {
    pthread_mutex_lock (&lock);
    while (!stopping && !copying ())
      wait_kick (idle_ms (1000));
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

/* The tightest of the operator's rate cap, pacing's and the rate
 * group's share; 0 = none.
 */
static uint64_t
rate_cap (void)
{
  uint64_t caps[] = { state_rate (), pace_cap (), group_cap () }, r = 0;
  size_t i;

  for (i = 0; i < G_N_ELEMENTS (caps); ++i)
    if (caps[i] > 0)
      r = r == 0 ? caps[i] : MIN (r, caps[i]);
  return r;
}

/* The largest power of two not above n, or 1. */
static uint64_t
pow2_floor (uint64_t n)
{
  uint64_t p = 1;

  while (p <= n / 2)
    p *= 2;
  return p;
}

/* The largest background request now, in blocks: no more than the
 * link carries in a quarter of the timeout, and in a rate group
 * RATE_SLICE of the cap and an eighth of GROUP_WINDOW, in a power of
 * two of blocks (the share moves all the time: requests of a few sizes
 * reuse the same buffers).
 */
static uint64_t
request_blocks (uint64_t rate)
{
  uint64_t max = MAX (1, cfg.request_size / blk_size);
  uint64_t fit = upstream_request_limit (blk_size, max * blk_size) / blk_size;

  if (rate > 0 && group_cap () > 0)
    fit = MIN (fit, pow2_floor ((uint64_t) MIN (rate * RATE_SLICE,
                                                GROUP_WINDOW / 8) / blk_size));
  return fit;
}

/* Whether our guest fetches on demand: a fetch ended within
 * FETCHING_SECONDS.  Caller holds lock.
 */
static bool
guest_fetching (void)
{
  return demand_at > 0 && state_now () - demand_at < FETCHING_SECONDS;
}

/* fit blocks, or QUIET_REQUEST if fewer while our guest or, in a rate
 * group, any member's fetches on demand.  Caller holds lock.
 */
static uint64_t
quiet_blocks (uint64_t fit)
{
  if (guest_fetching () || group_guest_fetching ())
    fit = MIN (fit, MAX (1, QUIET_REQUEST / blk_size));
  return fit;
}

uint32_t
bgcopy_request_bytes (void)
{
  LOCK_FOR_SCOPE (&lock);

  return quiet_blocks (request_blocks (rate_cap ())) * blk_size;
}

void
bgcopy_in_flight (uint64_t *now, uint64_t *most)
{
  LOCK_FOR_SCOPE (&lock);

  *now = inflight_bytes;
  *most = most_inflight_bytes;
}

/* How long a worker must wait before it may send a request: it
 * yields to the guest (while the guest does I/O only an eighth of the
 * workers may have a request in flight, and none during a pacing
 * hold), to the rate cap, and to a source that is away.  0 = go now;
 * caller holds lock.
 */
static unsigned
wait_ms_locked (void)
{
  uint64_t rate;
  double t;

  if (!copying ())
    return idle_ms (1000);
  if (inflight >= QUIET_WORKERS (cfg.workers) && state_client_active ())
    return 5;
  if (pace_hold ())
    return 10;
  if (!upstream_connected ())
    return 500;
  t = state_now ();
  rate = rate_cap ();
  rate_debt = rate > 0 ? MAX (0, rate_debt - (t - rate_debt_t) * rate) : 0;
  rate_debt_t = t;
  /* Looked at again at least every 100 ms: a cap raised meanwhile. */
  if (rate_debt > 0)
    return MAX (1, (unsigned) MIN (100.0, rate_debt / rate * 1000));
  return 0;
}

static void *
worker (void *arg)
{
  uint64_t first, n, fit, rate;
  unsigned ms;
  bool claimed;
  int err, r;

  state_lower_priority ();
  pthread_mutex_lock (&lock);
  while (!stopping) {
    ms = wait_ms_locked ();
    if (ms > 0) {
      wait_kick (ms);
      continue;
    }
    /* Claim only now: a claimed block makes the guest wait for it.
     * While the guest does I/O, half of request_blocks: shorter bursts
     * of work for the threads that receive them; while a guest
     * fetches, QUIET_REQUEST at most.
     */
    rate = rate_cap ();
    fit = request_blocks (rate);
    if (rate > 0 && group_cap () > 0 && inflight_bytes > 0 &&
        inflight_bytes + fit * blk_size >
        MIN (MAX (rate * RATE_WINDOW, 2.0 * fit * blk_size), GROUP_WINDOW)) {
      wait_kick (100);          /* kicked as a request ends */
      continue;
    }
    if (state_client_active ())
      fit = MAX (1, fit / 2);
    fit = quiet_blocks (fit);
    claimed = claim_locked (fit, &first, &n);
    if (!claimed) {
      wait_kick (20);           /* the rest is busy, unmapped or present */
      continue;
    }
    if (rate > 0)
      rate_debt += (double) n * blk_size;
    inflight++;
    inflight_bytes += n * blk_size;
    most_inflight_bytes = MAX (most_inflight_bytes, inflight_bytes);
    pthread_mutex_unlock (&lock);

    r = blk_fetch_claimed (first, n, &err);

    pthread_mutex_lock (&lock);
    inflight--;
    inflight_bytes -= n * blk_size;
    pthread_cond_broadcast (&kick);
    if (r == -1 && !stopping)
      wait_kick (1000);         /* the source failed: not the same blocks at once */
  }
  pthread_mutex_unlock (&lock);
  return arg;
}

/* Serialises the transitions out of standby and into complete. */
static pthread_mutex_t transition_lock = PTHREAD_MUTEX_INITIALIZER;

int
bgcopy_start_relocation (const char *why)
{
  LOCK_FOR_SCOPE (&transition_lock);

  if (state_get () != STATE_STANDBY)
    return 0;
  /* Durable before anything is stored. */
  if (blk_persist_flag (BITMAP_FLAG_STARTED) == -1)
    return -1;
  state_set (STATE_RELOCATING);
  nbdkit_debug ("relocate: relocation started (%s)", why);
  bgcopy_kick ();
  return 0;
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

/* Every block is present: make it durable, say so and let the source go. */
static void
complete (void)
{
  LOCK_FOR_SCOPE (&transition_lock);
  int err;

  if (blk_flush (&err) == -1 || blk_persist_flag (BITMAP_FLAG_COMPLETE) == -1)
    return;                     /* the coordinator tries again */
  upstream_detach ();
  state_set (STATE_COMPLETE);
  group_close ();               /* its share goes to the others */
  buf_trim ();
  notice ("%s complete: %" PRIu64 " bytes in %.1f s "
          "(%" PRIu64 " fetched on demand, %" PRIu64 " in background, "
          "%" PRIu64 " skipped as zero, %" PRIu64 " written by clients); "
          "the source is no longer used",
          cfg.file, blk_export_size, state_elapsed (),
          STAT_GET (fetched_demand), STAT_GET (fetched_background),
          STAT_GET (skipped_zero), STAT_GET (written));
}

/* Once only blocks the source rejects are absent, the relocation
 * cannot complete: say which (relocatectl wait exits 4).
 */
static void
report_failed_blocks (void)
{
  uint64_t first[4];
  size_t n, i;
  uint64_t failed = blk_failed_blocks (first, G_N_ELEMENTS (first), &n);
  g_autoptr (GString) why = NULL;

  if (failed == 0 || blk_present_blocks () + failed < blk_nblocks) {
    state_clear_failure (FAILURE_BLOCKS);
    return;
  }
  why = g_string_new (NULL);
  g_string_printf (why, "%" PRIu64 " blocks cannot be read from the source "
                   "(offsets", failed);
  for (i = 0; i < n; ++i)
    g_string_append_printf (why, " %" PRIu64, first[i] * blk_size);
  g_string_append (why, failed > n ? " ...): relocatectl retry" :
                   "): relocatectl retry");
  state_set_failure (FAILURE_BLOCKS, why->str);
}

/* Pace; sync every relocate-sync-interval seconds; complete at the end. */
static void *
coordinator (void *arg)
{
  double last_sync = state_now ();
  int err;

  pthread_mutex_lock (&lock);
  while (!stopping) {
    bool relocating = state_get () == STATE_RELOCATING;
    bool running = copying (), idle = inflight == 0, fetching;

    samples[next_sample].t = state_now ();
    samples[next_sample].present = blk_present_bytes ();
    if (STAT_GET (fetched_demand) != demand_seen) {
      demand_seen = STAT_GET (fetched_demand);
      demand_at = state_now ();
    }
    fetching = guest_fetching ();
    next_sample = (next_sample + 1) % SAMPLES;
    nsamples = MIN (nsamples + 1, SAMPLES);
    pthread_mutex_unlock (&lock);
    pace_tick (relocating, running, idle);
    group_tick (running, fetching, STAT_GET (fetched_demand));
    if (relocating) {
      blk_save_counters ();
      if (blk_present_blocks () == blk_nblocks)
        complete ();
      else {
        report_failed_blocks ();
        if (state_now () - last_sync >= cfg.sync_interval &&
            blk_flush (&err) == 0)
          last_sync = state_now ();
      }
    }
    pthread_mutex_lock (&lock);
    if (!stopping)
      wait_kick (idle_ms (50));
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
bgcopy_start_threads (void)
{
  unsigned i;
  int e;

  cond_init_monotonic (&kick);          /* before any thread waits */
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
  group_close ();
}

void
bgcopy_kick (void)
{
  pthread_mutex_lock (&lock);
  rate_debt = 0;                /* a new rate applies from now */
  pthread_cond_broadcast (&kick);
  pthread_mutex_unlock (&lock);
}
