/* LD_PRELOAD shim for tests/test-powercut.sh: log every change to the
 * files under $POWERCUT_DIR, so that tests/powercut.py can build what a
 * disk might hold after a power cut.
 *
 * Built by the test itself:
 *   cc -shared -fPIC -O2 -o shim.so powercut-shim.c -ldl -lpthread
 *
 * Environment:
 *   POWERCUT_DIR      files whose path is this directory or under it are
 *                     tracked (absolute path, no trailing slash)
 *   POWERCUT_LOG      the log; the data of writes goes to POWERCUT_LOG.data
 *   POWERCUT_BOOT_ID  if set, opening /proc/sys/kernel/random/boot_id
 *                     (open, openat, fopen) reads this text instead
 *
 * One record per line, fields separated by tabs, paths last:
 *   SEQ open INO FLAGS PATH      an fd now names inode INO (O_DIRECT too)
 *   SEQ close INO
 *   SEQ write INO OFFSET LEN DATAOFF    LEN bytes at DATAOFF in the .data file
 *   SEQ falloc INO MODE OFFSET LEN      posix_fallocate is MODE 0
 *   SEQ trunc INO LEN
 *   SEQ syncb INO                 an fsync or fdatasync begins
 *   SEQ sync INO BEGINSEQ         ... and completed successfully
 *   SEQ rename OLDPATH NEWPATH
 *   SEQ unlink PATH
 * SEQ is one counter for every record, taken under the mutex that
 * serialises the appends, so the order is total.  Changes are logged
 * after they return (with the byte count the call returned); a sync is
 * logged both before and after, and only a write logged before the
 * "syncb" of a completed sync is known to be covered by it.  A change
 * still in flight at the cut is not logged: it counts as lost.
 *
 * Only the public entry points the filter calls are wrapped (glibc's
 * internal calls, e.g. posix_fallocate's own fallocate, bypass the
 * PLT).  Not covered: mmap stores, stdio on tracked files, dup, the
 * *at variants of rename and unlink, truncate by path, sync/syncfs.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"
#define MAX_FD 65536

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static const char *dir;                 /* $POWERCUT_DIR or NULL */
static size_t dirlen;
static int log_fd = -1, data_fd = -1;
static uint64_t seq, data_off;
static uint64_t ino_of[MAX_FD];         /* 0: fd not tracked */

static int (*real_open) (const char *, int, ...);
static int (*real_open64) (const char *, int, ...);
static int (*real_openat) (int, const char *, int, ...);
static int (*real_openat64) (int, const char *, int, ...);
static int (*real_open_2) (const char *, int);
static int (*real_open64_2) (const char *, int);
static int (*real_openat_2) (int, const char *, int);
static int (*real_openat64_2) (int, const char *, int);
static int (*real_creat) (const char *, mode_t);
static int (*real_creat64) (const char *, mode_t);
static FILE *(*real_fopen) (const char *, const char *);
static FILE *(*real_fopen64) (const char *, const char *);
static int (*real_close) (int);
static ssize_t (*real_write) (int, const void *, size_t);
static ssize_t (*real_pwrite) (int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64) (int, const void *, size_t, off_t);
static ssize_t (*real_pwritev) (int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64) (int, const struct iovec *, int, off_t);
static int (*real_fallocate) (int, int, off_t, off_t);
static int (*real_fallocate64) (int, int, off_t, off_t);
static int (*real_posix_fallocate) (int, off_t, off_t);
static int (*real_posix_fallocate64) (int, off_t, off_t);
static int (*real_ftruncate) (int, off_t);
static int (*real_ftruncate64) (int, off_t);
static int (*real_fsync) (int);
static int (*real_fdatasync) (int);
static int (*real_rename) (const char *, const char *);
static int (*real_unlink) (const char *);

static void
die (const char *what)
{
  /* Never run on with a silently incomplete log. */
  static const char msg[] = "powercut-shim: fatal: ";
  if (real_write) {
    real_write (2, msg, sizeof msg - 1);
    real_write (2, what, strlen (what));
    real_write (2, "\n", 1);
  }
  abort ();
}

#define RESOLVE(name, sym) \
  do { *(void **) &name = dlsym (RTLD_NEXT, sym); } while (0)

static void
init (void)
{
  const char *log;
  char path[PATH_MAX];

  RESOLVE (real_open, "open");
  RESOLVE (real_open64, "open64");
  RESOLVE (real_openat, "openat");
  RESOLVE (real_openat64, "openat64");
  RESOLVE (real_open_2, "__open_2");
  RESOLVE (real_open64_2, "__open64_2");
  RESOLVE (real_openat_2, "__openat_2");
  RESOLVE (real_openat64_2, "__openat64_2");
  RESOLVE (real_creat, "creat");
  RESOLVE (real_creat64, "creat64");
  RESOLVE (real_fopen, "fopen");
  RESOLVE (real_fopen64, "fopen64");
  RESOLVE (real_close, "close");
  RESOLVE (real_write, "write");
  RESOLVE (real_pwrite, "pwrite");
  RESOLVE (real_pwrite64, "pwrite64");
  RESOLVE (real_pwritev, "pwritev");
  RESOLVE (real_pwritev64, "pwritev64");
  RESOLVE (real_fallocate, "fallocate");
  RESOLVE (real_fallocate64, "fallocate64");
  RESOLVE (real_posix_fallocate, "posix_fallocate");
  RESOLVE (real_posix_fallocate64, "posix_fallocate64");
  RESOLVE (real_ftruncate, "ftruncate");
  RESOLVE (real_ftruncate64, "ftruncate64");
  RESOLVE (real_fsync, "fsync");
  RESOLVE (real_fdatasync, "fdatasync");
  RESOLVE (real_rename, "rename");
  RESOLVE (real_unlink, "unlink");

  dir = getenv ("POWERCUT_DIR");
  if (dir && *dir == '\0')
    dir = NULL;
  if (dir == NULL)
    return;
  dirlen = strlen (dir);
  while (dirlen > 1 && dir[dirlen - 1] == '/')
    dirlen--;
  log = getenv ("POWERCUT_LOG");
  if (log == NULL)
    die ("POWERCUT_DIR is set but POWERCUT_LOG is not");
  snprintf (path, sizeof path, "%s.data", log);
  log_fd = real_open (log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  data_fd = real_open (path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd == -1 || data_fd == -1)
    die ("cannot open POWERCUT_LOG");
}

__attribute__ ((constructor)) static void
shim_init (void)
{
  pthread_once (&once, init);
}

#define INIT() pthread_once (&once, init)

static void
full_write (int f, const void *buf, size_t n)
{
  while (n > 0) {
    ssize_t r = real_write (f, buf, n);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      die ("write to the log failed");
    buf = (const char *) buf + r;
    n -= r;
  }
}

/* Append one record; caller holds mu.  Returns its sequence number. */
static uint64_t
record_locked (const char *fmt, ...)
{
  char line[2 * PATH_MAX + 128];
  va_list ap;
  int n, m;

  m = snprintf (line, sizeof line, "%llu\t", (unsigned long long) seq);
  va_start (ap, fmt);
  n = vsnprintf (line + m, sizeof line - m - 1, fmt, ap);
  va_end (ap);
  if (n < 0 || (size_t) (n + m) >= sizeof line - 1)
    die ("record too long");
  line[m + n] = '\n';
  full_write (log_fd, line, m + n + 1);
  return seq++;
}

/* Is PATH (absolute, or relative to DIRFD) under $POWERCUT_DIR?  The
 * absolute path goes to ABS.
 */
static int
tracked_path (int dirfd, const char *path, char *abs)
{
  char base[PATH_MAX];

  if (dir == NULL || path == NULL)
    return 0;
  if (path[0] == '/')
    snprintf (abs, PATH_MAX, "%s", path);
  else {
    if (dirfd == AT_FDCWD) {
      if (getcwd (base, sizeof base) == NULL)
        return 0;
    }
    else {
      char link[64];
      ssize_t r;
      snprintf (link, sizeof link, "/proc/self/fd/%d", dirfd);
      r = readlink (link, base, sizeof base - 1);
      if (r == -1)
        return 0;
      base[r] = '\0';
    }
    if (snprintf (abs, PATH_MAX, "%.2000s/%.2000s", base, path) >= PATH_MAX)
      return 0;
  }
  return strncmp (abs, dir, dirlen) == 0 &&
    (abs[dirlen] == '\0' || abs[dirlen] == '/');
}

static uint64_t
fd_ino (int fd)
{
  uint64_t ino;

  if (dir == NULL || fd < 0)
    return 0;
  if (fd >= MAX_FD)
    die ("fd too large");
  pthread_mutex_lock (&mu);
  ino = ino_of[fd];
  pthread_mutex_unlock (&mu);
  return ino;
}

/* ---- boot id ---- */

static int
fake_boot_id (const char *path)
{
  const char *id = getenv ("POWERCUT_BOOT_ID");
  size_t n;
  int f;

  if (id == NULL || path == NULL || strcmp (path, BOOT_ID_PATH) != 0)
    return -1;
  f = memfd_create ("powercut-boot-id", MFD_CLOEXEC);
  if (f == -1)
    die ("memfd_create");
  n = strlen (id);
  full_write (f, id, n);
  if (n == 0 || id[n - 1] != '\n')
    full_write (f, "\n", 1);    /* like the real file */
  lseek (f, 0, SEEK_SET);
  return f;
}

/* ---- open ---- */

static int
after_open (int fd, int dirfd, const char *path, int flags)
{
  char abs[PATH_MAX];
  struct stat st;
  int saved = errno;

  if (fd < 0 || !tracked_path (dirfd, path, abs))
    return fd;
  if (fd >= MAX_FD)
    die ("fd too large");
  if (fstat (fd, &st) == -1)
    die ("fstat of a tracked fd");
  pthread_mutex_lock (&mu);
  ino_of[fd] = st.st_ino;
  record_locked ("open\t%llu\t%#x\t%s", (unsigned long long) st.st_ino,
                 (unsigned) flags, abs);
  pthread_mutex_unlock (&mu);
  errno = saved;
  return fd;
}

#define OPEN_MODE(flags, mode)                                  \
  mode_t mode = 0;                                              \
  if ((flags) & (O_CREAT | O_TMPFILE)) {                        \
    va_list ap;                                                 \
    va_start (ap, flags);                                       \
    mode = va_arg (ap, mode_t);                                 \
    va_end (ap);                                                \
  }

int
open (const char *path, int flags, ...)
{
  int f;
  OPEN_MODE (flags, mode);
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return f;
  return after_open (real_open (path, flags, mode), AT_FDCWD, path, flags);
}

int
open64 (const char *path, int flags, ...)
{
  int f;
  OPEN_MODE (flags, mode);
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return f;
  return after_open (real_open64 (path, flags, mode), AT_FDCWD, path, flags);
}

int
openat (int dirfd, const char *path, int flags, ...)
{
  int f;
  OPEN_MODE (flags, mode);
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return f;
  return after_open (real_openat (dirfd, path, flags, mode), dirfd, path,
                     flags);
}

int
openat64 (int dirfd, const char *path, int flags, ...)
{
  int f;
  OPEN_MODE (flags, mode);
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return f;
  return after_open (real_openat64 (dirfd, path, flags, mode), dirfd, path,
                     flags);
}

/* _FORTIFY_SOURCE's entry points. */
int
__open_2 (const char *path, int flags)
{
  int f;
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return f;
  return after_open (real_open_2 (path, flags), AT_FDCWD, path, flags);
}

int
__open64_2 (const char *path, int flags)
{
  int f;
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return f;
  return after_open (real_open64_2 (path, flags), AT_FDCWD, path, flags);
}

int
__openat_2 (int dirfd, const char *path, int flags)
{
  int f;
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return f;
  return after_open (real_openat_2 (dirfd, path, flags), dirfd, path, flags);
}

int
__openat64_2 (int dirfd, const char *path, int flags)
{
  int f;
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return f;
  return after_open (real_openat64_2 (dirfd, path, flags), dirfd, path,
                     flags);
}

int
creat (const char *path, mode_t mode)
{
  INIT ();
  return after_open (real_creat (path, mode), AT_FDCWD, path,
                     O_WRONLY | O_CREAT | O_TRUNC);
}

int
creat64 (const char *path, mode_t mode)
{
  INIT ();
  return after_open (real_creat64 (path, mode), AT_FDCWD, path,
                     O_WRONLY | O_CREAT | O_TRUNC);
}

FILE *
fopen (const char *path, const char *how)
{
  int f;
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return fdopen (f, "r");
  return real_fopen (path, how);
}

FILE *
fopen64 (const char *path, const char *how)
{
  int f;
  INIT ();
  if ((f = fake_boot_id (path)) >= 0)
    return fdopen (f, "r");
  return real_fopen64 (path, how);
}

int
close (int fd)
{
  INIT ();
  if (dir && fd >= 0 && fd < MAX_FD) {
    /* Forget the fd before it can be reused by another thread's open. */
    pthread_mutex_lock (&mu);
    if (ino_of[fd]) {
      record_locked ("close\t%llu", (unsigned long long) ino_of[fd]);
      ino_of[fd] = 0;
    }
    pthread_mutex_unlock (&mu);
  }
  return real_close (fd);
}

/* ---- data ---- */

/* Log N bytes written at OFF from the iovecs. */
static void
log_write (uint64_t ino, off_t off, const struct iovec *iov, int iovcnt,
           size_t n)
{
  size_t left = n;
  int i;

  pthread_mutex_lock (&mu);
  record_locked ("write\t%llu\t%lld\t%zu\t%llu", (unsigned long long) ino,
                 (long long) off, n, (unsigned long long) data_off);
  for (i = 0; i < iovcnt && left > 0; ++i) {
    size_t k = iov[i].iov_len < left ? iov[i].iov_len : left;
    full_write (data_fd, iov[i].iov_base, k);
    left -= k;
  }
  data_off += n;
  pthread_mutex_unlock (&mu);
}

static ssize_t
do_pwrite (ssize_t (*fn) (int, const void *, size_t, off_t),
           int fd, const void *buf, size_t count, off_t off)
{
  uint64_t ino = fd_ino (fd);
  ssize_t r = fn (fd, buf, count, off);
  int saved = errno;

  if (ino && r > 0) {
    struct iovec v = { (void *) buf, (size_t) r };
    log_write (ino, off, &v, 1, r);
  }
  errno = saved;
  return r;
}

ssize_t
pwrite (int fd, const void *buf, size_t count, off_t off)
{
  INIT ();
  return do_pwrite (real_pwrite, fd, buf, count, off);
}

ssize_t
pwrite64 (int fd, const void *buf, size_t count, off_t off)
{
  INIT ();
  return do_pwrite (real_pwrite64, fd, buf, count, off);
}

static ssize_t
do_pwritev (ssize_t (*fn) (int, const struct iovec *, int, off_t),
            int fd, const struct iovec *iov, int iovcnt, off_t off)
{
  uint64_t ino = fd_ino (fd);
  ssize_t r = fn (fd, iov, iovcnt, off);
  int saved = errno;

  if (ino && r > 0)
    log_write (ino, off, iov, iovcnt, r);
  errno = saved;
  return r;
}

ssize_t
pwritev (int fd, const struct iovec *iov, int iovcnt, off_t off)
{
  INIT ();
  return do_pwritev (real_pwritev, fd, iov, iovcnt, off);
}

ssize_t
pwritev64 (int fd, const struct iovec *iov, int iovcnt, off_t off)
{
  INIT ();
  return do_pwritev (real_pwritev64, fd, iov, iovcnt, off);
}

ssize_t
write (int fd, const void *buf, size_t count)
{
  uint64_t ino;
  ssize_t r;
  int saved;

  INIT ();
  ino = fd_ino (fd);
  r = real_write (fd, buf, count);
  saved = errno;
  if (ino && r > 0) {
    /* The position after the write also covers O_APPEND. */
    off_t end = lseek (fd, 0, SEEK_CUR);
    struct iovec v = { (void *) buf, (size_t) r };
    if (end == -1)
      die ("lseek of a tracked fd");
    log_write (ino, end - r, &v, 1, r);
  }
  errno = saved;
  return r;
}

/* ---- size and allocation ---- */

static void
log_falloc (int fd, uint64_t ino, int mode, off_t off, off_t len)
{
  (void) fd;
  pthread_mutex_lock (&mu);
  record_locked ("falloc\t%llu\t%#x\t%lld\t%lld", (unsigned long long) ino,
                 (unsigned) mode, (long long) off, (long long) len);
  pthread_mutex_unlock (&mu);
}

static int
do_fallocate (int (*fn) (int, int, off_t, off_t),
              int fd, int mode, off_t off, off_t len)
{
  uint64_t ino = fd_ino (fd);
  int r = fn (fd, mode, off, len);
  int saved = errno;

  if (ino && r == 0)
    log_falloc (fd, ino, mode, off, len);
  errno = saved;
  return r;
}

int
fallocate (int fd, int mode, off_t off, off_t len)
{
  INIT ();
  return do_fallocate (real_fallocate, fd, mode, off, len);
}

int
fallocate64 (int fd, int mode, off_t off, off_t len)
{
  INIT ();
  return do_fallocate (real_fallocate64, fd, mode, off, len);
}

/* posix_fallocate returns an error number, not -1. */
static int
do_posix_fallocate (int (*fn) (int, off_t, off_t), int fd, off_t off,
                    off_t len)
{
  uint64_t ino = fd_ino (fd);
  int r = fn (fd, off, len);

  if (ino && r == 0)
    log_falloc (fd, ino, 0, off, len);
  return r;
}

int
posix_fallocate (int fd, off_t off, off_t len)
{
  INIT ();
  return do_posix_fallocate (real_posix_fallocate, fd, off, len);
}

int
posix_fallocate64 (int fd, off_t off, off_t len)
{
  INIT ();
  return do_posix_fallocate (real_posix_fallocate64, fd, off, len);
}

static int
do_ftruncate (int (*fn) (int, off_t), int fd, off_t len)
{
  uint64_t ino = fd_ino (fd);
  int r = fn (fd, len);
  int saved = errno;

  if (ino && r == 0) {
    pthread_mutex_lock (&mu);
    record_locked ("trunc\t%llu\t%lld", (unsigned long long) ino,
                   (long long) len);
    pthread_mutex_unlock (&mu);
  }
  errno = saved;
  return r;
}

int
ftruncate (int fd, off_t len)
{
  INIT ();
  return do_ftruncate (real_ftruncate, fd, len);
}

int
ftruncate64 (int fd, off_t len)
{
  INIT ();
  return do_ftruncate (real_ftruncate64, fd, len);
}

/* ---- sync ---- */

static int
do_sync (int (*fn) (int), int fd)
{
  uint64_t ino = fd_ino (fd), begin = 0;
  int r, saved;

  if (ino) {
    pthread_mutex_lock (&mu);
    begin = record_locked ("syncb\t%llu", (unsigned long long) ino);
    pthread_mutex_unlock (&mu);
  }
  r = fn (fd);
  saved = errno;
  if (ino && r == 0) {
    pthread_mutex_lock (&mu);
    record_locked ("sync\t%llu\t%llu", (unsigned long long) ino,
                   (unsigned long long) begin);
    pthread_mutex_unlock (&mu);
  }
  errno = saved;
  return r;
}

int
fsync (int fd)
{
  INIT ();
  return do_sync (real_fsync, fd);
}

int
fdatasync (int fd)
{
  INIT ();
  return do_sync (real_fdatasync, fd);
}

/* ---- names ---- */

int
rename (const char *from, const char *to)
{
  char a[PATH_MAX], b[PATH_MAX];
  int ta, tb, r, saved;

  INIT ();
  ta = tracked_path (AT_FDCWD, from, a);
  tb = tracked_path (AT_FDCWD, to, b);
  r = real_rename (from, to);
  saved = errno;
  if (r == 0 && (ta || tb)) {
    if (!ta || !tb)
      die ("rename into or out of POWERCUT_DIR is not modelled");
    pthread_mutex_lock (&mu);
    record_locked ("rename\t%s\t%s", a, b);
    pthread_mutex_unlock (&mu);
  }
  errno = saved;
  return r;
}

int
unlink (const char *path)
{
  char a[PATH_MAX];
  int t, r, saved;

  INIT ();
  t = tracked_path (AT_FDCWD, path, a);
  r = real_unlink (path);
  saved = errno;
  if (r == 0 && t) {
    pthread_mutex_lock (&mu);
    record_locked ("unlink\t%s", a);
    pthread_mutex_unlock (&mu);
  }
  errno = saved;
  return r;
}
