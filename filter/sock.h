/* nbdkit-relocate: the sockets under a connection to the source.
 *
 * The nbd plugin owns its sockets; the filter finds a connection's as
 * the ones that appear in the process while it opens (opens happen
 * one at a time), so that it can keep them alive, see data arrive on
 * them, and shut down the ones of a connection whose source vanished.
 * A socket is named by descriptor and inode: one the plugin has closed
 * (and whose descriptor was reused) is never touched.
 */

#ifndef RELOCATE_SOCK_H
#define RELOCATE_SOCK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>

#define SOCK_MAX 4

struct sock_set {
  unsigned n;
  int fd[SOCK_MAX];
  ino_t ino[SOCK_MAX];
};

/* The process's sockets now (inodes), for sock_new_since. */
GArray *sock_snapshot (void);

/* The stream sockets (connected or connecting) that are not in before,
 * nor listeners, nor accepted by one of this process's listeners (a
 * client's): the ones an open made.
 */
void sock_new_since (GArray *before, struct sock_set *out);

/* Is the socket with inode ino one of s? */
bool sock_set_has (const struct sock_set *s, ino_t ino);

/* TCP keepalive and user timeout on the TCP ones: a peer that vanished
 * is found within about timeout seconds, even on an idle connection.
 */
void sock_keepalive (const struct sock_set *s, unsigned timeout);

/* Milliseconds since data last arrived on any of the TCP ones, or -1
 * if that cannot be told (no TCP socket).
 */
int64_t sock_quiet_ms (const struct sock_set *s);

/* Shut down both ways each one that is still the same socket: a thread
 * blocked on it gets an error.
 */
void sock_shutdown (const struct sock_set *s);

#endif /* RELOCATE_SOCK_H */
