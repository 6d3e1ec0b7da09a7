/* nbdkit-relocate: pacing, so the background copy does not make the
 * guest's flushes slow.
 */

#include <config.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "lock.h"
#include "params.h"
#include "state.h"
#include "pace.h"

#define IDLE_SECONDS 1.0      /* no flush for this long: the guest does not flush */
#define ROUND_SECONDS 1.0     /* copying time per decision, at least */
#define ROUND_SECONDS_MAX 10.0 /* a round with fewer flushes ends undecided */
#define HOLD_EVERY 5.0        /* seconds from one hold to the next */
#define HOLD_SECONDS 0.25     /* baseline time per hold, once drained */
#define DRAIN_MAX 2.0         /* a hold that cannot drain is given up */
#define MIN_FLUSHES 20        /* fewer in a round or baseline: no decision */
#define TAIL_FLUSHES 200      /* with this many on both sides p99, else p90 */
#define BASE_KEEP 2000        /* baseline flushes kept, the newest */
#define ROUND_KEEP 100000     /* flushes kept per round, the first */
#define CUT 0.7               /* multiplicative decrease */
#define RAISE 0.1             /* additive increase, a tenth of the cap */
#define MIN_STEP (UINT64_C (1) << 20)  /* bytes/s, at least */
#define FLOOR (UINT64_C (4) << 20)     /* bytes/s: the copy always moves */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* COPYING: the copy runs (within the cap) and its round collects
 * flushes; DRAINING: held, waiting for its requests in flight;
 * HOLDING: held and drained, the baseline collects flushes.
 */
static enum { COPYING, DRAINING, HOLDING } phase;
static double phase_start;         /* when DRAINING or HOLDING began */
static double next_hold;           /* 0: at once */
static double last_tick, last_flush = -1e9;
static bool running, drained;      /* as of the last tick */

static double base[BASE_KEEP];     /* ring of baseline latencies */
static unsigned base_len, base_next;
static GArray *round_lat;          /* this round's latencies */
static double round_seconds;       /* copying and draining time in this round */
static uint64_t round_fetched;     /* fetched_background when it began */

static uint64_t cap;
static double ratio;

static int
compare_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;

  return x < y ? -1 : x > y;
}

/* The q quantile of n latencies; sorts v. */
static double
quantile (double *v, size_t n, double q)
{
  qsort (v, n, sizeof *v, compare_double);
  return v[MIN (n - 1, (size_t) (n * q))];
}

static void
new_round (void)
{
  if (round_lat == NULL)
    round_lat = g_array_new (FALSE, FALSE, sizeof (double));
  g_array_set_size (round_lat, 0);
  round_seconds = 0;
  round_fetched = STAT_GET (fetched_background);
}

/* The guest is not flushing, or pacing is off: no cap, and a fresh
 * baseline when it flushes again.  Caller holds lock.
 */
static void
reset_locked (void)
{
  if (cap)
    nbdkit_debug ("relocate: pacing: the guest stopped flushing, "
                  "the copy's cap is lifted");
  cap = 0;
  ratio = 0;
  phase = COPYING;
  next_hold = 0;
  base_len = base_next = 0;
  new_round ();
}

/* Compare the round's flush tail with the baseline's; cut or raise
 * the cap.  Caller holds lock.
 */
static void
decide_locked (void)
{
  double rate = round_seconds > 0
    ? (STAT_GET (fetched_background) - round_fetched) / round_seconds : 0;
  double b[BASE_KEEP], q, copying_tail, base_tail;
  size_t n = round_lat->len;
  uint64_t was = cap;

  if (n < MIN_FLUSHES || base_len < MIN_FLUSHES)
    return;
  q = n >= TAIL_FLUSHES && base_len >= TAIL_FLUSHES ? 0.99 : 0.9;
  memcpy (b, base, base_len * sizeof *b);
  base_tail = quantile (b, base_len, q);
  copying_tail = quantile ((double *) (void *) round_lat->data, n, q);
  if (base_tail <= 0)
    return;
  ratio = copying_tail / base_tail;
  if (ratio > cfg.pace) {
    if (cap == 0 || rate < cap)
      cap = rate;
    cap = MAX (FLOOR, (uint64_t) (cap * CUT));
  }
  else if (cap)
    cap += MAX (MIN_STEP, (uint64_t) (cap * RAISE));
  if (cap != was)
    nbdkit_debug ("relocate: pacing: flush p%.0f %.0f us copying at "
                  "%.1f MiB/s, %.0f us held (%.2f x): cap %.1f MiB/s",
                  q * 100, copying_tail * 1e6, rate / 1048576,
                  base_tail * 1e6, ratio, cap / 1048576.);
}

void
pace_flush (double started, double seconds)
{
  LOCK_FOR_SCOPE (&lock);

  if (cfg.pace == 0)
    return;
  last_flush = started + seconds;
  if ((phase == HOLDING && started >= phase_start) || (!running && drained)) {
    base[base_next] = seconds;
    base_next = (base_next + 1) % BASE_KEEP;
    base_len = MIN (base_len + 1, BASE_KEEP);
  }
  else if (phase == COPYING && running && round_lat &&
           round_lat->len < ROUND_KEEP)
    g_array_append_val (round_lat, seconds);
}

void
pace_tick (bool copying, bool idle)
{
  LOCK_FOR_SCOPE (&lock);
  double now = state_now ();
  double dt = last_tick > 0 ? now - last_tick : 0;

  last_tick = now;
  running = copying;
  drained = idle;
  if (cfg.pace == 0 || now - last_flush > IDLE_SECONDS) {
    reset_locked ();
    return;
  }
  switch (phase) {
  case COPYING:
    if (!copying)
      break;                    /* paused: the round waits */
    if (now >= next_hold) {
      phase = DRAINING;
      phase_start = now;
      break;
    }
    round_seconds += dt;
    if ((round_seconds >= ROUND_SECONDS && round_lat->len >= MIN_FLUSHES) ||
        round_seconds >= ROUND_SECONDS_MAX) {
      decide_locked ();
      new_round ();
    }
    break;
  case DRAINING:
    round_seconds += dt;        /* the requests in flight still arrive */
    if (idle) {
      phase = HOLDING;
      phase_start = now;
    }
    else if (now - phase_start > DRAIN_MAX) {
      phase = COPYING;          /* the copy is stuck: no baseline this time */
      next_hold = now + HOLD_EVERY;
    }
    break;
  case HOLDING:
    if (now - phase_start >= HOLD_SECONDS) {
      phase = COPYING;
      next_hold = now + HOLD_EVERY;
    }
    break;
  }
}

bool
pace_hold (void)
{
  LOCK_FOR_SCOPE (&lock);

  return phase != COPYING;
}

uint64_t
pace_cap (void)
{
  LOCK_FOR_SCOPE (&lock);

  return cap;
}

double
pace_ratio (void)
{
  LOCK_FOR_SCOPE (&lock);

  return ratio;
}
