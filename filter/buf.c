/* nbdkit-relocate: buffers for data on its way from the source. */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <glib.h>

#include "buf.h"
#include "lock.h"

#ifdef __SANITIZE_ADDRESS__
/* Under AddressSanitizer each buffer is its own allocation of the
 * exact size, so that a read or write past its end is caught.
 */
void *
buf_get (size_t len)
{
  void *p;

  errno = posix_memalign (&p, 4096, len ? len : 1);
  return errno ? NULL : p;
}

void
buf_put (void *p, size_t len)
{
  free (p);
}

void
buf_trim (void)
{
}

#else

/* Buffers come in sizes of a power of two from 64K (2^16) to 1G
 * (2^30); smaller requests get a 64K one.  The pool keeps free
 * buffers of KEEP_BYTES in all: what the background copy has in flight
 * at once with the defaults (8 requests of 4M, each read into its
 * reply's buffer and stored from it).  Free
 * buffers of a size no one asked for in IDLE_SECONDS go back to the
 * system when the next buffer is given back: the copy's requests
 * follow its rate group's share, and a size it no longer asks for
 * would otherwise stay for good.
 */
#define MIN_SHIFT 16
#define SIZES (31 - MIN_SHIFT)
#define KEEP_BYTES (32 * 1024 * 1024)
#define IDLE_SECONDS 1

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static GPtrArray *free_bufs[SIZES];     /* free buffers, by size */
static size_t free_bytes;               /* in free_bufs */
static bool trimmed;                    /* the copy is over: keep none */
static gint64 last_asked[SIZES];        /* monotonic microseconds */

/* The size class of len, and the bytes of a buffer of that class. */
static unsigned
size_class (size_t len)
{
  unsigned c = 0;

  while (c + 1 < SIZES && ((size_t) 1 << (c + MIN_SHIFT)) < len)
    c++;
  return c;
}

static size_t
class_bytes (unsigned c)
{
  return (size_t) 1 << (c + MIN_SHIFT);
}

void *
buf_get (size_t len)
{
  unsigned c = size_class (len);
  void *p;

  if (len > class_bytes (SIZES - 1)) {
    errno = ENOMEM;
    return NULL;
  }
  {
    LOCK_FOR_SCOPE (&lock);
    last_asked[c] = g_get_monotonic_time ();
    if (free_bufs[c] && free_bufs[c]->len > 0) {
      free_bytes -= class_bytes (c);
      return g_ptr_array_steal_index_fast (free_bufs[c],
                                           free_bufs[c]->len - 1);
    }
  }
  /* Straight from the kernel: page aligned, and all of it goes back
   * on munmap.
   */
  p = mmap (NULL, class_bytes (c), PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void
buf_put (void *p, size_t len)
{
  unsigned c = size_class (len), d;
  gint64 now = g_get_monotonic_time ();
  GPtrArray *idle[SIZES] = { NULL };
  bool kept = false;
  guint i;

  if (p == NULL)
    return;
  {
    LOCK_FOR_SCOPE (&lock);
    /* Sizes no one asks for any more: taken out of the pool here,
     * unmapped once the lock is released.
     */
    for (d = 0; d < SIZES; ++d)
      if (free_bufs[d] && free_bufs[d]->len > 0 &&
          now - last_asked[d] > IDLE_SECONDS * G_USEC_PER_SEC) {
        idle[d] = free_bufs[d];
        free_bufs[d] = NULL;
        free_bytes -= idle[d]->len * class_bytes (d);
      }
    if (free_bufs[c] == NULL)
      free_bufs[c] = g_ptr_array_new ();
    if (!trimmed && free_bytes + class_bytes (c) <= KEEP_BYTES) {
      g_ptr_array_add (free_bufs[c], p);
      free_bytes += class_bytes (c);
      kept = true;
    }
  }
  if (!kept)
    munmap (p, class_bytes (c));
  for (d = 0; d < SIZES; ++d)
    if (idle[d]) {
      for (i = 0; i < idle[d]->len; ++i)
        munmap (g_ptr_array_index (idle[d], i), class_bytes (d));
      g_ptr_array_free (idle[d], true);
    }
}

void
buf_trim (void)
{
  LOCK_FOR_SCOPE (&lock);
  unsigned c;

  trimmed = true;
  for (c = 0; c < SIZES; ++c)
    while (free_bufs[c] && free_bufs[c]->len > 0)
      munmap (g_ptr_array_steal_index_fast (free_bufs[c], 0), class_bytes (c));
  free_bytes = 0;
}

#endif /* !__SANITIZE_ADDRESS__ */
