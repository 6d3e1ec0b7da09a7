/* nbdkit-relocate: the block store. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "bitmap.h"
#include "blk.h"
#include "blkfile.h"
#include "buf.h"
#include "lock.h"
#include "pace.h"
#include "params.h"
#include "state.h"
#include "upstream.h"

/* O_DIRECT writes (to blk_direct_fd) need this alignment of buffer,
 * length and offset.
 */
#define DIRECT_ALIGN 4096

/* lock protects the bitmap's bits, busy and stealable; changed is
 * broadcast whenever a block leaves the busy state.
 */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER; /* made monotonic */
static uint64_t *busy;                  /* one bit per block */

/* Busy blocks of a background fetch still waiting for the source: a
 * client's read or write never waits behind one (a bulk reply can take
 * a long time on a slow link).  It takes the block over instead, and
 * fetches it itself; the background fetch, when its reply comes,
 * leaves the blocks taken from it alone.  The source does not change
 * while relocating, so both read the same data.
 */
static uint64_t *stealable;             /* one bit per block */

/* Blocks the source rejects every time it is asked (a bad block):
 * not fetched again until relocatectl retry; client reads of them fail.
 */
static uint64_t *failed;                /* one bit per block */
static uint64_t nfailed;

/* Serialises blk_flush, so snapshots reach the file in order. */
static pthread_mutex_t persist_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t demand_hint;            /* atomic */

/* Once every block is present (for good: blocks never become absent
 * again) reads and writes skip the bookkeeping: the filter is a plain
 * server over the local file.
 */
static bool all_present;                /* atomic */

/* Writes skip it only once every bit is durable too.  Until then a
 * client write into a block whose bit is not durable sets
 * client_unsynced (under lock): the client's next flush must write the
 * bitmap.  Other client flushes only sync the local file: bits set by
 * fetches need not be durable, a block whose bit is lost is fetched
 * again.
 */
static bool all_durable;                /* atomic */
static bool client_unsynced;

/* After an fdatasync of the local file fails, Linux may have dropped
 * the data and will not report it again: never write the bitmap
 * again, fail every flush, and distrust the volatile bitmap.
 */
static bool sync_failed;                /* under persist_lock */

/* Demand readahead, under lock: a demand fetch that starts where the
 * previous one ended is sequential, and fetches ra_blocks more blocks
 * than asked for; the window doubles while the guest reads on.
 */
static uint64_t seq_next;
static uint64_t ra_blocks;
static unsigned demand_fetches;         /* demand fetches in progress */
#define RA_START 8                      /* blocks, on the first sequential hit */

/* Claimed runs a single request handles per pass, and the longest
 * run fetched in one go (the source is read in pieces it accepts).
 */
#define MAX_RUNS 16
#define MAX_RUN_BYTES (32 * 1024 * 1024)

/* A client's read does not wait for the local disk: once its fetch
 * has arrived and is served, the storer thread writes it, its blocks
 * busy meanwhile (a busy disk, the copy's writes or another
 * relocation's sync, would add its latency to every fetch).  At most
 * STORE_BACKLOG bytes of data wait so; past that a reader stores its
 * own.  A store that fails is logged and its blocks are absent again,
 * as with the background copy's.
 */
#define STORE_BACKLOG (16 * 1024 * 1024)
struct store { uint64_t first, n; void *buf; size_t len; };
static GThreadPool *storer;
static uint64_t store_backlog;          /* under lock */

/* Bit b of a bit array (busy, stealable, failed). */
static bool
bit_get (const uint64_t *bits, uint64_t b)
{
  return (bits[b / 64] >> (b % 64)) & 1;
}

static void
bit_put (uint64_t *bits, uint64_t b, bool on)
{
  if (on)
    bits[b / 64] |= UINT64_C (1) << (b % 64);
  else
    bits[b / 64] &= ~(UINT64_C (1) << (b % 64));
}

static bool is_busy (uint64_t b) { return bit_get (busy, b); }
static void set_busy (uint64_t b, bool on) { bit_put (busy, b, on); }
static bool is_stealable (uint64_t b) { return bit_get (stealable, b); }
static void set_stealable (uint64_t b, bool on) { bit_put (stealable, b, on); }

/* A client's request meets busy block b: take it over if a background
 * fetch waits for it (it stays busy, now the caller's).  Caller holds
 * lock.
 */
static bool
steal_locked (uint64_t b)
{
  if (!is_stealable (b))
    return false;
  set_stealable (b, false);
  STAT_ADD (taken_over, 1);
  return true;
}

static bool is_failed (uint64_t b) { return bit_get (failed, b); }

static void
set_failed (uint64_t b, bool on)
{
  if (on == is_failed (b))
    return;
  bit_put (failed, b, on);
  nfailed += on ? 1 : -1;
}

/* Wait on changed until the monotonic deadline; false once it passed.
 * Caller holds lock.
 */
static bool
wait_changed (double deadline)
{
  if (deadline <= state_now ())
    return false;
  cond_wait_until (&changed, &lock, deadline);
  return true;
}

/* The error for a client request that cannot wait any longer. */
static int
timed_out (uint64_t b, int *err)
{
  nbdkit_error ("relocate: block %" PRIu64 " is still being fetched after "
                "relocate-timeout=%u s", b, cfg.timeout);
  *err = EIO;
  return -1;
}

/* The storer's job (below). */
static void store_job (gpointer data, gpointer unused);

int
blk_open (uint64_t new_size)
{
  g_autoptr (GError) gerr = NULL;

  cond_init_monotonic (&changed);       /* before any thread waits */
  if (blkfile_open (new_size) == -1)
    return -1;
  all_present = bitmap_count () == blk_nblocks;
  all_durable = bitmap_durable_count () == blk_nblocks;
  busy = calloc (bitmap_bits_size (blk_nblocks) / 8 + 1, 8);
  failed = calloc (bitmap_bits_size (blk_nblocks) / 8 + 1, 8);
  stealable = calloc (bitmap_bits_size (blk_nblocks) / 8 + 1, 8);
  if (busy == NULL || failed == NULL || stealable == NULL) {
    nbdkit_error ("relocate: malloc: %m");
    return -1;
  }
  if (!all_present) {
    storer = g_thread_pool_new (store_job, NULL, 1, TRUE, &gerr);
    if (storer == NULL) {
      nbdkit_error ("relocate: cannot start the storer thread: %s",
                    gerr->message);
      return -1;
    }
  }
  return 0;
}

void
blk_stop_storing (void)
{
  GThreadPool *p;

  pthread_mutex_lock (&lock);
  p = storer;
  storer = NULL;                /* from now on readers store their own */
  pthread_mutex_unlock (&lock);
  if (p)
    g_thread_pool_free (p, FALSE, TRUE);  /* after every queued store */
}

void
blk_close (void)
{
  blk_stop_storing ();
  blkfile_close ();
  free (busy);
  free (failed);
  free (stealable);
  busy = failed = stealable = NULL;
}

/* Bytes of the export covered by blocks [first, first+n). */
static uint64_t
run_bytes (uint64_t first, uint64_t n)
{
  uint64_t off = first * blk_size;
  return MIN (n * blk_size, blk_export_size - off);
}

static int
full_pwrite (const void *buf, uint64_t count, uint64_t offset)
{
  while (count > 0) {
    ssize_t r = pwrite (blk_fd, buf, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    buf = (const char *) buf + r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* Write fetched data: with O_DIRECT where buffer, length and offset
 * allow it.  The blocks are busy, so no buffered I/O of this thread or
 * another touches the range meanwhile.
 */
static int
write_fetched (const char *buf, uint64_t count, uint64_t offset)
{
  while (blk_direct_fd >= 0 && count >= DIRECT_ALIGN &&
         (uintptr_t) buf % DIRECT_ALIGN == 0 && offset % DIRECT_ALIGN == 0) {
    ssize_t r = pwrite (blk_direct_fd, buf,
                        count / DIRECT_ALIGN * DIRECT_ALIGN, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      if (errno != EINVAL)
        return -1;
      break;                    /* not supported here after all */
    }
    buf += r;
    count -= r;
    offset += r;
  }
  return full_pwrite (buf, count, offset);
}

static int
full_pread (void *buf, uint64_t count, uint64_t offset)
{
  while (count > 0) {
    ssize_t r = pread (blk_fd, buf, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {               /* the file was truncated under us */
      memset (buf, 0, count);
      return 0;
    }
    buf = (char *) buf + r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* Make [offset, offset+count) of the local file read as zeroes. */
static int
zero_local (uint64_t count, uint64_t offset, bool may_trim)
{
  static const char zeroes[65536];

  if (may_trim &&
      fallocate (blk_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 offset, count) == 0)
    return 0;
  if (fallocate (blk_fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                 offset, count) == 0)
    return 0;
  if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
    return -1;
  while (count > 0) {
    uint64_t n = MIN (count, sizeof zeroes);
    if (full_pwrite (zeroes, n, offset) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

/* Leave the busy state, marking present or not; caller holds lock. */
static void
finish_run_locked (uint64_t first, uint64_t n, bool present)
{
  uint64_t b;

  for (b = first; b < first + n; ++b) {
    if (present) {
      bitmap_set (b);
      set_failed (b, false);
    }
    set_busy (b, false);
  }
  if (present && bitmap_count () == blk_nblocks)
    __atomic_store_n (&all_present, true, __ATOMIC_RELEASE);
  pthread_cond_broadcast (&changed);
}

static void
finish_run (uint64_t first, uint64_t n, bool present)
{
  pthread_mutex_lock (&lock);
  finish_run_locked (first, n, present);
  pthread_mutex_unlock (&lock);
}

void
blk_release (uint64_t first, uint64_t n)
{
  finish_run (first, n, false);
}

static bool
is_zero (const char *buf, size_t len)
{
  static const char zero[16];

  if (len <= 16)
    return memcmp (buf, zero, len) == 0;
  return memcmp (buf, zero, 16) == 0 && memcmp (buf, buf + 16, len - 16) == 0;
}

/* Write fetched blocks to the local file.  With relocate-zero-detect,
 * runs of all-zero blocks are punched as holes instead, so the local
 * file stays as sparse as the source.
 */
static int
store_fetched (const char *buf, uint64_t first, uint64_t n)
{
  uint64_t i = 0, j, len;

  if (!cfg.zero_detect)
    return write_fetched (buf, run_bytes (first, n), first * blk_size);
  while (i < n) {
    bool zero = is_zero (buf + i * blk_size, run_bytes (first + i, 1));
    for (j = i + 1; j < n &&
           is_zero (buf + j * blk_size, run_bytes (first + j, 1)) == zero; ++j)
      ;
    len = run_bytes (first + i, j - i);
    if (zero ? zero_local (len, (first + i) * blk_size, true)
        : write_fetched (buf + i * blk_size, len, (first + i) * blk_size))
      return -1;
    i = j;
  }
  return 0;
}

static int fetch_run (uint64_t first, uint64_t n, bool background,
                      double deadline, int *err);

/* Store a claimed run whose fetch ended with r (upstream_pread's
 * result, buf holding its data); on failure release it.  Returns as
 * fetch_run does.
 */
static int
store_run (int r, uint64_t first, uint64_t n, void *buf, bool background,
           double deadline, int *err)
{
  uint64_t off = first * blk_size, len = run_bytes (first, n), b;

  if (r == UPSTREAM_REJECTED && n > 1) {
    for (b = first; b < first + n; ++b) {
      int rb = fetch_run (b, 1, background, deadline, err);
      if (rb == -1) {
        if (b + 1 < first + n)
          finish_run (b + 1, first + n - b - 1, false);
        return -1;
      }
      if (rb == UPSTREAM_REJECTED)
        r = rb;
    }
    return r;
  }
  if (r == UPSTREAM_REJECTED) {
    nbdkit_error ("relocate: block %" PRIu64 " (offset %" PRIu64 ") cannot be "
                  "read from the source: marked failed (relocatectl retry)",
                  first, off);
    pthread_mutex_lock (&lock);
    set_failed (first, true);
    finish_run_locked (first, 1, false);
    pthread_mutex_unlock (&lock);
    *err = EIO;
    return r;
  }
  if (r == -1)
    goto fail;
  if (store_fetched (buf, first, n) == -1) {
    *err = errno;
    nbdkit_error ("relocate-file: write of fetched blocks %" PRIu64
                  "-%" PRIu64 ": %m", first, first + n - 1);
    goto fail;
  }
  finish_run (first, n, true);
  if (background)
    STAT_ADD (fetched_background, len);
  else
    STAT_ADD (fetched_demand, len);
  return 0;

 fail:
  finish_run (first, n, false);
  return -1;
}

/* The storer's job: store a run a client read was served from. */
static void
store_job (gpointer data, gpointer unused)
{
  struct store *st = data;
  int err;

  store_run (0, st->first, st->n, st->buf, false, 0, &err);
  buf_put (st->buf, st->len);
  pthread_mutex_lock (&lock);
  store_backlog -= st->len;
  pthread_mutex_unlock (&lock);
  g_free (st);
}

/* Give a fetched run, served already, to the storer with buf: false if
 * the backlog is full (the caller stores it).
 */
static bool
store_later (uint64_t first, uint64_t n, void *buf, size_t len)
{
  struct store *st;

  pthread_mutex_lock (&lock);
  if (storer == NULL || store_backlog + len > STORE_BACKLOG) {
    pthread_mutex_unlock (&lock);
    return false;
  }
  st = g_new (struct store, 1);
  *st = (struct store) { .first = first, .n = n, .buf = buf, .len = len };
  /* Under lock: blk_stop_storing cannot free the pool meanwhile (the
   * storer takes lock only outside the pool's own).
   */
  if (!g_thread_pool_push (storer, st, NULL)) {
    pthread_mutex_unlock (&lock);
    g_free (st);
    return false;
  }
  store_backlog += len;
  pthread_mutex_unlock (&lock);
  return true;
}

/* Let clients take over the claimed blocks [first, first+n) (they
 * are the caller's), and wake the ones waiting for one of them.
 */
static void
offer (uint64_t first, uint64_t n)
{
  uint64_t b;

  pthread_mutex_lock (&lock);
  for (b = first; b < first + n; ++b)
    set_stealable (b, true);
  pthread_cond_broadcast (&changed);
  pthread_mutex_unlock (&lock);
}

/* The worse of two results of fetch_run. */
static int
worse (int a, int b)
{
  return a == -1 || b == -1 ? -1 : a == UPSTREAM_REJECTED ? a : b;
}

/* Fetch a background run whose blocks are offered to clients, then
 * store only the blocks still its own.  A run the source rejects is
 * fetched again block by block (to find the bad ones), its blocks
 * still on offer.  Returns as fetch_run.
 */
static int
fetch_background (uint64_t first, uint64_t n, double deadline, int *err)
{
  g_autofree bool *own = g_new (bool, n);
  uint64_t b, end, k, len = run_bytes (first, n);
  void *buf;
  int r, ret = 0;

  r = upstream_pread_buf (&buf, len, first * blk_size, deadline, true, err);
  pthread_mutex_lock (&lock);
  for (b = first; b < first + n; ++b) {
    own[b - first] = is_stealable (b);
    set_stealable (b, false);
  }
  pthread_mutex_unlock (&lock);

  /* Each stretch of blocks still its own, as a run of its own. */
  for (b = first; b < first + n; b = end) {
    for (end = b; end < first + n && own[end - first] == own[b - first]; ++end)
      ;
    if (!own[b - first])
      continue;
    if (r == UPSTREAM_REJECTED && n > 1) {
      offer (b, end - b);
      for (k = b; k < end; ++k)
        ret = worse (ret, fetch_background (k, 1, deadline, err));
    }
    else
      ret = worse (ret, store_run (r, b, end - b,
                                   buf ? (char *) buf + (b - first) * blk_size
                                   : NULL, true, deadline, err));
  }
  buf_put (buf, len);
  return ret;
}

/* Fetch and store a claimed run; on failure release it.  Returns 0,
 * -1, or UPSTREAM_REJECTED with the blocks the source rejects marked
 * failed (a run is retried block by block to find them).  A background
 * run lets clients take its blocks over while it waits for the source
 * (fetch_background).
 */
static int
fetch_run (uint64_t first, uint64_t n, bool background, double deadline,
           int *err)
{
  uint64_t len = run_bytes (first, n);
  void *buf;
  int r;

  if (background) {
    offer (first, n);
    return fetch_background (first, n, deadline, err);
  }
  r = upstream_pread_buf (&buf, len, first * blk_size, deadline, false, err);
  r = store_run (r, first, n, buf, false, deadline, err);
  buf_put (buf, len);
  return r;
}

int
blk_fetch_claimed (uint64_t first, uint64_t n, int *err)
{
  return fetch_run (first, n, true, state_now () + cfg.timeout, err)
    == 0 ? 0 : -1;
}

int
blk_zero_claimed (uint64_t first, uint64_t n, int *err)
{
  uint64_t len = run_bytes (first, n);

  if (zero_local (len, first * blk_size, true) == -1) {
    *err = errno;
    nbdkit_error ("relocate-file: zeroing blocks %" PRIu64 "-%" PRIu64
                  ": %m", first, first + n - 1);
    finish_run (first, n, false);
    return -1;
  }
  finish_run (first, n, true);
  STAT_ADD (skipped_zero, len);
  return 0;
}

/* Extend the last claimed run for a sequential reader; caller holds
 * lock.
 */
static void
readahead_locked (uint64_t *first, uint64_t *n, size_t runs)
{
  uint64_t max = cfg.readahead / blk_size, b, extra = 0;
  size_t last = runs - 1;

  /* Never let the run outgrow one fetch, nor claim while the source is
   * away: a claimed block makes writers wait.
   */
  max = MIN (max, MAX_RUN_BYTES / blk_size - MIN (n[last], MAX_RUN_BYTES / blk_size));
  if (!upstream_connected ())
    max = 0;
  /* Readahead serves a reader that waits for each read in turn.  A
   * guest with several reads in flight fetches in parallel already;
   * one long run would serialise its reads behind it.
   */
  if (demand_fetches > 0)
    max = 0;
  if (first[0] == seq_next && max > 0)
    ra_blocks = MIN (ra_blocks ? ra_blocks * 2 : RA_START, max);
  else
    ra_blocks = 0;
  for (b = first[last] + n[last];
       extra < ra_blocks && b < blk_nblocks && !bitmap_get (b) && !is_busy (b);
       ++b, ++extra)
    set_busy (b, true);
  n[last] += extra;
  seq_next = first[last] + n[last];
}

int
blk_mark_zero (uint64_t first, uint64_t n, int *err)
{
  uint64_t b = first, end = first + n, run;

  while (b < end) {
    pthread_mutex_lock (&lock);
    while (b < end && (bitmap_get (b) || is_busy (b) || is_failed (b)))
      b++;
    for (run = 0; b + run < end && !bitmap_get (b + run) &&
           !is_busy (b + run) && !is_failed (b + run);
         ++run)
      set_busy (b + run, true);
    pthread_mutex_unlock (&lock);
    if (run > 0 && blk_zero_claimed (b, run, err) == -1)
      return -1;
    b += run;
  }
  return 0;
}

/* Copy what a fetched run [first, first+n) in buf holds of a client's
 * read [offset, offset+count) into out; returns the bytes copied.
 */
static uint64_t
serve_fetched (char *out, uint64_t offset, uint64_t count,
               const char *buf, uint64_t first, uint64_t n)
{
  uint64_t a = MAX (offset, first * blk_size);
  uint64_t b = MIN (offset + count, first * blk_size + run_bytes (first, n));

  if (a >= b)
    return 0;
  memcpy (out + (a - offset), buf + (a - first * blk_size), b - a);
  return b - a;
}

/* Fetch a run a client's request claimed; with out, a read: what the
 * run holds of [offset, offset+count) is copied there at once (*served
 * counts it) and the storer writes the run behind the client's back.
 * Returns as fetch_run.
 */
static int
fetch_demand (uint64_t first, uint64_t n, double deadline, char *out,
              uint64_t offset, uint64_t count, uint64_t *served, int *err)
{
  uint64_t len = run_bytes (first, n);
  void *buf;
  int r;

  r = upstream_pread_buf (&buf, len, first * blk_size, deadline, false, err);
  if (r == 0 && out) {
    *served += serve_fetched (out, offset, count, buf, first, n);
    if (store_later (first, n, buf, len))
      return 0;                 /* buf is the storer's now */
  }
  r = store_run (r, first, n, buf, false, deadline, err);
  buf_put (buf, len);
  return r;
}

/* Make every block of [offset, offset+count) present, fetching the
 * absent ones (each run of them in one request) and waiting for the
 * busy ones.  With out, a client's read: if its own fetches bring all
 * of it (no block was present or another's), it is copied there,
 * *served counts those bytes, and it returns without waiting for them
 * to be stored.
 */
static int
ensure_present (uint64_t offset, uint64_t count, double deadline,
                char *out, uint64_t *served, int *err)
{
  uint64_t b0 = offset / blk_size, b1 = (offset + count - 1) / blk_size;
  uint64_t first[MAX_RUNS], n[MAX_RUNS], b;
  double limit = deadline + (UPSTREAM_SLOW_FACTOR - 1) * cfg.timeout;
  size_t runs, i;
  uint64_t claimed;
  bool waiting, whole;
  int r;

  for (;;) {
    /* Claim the absent runs that nobody else owns. */
    pthread_mutex_lock (&lock);
    runs = claimed = 0;
    waiting = false;
    for (b = b0; b <= b1 && runs < MAX_RUNS; ++b) {
      if (bitmap_get (b))
        continue;
      if (is_failed (b)) {
        pthread_mutex_unlock (&lock);
        for (i = 0; i < runs; ++i)
          blk_release (first[i], n[i]);
        nbdkit_error ("relocate: block %" PRIu64 " (offset %" PRIu64 ") "
                      "cannot be read from the source (relocatectl retry)",
                      b, b * blk_size);
        *err = EIO;
        return -1;
      }
      if (is_busy (b) && !steal_locked (b)) {
        waiting = true;
        continue;
      }
      if (runs > 0 && first[runs - 1] + n[runs - 1] == b &&
          (n[runs - 1] + 1) * blk_size <= MAX_RUN_BYTES)
        n[runs - 1]++;
      else {
        first[runs] = b;
        n[runs++] = 1;
      }
      set_busy (b, true);        /* a block taken over is already */
      claimed++;
    }
    whole = claimed == b1 - b0 + 1;
    if (runs == 0 && !waiting) {
      pthread_mutex_unlock (&lock);
      return 0;                 /* all present */
    }
    if (runs > 0) {
      readahead_locked (first, n, runs);
      demand_fetches++;
    }
    if (runs == 0) {
      bool in_time = wait_changed (deadline);
      pthread_mutex_unlock (&lock);
      /* Another fetch holds a block: on a slow link it takes longer
       * than the timeout, and that is no reason to fail.
       */
      if (!in_time)
        deadline = MIN (limit, MAX (deadline, upstream_progress_deadline ()));
      if (!in_time && state_now () >= deadline)
        return timed_out (b0, err);
      continue;
    }
    pthread_mutex_unlock (&lock);

    /* Fetch them. */
    r = 0;
    for (i = 0; i < runs; ++i) {
      if (r == -1) {
        blk_release (first[i], n[i]);
        continue;
      }
      /* A block the source rejects is marked failed, and the rest of
       * its run fetched: the scan above then fails this request only if
       * it covers that block, not if readahead or another request's
       * run met it.
       */
      r = fetch_demand (first[i], n[i], deadline, whole ? out : NULL, offset,
                        count, served, err) == -1 ? -1 : 0;
      __atomic_store_n (&demand_hint, first[i] + n[i], __ATOMIC_RELAXED);
    }
    pthread_mutex_lock (&lock);
    demand_fetches--;
    pthread_mutex_unlock (&lock);
    if (r == -1)
      return -1;
    if (out && *served == count)
      return 0;                 /* all of it fetched now (maybe not stored) */
    /* Progress: a long request (a 4G cache) gets the timeout again. */
    deadline = MAX (deadline, state_now () + cfg.timeout);
    limit = deadline + (UPSTREAM_SLOW_FACTOR - 1) * cfg.timeout;
  }
}

int
blk_read (void *buf, uint32_t count, uint64_t offset, int *err)
{
  uint64_t served = 0;

  if (!__atomic_load_n (&all_present, __ATOMIC_ACQUIRE) &&
      ensure_present (offset, count, state_now () + cfg.timeout,
                      buf, &served, err) == -1)
    return -1;
  /* Served whole from its own fetches, it need not read the file. */
  if (served < count && full_pread (buf, count, offset) == -1) {
    *err = errno;
    nbdkit_error ("relocate-file: read at offset %" PRIu64 ": %m", offset);
    return -1;
  }
  return 0;
}

int
blk_cache (uint32_t count, uint64_t offset, int *err)
{
  return ensure_present (offset, count, state_now () + cfg.timeout, NULL, NULL,
                         err);
}

/* What a modifying request does to the local file. */
enum op { OP_WRITE, OP_ZERO, OP_TRIM };

/* Fetch block b, which this thread owns, into the local file. */
static int
fetch_owned_block (uint64_t b, double deadline, int *err)
{
  uint64_t len = run_bytes (b, 1);
  void *buf;
  int r = -1;

  pthread_mutex_lock (&lock);
  r = is_failed (b) ? -1 : 0;
  pthread_mutex_unlock (&lock);
  if (r == -1) {
    nbdkit_error ("relocate: block %" PRIu64 " (offset %" PRIu64 ") cannot "
                  "be read from the source (relocatectl retry)",
                  b, b * blk_size);
    *err = EIO;
    return -1;
  }
  r = upstream_pread_buf (&buf, len, b * blk_size, deadline, false, err);
  if (r == UPSTREAM_REJECTED) {
    pthread_mutex_lock (&lock);
    set_failed (b, true);
    pthread_mutex_unlock (&lock);
    *err = EIO;
  }
  else if (r == 0) {
    if (full_pwrite (buf, len, b * blk_size) == 0)
      STAT_ADD (fetched_demand, len);
    else {
      *err = errno;
      nbdkit_error ("relocate-file: write of block %" PRIu64 ": %m", b);
      r = -1;
    }
  }
  buf_put (buf, len);
  return r == 0 ? 0 : -1;
}

/* Apply a write, zero or trim to the local file. */
static int
local_op (enum op op, const void *buf, uint32_t count, uint64_t offset,
          bool flag, int *err)
{
  int r = 0;

  switch (op) {
  case OP_WRITE: r = full_pwrite (buf, count, offset); break;
  case OP_ZERO: r = zero_local (count, offset, flag); break;
  case OP_TRIM: r = zero_local (count, offset, true); break;
  }
  if (r == -1) {
    *err = errno;
    nbdkit_error ("relocate-file: %s of %" PRIu32 " bytes at offset %"
                  PRIu64 ": %m",
                  op == OP_WRITE ? "write" : op == OP_ZERO ? "zero" : "trim",
                  count, offset);
  }
  return r;
}

/* Write, zero or trim [offset, offset+count) in the local file.
 *
 * Wait until no block of the range is busy (a background fetch's is
 * taken over, not waited for), then own every absent block of it.  An
 * absent block only partly covered is fetched first (its other bytes
 * must keep the source's data).  Once the local file is changed, the
 * owned blocks become present.
 */
static int
modify (enum op op, const void *buf, uint32_t count, uint64_t offset,
        bool flag, int *err)
{
  double deadline = state_now () + cfg.timeout;
  double limit = deadline + (UPSTREAM_SLOW_FACTOR - 1) * cfg.timeout;
  uint64_t b0 = offset / blk_size, b1 = (offset + count - 1) / blk_size;
  uint64_t end = offset + count, b;
  bool head_partial, tail_partial, head_absent, tail_absent;
  int r;

  if (__atomic_load_n (&all_durable, __ATOMIC_ACQUIRE))
    return local_op (op, buf, count, offset, flag, err);

  pthread_mutex_lock (&lock);
 again:
  for (b = b0; b <= b1; ++b) {
    if (is_busy (b) && !is_stealable (b)) {
      if (!wait_changed (deadline)) {
        /* Slow, not stuck? */
        deadline = MIN (limit, MAX (deadline, upstream_progress_deadline ()));
        if (state_now () < deadline)
          goto again;
        pthread_mutex_unlock (&lock);
        return timed_out (b, err);
      }
      goto again;
    }
  }
  for (b = b0; b <= b1; ++b)
    if (!bitmap_get (b)) {
      if (is_busy (b))
        steal_locked (b);
      set_busy (b, true);
    }
  head_absent = !bitmap_get (b0);
  tail_absent = !bitmap_get (b1);
  pthread_mutex_unlock (&lock);

  head_partial = offset % blk_size != 0 ||
    (b0 == b1 && end < MIN ((b0 + 1) * blk_size, blk_export_size));
  tail_partial = end < MIN ((b1 + 1) * blk_size, blk_export_size);

  r = 0;
  if (op != OP_TRIM) {
    if (head_partial && head_absent)
      r = fetch_owned_block (b0, deadline, err);
    if (r == 0 && b1 != b0 && tail_partial && tail_absent)
      r = fetch_owned_block (b1, deadline, err);
  }
  if (r == 0)
    r = local_op (op, buf, count, offset, flag, err);

  /* Every busy block of the range is ours.  A changed block whose bit
   * is not durable needs the bitmap written at the client's next flush.
   */
  pthread_mutex_lock (&lock);
  for (b = b0; b <= b1; ++b) {
    if (is_busy (b))
      finish_run_locked (b, 1, r == 0);
    if (r == 0 && !bitmap_durable (b))
      client_unsynced = true;
  }
  pthread_mutex_unlock (&lock);
  return r;
}

int
blk_write (const void *buf, uint32_t count, uint64_t offset, bool fua,
           int *err)
{
  if (modify (OP_WRITE, buf, count, offset, false, err) == -1)
    return -1;
  STAT_ADD (written, count);
  return fua ? blk_flush_client (err) : 0;
}

int
blk_zero (uint32_t count, uint64_t offset, bool may_trim, bool fua, int *err)
{
  if (modify (OP_ZERO, NULL, count, offset, may_trim, err) == -1)
    return -1;
  return fua ? blk_flush_client (err) : 0;
}

/* Trim is advisory: only whole blocks are discarded (they become
 * present and read as zeroes, so they are never fetched); the partly
 * covered blocks at the edges are left alone.
 */
int
blk_trim (uint32_t count, uint64_t offset, bool fua, int *err)
{
  uint64_t start = (offset + blk_size - 1) / blk_size * blk_size;
  uint64_t end = (offset + count) / blk_size * blk_size;

  if (offset + count == blk_export_size)
    end = blk_export_size;
  if (start < end &&
      modify (OP_TRIM, NULL, end - start, start, true, err) == -1)
    return -1;
  return fua ? blk_flush_client (err) : 0;
}

/* Sync the local file, then (unless for_client finds no client write
 * that needs it) write the dirty part of the bitmap and sync it.
 */
static int
flush (bool for_client, int *err)
{
  uint64_t counters[STATE_NCOUNTERS];
  struct bitmap_snapshot *snap = NULL;
  bool bitmap;
  int r = 0;

  /* Held throughout: a flush that skips the bitmap must not return
   * while an earlier one is still writing bits it relies on.
   */
  LOCK_FOR_SCOPE (&persist_lock);
  if (sync_failed) {
    nbdkit_error ("relocate-file: an earlier fdatasync failed; refusing to "
                  "flush (restart nbdkit to recover)");
    *err = EIO;
    return -1;
  }
  state_save_counters (counters);
  pthread_mutex_lock (&lock);
  bitmap = !for_client || client_unsynced;
  if (bitmap) {
    snap = bitmap_take_snapshot (counters);
    if (snap != NULL)
      client_unsynced = false;
  }
  pthread_mutex_unlock (&lock);
  if (bitmap && snap == NULL) {
    *err = ENOMEM;
    nbdkit_error ("relocate: malloc: %m");
    return -1;
  }
  /* The data first: no bit may reach the bitmap file before the
   * block it describes is durable in the local file.
   */
  if (fdatasync (blk_fd) == -1) {
    *err = errno;
    nbdkit_error ("relocate-file: fdatasync: %m; the bitmap will not be "
                  "updated again (restart nbdkit to recover)");
    state_set_failure (FAILURE_LOCAL, "fdatasync of the local file failed: restart nbdkit");
    sync_failed = true;
    /* What reached the file since the last good sync may be gone: the
     * restart must fetch it again, not trust the volatile bitmap.
     */
    pthread_mutex_lock (&lock);
    bitmap_distrust_volatile ();
    pthread_mutex_unlock (&lock);
    r = -1;
  }
  else if (snap && bitmap_write_snapshot (snap) == -1) {
    *err = errno;
    r = -1;
  }
  if (snap) {
    pthread_mutex_lock (&lock);
    if (r == -1) {
      bitmap_restore_snapshot (snap);
      client_unsynced = true;
    }
    else {
      bitmap_snapshot_durable (snap);
      if (bitmap_durable_count () == blk_nblocks)
        __atomic_store_n (&all_durable, true, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock (&lock);
  }
  bitmap_free_snapshot (snap);
  return r;
}

int
blk_flush (int *err)
{
  return flush (false, err);
}

int
blk_flush_client (int *err)
{
  double started = pace_flush_begin ();
  int r = flush (true, err);

  pace_flush_end (started, r == 0);
  return r;
}

int
blk_persist_flag (uint32_t flag)
{
  int err;

  pthread_mutex_lock (&lock);
  bitmap_set_flag (flag);
  pthread_mutex_unlock (&lock);
  return blk_flush (&err);
}

/* Report local holes and data in [offset, end), a present range. */
static int
local_extents (uint64_t offset, uint64_t end, struct nbdkit_extents *extents)
{
  while (offset < end) {
    off_t data = lseek (blk_fd, offset, SEEK_DATA), hole;

    if (data == -1 && errno != ENXIO)
      return nbdkit_add_extent (extents, offset, end - offset, 0);
    if (data == -1 || (uint64_t) data >= end)
      return nbdkit_add_extent (extents, offset, end - offset,
                                NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
    if ((uint64_t) data > offset) {
      if (nbdkit_add_extent (extents, offset, data - offset,
                             NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) == -1)
        return -1;
      offset = data;
    }
    hole = lseek (blk_fd, offset, SEEK_HOLE);
    if (hole == -1 || (uint64_t) hole > end)
      hole = end;
    if (nbdkit_add_extent (extents, offset, hole - offset, 0) == -1)
      return -1;
    offset = hole;
  }
  return 0;
}

/* Copy the source's extents for the absent range [offset, end). */
static int
source_extents (uint64_t offset, uint64_t end, struct nbdkit_extents *extents)
{
  struct nbdkit_extents *up = nbdkit_extents_new (offset, end);
  size_t i;
  int err, r = 0;

  if (up == NULL)
    return -1;
  if (upstream_extents (end - offset, offset, up, &err) == -1 ||
      nbdkit_extents_count (up) == 0)
    r = nbdkit_add_extent (extents, offset, end - offset, 0);
  else {
    for (i = 0; r == 0 && i < nbdkit_extents_count (up); ++i) {
      struct nbdkit_extent e = nbdkit_get_extent (up, i);
      r = nbdkit_add_extent (extents, e.offset, e.length, e.type);
    }
  }
  nbdkit_extents_free (up);
  return r;
}

int
blk_extents (uint32_t count, uint64_t offset,
             struct nbdkit_extents *extents, int *err)
{
  uint64_t end = offset + count, b, run_end;
  bool present;

  /* One run of present or absent blocks per pass; stop after asking
   * the source once, since that costs a round trip.
   */
  while (offset < end) {
    b = offset / blk_size;
    pthread_mutex_lock (&lock);
    present = bitmap_get (b);
    for (++b; b * blk_size < end && bitmap_get (b) == present; ++b)
      ;
    pthread_mutex_unlock (&lock);
    run_end = MIN (b * blk_size, end);
    if (present) {
      if (local_extents (offset, run_end, extents) == -1)
        goto err;
    }
    else {
      if (source_extents (offset, run_end, extents) == -1)
        goto err;
      break;
    }
    offset = run_end;
  }
  return 0;

 err:
  *err = errno;
  return -1;
}

bool
blk_claim_next (uint64_t *cursor, uint64_t max, uint64_t limit,
                uint64_t *first, uint64_t *n)
{
  uint64_t b, start = *cursor < limit ? *cursor : 0;
  bool wrapped = false;

  pthread_mutex_lock (&lock);
  b = start;
  for (;;) {
    b = bitmap_next_absent (b);
    while (b < limit && (is_busy (b) || is_failed (b)))
      b = bitmap_next_absent (b + 1);
    if (b < limit)
      break;
    if (wrapped || start == 0) {
      pthread_mutex_unlock (&lock);
      return false;
    }
    wrapped = true;
    b = 0;
  }
  *first = b;
  *n = 0;
  while (b < limit && *n < max && !bitmap_get (b) && !is_busy (b) &&
         !is_failed (b)) {
    set_busy (b, true);
    ++*n;
    ++b;
  }
  *cursor = b;
  pthread_mutex_unlock (&lock);
  return true;
}

uint64_t
blk_present_blocks (void)
{
  uint64_t r;

  pthread_mutex_lock (&lock);
  r = bitmap_count ();
  pthread_mutex_unlock (&lock);
  return r;
}

uint64_t
blk_present_bytes (void)
{
  uint64_t r;

  pthread_mutex_lock (&lock);
  r = bitmap_count () * blk_size;
  if (blk_nblocks && bitmap_get (blk_nblocks - 1))
    r -= (uint64_t) blk_nblocks * blk_size - blk_export_size;
  pthread_mutex_unlock (&lock);
  return r;
}

uint64_t
blk_failed_blocks (uint64_t *first, size_t max, size_t *n)
{
  uint64_t b, r;

  pthread_mutex_lock (&lock);
  r = nfailed;
  *n = 0;
  for (b = 0; b < blk_nblocks && *n < max && r > 0; ++b)
    if (is_failed (b))
      first[(*n)++] = b;
  pthread_mutex_unlock (&lock);
  return r;
}

void
blk_retry_failed (void)
{
  pthread_mutex_lock (&lock);
  memset (failed, 0, bitmap_bits_size (blk_nblocks));
  nfailed = 0;
  pthread_mutex_unlock (&lock);
}

void
blk_save_counters (void)
{
  uint64_t counters[STATE_NCOUNTERS];

  state_save_counters (counters);
  pthread_mutex_lock (&lock);
  bitmap_save_counters (counters);
  pthread_mutex_unlock (&lock);
}

uint64_t
blk_demand_hint (void)
{
  return __atomic_load_n (&demand_hint, __ATOMIC_RELAXED);
}
