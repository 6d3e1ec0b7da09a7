/* LD_PRELOAD shim for the tests: a disk whose flushes wait for the
 * background copy's writes.  An fdatasync or fsync that follows a
 * write made with O_DIRECT (the filter stores fetched data so) takes
 * $SLOW_FLUSH_MS (default 20) milliseconds more; one that follows
 * none is real.
 * Built by the test that uses it:
 *   cc -shared -fPIC -o slow-flush.so slow-flush.c -ldl
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static bool written;                    /* atomic: an O_DIRECT write since the last sync */

/* After a write: if it wrote with O_DIRECT, the next sync pays. */
static void
note (int fd, ssize_t r)
{
  int e = errno, fl;

  if (r > 0 && (fl = fcntl (fd, F_GETFL)) != -1 && (fl & O_DIRECT))
    __atomic_store_n (&written, true, __ATOMIC_RELAXED);
  errno = e;
}

static void
pay (void)
{
  const char *s = getenv ("SLOW_FLUSH_MS");
  long ms = s ? atol (s) : 20;
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

  if (__atomic_exchange_n (&written, false, __ATOMIC_RELAXED))
    nanosleep (&ts, NULL);
}

#define WRAP_PWRITE(name, off_type)                                     \
  ssize_t                                                               \
  name (int fd, const void *buf, size_t count, off_type offset)         \
  {                                                                     \
    static ssize_t (*real) (int, const void *, size_t, off_type);       \
    ssize_t r;                                                          \
                                                                        \
    if (real == NULL)                                                   \
      real = (ssize_t (*) (int, const void *, size_t, off_type))        \
        dlsym (RTLD_NEXT, #name);                                       \
    r = real (fd, buf, count, offset);                                  \
    note (fd, r);                                                       \
    return r;                                                           \
  }

WRAP_PWRITE (pwrite, off_t)
WRAP_PWRITE (pwrite64, off64_t)

#define WRAP_SYNC(name)                                                 \
  int                                                                   \
  name (int fd)                                                         \
  {                                                                     \
    static int (*real) (int);                                           \
                                                                        \
    if (real == NULL)                                                   \
      real = (int (*) (int)) dlsym (RTLD_NEXT, #name);                  \
    pay ();                                                             \
    return real (fd);                                                   \
  }

WRAP_SYNC (fdatasync)
WRAP_SYNC (fsync)
