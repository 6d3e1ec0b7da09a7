/* nbdkit-relocate: a stop that clients do not notice.
 *
 * nbdkit 1.32 answers every request it reads after SIGTERM with
 * ESHUTDOWN, which a guest sees as an I/O error; and once one of its
 * threads sees a client's input end, another that has just read a
 * request answers it with ESHUTDOWN too.  Shutting the client's socket
 * does not do either: a reply that then fails to send makes nbdkit
 * 1.32.4/1.32.5 abort ("raw_send_socket: Assertion `sock >= 0'") when
 * another of the connection's threads sends next (fixed in 1.33.10).
 *
 * So the filter takes SIGTERM and SIGINT itself and puts a sink in
 * place of every client's socket: the descriptor number nbdkit uses
 * becomes one end of a socket pair whose other end the drain reads and
 * discards.  nbdkit then reads end-of-file (after the one request a
 * thread may be reading from the client at that moment), and every
 * reply, error or not, goes into the sink: nothing reaches the client,
 * and nothing fails.  The requests already in the filter finish (a
 * write lands in the local file), unanswered; a client that
 * reconnects, like QEMU with reconnect-delay, resends them, which is
 * harmless.  New connections are refused.  Once the clients' requests
 * are done, or after DRAIN_SECONDS, their real sockets are closed (the
 * client sees end-of-file), requests still waiting for the source are
 * given up (the give_up function passed to drain_start) and nbdkit is
 * asked to exit.
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

/* Give SIGTERM and SIGINT back to nbdkit; stop the drain thread (in
 * .cleanup). */
void drain_stop (void);

/* A client connection opens (false: refuse it, we are stopping). */
bool drain_client_open (void);
void drain_client_close (void);

#endif /* RELOCATE_DRAIN_H */
