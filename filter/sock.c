/* nbdkit-relocate: the sockets under a connection to the source. */

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "sock.h"

/* A socket descriptor of the process, and its inode. */
struct fdino {
  int fd;
  ino_t ino;
};

/* The inode of the socket fd is, or 0 if it is not a socket.  From
 * its /proc link ("socket:[INODE]"): never touches a file, which on a
 * hung network mount could block.
 */
static ino_t
socket_inode (int fd)
{
  char path[64], link[64];
  unsigned long long ino;
  ssize_t len;

  snprintf (path, sizeof path, "/proc/self/fd/%d", fd);
  len = readlink (path, link, sizeof link - 1);
  if (len <= 0)
    return 0;
  link[len] = '\0';
  return sscanf (link, "socket:[%llu]", &ino) == 1 ? (ino_t) ino : 0;
}

/* Every socket descriptor of the process now. */
static GArray *
list_sockets (void)
{
  GArray *a = g_array_new (FALSE, FALSE, sizeof (struct fdino));
  DIR *d = opendir ("/proc/self/fd");
  struct dirent *e;

  if (d == NULL)
    return a;
  while ((e = readdir (d)) != NULL) {
    struct fdino x;
    char *end;
    long fd = strtol (e->d_name, &end, 10);

    if (end == e->d_name || *end || fd == dirfd (d) ||
        (x.ino = socket_inode (fd)) == 0)
      continue;
    x.fd = fd;
    g_array_append_val (a, x);
  }
  closedir (d);
  return a;
}

GArray *
sock_snapshot (void)
{
  return list_sockets ();
}

static bool
has_inode (GArray *a, ino_t ino)
{
  guint i;

  for (i = 0; a && i < a->len; ++i)
    if (g_array_index (a, struct fdino, i).ino == ino)
      return true;
  return false;
}

static bool
is_listener (int fd)
{
  int v = 0;
  socklen_t len = sizeof v;

  return getsockopt (fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v;
}

/* Was fd accepted by listener l?  An accepted socket has its
 * listener's port (TCP) or path (unix).
 */
static bool
accepted_by (int fd, int l)
{
  struct sockaddr_storage a, b;
  socklen_t la = sizeof a, lb = sizeof b;

  if (getsockname (fd, (struct sockaddr *) &a, &la) == -1 ||
      getsockname (l, (struct sockaddr *) &b, &lb) == -1 ||
      a.ss_family != b.ss_family)
    return false;
  switch (a.ss_family) {
  case AF_INET:
    return ((struct sockaddr_in *) &a)->sin_port ==
      ((struct sockaddr_in *) &b)->sin_port;
  case AF_INET6:
    return ((struct sockaddr_in6 *) &a)->sin6_port ==
      ((struct sockaddr_in6 *) &b)->sin6_port;
  case AF_UNIX:
    return la == lb && la > sizeof (sa_family_t) && memcmp (&a, &b, la) == 0;
  default:
    return false;
  }
}

void
sock_new_since (GArray *before, struct sock_set *out)
{
  g_autoptr (GArray) now = list_sockets ();
  guint i, j;

  out->n = 0;
  for (i = 0; i < now->len && out->n < SOCK_MAX; ++i) {
    const struct fdino *x = &g_array_index (now, struct fdino, i);
    int type = 0;
    socklen_t len = sizeof type;
    bool client = false;

    /* A stream socket, connected or still connecting (a SYN that gets
     * no answer: shutting it down ends the connect).
     */
    if (has_inode (before, x->ino) || is_listener (x->fd) ||
        getsockopt (x->fd, SOL_SOCKET, SO_TYPE, &type, &len) == -1 ||
        type != SOCK_STREAM)
      continue;
    for (j = 0; j < now->len && !client; ++j) {
      int l = g_array_index (now, struct fdino, j).fd;
      client = is_listener (l) && accepted_by (x->fd, l);
    }
    if (!client) {
      out->fd[out->n] = x->fd;
      out->ino[out->n++] = x->ino;
    }
  }
}

bool
sock_set_has (const struct sock_set *s, ino_t ino)
{
  unsigned i;

  for (i = 0; i < s->n; ++i)
    if (s->ino[i] == ino)
      return true;
  return false;
}

/* Is the i-th socket of s still the one it was? */
static bool
same (const struct sock_set *s, unsigned i)
{
  return socket_inode (s->fd[i]) == s->ino[i];
}

static bool
is_tcp (int fd)
{
  int domain = 0, proto = 0;
  socklen_t l1 = sizeof domain, l2 = sizeof proto;

  return getsockopt (fd, SOL_SOCKET, SO_DOMAIN, &domain, &l1) == 0 &&
    getsockopt (fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l2) == 0 &&
    (domain == AF_INET || domain == AF_INET6) && proto == IPPROTO_TCP;
}

void
sock_keepalive (const struct sock_set *s, unsigned timeout)
{
  /* Probes from timeout/2 of silence, 3 of them timeout/6 apart (the
   * kernel takes at most 32767 s); data sent and not acknowledged for
   * timeout ends the connection too.
   */
  int on = 1, cnt = 3;
  int idle = MIN (32767, MAX (1, timeout / 2));
  int intvl = MIN (32767, MAX (1, timeout / 6));
  unsigned user = timeout * 1000;
  unsigned i;

  for (i = 0; i < s->n; ++i) {
    if (!same (s, i) || !is_tcp (s->fd[i]))
      continue;
    if (setsockopt (s->fd[i], SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) == -1 ||
        setsockopt (s->fd[i], IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) == -1 ||
        setsockopt (s->fd[i], IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl) == -1 ||
        setsockopt (s->fd[i], IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt) == -1)
      nbdkit_debug ("relocate: keepalive on the source's socket: %m");
    if (setsockopt (s->fd[i], IPPROTO_TCP, TCP_USER_TIMEOUT, &user,
                    sizeof user) == -1)
      nbdkit_debug ("relocate: user timeout on the source's socket: %m");
  }
}

int64_t
sock_quiet_ms (const struct sock_set *s)
{
  int64_t quiet = -1;
  unsigned i;

  for (i = 0; i < s->n; ++i) {
    struct tcp_info ti;
    socklen_t len = sizeof ti;

    if (same (s, i) && is_tcp (s->fd[i]) &&
        getsockopt (s->fd[i], IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
        (quiet == -1 || ti.tcpi_last_data_recv < quiet))
      quiet = ti.tcpi_last_data_recv;
  }
  return quiet;
}

void
sock_shutdown (const struct sock_set *s)
{
  unsigned i;

  for (i = 0; i < s->n; ++i)
    if (same (s, i) && shutdown (s->fd[i], SHUT_RDWR) == -1 && errno != ENOTCONN)
      nbdkit_debug ("relocate: shutdown of the source's socket: %m");
}
