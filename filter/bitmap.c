/* nbdkit-relocate: the present-block bitmap, in memory and in its file. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "bitmap.h"
#include "vbitmap.h"

/* On-disk header layout (all integers little-endian).  Version 1 had
 * no id: its checksum is at OFF_ID, and it is read as an id of zeroes
 * (a new id is written at the next flush).
 */
#define MAGIC "NBDKRELO"
#define FORMAT_VERSION 2
#define OFF_MAGIC      0    /* char[8] */
#define OFF_VERSION    8    /* u32 */
#define OFF_FLAGS     12    /* u32 */
#define OFF_SIZE      16    /* u64 */
#define OFF_BLKSIZE   24    /* u32 */
#define OFF_NBLOCKS   32    /* u64 */
#define OFF_SOURCE    40    /* char[256], NUL-terminated */
#define OFF_ID       296    /* u8[16], random, made with the file */
#define OFF_CHECKSUM 312    /* SHA-256 of bytes [0, OFF_CHECKSUM) */
#define HEADER_USED  344    /* everything fits in the first sector */
#define HEADER_SECTOR 512   /* and only that is rewritten */

/* The counters (state.h) live in two records, each a sector of its
 * own, written alternately: a torn write spoils one, never both, and
 * never the header above.  Version 1 files have zeroes there.
 */
#define OFF_COUNTERS 1024   /* two records of COUNTERS_SIZE */
#define COUNTERS_SIZE 512
#define CMAGIC "NBDKRCNT"   /* char[8], then u64 seq, the counters, SHA-256 */
#define CRECORD_USED (16 + 8 * STATE_NCOUNTERS)

#define PAGE 4096           /* unit of dirty tracking in the bits */

static int fd = -1;                 /* the open bitmap file */
static struct bitmap_info header;   /* as loaded, flags kept current */
static bool header_dirty;
static uint64_t *bits;              /* one bit per block */
static uint64_t bits_bytes;         /* bitmap_bits_size (nblocks) */
static uint64_t present;            /* number of bits set */
static uint64_t *durable;           /* the bits known to be in the file */
static uint64_t ndurable;           /* number of those set */
static unsigned char *dirty;        /* one byte per PAGE of bits */
static size_t npages;
static char *path_volatile;         /* path.volatile */
static bool have_volatile;          /* vbitmap is open */
static uint64_t counters[STATE_NCOUNTERS];
static uint64_t counters_seq;       /* of the newest counters record */

static void
put32 (unsigned char *p, uint32_t v)
{
  v = GUINT32_TO_LE (v);
  memcpy (p, &v, 4);
}

static void
put64 (unsigned char *p, uint64_t v)
{
  v = GUINT64_TO_LE (v);
  memcpy (p, &v, 8);
}

static uint32_t
get32 (const unsigned char *p)
{
  uint32_t v;
  memcpy (&v, p, 4);
  return GUINT32_FROM_LE (v);
}

static uint64_t
get64 (const unsigned char *p)
{
  uint64_t v;
  memcpy (&v, p, 8);
  return GUINT64_FROM_LE (v);
}

/* SHA-256 of buf[0, len) into out. */
static void
checksum (const unsigned char *buf, size_t len, unsigned char out[32])
{
  GChecksum *c = g_checksum_new (G_CHECKSUM_SHA256);
  gsize outlen = 32;

  g_checksum_update (c, buf, len);
  g_checksum_get_digest (c, out, &outlen);
  g_checksum_free (c);
}

uint64_t
bitmap_bits_size (uint64_t nblocks)
{
  return (nblocks + 63) / 64 * 8;
}

void
bitmap_encode_header (const struct bitmap_info *info, unsigned char *buf)
{
  memset (buf, 0, BITMAP_HEADER_SIZE);
  memcpy (buf + OFF_MAGIC, MAGIC, 8);
  put32 (buf + OFF_VERSION, FORMAT_VERSION);
  put32 (buf + OFF_FLAGS, info->flags);
  put64 (buf + OFF_SIZE, info->size);
  put32 (buf + OFF_BLKSIZE, info->block_size);
  put64 (buf + OFF_NBLOCKS, info->nblocks);
  g_strlcpy ((char *) buf + OFF_SOURCE, info->source, sizeof info->source);
  memcpy (buf + OFF_ID, info->id, sizeof info->id);
  checksum (buf, OFF_CHECKSUM, buf + OFF_CHECKSUM);
}

int
bitmap_parse_header (const unsigned char *buf, struct bitmap_info *info,
                     char *why, size_t whylen)
{
  unsigned char sum[32];
  uint32_t version, bs, sum_at;

  if (memcmp (buf + OFF_MAGIC, MAGIC, 8) != 0) {
    snprintf (why, whylen, "not a relocate bitmap (bad magic)");
    return -1;
  }
  version = get32 (buf + OFF_VERSION);
  if (version != 1 && version != FORMAT_VERSION) {
    snprintf (why, whylen, "bitmap version %u is not supported (want %u)",
              version, (unsigned) FORMAT_VERSION);
    return -1;
  }
  sum_at = version == 1 ? OFF_ID : OFF_CHECKSUM;
  checksum (buf, sum_at, sum);
  if (memcmp (sum, buf + sum_at, 32) != 0) {
    snprintf (why, whylen, "header checksum mismatch (corrupt)");
    return -1;
  }
  info->flags = get32 (buf + OFF_FLAGS);
  info->size = get64 (buf + OFF_SIZE);
  bs = get32 (buf + OFF_BLKSIZE);
  info->block_size = bs;
  info->nblocks = get64 (buf + OFF_NBLOCKS);
  if (bs < 4096 || bs > 32 * 1024 * 1024 || (bs & (bs - 1)) != 0 ||
      info->size > INT64_MAX ||
      info->nblocks != (info->size + bs - 1) / bs ||
      (info->flags & ~(BITMAP_FLAG_STARTED | BITMAP_FLAG_COMPLETE)) != 0) {
    snprintf (why, whylen, "header fields are inconsistent (corrupt)");
    return -1;
  }
  if (memchr (buf + OFF_SOURCE, 0, sizeof info->source) == NULL) {
    snprintf (why, whylen, "source identity is not terminated (corrupt)");
    return -1;
  }
  memcpy (info->source, buf + OFF_SOURCE, sizeof info->source);
  memset (info->id, 0, sizeof info->id);
  if (version > 1)
    memcpy (info->id, buf + OFF_ID, sizeof info->id);
  return 0;
}

int
bitmap_read_info (const char *path, struct bitmap_info *info)
{
  unsigned char buf[BITMAP_HEADER_SIZE];
  char why[256];
  struct stat st;
  ssize_t r;
  int f;

  f = open (path, O_RDONLY | O_CLOEXEC);
  if (f == -1) {
    nbdkit_error ("relocate-bitmap %s: %m", path);
    return -1;
  }
  if (fstat (f, &st) == -1) {
    nbdkit_error ("relocate-bitmap %s: fstat: %m", path);
    close (f);
    return -1;
  }
  r = pread (f, buf, sizeof buf, 0);
  close (f);
  if (r == -1) {
    nbdkit_error ("relocate-bitmap %s: read: %m", path);
    return -1;
  }
  if (r < (ssize_t) sizeof buf) {
    nbdkit_error ("relocate-bitmap %s: truncated: %zd bytes, "
                  "shorter than its %d byte header", path, r, BITMAP_HEADER_SIZE);
    return -1;
  }
  if (bitmap_parse_header (buf, info, why, sizeof why) == -1) {
    nbdkit_error ("relocate-bitmap %s: %s", path, why);
    return -1;
  }
  if ((uint64_t) st.st_size < BITMAP_HEADER_SIZE + bitmap_bits_size (info->nblocks)) {
    nbdkit_error ("relocate-bitmap %s: truncated: %" PRIu64 " bytes, "
                  "need %" PRIu64 " for %" PRIu64 " blocks",
                  path, (uint64_t) st.st_size,
                  BITMAP_HEADER_SIZE + bitmap_bits_size (info->nblocks),
                  info->nblocks);
    return -1;
  }
  return 0;
}

int
fsync_parent_dir (const char *path)
{
  g_autofree char *dir = g_path_get_dirname (path);
  int d = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

  if (d == -1 || fsync (d) == -1) {
    nbdkit_error ("%s: fsync directory: %m", dir);
    if (d >= 0)
      close (d);
    return -1;
  }
  close (d);
  return 0;
}

int
bitmap_create (const char *path, const struct bitmap_info *info_in)
{
  g_autofree char *tmp = g_strdup_printf ("%s.new", path);
  g_autofree char *vpath = g_strdup_printf ("%s.volatile", path);
  struct bitmap_info info = *info_in;
  unsigned char buf[BITMAP_HEADER_SIZE];
  int f;

  if (getrandom (info.id, sizeof info.id, 0) != sizeof info.id) {
    nbdkit_error ("relocate-bitmap %s: getrandom: %m", path);
    return -1;
  }
  /* A volatile bitmap left by an earlier relocation never applies. */
  if (unlink (vpath) == -1 && errno != ENOENT) {
    nbdkit_error ("relocate: %s: %m", vpath);
    return -1;
  }
  bitmap_encode_header (&info, buf);
  f = open (tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (f == -1) {
    nbdkit_error ("relocate-bitmap %s: create: %m", tmp);
    return -1;
  }
  if (pwrite (f, buf, sizeof buf, 0) != sizeof buf ||
      (errno = posix_fallocate (f, 0, BITMAP_HEADER_SIZE +
                                bitmap_bits_size (info.nblocks))) != 0 ||
      fsync (f) == -1) {
    nbdkit_error ("relocate-bitmap %s: write: %m", tmp);
    close (f);
    unlink (tmp);
    return -1;
  }
  close (f);
  if (rename (tmp, path) == -1) {
    nbdkit_error ("relocate-bitmap %s: rename: %m", path);
    unlink (tmp);
    return -1;
  }
  return fsync_parent_dir (path);
}

/* Encode counter record number seq into buf (COUNTERS_SIZE bytes). */
static void
encode_counters (uint64_t seq, const uint64_t c[STATE_NCOUNTERS],
                 unsigned char *buf)
{
  size_t i;

  memset (buf, 0, COUNTERS_SIZE);
  memcpy (buf, CMAGIC, 8);
  put64 (buf + 8, seq);
  for (i = 0; i < STATE_NCOUNTERS; ++i)
    put64 (buf + 16 + 8 * i, c[i]);
  checksum (buf, CRECORD_USED, buf + CRECORD_USED);
}

/* Take the newest valid counters record; none: zeroes. */
static void
load_counters (void)
{
  unsigned char buf[COUNTERS_SIZE], sum[32];
  uint64_t seq;
  size_t r, i;

  memset (counters, 0, sizeof counters);
  counters_seq = 0;
  for (r = 0; r < 2; ++r) {
    if (pread (fd, buf, COUNTERS_SIZE, OFF_COUNTERS + r * COUNTERS_SIZE)
        != COUNTERS_SIZE || memcmp (buf, CMAGIC, 8) != 0)
      continue;
    checksum (buf, CRECORD_USED, sum);
    seq = get64 (buf + 8);
    if (memcmp (sum, buf + CRECORD_USED, 32) != 0 || seq < counters_seq)
      continue;
    counters_seq = seq;
    for (i = 0; i < STATE_NCOUNTERS; ++i)
      counters[i] = get64 (buf + 16 + 8 * i);
  }
}

int
bitmap_load (const char *path)
{
  uint64_t i;
  ssize_t r;

  if (bitmap_read_info (path, &header) == -1)
    return -1;
  fd = open (path, O_RDWR | O_CLOEXEC);
  if (fd == -1) {
    nbdkit_error ("relocate-bitmap %s: %m", path);
    return -1;
  }
  bits_bytes = bitmap_bits_size (header.nblocks);
  npages = (bits_bytes + PAGE - 1) / PAGE;
  bits = calloc (1, bits_bytes ? bits_bytes : 8);
  durable = calloc (1, bits_bytes ? bits_bytes : 8);
  dirty = calloc (1, npages ? npages : 1);
  if (bits == NULL || durable == NULL || dirty == NULL) {
    nbdkit_error ("relocate-bitmap %s: malloc: %m", path);
    return -1;
  }
  /* A run that crashed may have left its last write of the bits
   * unsynced: sync them, so that every bit read is durable.
   */
  if (fdatasync (fd) == -1) {
    nbdkit_error ("relocate-bitmap %s: fdatasync: %m", path);
    return -1;
  }
  r = pread (fd, bits, bits_bytes, BITMAP_HEADER_SIZE);
  if (r != (ssize_t) bits_bytes) {
    nbdkit_error ("relocate-bitmap %s: read bits: %s", path,
                  r == -1 ? g_strerror (errno) : "short read");
    return -1;
  }
  present = 0;
  for (i = 0; i < bits_bytes / 8; ++i) {
    bits[i] = GUINT64_FROM_LE (bits[i]);
    /* Bits past the last block are meaningless: clear them. */
    if (i == bits_bytes / 8 - 1 && header.nblocks % 64)
      bits[i] &= (UINT64_C (1) << (header.nblocks % 64)) - 1;
    present += __builtin_popcountll (bits[i]);
  }
  memcpy (durable, bits, bits_bytes);
  ndurable = present;
  header_dirty = false;
  load_counters ();
  path_volatile = g_strdup_printf ("%s.volatile", path);
  return 0;
}

/* Add the blocks of w to word i of the bits, to be written at the next
 * flush.
 */
static void
merge_word (uint64_t i, uint64_t w)
{
  if ((w & ~bits[i]) == 0)
    return;
  bits[i] |= w;
  dirty[i * 8 / PAGE] = 1;
}

int64_t
bitmap_attach_volatile (void)
{
  uint64_t i, before = present;
  int r;

  if (header.flags & BITMAP_FLAG_COMPLETE)
    return 0;                   /* nothing can be lost any more */
  /* A version 1 file has no id: give it one, written at the next flush. */
  if (memcmp (header.id, (unsigned char[16]) { 0 }, 16) == 0) {
    if (getrandom (header.id, sizeof header.id, 0) != sizeof header.id) {
      nbdkit_error ("relocate-bitmap: getrandom: %m");
      return -1;
    }
    header_dirty = true;
  }
  r = vbitmap_open (path_volatile, header.id, header.nblocks);
  if (r == -1)
    return -1;
  have_volatile = true;
  for (i = 0; i < bits_bytes / 8; ++i) {
    if (r == 1)
      merge_word (i, vbitmap_word (i));
    vbitmap_set_word (i, bits[i]);
  }
  /* Clear bits past the last block again. */
  if (header.nblocks % 64)
    bits[bits_bytes / 8 - 1] &= (UINT64_C (1) << (header.nblocks % 64)) - 1;
  present = 0;
  for (i = 0; i < bits_bytes / 8; ++i)
    present += __builtin_popcountll (bits[i]);
  if (r == 1)
    vbitmap_counters (counters);
  return present - before;
}

void
bitmap_distrust_volatile (void)
{
  if (have_volatile)
    vbitmap_distrust ();
}

void
bitmap_unload (void)
{
  if (fd >= 0)
    close (fd);
  fd = -1;
  if (have_volatile)
    vbitmap_close ();
  have_volatile = false;
  free (bits);
  free (durable);
  free (dirty);
  g_free (path_volatile);
  bits = durable = NULL;
  dirty = NULL;
  path_volatile = NULL;
}

void
bitmap_counters (uint64_t c[STATE_NCOUNTERS])
{
  memcpy (c, counters, sizeof counters);
}

void
bitmap_save_counters (const uint64_t c[STATE_NCOUNTERS])
{
  if (have_volatile)
    vbitmap_save_counters (c);
}

const struct bitmap_info *
bitmap_info (void)
{
  return &header;
}

bool
bitmap_get (uint64_t blk)
{
  return (bits[blk / 64] >> (blk % 64)) & 1;
}

void
bitmap_set (uint64_t blk)
{
  uint64_t mask = UINT64_C (1) << (blk % 64);

  if (bits[blk / 64] & mask)
    return;
  bits[blk / 64] |= mask;
  present++;
  dirty[blk / 8 / PAGE] = 1;
  if (have_volatile)
    vbitmap_set (blk);
}

uint64_t
bitmap_count (void)
{
  return present;
}

bool
bitmap_durable (uint64_t blk)
{
  return (durable[blk / 64] >> (blk % 64)) & 1;
}

uint64_t
bitmap_durable_count (void)
{
  return ndurable;
}

void
bitmap_set_flag (uint32_t flag)
{
  if ((header.flags & flag) != flag) {
    header.flags |= flag;
    header_dirty = true;
  }
}

uint64_t
bitmap_next_absent (uint64_t from)
{
  uint64_t w;

  while (from < header.nblocks) {
    w = ~bits[from / 64] >> (from % 64);
    if (w)
      return MIN (from + __builtin_ctzll (w), header.nblocks);
    from = (from / 64 + 1) * 64;
  }
  return header.nblocks;
}

struct bitmap_snapshot {
  bool header;                  /* write the header too */
  bool complete;                /* the header says complete */
  unsigned char hdr[BITMAP_HEADER_SIZE];
  uint64_t counters_seq;
  unsigned char counters[COUNTERS_SIZE];
  size_t n;                     /* pages in the snapshot */
  size_t *page;                 /* their indexes */
  unsigned char *data;          /* n * PAGE bytes, little-endian words */
};

struct bitmap_snapshot *
bitmap_take_snapshot (const uint64_t c[STATE_NCOUNTERS])
{
  struct bitmap_snapshot *s = calloc (1, sizeof *s);
  size_t i, n = 0, j;

  if (s == NULL)
    return NULL;
  for (i = 0; i < npages; ++i)
    n += dirty[i];
  s->page = malloc ((n ? n : 1) * sizeof *s->page);
  s->data = malloc ((n ? n : 1) * PAGE);
  if (s->page == NULL || s->data == NULL) {
    bitmap_free_snapshot (s);
    return NULL;
  }
  for (i = 0; i < npages; ++i) {
    if (!dirty[i])
      continue;
    uint64_t *out = (uint64_t *) (s->data + s->n * PAGE);
    size_t words = MIN ((uint64_t) PAGE, bits_bytes - i * PAGE) / 8;
    for (j = 0; j < words; ++j)
      out[j] = GUINT64_TO_LE (bits[i * PAGE / 8 + j]);
    s->page[s->n++] = i;
    dirty[i] = 0;
  }
  if (header_dirty) {
    s->header = true;
    s->complete = header.flags & BITMAP_FLAG_COMPLETE;
    bitmap_encode_header (&header, s->hdr);
    header_dirty = false;
  }
  /* The counters ride along when there is something to write anyway:
   * a flush with nothing new stays one fdatasync of the local file.
   */
  if (s->n || s->header) {
    s->counters_seq = ++counters_seq;
    encode_counters (s->counters_seq, c, s->counters);
  }
  return s;
}

int
bitmap_write_snapshot (struct bitmap_snapshot *s)
{
  size_t i;

  for (i = 0; i < s->n; ++i) {
    uint64_t off = (uint64_t) s->page[i] * PAGE;
    size_t len = MIN ((uint64_t) PAGE, bits_bytes - off);
    if (pwrite (fd, s->data + i * PAGE, len, BITMAP_HEADER_SIZE + off)
        != (ssize_t) len)
      goto err;
  }
  if (s->counters_seq &&
      pwrite (fd, s->counters, COUNTERS_SIZE,
              OFF_COUNTERS + (s->counters_seq % 2) * COUNTERS_SIZE)
      != COUNTERS_SIZE)
    goto err;
  /* The header goes last: a complete flag must never be durable
   * before the bits it summarises.
   */
  if (s->n && s->header && fdatasync (fd) == -1)
    goto err;
  /* The header's first sector only: the counters records follow. */
  if (s->header && pwrite (fd, s->hdr, HEADER_SECTOR, 0) != HEADER_SECTOR)
    goto err;
  if (s->counters_seq && fdatasync (fd) == -1)
    goto err;
  /* Complete: nothing can be lost now, the volatile bitmap can go. */
  if (s->complete && have_volatile)
    vbitmap_remove ();
  return 0;

 err:
  if (errno == 0)
    errno = EIO;
  nbdkit_error ("relocate-bitmap: write: %m");
  return -1;
}

void
bitmap_snapshot_durable (const struct bitmap_snapshot *s)
{
  size_t i, j;

  for (i = 0; i < s->n; ++i) {
    const uint64_t *in = (const uint64_t *) (s->data + i * PAGE);
    size_t first = s->page[i] * PAGE / 8;
    size_t words = MIN ((uint64_t) PAGE, bits_bytes - s->page[i] * PAGE) / 8;
    for (j = 0; j < words; ++j) {
      uint64_t w = GUINT64_FROM_LE (in[j]);
      ndurable += __builtin_popcountll (w & ~durable[first + j]);
      durable[first + j] |= w;
    }
  }
}

void
bitmap_restore_snapshot (struct bitmap_snapshot *s)
{
  size_t i;

  for (i = 0; i < s->n; ++i)
    dirty[s->page[i]] = 1;
  if (s->header)
    header_dirty = true;
}

void
bitmap_free_snapshot (struct bitmap_snapshot *s)
{
  if (s == NULL)
    return;
  free (s->page);
  free (s->data);
  free (s);
}
