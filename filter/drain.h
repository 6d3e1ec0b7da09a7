/* nbdkit-relocate: a stop that clients do not notice.
 *
 * nbdkit answers every request it reads after SIGTERM with ESHUTDOWN,
 * which a guest sees as an I/O error, and it waits for idle clients
 * before it exits.  So the filter takes SIGTERM and SIGINT itself: it
 * stops nbdkit reading requests (shutdown (SHUT_RD) of each client's
 * socket) and lets the requests in flight finish and be answered.
 * Those still running after DRAIN_SECONDS (a source that does not
 * answer) are given up: their connections are shut down entirely, so
 * that no reply, not even an error, can reach the client, and the
 * give_up function passed to drain_start makes them return.  Then
 * nbdkit is asked to exit.  A client that reconnects resends whatever
 * got no reply; nothing it was told succeeded is lost.
 *
 * With relocate-standby-timeout, the same stop happens by itself when
 * the relocation is still in standby and no client has been connected
 * for that long (a migration that failed before its QEMU came).
 *
 * Bottom layer: uses params.c and state.c.
 */

#ifndef RELOCATE_DRAIN_H
#define RELOCATE_DRAIN_H

#include <stdbool.h>

#define DRAIN_SECONDS 1

/* Take over SIGTERM and SIGINT (in .after_fork). */
int drain_start (void (*give_up) (void));

/* Stop the drain thread (in .cleanup). */
void drain_stop (void);

/* A client connection opens (false: refuse it, we are stopping). */
bool drain_client_open (void);
void drain_client_close (void);

#endif /* RELOCATE_DRAIN_H */
