/* nbdkit-relocate: the connections to the source. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "buf.h"
#include "params.h"
#include "sock.h"
#include "state.h"
#include "upstream.h"
#include "lock.h"

#define MAX_REQUEST (32 * 1024 * 1024)
#define MAX_BACKOFF 4.0          /* seconds between connection attempts */
#define MAX_ABANDONED 8          /* connections beyond relocate-connections */
#define REJECT_TRIES 3           /* a rejected request is tried this often */
#define CHECK_SECONDS 0.2        /* how often the supervisor looks */

/* A connection: one context on the nbd plugin and its threads. */
enum conn_state {
  CONN_OPENING,                  /* an opener thread is connecting */
  CONN_UP,                       /* its threads take requests */
  CONN_BROKEN,                   /* failed: closed once its requests end */
  CONN_STUCK,                    /* abandoned: no reply and no data in time */
};

struct conn {
  enum conn_state state;
  nbdkit_next *next;             /* once opened */
  double since;                  /* when it started opening */
  int64_t size;                  /* the source's size it saw */
  unsigned threads;              /* its executor threads still running */
  GQueue active;                 /* its requests being carried out */
  uint64_t good_offset;          /* a read there last succeeded */
  GArray *before;                /* the process's sockets before it opened */
  struct sock_set socks;         /* its own (sock.h) */
  double stuck_since;            /* when it was abandoned */
  bool cut;                      /* its sockets are shut down both ways */
  bool lane;                     /* carries only clients' requests (set as it starts opening) */
  bool closing;                  /* free_conn is closing its context */
  double closing_since;
};

/* A request, owned by its caller and by the connection that carries it
 * out: whichever lets go last frees it.
 */
enum op { OP_PREAD, OP_EXTENTS };

struct request {
  enum op op;
  uint64_t offset;               /* as sent: aligned to the source */
  uint32_t count;
  void *buf;                     /* OP_PREAD: count bytes (buf_get) */
  struct nbdkit_extents *extents; /* OP_EXTENTS */
  struct conn *conn;             /* once started */
  double started;
  bool urgent;                   /* a client's: it goes first */
  bool done;
  int r, err;
  unsigned refs;
};

/* lock covers everything below.  Executors wait on work (the lane's
 * on urgent_work), signalled for each queued request; everyone else
 * waits on changed, broadcast when a request ends.  All are broadcast
 * when a connection changes state or we stop.
 *
 * The guest's requests never queue behind the background copy's on
 * the wire: with two connections or more, one is the guest's lane and
 * carries clients' requests only, and while it is up the others carry
 * the background copy's only.
 */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t urgent_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER; /* made monotonic */
static GQueue urgent_q = G_QUEUE_INIT;   /* clients' requests not yet started */
static GQueue bulk_q = G_QUEUE_INIT;     /* the background copy's */
static GPtrArray *conns;                 /* every connection not yet freed */
static nbdkit_backend *backend;
static uint64_t expected_size;           /* 0: not known yet */
static uint32_t min_block = 1;           /* the source's minimum block size */
static uint32_t max_request = MAX_REQUEST;
static bool can_extents;
static bool detached, stopping, giving_up, reconnect_now;
static char last_error[256];
static double retry_at, backoff = 1;
static bool supervising;
static pthread_t supervisor_thread;
/* What one request carries per second (bytes of a read over its time
 * on a connection), averaged: requests are sized to it.
 */
static double carried;

/* Every executor and opener thread, joined once it has finished (by
 * the supervisor, and all at the stop), so that none can still be
 * running our code or the plugin's when nbdkit unloads them.
 */
struct thread { pthread_t t; bool finished; };
static GPtrArray *threads;

/* Record why the source is not usable; caller holds lock. */
static void __attribute__ ((format (printf, 1, 2)))
set_error (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  g_vsnprintf (last_error, sizeof last_error, fmt, ap);
  va_end (ap);
  nbdkit_debug ("relocate: upstream: %s", last_error);
}

/* Wake every thread: a connection changed state, or we stop. */
static void
wake_all (void)
{
  pthread_cond_broadcast (&work);
  pthread_cond_broadcast (&urgent_work);
  pthread_cond_broadcast (&changed);
}

static void
unref (struct request *req)
{
  if (--req->refs > 0)
    return;
  buf_put (req->buf, req->count);
  if (req->extents)
    nbdkit_extents_free (req->extents);
  g_free (req);
}

static void
close_context (nbdkit_next *n)
{
  n->finalize (n);
  nbdkit_next_context_close (n);
}

/* ---- Connections ---- */

/* Open, prepare and query a context: nbdkit requires get_size and
 * every can_* once before any I/O on a context opened by hand.  May
 * block for ever on a source that never answers: only opener threads
 * call it.
 */
static nbdkit_next *
open_context (int64_t *size, uint32_t *minimum, uint32_t *maximum, int *ext)
{
  uint32_t preferred;
  nbdkit_next *n;

  n = nbdkit_next_context_open (backend, 1, "", 1);
  if (n == NULL)
    return NULL;
  *minimum = *maximum = 0;
  if (n->prepare (n) == -1 ||
      (*size = n->get_size (n)) == -1 ||
      n->can_write (n) == -1 || n->can_flush (n) == -1 ||
      n->is_rotational (n) == -1 || n->can_trim (n) == -1 ||
      n->can_zero (n) == -1 || n->can_fast_zero (n) == -1 ||
      (*ext = n->can_extents (n)) == -1 || n->can_fua (n) == -1 ||
      n->can_multi_conn (n) == -1 || n->can_cache (n) == -1 ||
      n->block_size (n, minimum, &preferred, maximum) == -1) {
    close_context (n);
    return NULL;
  }
  return n;
}

/* Take the source's block sizes; caller holds lock. */
static void
set_limits (uint32_t minimum, uint32_t maximum, int ext)
{
  can_extents = ext > 0;
  min_block = minimum > 1 ? minimum : 1;
  max_request = MAX_REQUEST;
  if (maximum > 0 && maximum < max_request)
    max_request = maximum;
  max_request -= max_request % min_block;
  if (max_request == 0)
    max_request = min_block;
}

/* A connection that was abandoned got its answer after all: the
 * source is back, try again at once.  Caller holds lock.
 */
static void
source_answers (void)
{
  retry_at = state_now ();
  backoff = 1;
  wake_all ();
}

/* Was err a failure of the connection rather than of the request? */
static bool
connection_error (int err)
{
  switch (err) {
  case ENOTCONN: case ESHUTDOWN: case ECONNRESET: case ECONNABORTED:
  case EPIPE: case ETIMEDOUT: case EBADF: case ENETDOWN: case ENETUNREACH:
  case EHOSTUNREACH:
    return true;
  default:
    return false;
  }
}

static void new_sockets (struct conn *c);

/* Start fn (arg) on a thread of its own; caller holds lock. */
static int
spawn (void *(*fn) (void *), void *arg)
{
  struct thread *th = g_new0 (struct thread, 1);
  int e = pthread_create (&th->t, NULL, fn, arg);

  if (e) {
    g_free (th);
    errno = e;
    return -1;
  }
  g_ptr_array_add (threads, th);
  return 0;
}

/* The calling thread is about to return; caller holds lock. */
static void
finished (void)
{
  guint i;

  for (i = 0; i < threads->len; ++i) {
    struct thread *th = g_ptr_array_index (threads, i);
    if (pthread_equal (th->t, pthread_self ()))
      th->finished = true;
  }
}

/* Join the threads that have finished (they no longer need lock, which
 * the caller holds).
 */
static void
reap (void)
{
  guint i;

  for (i = threads->len; i-- > 0; ) {
    struct thread *th = g_ptr_array_index (threads, i);
    if (th->finished) {
      pthread_join (th->t, NULL);
      g_ptr_array_remove_index_fast (threads, i);
      g_free (th);
    }
  }
}

/* Tell the source we are done with it: one flush.  We never write to
 * the source, so it changes nothing there; a source that is itself a
 * relocation server (the host before this one) takes it as the sign
 * that this host is complete and no longer needs it.
 */
static void
say_complete (nbdkit_next *n)
{
  int err;

  if (n->can_flush (n) == 1 && n->flush (n, 0, &err) == -1)
    nbdkit_debug ("relocate: the source did not take the final flush: %s",
                  strerror (err));
}

/* Free c once its last thread is done with it: close its context
 * first (lock is dropped meanwhile, and that may take a while), so that
 * nothing is still inside the plugin once c is gone; a healthy one of
 * a complete relocation says so first.  Caller holds lock.
 */
static void
free_conn (struct conn *c)
{
  bool complete = detached && c->state == CONN_UP;

  if (c->next) {
    if (c->state == CONN_UP)
      c->state = CONN_BROKEN;
    c->closing = true;           /* its sockets go: cut () keeps off */
    c->closing_since = state_now ();
    pthread_mutex_unlock (&lock);
    if (complete)
      say_complete (c->next);
    close_context (c->next);
    pthread_mutex_lock (&lock);
  }
  g_ptr_array_remove_fast (conns, c);
  if (c->before)
    g_array_unref (c->before);
  g_free (c);
  wake_all ();
}

/* After a failed request: is the connection still good?  Read a little
 * where a read last worked (or ask for block status).
 */
static bool
probe (nbdkit_next *n, uint64_t off, uint32_t len)
{
  g_autofree char *buf = g_malloc (len);
  int err;

  return n->pread (n, buf, len, off, 0, &err) == 0;
}

/* Carry out one request on c; caller holds lock, dropped meanwhile. */
static void
execute (struct conn *c, struct request *req)
{
  nbdkit_next *n = c->next;
  bool ext = can_extents;
  uint32_t probe_len = min_block;
  uint64_t probe_off = c->good_offset + min_block <= expected_size
    ? c->good_offset : 0;
  int r, err = 0;

  req->conn = c;
  req->started = state_now ();
  g_queue_push_tail (&c->active, req);
  pthread_mutex_unlock (&lock);
  if (req->op == OP_PREAD)
    r = n->pread (n, req->buf, req->count, req->offset, 0, &err);
  else if (ext)
    r = n->extents (n, req->count, req->offset, 0, req->extents, &err);
  else                           /* no block status: all data */
    r = nbdkit_add_extent (req->extents, req->offset, req->count, 0);
  /* A failure that is not obviously the connection's may be this
   * request's alone (a bad block): the connection stays if a probe
   * succeeds.
   */
  if (r == -1 && !connection_error (err) && !probe (n, probe_off, probe_len))
    err = ECONNRESET;
  pthread_mutex_lock (&lock);
  g_queue_remove (&c->active, req);
  if (c->state == CONN_STUCK && r == 0)
    source_answers ();             /* not the error a cut (c) caused */
  if (r == 0 && req->op == OP_PREAD) {
    double took = state_now () - req->started;
    c->good_offset = req->offset;
    if (req->count >= 65536 && took > 0)
      carried = carried > 0 ? 0.7 * carried + 0.3 * req->count / took
        : req->count / took;
  }
  if (r == -1 && connection_error (err) && c->state == CONN_UP) {
    c->state = CONN_BROKEN;
    set_error ("%s of %" PRIu32 " bytes at offset %" PRIu64 " failed: %s; "
               "reconnecting", req->op == OP_PREAD ? "read" : "block status",
               req->count, req->offset, g_strerror (err));
    wake_all ();
  }
  req->r = r;
  req->err = err;
  req->done = true;
  unref (req);
  pthread_cond_broadcast (&changed);
}

/* Is a connection up that is (lane) or is not (!lane) the guest's
 * lane?  Caller holds lock.
 */
static bool
up_as (bool lane)
{
  guint i;

  for (i = 0; i < conns->len; ++i) {
    struct conn *c = g_ptr_array_index (conns, i);
    if (c->lane == lane && c->state == CONN_UP)
      return true;
  }
  return false;
}

/* Is a connection the guest's lane, or opening to be it?  Caller
 * holds lock.
 */
static bool
lane_taken (void)
{
  guint i;

  for (i = 0; i < conns->len; ++i) {
    struct conn *c = g_ptr_array_index (conns, i);
    if (c->lane && (c->state == CONN_UP || c->state == CONN_OPENING))
      return true;
  }
  return false;
}

/* Does c carry a request of the background copy now?  Caller holds
 * lock.
 */
static bool
carries_bulk (struct conn *c)
{
  GList *l;

  for (l = c->active.head; l; l = l->next)
    if (!((struct request *) l->data)->urgent)
      return true;
  return false;
}

/* The next request for c: clients' first.  The lane takes the
 * background copy's only while no other connection is up (a source
 * that allows one connection); the others take clients' while the
 * lane is down, or while they carry none of the copy's and none is
 * waiting (the copy paused or done, standby: the guest gets every
 * connection).  Caller holds lock.
 */
static struct request *
next_request (struct conn *c)
{
  struct request *req = NULL;

  if (c->lane || !up_as (true) ||
      (g_queue_is_empty (&bulk_q) && !carries_bulk (c)))
    req = g_queue_pop_head (&urgent_q);
  if (req == NULL && (!c->lane || !up_as (false)))
    req = g_queue_pop_head (&bulk_q);
  return req;
}

/* A connection's thread: carries out queued requests while it is up. */
static void *
executor (void *arg)
{
  struct conn *c = arg;
  struct request *req;

  pthread_mutex_lock (&lock);
  while (c->state == CONN_UP && !stopping && !detached) {
    req = next_request (c);
    if (req)
      execute (c, req);
    else if (c->lane && up_as (false))
      pthread_cond_wait (&urgent_work, &lock);
    else
      pthread_cond_wait (&work, &lock);
  }
  /* A request this thread was woken for goes to another. */
  if (!g_queue_is_empty (&urgent_q))
    pthread_cond_signal (&urgent_work);
  if (!g_queue_is_empty (&urgent_q) || !g_queue_is_empty (&bulk_q))
    pthread_cond_signal (&work);
  if (--c->threads == 0)
    free_conn (c);
  finished ();
  pthread_mutex_unlock (&lock);
  return NULL;
}

/* Threads per connection: enough for the background workers and a
 * few client requests over all connections; the lane's, for a guest
 * with LANE_THREADS requests in flight.
 */
#define LANE_THREADS 16

static unsigned
threads_per_conn (const struct conn *c)
{
  unsigned bulk_conns = MAX (1, cfg.connections - (cfg.connections > 1));
  unsigned total = cfg.workers + 8;

  if (c->lane)
    return LANE_THREADS;
  return MAX (2, (total + bulk_conns - 1) / bulk_conns);
}

/* Opens c; if it was abandoned meanwhile, closes what it opened. */
static void *
opener (void *arg)
{
  struct conn *c = arg;
  uint32_t minimum, maximum;
  int64_t size = -1;
  int ext = 0;
  nbdkit_next *n;
  unsigned i;

  /* A connection for the background copy (there is a lane for the
   * guest's): this thread, the plugin's that it starts and the
   * executors run below the guest's.
   */
  if (!c->lane && cfg.connections > 1)
    state_lower_priority ();
  n = open_context (&size, &minimum, &maximum, &ext);

  pthread_mutex_lock (&lock);
  /* Opens happen one at a time: the sockets that appeared since, and
   * are no other connection's, are this one's.
   */
  if (n && c->state == CONN_OPENING)
    new_sockets (c);
  if (n && expected_size && (uint64_t) size != expected_size) {
    nbdkit_error ("relocate: the source now has size %" PRIi64 ", not %"
                  PRIu64 ": refusing it, serving only present blocks",
                  size, expected_size);
    set_error ("source size changed to %" PRIi64 " (expected %" PRIu64 ")",
               size, expected_size);
    state_set_failure (FAILURE_SOURCE, last_error);
    pthread_mutex_unlock (&lock);
    close_context (n);
    pthread_mutex_lock (&lock);
    n = NULL;
  }
  /* An open abandoned for its slowness that succeeds after all: the
   * source answers again (try again at once), but this one is closed:
   * other opens have begun since, and its sockets cannot be told from
   * theirs.
   */
  if (n && c->state == CONN_STUCK)
    source_answers ();
  if (n && c->state == CONN_OPENING && !stopping && !detached) {
    c->next = n;
    c->size = size;
    c->state = CONN_UP;
    sock_keepalive (&c->socks, cfg.timeout);
    set_limits (minimum, maximum, ext);
    last_error[0] = '\0';
    backoff = 1;
    state_clear_failure (FAILURE_SOURCE);
    nbdkit_debug ("relocate: upstream connected (%u up)",
                  conns ? conns->len : 0);
    for (i = threads_per_conn (c); i > 0; --i)
      if (spawn (executor, c) == 0)
        c->threads++;
    if (c->threads > 0) {
      wake_all ();
      finished ();
      pthread_mutex_unlock (&lock);
      return NULL;
    }
    c->state = CONN_BROKEN;
  }
  if (n == NULL && c->state == CONN_OPENING) {
    if (last_error[0] == '\0' || detached)
      set_error ("cannot connect to the source");
    retry_at = state_now () + backoff;
    backoff = MIN (backoff * 2, MAX_BACKOFF);
  }
  c->next = n;                   /* closed by free_conn */
  free_conn (c);
  finished ();
  pthread_mutex_unlock (&lock);
  return NULL;
}

/* Start opening a new connection; caller holds lock. */
static struct conn *
open_conn (void)
{
  struct conn *c = g_new0 (struct conn, 1);

  c->state = CONN_OPENING;
  c->since = state_now ();
  c->lane = cfg.connections > 1 && !lane_taken ();
  c->before = sock_snapshot ();
  g_queue_init (&c->active);
  if (spawn (opener, c) == -1) {
    set_error ("cannot start a thread: %s", g_strerror (errno));
    g_free (c);
    return NULL;
  }
  g_ptr_array_add (conns, c);
  return c;
}

/* Count the connections in each state; caller holds lock. */
static void
count_locked (unsigned *up, unsigned *opening, unsigned *stuck)
{
  guint i;

  *up = *opening = *stuck = 0;
  for (i = 0; i < conns->len; ++i) {
    struct conn *c = g_ptr_array_index (conns, i);
    switch (c->state) {
    case CONN_UP: (*up)++; break;
    case CONN_OPENING: (*opening)++; break;
    case CONN_STUCK: (*stuck)++; break;
    case CONN_BROKEN: break;
    }
  }
}

/* The sockets that appeared since c began to open and are no other
 * connection's.  Caller holds lock.
 */
static void
new_sockets (struct conn *c)
{
  struct sock_set found;
  guint i;
  unsigned j;

  sock_new_since (c->before, &found);
  c->socks.n = 0;
  for (j = 0; j < found.n; ++j) {
    bool other = false;
    for (i = 0; i < conns->len && !other; ++i) {
      struct conn *o = g_ptr_array_index (conns, i);
      if (o != c)
        other = sock_set_has (&o->socks, found.ino[j]);
    }
    if (!other) {
      c->socks.fd[c->socks.n] = found.fd[j];
      c->socks.ino[c->socks.n++] = found.ino[j];
    }
  }
}

/* Shut down c's sockets both ways: its threads, blocked in the plugin
 * on a source that vanished, get an error and let go.  An open that
 * has not finished has not told its sockets yet: they are the ones
 * that appeared since it started.  Caller holds lock.
 */
static void
cut (struct conn *c)
{
  if (c->closing)
    return;
  if (c->state == CONN_OPENING)
    new_sockets (c);
  sock_shutdown (&c->socks);
  c->cut = true;
}

/* Does c receive data: has any arrived within relocate-timeout?  (-1:
 * it cannot tell, not TCP.)  Caller holds lock.
 */
static int
receiving (struct conn *c)
{
  int64_t quiet = sock_quiet_ms (&c->socks);

  return quiet < 0 ? -1 : quiet < (int64_t) cfg.timeout * 1000;
}

/* Abandon connections that overstay relocate-timeout: an open that has
 * not finished (it is cut: no reply can be in flight), or one whose
 * oldest request has had no reply in that time while no data arrived
 * on it either (a slow link that delivers steadily is not stuck), or
 * none in UPSTREAM_SLOW_FACTOR times that.  An abandoned connection is
 * kept: a source that was only paused answers it later (and nbdkit
 * before 1.33.10 as the source may abort if it is closed with replies
 * in flight); over TCP, keepalive and the user timeout end it if the
 * peer is gone, and make_room cuts the oldest when there is no room
 * for a new one.  One already failed or told to go (CONN_BROKEN, by
 * relocatectl reconnect) is cut at once, and so is one whose clean
 * disconnect has not ended in that time.  Caller holds lock.
 */
static void
abandon_overdue (double now)
{
  guint i;

  for (i = 0; i < conns->len; ++i) {
    struct conn *c = g_ptr_array_index (conns, i);
    struct request *oldest = g_queue_peek_head (&c->active);

    if (c->closing && !c->cut && now - c->closing_since >= cfg.timeout) {
      /* A clean disconnect that the source never ends (the nbd plugin
       * waits for it to close): its sockets are still open, and shut
       * down now.  (Should the close end by itself in the instant
       * between sock_shutdown's check of a socket's inode and the
       * shutdown, and its descriptor be reused at once, another socket
       * would be shut down: a window of microseconds, once per stuck
       * close.)
       */
      sock_shutdown (&c->socks);
      c->cut = true;
    }
    else if (c->state == CONN_OPENING && now - c->since >= cfg.timeout) {
      cut (c);
      c->state = CONN_STUCK;
      c->stuck_since = now;
      set_error ("the source did not complete the handshake in %u s",
                 cfg.timeout);
      retry_at = now + backoff;
      backoff = MIN (backoff * 2, MAX_BACKOFF);
    }
    else if ((c->state == CONN_UP || c->state == CONN_BROKEN) && oldest &&
             now - oldest->started >= cfg.timeout &&
             (receiving (c) != 1 ||
              now - oldest->started >= UPSTREAM_SLOW_FACTOR * cfg.timeout)) {
      if (c->state == CONN_BROKEN)
        cut (c);                     /* going anyway: waited long enough */
      c->state = CONN_STUCK;
      c->stuck_since = now;
      set_error ("no reply from the source in %u s: abandoned a connection",
                 cfg.timeout);
      wake_all ();                   /* its idle threads go */
    }
  }
}

/* relocate-connections + MAX_ABANDONED connections exist: cut the
 * oldest abandoned one not cut yet, so that it goes and a new one can
 * be opened (hung connections bound memory, never progress).  Caller
 * holds lock.
 */
static void
make_room (void)
{
  struct conn *oldest = NULL;
  guint i;

  for (i = 0; i < conns->len; ++i) {
    struct conn *c = g_ptr_array_index (conns, i);
    if (c->state == CONN_STUCK && !c->cut && !c->closing &&
        (oldest == NULL || c->stuck_since < oldest->stuck_since))
      oldest = c;
  }
  if (oldest) {
    nbdkit_debug ("relocate: %u connections: the oldest abandoned one is "
                  "shut down", conns->len);
    cut (oldest);
  }
}

/* The supervisor: keeps relocate-connections connections open. */
static void *
supervisor (void *arg)
{
  unsigned up, opening, stuck;
  double now;
  guint i;

  pthread_mutex_lock (&lock);
  while (!stopping) {
    now = state_now ();
    reap ();
    abandon_overdue (now);
    if (reconnect_now) {
      reconnect_now = false;
      /* A healthy one finishes its requests and is closed cleanly;
       * one that hangs (or is still opening) is cut.
       */
      for (i = 0; i < conns->len; ++i) {
        struct conn *c = g_ptr_array_index (conns, i);
        if (c->state == CONN_UP)
          c->state = CONN_BROKEN;
        else
          cut (c);
      }
      retry_at = now;
      backoff = 1;
      wake_all ();
    }
    count_locked (&up, &opening, &stuck);
    /* One open at a time (sock.h), and never more than
     * relocate-connections + MAX_ABANDONED connections in all.
     */
    if (!detached && up + opening < cfg.connections && opening == 0 &&
        now >= retry_at) {
      if (up + opening + stuck < cfg.connections + MAX_ABANDONED)
        open_conn ();
      else
        make_room ();
    }
    /* Detached with every connection gone: nothing to look at until
     * the stop (a complete relocation uses no CPU).
     */
    cond_wait_until (&changed, &lock, now +
                     (detached && conns->len == 0 ? 3600 : CHECK_SECONDS));
  }
  pthread_mutex_unlock (&lock);
  return arg;
}

static void
init (nbdkit_backend *b)
{
  backend = b;
  if (conns == NULL) {
    conns = g_ptr_array_new ();
    threads = g_ptr_array_new ();
    cond_init_monotonic (&changed);   /* before any thread waits */
  }
}

int
upstream_connect_once (nbdkit_backend *b, int64_t *size)
{
  double deadline = state_now () + cfg.timeout;
  struct conn *c;

  init (b);
  pthread_mutex_lock (&lock);
  c = open_conn ();
  /* The opener frees c if the open fails: look it up each time. */
  while (c && g_ptr_array_find (conns, c, NULL) && c->state == CONN_OPENING &&
         state_now () < deadline)
    cond_wait_until (&changed, &lock, deadline);
  if (c && g_ptr_array_find (conns, c, NULL) && c->state == CONN_UP) {
    *size = c->size;
    pthread_mutex_unlock (&lock);
    return 0;
  }
  if (c && g_ptr_array_find (conns, c, NULL) && c->state == CONN_OPENING) {
    cut (c);
    c->state = CONN_STUCK;
    c->stuck_since = state_now ();
    set_error ("the source did not complete the handshake in %u s",
               cfg.timeout);
  }
  pthread_mutex_unlock (&lock);
  return -1;
}

int
upstream_start (nbdkit_backend *b, uint64_t size)
{
  int e;

  init (b);
  pthread_mutex_lock (&lock);
  expected_size = size;
  pthread_mutex_unlock (&lock);
  e = pthread_create (&supervisor_thread, NULL, supervisor, NULL);
  if (e) {
    errno = e;
    nbdkit_error ("relocate: pthread_create: %m");
    return -1;
  }
  supervising = true;
  return 0;
}

bool
upstream_stop (void)
{
  double deadline = state_now () + 0.5;
  struct request *req;
  bool clean;

  if (conns == NULL)
    return true;
  pthread_mutex_lock (&lock);
  stopping = true;
  wake_all ();
  pthread_mutex_unlock (&lock);
  if (supervising)
    pthread_join (supervisor_thread, NULL);
  supervising = false;

  pthread_mutex_lock (&lock);
  while ((req = g_queue_pop_head (&urgent_q)) != NULL ||
         (req = g_queue_pop_head (&bulk_q)) != NULL) {
    req->r = -1;
    req->err = ESHUTDOWN;
    req->done = true;
    unref (req);
  }
  pthread_cond_broadcast (&changed);
  /* Idle threads leave and close their context; a stuck one cannot. */
  while (conns->len > 0 && state_now () < deadline)
    cond_wait_until (&changed, &lock, deadline);
  clean = conns->len == 0;
  if (clean) {
    /* Every thread has finished or is about to: wait for each. */
    guint i;
    for (i = 0; i < threads->len; ++i)
      ((struct thread *) g_ptr_array_index (threads, i))->finished = true;
    reap ();
  }
  else
    nbdkit_debug ("relocate: %u connections to the source cannot be closed",
                  conns->len);
  pthread_mutex_unlock (&lock);
  return clean;
}

/* ---- Requests ---- */

/* Queue a request for [offset, offset+count) of the source; a
 * client's (urgent) goes before the background copy's.  NULL with
 * errno if there is no memory for a read's reply.
 */
static struct request *
submit (enum op op, uint64_t offset, uint32_t count, bool is_urgent)
{
  struct request *req = g_new0 (struct request, 1);

  req->op = op;
  req->offset = offset;
  req->count = count;
  req->refs = 2;                 /* the caller's and the queue's */
  req->urgent = is_urgent;
  if (op == OP_PREAD && (req->buf = buf_get (count)) == NULL) {
    g_free (req);
    return NULL;
  }
  if (op != OP_PREAD)
    req->extents = nbdkit_extents_new (offset, offset + count);
  g_queue_push_tail (is_urgent ? &urgent_q : &bulk_q, req);
  if (is_urgent)
    pthread_cond_signal (&urgent_work);
  pthread_cond_signal (&work);
  return req;
}

/* relocate-timeout after data last arrived from the source, on any
 * connection up (0 if none can tell): a wait for the source may go on
 * until then, since a slow link is not a stuck one.  Caller holds lock.
 */
static double
progress_deadline (void)
{
  double now = state_now (), t = 0;
  guint i;

  for (i = 0; i < conns->len; ++i) {
    struct conn *c = g_ptr_array_index (conns, i);
    int64_t quiet = c->state == CONN_UP ? sock_quiet_ms (&c->socks) : -1;
    if (quiet >= 0)
      t = MAX (t, now - quiet / 1000.0 + cfg.timeout);
  }
  return t;
}

uint32_t
upstream_request_limit (uint32_t block, uint32_t most)
{
  LOCK_FOR_SCOPE (&lock);
  double fit = carried * cfg.timeout / 4;

  if (carried <= 0 || fit >= most)
    return most;
  return MAX (block, (uint32_t) fit / block * block);
}

double
upstream_progress_deadline (void)
{
  LOCK_FOR_SCOPE (&lock);

  return conns ? progress_deadline () : 0;
}

/* Wait for req until t; true if it has finished.  Caller holds lock. */
static bool
wait_for (struct request *req, double t)
{
  while (!req->done && !stopping && !giving_up && state_now () < t)
    cond_wait_until (&changed, &lock, t);
  return req->done;
}

/* Give up on req: a reply that still comes is thrown away.  Caller
 * holds lock.
 */
static void
withdraw (struct request *req)
{
  if (!req->done && req->conn == NULL &&
      g_queue_remove (req->urgent ? &urgent_q : &bulk_q, req))
    unref (req);                 /* the queue's reference */
  unref (req);                   /* ours */
}

/* One piece of a read, as sent to the source. */
struct piece {
  uint64_t offset;
  uint32_t count;
  struct request *req;
  unsigned rejected;             /* times the source rejected it */
  double retry_at;
};

/* Read [offset, offset+count) in aligned pieces the source accepts,
 * in parallel, retrying failures until the deadline: into buf, or
 * with buf NULL into a buffer of its own, set in *bufp on success (the
 * reply's own when one piece is all of it: no copy).  Caller holds
 * lock.
 */
static int
pread_locked (char *buf, void **bufp, uint32_t count, uint64_t offset,
              double deadline, bool urgent, int *err)
{
  uint64_t start = offset / min_block * min_block;
  uint64_t end = MIN ((offset + count + min_block - 1) / min_block * min_block,
                      MAX (expected_size, offset + count));
  g_autofree struct piece *p = NULL;
  size_t n = (end - start + max_request - 1) / max_request, i, left;
  double limit = deadline + (UPSTREAM_SLOW_FACTOR - 1) * cfg.timeout;
  void *own = NULL;
  bool exact;
  int r = 0;

  p = g_new0 (struct piece, n);
  for (i = 0; i < n; ++i) {
    p[i].offset = start + i * (uint64_t) max_request;
    p[i].count = MIN (max_request, end - p[i].offset);
  }
  exact = n == 1 && start == offset && p[0].count == count;
  if (buf == NULL && !exact && (buf = own = buf_get (count)) == NULL) {
    *err = ENOMEM;
    return -1;
  }
  for (left = n; left > 0 && r == 0; ) {
    double now = state_now (), next_try = deadline;

    for (i = 0; i < n && r == 0; ++i)
      if (p[i].req == NULL && p[i].count && p[i].retry_at <= now) {
        p[i].req = submit (OP_PREAD, p[i].offset, p[i].count, urgent);
        if (p[i].req == NULL) {
          *err = ENOMEM;        /* ours, not the source's: no rejection */
          r = -1;
        }
      }
      else if (p[i].req == NULL && p[i].count)
        next_try = MIN (next_try, p[i].retry_at);
    for (i = 0; i < n && r == 0; ++i) {
      struct request *req = p[i].req;
      if (req == NULL)
        continue;
      if (!wait_for (req, next_try)) {
        if (state_now () >= deadline)   /* slow, not stuck? */
          deadline = MIN (limit, MAX (deadline, progress_deadline ()));
        if (stopping || giving_up || state_now () >= deadline) {
          *err = EIO;
          r = -1;
        }
        break;                  /* a retry is due: come back */
      }
      if (req->r == 0 && buf == NULL) {
        *bufp = req->buf;       /* the reply is all of it: take it */
        req->buf = NULL;
        p[i].count = 0;
        left--;
      }
      else if (req->r == 0) {
        /* Copy the part of the piece that was asked for. */
        uint64_t a = MAX (offset, p[i].offset);
        uint64_t b = MIN (offset + count, p[i].offset + p[i].count);
        memcpy (buf + (a - offset), (char *) req->buf + (a - p[i].offset),
                b - a);
        p[i].count = 0;
        left--;
      }
      else if (!connection_error (req->err) &&
               ++p[i].rejected >= REJECT_TRIES) {
        *err = req->err;
        r = UPSTREAM_REJECTED;
      }
      else
        p[i].retry_at = state_now () + 0.1 * (1 << p[i].rejected);
      withdraw (req);
      p[i].req = NULL;
    }
  }
  for (i = 0; i < n; ++i)
    if (p[i].req)
      withdraw (p[i].req);
  if (own && r == 0)
    *bufp = own;
  else if (own)
    buf_put (own, count);
  return r;
}

/* upstream_pread into buf, or with buf NULL upstream_pread_buf. */
static int
read_source (void *buf, void **bufp, uint32_t count, uint64_t offset,
             double deadline, bool background, int *err)
{
  LOCK_FOR_SCOPE (&lock);
  unsigned up, opening, stuck;
  int r;

  count_locked (&up, &opening, &stuck);
  if (detached || (background && up == 0)) {
    *err = EIO;
    return -1;
  }
  r = pread_locked (buf, bufp, count, offset, deadline, !background, err);
  if (r == -1 && giving_up)
    nbdkit_debug ("relocate: the read of %" PRIu32 " bytes at offset %"
                  PRIu64 " from the source was given up: stopping",
                  count, offset);
  else if (r == -1 && *err == ENOMEM)
    nbdkit_error ("relocate: no memory for a read of %" PRIu32 " bytes at "
                  "offset %" PRIu64 " from the source", count, offset);
  else if (r == -1)
    nbdkit_error ("relocate: cannot read %" PRIu32 " bytes at offset %" PRIu64
                  " from the source%s: %s", count, offset,
                  background ? " (background copy)" : "",
                  last_error[0] ? last_error : "no reply in time");
  else if (r == UPSTREAM_REJECTED)
    nbdkit_error ("relocate: the source rejects the read of %" PRIu32
                  " bytes at offset %" PRIu64 ": %s", count, offset,
                  g_strerror (*err));
  return r;
}

int
upstream_pread (void *buf, uint32_t count, uint64_t offset, double deadline,
                bool background, int *err)
{
  return read_source (buf, NULL, count, offset, deadline, background, err);
}

int
upstream_pread_buf (void **bufp, uint32_t count, uint64_t offset,
                    double deadline, bool background, int *err)
{
  *bufp = NULL;
  return read_source (NULL, bufp, count, offset, deadline, background, err);
}

int
upstream_extents (uint32_t count, uint64_t offset,
                  struct nbdkit_extents *extents, int *err)
{
  LOCK_FOR_SCOPE (&lock);
  double deadline = state_now () + cfg.timeout;
  uint64_t start = offset / min_block * min_block;
  struct request *req;
  size_t i;
  int r = 0;

  if (detached) {
    *err = EIO;
    return -1;
  }
  /* Block status has no maximum: ask for the whole range (the mapper
   * asks 1G at a time), aligned, within 32 bits.
   */
  {
    uint64_t len = (uint64_t) count + (offset - start);
    len = MIN ((len + min_block - 1) / min_block * min_block,
               MAX (expected_size, start + len) - start);
    count = MIN (len, UINT32_MAX / min_block * min_block);
  }
  req = submit (OP_EXTENTS, start, count, false);
  if (req->extents == NULL || !wait_for (req, deadline) || req->r == -1) {
    *err = req->done && req->err ? req->err : EIO;
    r = -1;
  }
  else {
    for (i = 0; r == 0 && i < nbdkit_extents_count (req->extents); ++i) {
      struct nbdkit_extent e = nbdkit_get_extent (req->extents, i);
      if (e.offset + e.length > offset)
        r = nbdkit_add_extent (extents, e.offset, e.length, e.type);
    }
  }
  withdraw (req);
  return r;
}

void
upstream_give_up (void)
{
  LOCK_FOR_SCOPE (&lock);

  giving_up = true;
  wake_all ();
}

void
upstream_detach (void)
{
  LOCK_FOR_SCOPE (&lock);

  detached = true;
  wake_all ();
}

void
upstream_reconnect (void)
{
  LOCK_FOR_SCOPE (&lock);

  reconnect_now = true;
  set_error ("reconnect requested");
  wake_all ();
}

bool
upstream_connected (void)
{
  unsigned up, opening, stuck;

  upstream_counts (&up, &opening, &stuck);
  return up > 0;
}

void
upstream_counts (unsigned *up, unsigned *wanted, unsigned *abandoned)
{
  LOCK_FOR_SCOPE (&lock);
  unsigned opening;

  if (conns == NULL) {
    *up = *abandoned = 0;
  }
  else
    count_locked (up, &opening, abandoned);
  *wanted = detached ? 0 : cfg.connections;
}

void
upstream_last_error (char *buf, size_t len)
{
  LOCK_FOR_SCOPE (&lock);

  g_strlcpy (buf, last_error, len);
}
