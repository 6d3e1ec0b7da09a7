/* nbdkit-relocate: scoped locking with pthread mutexes.
 *
 * LOCK_FOR_SCOPE (&m) takes m and releases it wherever the scope is
 * left.  pthread mutexes rather than GMutex: ThreadSanitizer sees
 * them (glib's futex-based GMutex is invisible to it).
 */

#ifndef RELOCATE_LOCK_H
#define RELOCATE_LOCK_H

#include <pthread.h>
#include <time.h>

static inline void
unlock_at_scope_end (pthread_mutex_t **m)
{
  pthread_mutex_unlock (*m);
}

#define LOCK_PASTE2(a, b) a##b
#define LOCK_PASTE(a, b) LOCK_PASTE2 (a, b)
#define LOCK_FOR_SCOPE(m)                                               \
  __attribute__ ((cleanup (unlock_at_scope_end), unused))               \
  pthread_mutex_t *LOCK_PASTE (scoped_lock_, __LINE__) =                \
    (pthread_mutex_lock (m), (m))

/* Initialise a condition variable whose waits use CLOCK_MONOTONIC. */
static inline void
cond_init_monotonic (pthread_cond_t *c)
{
  pthread_condattr_t attr;

  pthread_condattr_init (&attr);
  pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  pthread_cond_init (c, &attr);
  pthread_condattr_destroy (&attr);
}

/* Wait on c (monotonic) until t, CLOCK_MONOTONIC seconds. */
static inline void
cond_wait_until (pthread_cond_t *c, pthread_mutex_t *m, double t)
{
  struct timespec ts;

  if (t <= 0)
    t = 0;
  ts.tv_sec = (time_t) t;
  ts.tv_nsec = (long) ((t - (double) ts.tv_sec) * 1e9);
  pthread_cond_timedwait (c, m, &ts);
}

#endif /* RELOCATE_LOCK_H */
