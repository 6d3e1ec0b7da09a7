/* nbdkit-relocate: a stop that clients do not notice. */

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "drain.h"
#include "lock.h"
#include "params.h"
#include "state.h"

static int pipefd[2] = { -1, -1 };   /* the signal handler writes 'T' */
static pthread_t thread;
static bool running;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned clients;
static double last_left;             /* when the last client left */
static bool draining;
static void (*give_up_fn) (void);
static struct sigaction old_term, old_int;   /* nbdkit's own handlers */
static bool handlers_set;

/* A client being drained: its real socket (our duplicate of it), and
 * our end of the sink that stands in for it in nbdkit.
 */
struct sink { int real; int ours; };

static void
on_signal (int sig)
{
  int saved = errno;

  if (write (pipefd[1], "T", 1)) {}
  errno = saved;
}

/* Are a and b the same listening address (unix path, or TCP port)? */
static bool
same_address (const struct sockaddr_storage *a, socklen_t alen,
              const struct sockaddr_storage *b, socklen_t blen)
{
  if (a->ss_family != b->ss_family)
    return false;
  switch (a->ss_family) {
  case AF_UNIX:
    return alen == blen && memcmp (a, b, alen) == 0 &&
      alen > offsetof (struct sockaddr_un, sun_path) &&
      ((const struct sockaddr_un *) a)->sun_path[0] != '\0';
  case AF_INET:
    return ((const struct sockaddr_in *) a)->sin_port ==
      ((const struct sockaddr_in *) b)->sin_port;
  case AF_INET6:
    return ((const struct sockaddr_in6 *) a)->sin6_port ==
      ((const struct sockaddr_in6 *) b)->sin6_port;
  default:
    return false;
  }
}

struct address { struct sockaddr_storage ss; socklen_t len; };

/* Every socket fd of this process, with its local address; listening
 * or not.
 */
static void
for_each_socket (void (*fn) (int fd, bool listening, struct address *a,
                             void *opaque),
                 void *opaque)
{
  DIR *d = opendir ("/proc/self/fd");
  struct dirent *e;

  if (d == NULL)
    return;
  while ((e = readdir (d)) != NULL) {
    struct address a = { .len = sizeof a.ss };
    int fd = atoi (e->d_name), listening = 0;
    socklen_t len = sizeof listening;
    struct stat st;

    if (e->d_name[0] == '.' || fd == dirfd (d) ||
        fstat (fd, &st) == -1 || !S_ISSOCK (st.st_mode) ||
        getsockopt (fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == -1 ||
        getsockname (fd, (struct sockaddr *) &a.ss, &a.len) == -1)
      continue;
    fn (fd, listening, &a, opaque);
  }
  closedir (d);
}

/* Collect nbdkit's listening sockets (not the control socket). */
static void
collect_listener (int fd, bool listening, struct address *a, void *opaque)
{
  GArray *listeners = opaque;
  const struct sockaddr_un *un = (const struct sockaddr_un *) &a->ss;

  if (!listening)
    return;
  if (a->ss.ss_family == AF_UNIX && cfg.control &&
      strcmp (un->sun_path, cfg.control) == 0)
    return;
  g_array_append_val (listeners, *a);
}

struct sinking { GArray *listeners; GArray *sinks; };

/* Put a sink in place of a connection accepted on one of the
 * listeners (or, failing that, shut it down).
 */
static void
sink_client (int fd, bool listening, struct address *a, void *opaque)
{
  struct sinking *s = opaque;
  struct sink k;
  int sv[2];
  guint i;

  if (listening)
    return;
  for (i = 0; i < s->listeners->len; ++i) {
    struct address *l = &g_array_index (s->listeners, struct address, i);
    if (same_address (&l->ss, l->len, &a->ss, a->len))
      break;
  }
  if (i == s->listeners->len)
    return;
  k.real = fcntl (fd, F_DUPFD_CLOEXEC, 0);
  if (k.real == -1 ||
      socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
    nbdkit_debug ("relocate: stopping: no sink for a client (%m): "
                  "shutting its socket");
    if (k.real >= 0)
      close (k.real);
    shutdown (fd, SHUT_RDWR);
    return;
  }
  shutdown (sv[1], SHUT_WR);          /* nbdkit reads end-of-file */
  fcntl (sv[1], F_SETFL, O_NONBLOCK);
  if (dup3 (sv[0], fd, O_CLOEXEC) == -1) {
    nbdkit_debug ("relocate: stopping: no sink for a client (dup3: %m): "
                  "shutting its socket");
    close (sv[0]);
    close (sv[1]);
    close (k.real);
    shutdown (fd, SHUT_RDWR);
    return;
  }
  close (sv[0]);
  k.ours = sv[1];
  g_array_append_val (s->sinks, k);
}

static unsigned
client_count (void)
{
  LOCK_FOR_SCOPE (&lock);
  return clients;
}

/* Read and discard what nbdkit sent into the sinks, waiting up to ms
 * for it; close a sink that nbdkit has closed.  True while one is open.
 */
static bool
discard (GArray *sinks, int ms)
{
  g_autoptr (GArray) p = g_array_new (false, true, sizeof (struct pollfd));
  char buf[65536];
  guint i;

  for (i = 0; i < sinks->len; ++i) {
    struct pollfd q = { .fd = g_array_index (sinks, struct sink, i).ours,
                        .events = POLLIN };
    if (q.fd >= 0)
      g_array_append_val (p, q);
  }
  if (p->len == 0)
    return false;
  if (poll ((struct pollfd *) p->data, p->len, ms) <= 0)
    return true;
  for (i = 0; i < sinks->len; ++i) {
    struct sink *k = &g_array_index (sinks, struct sink, i);
    ssize_t r;

    if (k->ours < 0)
      continue;
    while ((r = read (k->ours, buf, sizeof buf)) > 0)
      ;
    if (r == 0 || (r == -1 && errno != EAGAIN && errno != EINTR)) {
      close (k->ours);
      k->ours = -1;
    }
  }
  return true;
}

/* Close the clients' real sockets: they see end-of-file (a thread of
 * nbdkit still reading from or sending to one, if the client stalls,
 * fails).
 */
static void
close_real (GArray *sinks)
{
  guint i;

  for (i = 0; i < sinks->len; ++i) {
    struct sink *k = &g_array_index (sinks, struct sink, i);
    if (k->real >= 0) {
      shutdown (k->real, SHUT_RDWR);
      close (k->real);
      k->real = -1;
    }
  }
}

/* Has drain_stop asked the drain thread to end? */
static bool
stop_asked (void)
{
  char c;

  return read (pipefd[0], &c, 1) == 1 && c == 'Q';
}

/* Drain the clients, then let nbdkit exit. */
static void
drain (void)
{
  g_autoptr (GArray) listeners = g_array_new (false, false,
                                              sizeof (struct address));
  g_autoptr (GArray) sinks = g_array_new (false, false, sizeof (struct sink));
  struct sinking s = { listeners, sinks };
  double deadline = state_now () + DRAIN_SECONDS;
  guint i;

  {
    LOCK_FOR_SCOPE (&lock);
    draining = true;
  }
  for_each_socket (collect_listener, listeners);
  if (listeners->len > 0) {
    nbdkit_debug ("relocate: stopping: %u clients; their requests in "
                  "flight finish unanswered", client_count ());
    for_each_socket (sink_client, &s);
  }
  while (client_count () > 0 && state_now () < deadline)
    discard (sinks, 50);
  close_real (sinks);
  if (give_up_fn)
    give_up_fn ();
  nbdkit_shutdown ();
  /* nbdkit waits for its connections, whose last replies may still go
   * into the sinks.
   */
  while (discard (sinks, 100) && !stop_asked ())
    ;
  for (i = 0; i < sinks->len; ++i)
    if (g_array_index (sinks, struct sink, i).ours >= 0)
      close (g_array_index (sinks, struct sink, i).ours);
}

/* relocate-standby-timeout: still in standby with no client for that
 * long (its QEMU never came)?
 */
static bool
standby_expired (void)
{
  LOCK_FOR_SCOPE (&lock);

  return cfg.standby_timeout > 0 && clients == 0 &&
    state_now () - last_left >= cfg.standby_timeout &&
    state_get () == STATE_STANDBY;
}

static void *
drain_thread (void *arg)
{
  struct pollfd p = { .fd = pipefd[0], .events = POLLIN };
  char c = 0;

  for (;;) {
    int r = poll (&p, 1, 1000);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == 0 && standby_expired ()) {
      nbdkit_debug ("relocate: no client in standby for %u s "
                    "(relocate-standby-timeout): stopping", cfg.standby_timeout);
      fprintf (stderr, "nbdkit: relocate: no client in standby for %u s "
               "(relocate-standby-timeout): stopping\n", cfg.standby_timeout);
      c = 'T';
      break;
    }
    if (r == 1 && read (pipefd[0], &c, 1) == 1)
      break;
  }
  if (c == 'T')
    drain ();
  return arg;
}

int
drain_start (void (*give_up) (void))
{
  struct sigaction sa = { .sa_handler = on_signal };
  int e;

  if (pipe2 (pipefd, O_CLOEXEC | O_NONBLOCK) == -1) {
    nbdkit_error ("relocate: pipe: %m");
    return -1;
  }
  e = pthread_create (&thread, NULL, drain_thread, NULL);
  if (e) {
    errno = e;
    nbdkit_error ("relocate: pthread_create: %m");
    return -1;
  }
  running = true;
  give_up_fn = give_up;
  last_left = state_now ();
  sigemptyset (&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction (SIGTERM, &sa, &old_term) == -1 ||
      sigaction (SIGINT, &sa, &old_int) == -1) {
    nbdkit_error ("relocate: sigaction: %m");
    return -1;
  }
  handlers_set = true;
  return 0;
}

void
drain_stop (void)
{
  /* Give SIGTERM and SIGINT back to nbdkit before this module can be
   * unloaded: a signal that came after that would otherwise jump into
   * unmapped code (or, with the module kept, be written to a pipe that
   * nobody reads and be lost).
   */
  if (handlers_set) {
    sigaction (SIGTERM, &old_term, NULL);
    sigaction (SIGINT, &old_int, NULL);
    handlers_set = false;
  }
  if (running) {
    if (write (pipefd[1], "Q", 1)) {}
    pthread_join (thread, NULL);
    running = false;
  }
}

bool
drain_client_open (void)
{
  LOCK_FOR_SCOPE (&lock);

  if (draining)
    return false;
  clients++;
  return true;
}

void
drain_client_close (void)
{
  LOCK_FOR_SCOPE (&lock);

  if (--clients == 0)
    last_left = state_now ();
}
