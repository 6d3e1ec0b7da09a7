/* LD_PRELOAD shim for the tests: a local disk that does not write.
 * pwrite and pwrite64 to the file named by $HOLD_STORE_PATH wait while
 * the file named by $HOLD_STORE_WHILE exists; every other call is real.
 * Built by the test that uses it:
 *   cc -shared -fPIC -o hold-store.so hold-store.c -ldl
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* Is fd the file to hold? */
static int
is_target (int fd)
{
  const char *want = getenv ("HOLD_STORE_PATH");
  char link[64], path[PATH_MAX];
  ssize_t n;

  if (want == NULL)
    return 0;
  snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink (link, path, sizeof path - 1);
  if (n < 0)
    return 0;
  path[n] = '\0';
  return strcmp (path, want) == 0;
}

static void
hold (int fd)
{
  const char *gate = getenv ("HOLD_STORE_WHILE");

  if (gate == NULL || !is_target (fd))
    return;
  while (access (gate, F_OK) == 0)
    usleep (20 * 1000);
}

#define WRAP_PWRITE(name, off_type)                                     \
  ssize_t                                                               \
  name (int fd, const void *buf, size_t count, off_type offset)         \
  {                                                                     \
    static ssize_t (*real) (int, const void *, size_t, off_type);       \
                                                                        \
    if (real == NULL)                                                   \
      real = (ssize_t (*) (int, const void *, size_t, off_type))        \
        dlsym (RTLD_NEXT, #name);                                       \
    hold (fd);                                                          \
    return real (fd, buf, count, offset);                               \
  }

WRAP_PWRITE (pwrite, off_t)
WRAP_PWRITE (pwrite64, off64_t)
