/* LD_PRELOAD shim for the tests: fdatasync and fsync of the file named
 * by $FAIL_FDATASYNC_PATH fail with EIO while the file named by
 * $FAIL_FDATASYNC_WHEN exists (always, if that is unset); every other
 * call is real.
 * Built by the test that uses it:
 *   cc -shared -fPIC -o fail-fdatasync.so fail-fdatasync.c -ldl
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int
is_target (int fd)
{
  const char *want = getenv ("FAIL_FDATASYNC_PATH");
  const char *when = getenv ("FAIL_FDATASYNC_WHEN");
  char link[64], path[PATH_MAX];
  ssize_t n;

  if (want == NULL || (when && access (when, F_OK) == -1))
    return 0;
  snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink (link, path, sizeof path - 1);
  if (n < 0)
    return 0;
  path[n] = '\0';
  return strcmp (path, want) == 0;
}

int
fdatasync (int fd)
{
  static int (*real) (int);

  if (is_target (fd)) {
    errno = EIO;
    return -1;
  }
  if (real == NULL)
    real = (int (*) (int)) dlsym (RTLD_NEXT, "fdatasync");
  return real (fd);
}

int
fsync (int fd)
{
  static int (*real) (int);

  if (is_target (fd)) {
    errno = EIO;
    return -1;
  }
  if (real == NULL)
    real = (int (*) (int)) dlsym (RTLD_NEXT, "fsync");
  return real (fd);
}
