/* nbdkit-relocate: one bandwidth budget for the relocations of a host.
 *
 * The relocations started with the same relocate-rate-group=FILE share
 * relocate-rate-group-limit bytes per second.  FILE holds a slot for
 * each member: its pid, when it last looked in (monotonic clock, the
 * same for every process of the host) and what it fetches on demand
 * for its guest.  Every coordinator pass each member updates its slot
 * under flock and takes as its background cap an equal share of what
 * the guests' fetches leave of the limit: the guests' fetches are
 * never held back and go before any member's background copy.  While
 * any member's guest fetches, the copies together take only part of
 * the limit and send smaller requests, so that no queue of theirs
 * builds on the link ahead of the guest's fetches.  The shares are
 * divided again as members start, pause, finish or die (a slot whose
 * process is gone, or that has not looked in for two seconds, no
 * longer counts).
 *
 * Bottom layer beside pace.c: depends on params.c and state.c only;
 * bgcopy.c drives it and asks for the cap, control.c shows it.  Every
 * function takes the group's own lock for its own scope, never while
 * the file is locked and another member could hold it.
 */

#ifndef RELOCATE_GROUP_H
#define RELOCATE_GROUP_H

#include <stdbool.h>
#include <stdint.h>

/* Open relocate-rate-group's file and take a slot (nothing without
 * the parameter): 0, or -1 after nbdkit_error naming the file.
 */
int group_open (void);

/* Give the slot back and close the file. */
void group_close (void);

/* A coordinator pass: copying says whether the background copy runs,
 * fetching whether our guest fetches on demand (lately), demand_bytes
 * is the total fetched on demand so far.
 */
void group_tick (bool copying, bool fetching, uint64_t demand_bytes);

/* This relocation's share of the budget, bytes/s; 0 = no group. */
uint64_t group_cap (void);

/* Has a member's guest fetched on demand within the last second? */
bool group_guest_fetching (void);

/* For status: members copying now, and the guests' fetches of all
 * members, bytes/s.  Both 0 without a group.
 */
void group_status (unsigned *copying, uint64_t *demand);

#endif /* RELOCATE_GROUP_H */
