/* LD_PRELOAD shim for the tests: while the file named by
 * $NO_MEMORY_WHEN exists, every anonymous read-write private mapping
 * of 64 KiB or more fails with ENOMEM (the filter's buffers come from
 * such mappings; run nbdkit with MALLOC_MMAP_THRESHOLD_ set high so
 * that malloc makes none, and thread stacks are MAP_STACK).  Every
 * other call is real.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

void *
mmap (void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
  static void *(*real) (void *, size_t, int, int, int, off_t);
  const char *when = getenv ("NO_MEMORY_WHEN");

  if (when && access (when, F_OK) == 0 && len >= 64 * 1024 &&
      prot == (PROT_READ | PROT_WRITE) &&
      flags == (MAP_PRIVATE | MAP_ANONYMOUS)) {
    errno = ENOMEM;
    return MAP_FAILED;
  }
  if (real == NULL)
    real = (void *(*) (void *, size_t, int, int, int, off_t))
      dlsym (RTLD_NEXT, "mmap");
  return real (addr, len, prot, flags, fd, off);
}
