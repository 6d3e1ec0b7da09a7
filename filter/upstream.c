/* nbdkit-relocate: the one shared connection to the source. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "params.h"
#include "state.h"
#include "upstream.h"

#define MAX_REQUEST (32 * 1024 * 1024)
#define MAX_BACKOFF 4            /* seconds between connection attempts */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond;      /* CLOCK_MONOTONIC; any change below */
static nbdkit_backend *backend;
static nbdkit_next *next;        /* NULL while not connected */
static unsigned users;           /* threads inside a call on next */
static bool broken;              /* close next once users reaches 0 */
static bool detached;            /* complete: never connect again */
static bool stopping;
static bool running;
static pthread_t thread;
static uint64_t expected_size;
static uint32_t max_request = MAX_REQUEST;
static bool can_extents;
static char last_error[256];
static struct timespec retry_at; /* next connection attempt */
static bool reconnect_now;       /* relocatectl reconnect: skip back-off */

static pthread_once_t cond_once = PTHREAD_ONCE_INIT;

static void
init_cond (void)
{
  pthread_condattr_t attr;

  pthread_condattr_init (&attr);
  pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  pthread_cond_init (&cond, &attr);
  pthread_condattr_destroy (&attr);
}

/* Record why the source is not usable; the caller holds lock. */
static void
set_error (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  g_vsnprintf (last_error, sizeof last_error, fmt, ap);
  va_end (ap);
  nbdkit_debug ("relocate: upstream: %s", last_error);
}

static void
close_context (nbdkit_next *n)
{
  n->finalize (n);
  nbdkit_next_context_close (n);
}

/* Open, prepare and query a context.  nbdkit requires get_size and
 * every can_* to be asked once before any I/O on a manual context.
 */
static nbdkit_next *
open_context (int64_t *size)
{
  nbdkit_next *n;
  uint32_t minimum = 0, preferred = 0, maximum = 0;
  int ext;

  n = nbdkit_next_context_open (backend, 1, "", 1);
  if (n == NULL)
    return NULL;
  if (n->prepare (n) == -1 ||
      (*size = n->get_size (n)) == -1 ||
      n->can_write (n) == -1 || n->can_flush (n) == -1 ||
      n->is_rotational (n) == -1 || n->can_trim (n) == -1 ||
      n->can_zero (n) == -1 || n->can_fast_zero (n) == -1 ||
      (ext = n->can_extents (n)) == -1 || n->can_fua (n) == -1 ||
      n->can_multi_conn (n) == -1 || n->can_cache (n) == -1 ||
      n->block_size (n, &minimum, &preferred, &maximum) == -1) {
    close_context (n);
    return NULL;
  }
  pthread_mutex_lock (&lock);
  can_extents = ext > 0;
  max_request = MAX_REQUEST;
  if (maximum > 0 && maximum < max_request)
    max_request = maximum & ~(minimum > 1 ? minimum - 1 : 0);
  pthread_mutex_unlock (&lock);
  return n;
}

int
upstream_connect_once (nbdkit_backend *b, int64_t *size)
{
  nbdkit_next *n;

  backend = b;
  n = open_context (size);
  pthread_mutex_lock (&lock);
  if (n == NULL)
    set_error ("cannot connect to the source");
  else if (next == NULL)
    next = n, n = NULL;
  pthread_mutex_unlock (&lock);
  if (n)
    close_context (n);
  return next ? 0 : -1;
}

static void
deadline_in (struct timespec *ts, unsigned seconds)
{
  clock_gettime (CLOCK_MONOTONIC, ts);
  ts->tv_sec += seconds;
}

static bool
past (const struct timespec *ts)
{
  struct timespec now;

  clock_gettime (CLOCK_MONOTONIC, &now);
  return now.tv_sec > ts->tv_sec ||
    (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

/* The supervisor: keeps one good context open until detached. */
static void *
supervisor (void *arg)
{
  unsigned backoff = 1;
  int64_t size;
  nbdkit_next *n;

  pthread_mutex_lock (&lock);
  while (!stopping) {
    if (next && (broken || detached) && users == 0) {
      n = next;
      next = NULL;
      broken = false;
      pthread_mutex_unlock (&lock);
      close_context (n);
      pthread_mutex_lock (&lock);
      pthread_cond_broadcast (&cond);
      continue;
    }
    if (next == NULL && !detached && (reconnect_now || past (&retry_at))) {
      reconnect_now = false;
      pthread_mutex_unlock (&lock);
      n = open_context (&size);
      if (n && (uint64_t) size != expected_size) {
        close_context (n);
        pthread_mutex_lock (&lock);
        nbdkit_error ("relocate: the source now has size %" PRIi64
                      ", not %" PRIu64 ": refusing it, serving only "
                      "present blocks", size, expected_size);
        set_error ("source size changed to %" PRIi64 " (expected %" PRIu64 ")",
                   size, expected_size);
        state_set_failure (FAILURE_SOURCE, last_error);
        n = NULL;
      }
      else
        pthread_mutex_lock (&lock);
      if (n) {
        next = n;
        backoff = 1;
        last_error[0] = '\0';
        state_clear_failure (FAILURE_SOURCE);
        nbdkit_debug ("relocate: upstream connected");
        pthread_cond_broadcast (&cond);
      }
      else {
        if (last_error[0] == '\0')
          set_error ("cannot connect to the source");
        deadline_in (&retry_at, backoff);
        backoff = MIN (backoff * 2, MAX_BACKOFF);
      }
      continue;
    }
    if (next == NULL && !detached)
      pthread_cond_timedwait (&cond, &lock, &retry_at);
    else
      pthread_cond_wait (&cond, &lock);
  }
  pthread_mutex_unlock (&lock);
  return arg;
}

int
upstream_start (nbdkit_backend *b, uint64_t size)
{
  int e;

  pthread_once (&cond_once, init_cond);
  backend = b;
  expected_size = size;
  e = pthread_create (&thread, NULL, supervisor, NULL);
  if (e) {
    errno = e;
    nbdkit_error ("relocate: pthread_create: %m");
    return -1;
  }
  running = true;
  return 0;
}

void
upstream_stop (void)
{
  nbdkit_next *n;

  pthread_once (&cond_once, init_cond);

  pthread_mutex_lock (&lock);
  stopping = true;
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
  if (running)
    pthread_join (thread, NULL);
  running = false;
  pthread_mutex_lock (&lock);
  while (users > 0)             /* requests still on the wire */
    pthread_cond_wait (&cond, &lock);
  n = next;
  next = NULL;
  pthread_mutex_unlock (&lock);
  if (n)
    close_context (n);
}

/* Wait until connected (or the deadline), then hold a reference. */
static nbdkit_next *
get (const struct timespec *deadline)
{
  nbdkit_next *n = NULL;

  pthread_mutex_lock (&lock);
  while (!detached && !stopping && (next == NULL || broken)) {
    if (pthread_cond_timedwait (&cond, &lock, deadline) == ETIMEDOUT)
      break;
  }
  if (next && !broken && !detached && !stopping) {
    n = next;
    users++;
  }
  pthread_mutex_unlock (&lock);
  return n;
}

/* Drop the reference; after a failure have the context reopened. */
static void
put (nbdkit_next *n, bool failed, const char *what, uint64_t offset, int err)
{
  pthread_mutex_lock (&lock);
  if (failed && n == next && !broken) {
    broken = true;
    set_error ("%s at offset %" PRIu64 " failed: %s; reconnecting",
               what, offset, g_strerror (err));
  }
  if (--users == 0)
    pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
}

/* Wait a moment before retrying, unless the deadline is near. */
static void
pause_before_retry (const struct timespec *deadline)
{
  struct timespec t;

  deadline_in (&t, 0);
  t.tv_nsec += 100 * 1000 * 1000;
  if (t.tv_nsec >= 1000000000) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000;
  }
  if (t.tv_sec > deadline->tv_sec ||
      (t.tv_sec == deadline->tv_sec && t.tv_nsec > deadline->tv_nsec))
    t = *deadline;
  clock_nanosleep (CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
}

int
upstream_pread (void *buf, uint32_t count, uint64_t offset, unsigned timeout,
                int *err)
{
  struct timespec deadline;
  nbdkit_next *n;
  uint32_t done = 0, len;
  int r;

  deadline_in (&deadline, timeout);
  while (done < count) {
    n = get (&deadline);
    if (n == NULL) {
      if (timeout > 0)
        nbdkit_error ("relocate: cannot read %" PRIu32 " bytes at offset %"
                      PRIu64 " from the source: not connected (%s)",
                      count - done, offset + done,
                      detached ? "relocation complete" : "timed out");
      *err = EIO;
      return -1;
    }
    len = MIN (count - done, upstream_max_request ());
    r = n->pread (n, (char *) buf + done, len, offset + done, 0, err);
    put (n, r == -1, "read", offset + done, *err);
    if (r == 0)
      done += len;
    else if (past (&deadline)) {
      if (timeout > 0)
        nbdkit_error ("relocate: read of %" PRIu32 " bytes at offset %" PRIu64
                      " from the source failed: %s", len, offset + done,
                      g_strerror (*err));
      *err = EIO;
      return -1;
    }
    else
      pause_before_retry (&deadline);
  }
  return 0;
}

int
upstream_extents (uint32_t count, uint64_t offset,
                  struct nbdkit_extents *extents, int *err)
{
  struct timespec deadline;
  nbdkit_next *n;
  int r;

  deadline_in (&deadline, cfg.timeout);
  n = get (&deadline);
  if (n == NULL) {
    *err = EIO;
    return -1;
  }
  if (!can_extents)
    r = nbdkit_add_extent (extents, offset, count, 0);
  else
    r = n->extents (n, count, offset, 0, extents, err);
  put (n, r == -1, "block status", offset, *err);
  return r;
}

void
upstream_detach (void)
{
  pthread_once (&cond_once, init_cond);
  pthread_mutex_lock (&lock);
  detached = true;
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
}

void
upstream_reconnect (void)
{
  pthread_once (&cond_once, init_cond);
  pthread_mutex_lock (&lock);
  if (next)
    broken = true;
  reconnect_now = true;
  set_error ("reconnect requested");
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
}

bool
upstream_connected (void)
{
  bool r;

  pthread_mutex_lock (&lock);
  r = next != NULL && !broken;
  pthread_mutex_unlock (&lock);
  return r;
}

void
upstream_last_error (char *buf, size_t len)
{
  pthread_mutex_lock (&lock);
  g_strlcpy (buf, last_error, len);
  pthread_mutex_unlock (&lock);
}

uint32_t
upstream_max_request (void)
{
  uint32_t r;

  pthread_mutex_lock (&lock);
  r = max_request;
  pthread_mutex_unlock (&lock);
  return r;
}
