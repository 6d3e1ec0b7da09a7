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
#define ROUND_KEEP 20000      /* flushes kept per round, the first */
#define CUT 0.7               /* a cut leaves this much of the rate */
#define RAISE 0.1             /* a raise adds this much of the cap ... */
#define MIN_STEP (UINT64_C (1) << 20)  /* ... and at least this, bytes/s */
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
static unsigned flushing;          /* client flushes in progress */
static bool relocating_now, running, drained; /* as of the last tick */

static double base[BASE_KEEP];     /* ring of baseline latencies */
static unsigned base_len, base_next;
static double round_lat[ROUND_KEEP]; /* this round's latencies */
static unsigned round_len;
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

/* Caller holds lock. */
static void
new_round (void)
{
  round_len = 0;
  round_seconds = 0;
  round_fetched = STAT_GET (fetched_background);
}

/* The guest is not flushing, the relocation is not running, or pacing
 * is off: no cap, and a hold as soon as the guest flushes again.  The
 * baseline stays (the newest flushes replace it).  Caller holds lock.
 */
static void
reset_locked (void)
{
  if (cap)
    nbdkit_debug ("relocate: pacing: the guest stopped flushing or the "
                  "copy stopped: its cap is lifted");
  cap = 0;
  ratio = 0;
  phase = COPYING;
  next_hold = 0;
  new_round ();
}

/* Cut or raise the cap after a round whose flush tail was r times the
 * baseline's, while the copy moved rate bytes/s.  Caller holds lock.
 */
static void
decide_locked (double r, double rate)
{
  uint64_t was = cap;

  ratio = r;
  if (r > cfg.pace) {
    if (cap == 0 || rate < cap)
      cap = rate;
    cap = MAX (FLOOR, (uint64_t) (cap * CUT));
  }
  else if (cap) {
    /* Never far above what the copy uses, so a cut bites at once. */
    cap += MAX (MIN_STEP, (uint64_t) (cap * RAISE));
    cap = MIN (cap, MAX (FLOOR, (uint64_t) (2 * rate)));
  }
  if (cap != was)
    nbdkit_debug ("relocate: pacing: flushes %.2f x slower copying at "
                  "%.1f MiB/s than held: cap %.1f MiB/s",
                  r, rate / 1048576, cap / 1048576.);
}

double
pace_flush_begin (void)
{
  LOCK_FOR_SCOPE (&lock);

  flushing++;
  return state_now ();
}

void
pace_flush_end (double started, bool ok)
{
  LOCK_FOR_SCOPE (&lock);
  double now = state_now ();

  flushing--;
  last_flush = MAX (last_flush, now);
  if (cfg.pace == 0 || !ok || !relocating_now)
    return;                     /* in standby a flush has little to sync */
  if ((phase == HOLDING && started >= phase_start) || (!running && drained)) {
    base[base_next] = now - started;
    base_next = (base_next + 1) % BASE_KEEP;
    base_len = MIN (base_len + 1, BASE_KEEP);
  }
  else if (phase == COPYING && running && round_len < ROUND_KEEP)
    round_lat[round_len++] = now - started;
}

/* Advance the phases; at the end of a round copy its flushes and the
 * baseline's into r and b (sized ROUND_KEEP, BASE_KEEP) for
 * pace_tick to compare, and return how many of each.  Caller holds
 * lock.
 */
static void
advance_locked (bool relocating, bool copying, bool idle, double *r,
                size_t *nr, double *b, size_t *nb, double *rate)
{
  double now = state_now ();
  double dt = last_tick > 0 ? now - last_tick : 0;

  last_tick = now;
  relocating_now = relocating;
  running = copying;
  drained = idle;
  if (cfg.pace == 0 || !relocating ||
      (flushing == 0 && now - last_flush > IDLE_SECONDS)) {
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
    if ((round_seconds >= ROUND_SECONDS && round_len >= MIN_FLUSHES) ||
        round_seconds >= ROUND_SECONDS_MAX) {
      if (round_len >= MIN_FLUSHES && base_len >= MIN_FLUSHES) {
        *nr = round_len;
        memcpy (r, round_lat, round_len * sizeof *r);
        *nb = base_len;
        memcpy (b, base, base_len * sizeof *b);
        *rate = (STAT_GET (fetched_background) - round_fetched) / round_seconds;
      }
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

void
pace_tick (bool relocating, bool copying, bool idle)
{
  /* Only the coordinator calls this: the copies are its own, and no
   * reset comes between the two locked parts.
   */
  static double r[ROUND_KEEP], b[BASE_KEEP];
  size_t nr = 0, nb = 0;
  double rate = 0, q, base_tail;

  {
    LOCK_FOR_SCOPE (&lock);
    advance_locked (relocating, copying, idle, r, &nr, b, &nb, &rate);
  }
  if (nr == 0)
    return;
  /* Sorted without the lock: client flushes must not wait for it. */
  q = nr >= TAIL_FLUSHES && nb >= TAIL_FLUSHES ? 0.99 : 0.9;
  base_tail = quantile (b, nb, q);
  if (base_tail > 0) {
    double tail = quantile (r, nr, q);
    LOCK_FOR_SCOPE (&lock);

    decide_locked (tail / base_tail, rate);
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
