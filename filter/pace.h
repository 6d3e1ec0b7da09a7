/* nbdkit-relocate: pacing, so the background copy does not make the
 * guest's flushes slow.
 *
 * A flush waits for what the disk has queued, the copy's writes
 * included: the faster the copy writes, the longer the guest's slowest
 * flushes.  How much depends on the disk, so pacing measures it.
 * Every client flush is timed.  While the guest flushes, the copy is
 * held for a moment every few seconds: the flushes then (and while the
 * copy is paused) are the baseline.  After each second of copying that
 * saw enough flushes, the tail of their latency is compared with the
 * baseline's: above relocate-pace times it, the copy's rate is cut to
 * 0.7 of what it was; under it, a cap already set is raised by a
 * tenth.  When the guest stops flushing, the cap goes.
 *
 * Bottom layer beside state.c: depends on params.c and state.c only;
 * blk.c reports flushes, bgcopy.c asks for the hold and the cap and
 * drives the rounds, control.c shows the outcome.  Every function
 * takes pacing's own lock for its own scope and calls no other lock of
 * the filter's.
 */

#ifndef RELOCATE_PACE_H
#define RELOCATE_PACE_H

#include <stdbool.h>
#include <stdint.h>

/* A client flush begins: returns when, for pace_flush_end. */
double pace_flush_begin (void);

/* It ended; ok: it succeeded (only those are timed). */
void pace_flush_end (double started, bool ok);

/* Advance the holds and rounds, and decide; only the coordinator
 * calls it, every pass.  relocating: in STATE_RELOCATING; copying: the
 * background copy runs (not paused); idle: it has no request in
 * flight.
 */
void pace_tick (bool relocating, bool copying, bool idle);

/* Should the background copy start no new request now (a hold)? */
bool pace_hold (void);

/* The background copy's rate cap set by pacing, bytes/s; 0 = none. */
uint64_t pace_cap (void);

/* The flush tail ratio, copying / baseline, of the last round that
 * had enough flushes to compare; 0 when there is none.
 */
double pace_ratio (void);

#endif /* RELOCATE_PACE_H */
