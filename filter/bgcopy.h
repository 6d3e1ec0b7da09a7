/* nbdkit-relocate: the background copy.
 *
 * Worker threads claim runs of absent blocks and fetch them; a
 * coordinator thread makes progress durable every few seconds and
 * completes the relocation when the last block is present.
 */

#ifndef RELOCATE_BGCOPY_H
#define RELOCATE_BGCOPY_H

/* Start the coordinator and the workers (in .after_fork). */
int bgcopy_start (void);

/* Stop every thread (in .cleanup). */
void bgcopy_stop (void);

/* Bytes per second becoming present over the last two seconds. */
double bgcopy_current_rate (void);

/* Wake the threads: the state, pause or rate changed. */
void bgcopy_kick (void);

#endif /* RELOCATE_BGCOPY_H */
