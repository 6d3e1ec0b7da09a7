/* nbdkit-relocate: a stop that clients do not notice.
 *
 * nbdkit answers every request it reads after SIGTERM with ESHUTDOWN,
 * which a guest sees as an I/O error, and it waits for idle clients
 * before it exits.  So the filter takes SIGTERM and SIGINT itself: it
 * stops nbdkit reading requests (shutdown (SHUT_RD) of each client's
 * socket), lets the requests in flight finish and be answered, waits
 * until every client has gone (at most relocate-timeout + 1 s), and
 * only then asks nbdkit to exit.  A client that reconnects resends
 * whatever got no reply; nothing it was told succeeded is lost.
 *
 * Bottom layer: uses params.c only.
 */

#ifndef RELOCATE_DRAIN_H
#define RELOCATE_DRAIN_H

#include <stdbool.h>

/* Take over SIGTERM and SIGINT (in .after_fork). */
int drain_start (void);

/* Stop the drain thread (in .cleanup). */
void drain_stop (void);

/* A client connection opens (false: refuse it, we are stopping). */
bool drain_client_open (void);
void drain_client_close (void);

#endif /* RELOCATE_DRAIN_H */
