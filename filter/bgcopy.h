/* nbdkit-relocate: the background copy, and the relocation's progress
 * from standby to complete.
 *
 * Worker threads claim runs of absent blocks and fetch them; a mapper
 * asks the source which ranges are zero; a coordinator makes progress
 * durable every few seconds and completes the relocation when the last
 * block is present.
 *
 * Middle layer: over blk.c, blkfile.c (the geometry), upstream.c,
 * bitmap.c, state.c and params.c; called by the callbacks and control.
 */

#ifndef RELOCATE_BGCOPY_H
#define RELOCATE_BGCOPY_H

#include <stdint.h>

/* Start the coordinator, the mapper and the workers (in .after_fork). */
int bgcopy_start_threads (void);

/* Stop every thread (in .cleanup). */
void bgcopy_stop (void);

/* Bytes per second becoming present over the last two seconds. */
double bgcopy_current_rate (void);

/* The largest background request now, bytes: what the link carries
 * in a quarter of relocate-timeout, and in a rate group a sixteenth of
 * a second of the cap in force and 2M at most (a block, if larger).
 */
uint32_t bgcopy_request_bytes (void);

/* The background copy's bytes in flight now, and the most at once
 * since nbdkit started.
 */
void bgcopy_in_flight (uint64_t *now, uint64_t *most);

/* Wake the threads: the state, pause or rate changed. */
void bgcopy_kick (void);

/* Leave standby (the first write, relocatectl start, or
 * relocate-start=immediate): persist that the relocation started, then
 * start storing and copying.  0 if it has started already.
 */
int bgcopy_start_relocation (const char *why);

#endif /* RELOCATE_BGCOPY_H */
