/* nbdkit-relocate: the relocation's files. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "bitmap.h"
#include "blkfile.h"
#include "params.h"
#include "state.h"

uint32_t blk_size;
uint64_t blk_nblocks;
uint64_t blk_export_size;

int blk_fd = -1;
int blk_direct_fd = -1;

static bool fresh;                      /* no bitmap file before us */

/* Can we create files in the directory holding path? */
static int
check_dir_writable (const char *param, const char *path)
{
  g_autofree char *dir = g_path_get_dirname (path);

  if (access (dir, W_OK | X_OK) == -1) {
    nbdkit_error ("%s=%s: directory %s is not writable: %m", param, path, dir);
    return -1;
  }
  return 0;
}

int
blkfile_check (void)
{
  struct bitmap_info info;
  struct stat st;
  bool have_file;

  have_file = stat (cfg.file, &st) == 0;
  if (!have_file && errno != ENOENT) {
    nbdkit_error ("relocate-file %s: %m", cfg.file);
    return -1;
  }
  if (have_file && !S_ISREG (st.st_mode)) {
    nbdkit_error ("relocate-file %s: not a regular file", cfg.file);
    return -1;
  }

  if (access (cfg.bitmap, F_OK) == -1) {
    /* A fresh relocation. */
    if (have_file && st.st_size > 0) {
      nbdkit_error ("relocate-file %s exists and is not empty, but has no "
                    "bitmap %s: refusing to overwrite it", cfg.file, cfg.bitmap);
      return -1;
    }
    if (check_dir_writable ("relocate-file", cfg.file) == -1 ||
        check_dir_writable ("relocate-bitmap", cfg.bitmap) == -1)
      return -1;
    fresh = true;
    return 0;
  }

  /* Resuming: the bitmap must describe this relocation. */
  if (bitmap_load (cfg.bitmap) == -1)
    return -1;
  info = *bitmap_info ();
  if (cfg.block_size && cfg.block_size != info.block_size) {
    nbdkit_error ("relocate-bitmap %s has block size %" PRIu32
                  ", but relocate-block-size=%" PRIu32 " was given",
                  cfg.bitmap, info.block_size, cfg.block_size);
    return -1;
  }
  if (strcmp (info.source, cfg.source_id) != 0) {
    nbdkit_error ("relocate-bitmap %s belongs to a relocation from "
                  "'%s', not from '%s'", cfg.bitmap, info.source,
                  cfg.source_id);
    return -1;
  }
  if (have_file && st.st_size > 0 && (uint64_t) st.st_size != info.size) {
    nbdkit_error ("relocate-file %s has size %" PRIu64 ", but its bitmap "
                  "%s is for an image of %" PRIu64 " bytes",
                  cfg.file, (uint64_t) st.st_size, cfg.bitmap, info.size);
    return -1;
  }
  if ((!have_file || st.st_size == 0) && bitmap_count () > 0) {
    nbdkit_error ("relocate-file %s is %s, but its bitmap %s says %" PRIu64
                  " blocks are present", cfg.file,
                  have_file ? "empty" : "missing", cfg.bitmap, bitmap_count ());
    return -1;
  }
  if (!have_file && check_dir_writable ("relocate-file", cfg.file) == -1)
    return -1;
  return 0;
}

bool
blkfile_is_new (void)
{
  return fresh;
}

/* Create the bitmap of a fresh relocation of an export of size bytes. */
static int
create_bitmap (uint64_t size)
{
  struct bitmap_info info = { 0 };

  info.block_size = cfg.block_size ? cfg.block_size : DEFAULT_BLOCK_SIZE;
  info.size = size;
  info.nblocks = (size + info.block_size - 1) / info.block_size;
  info.flags = cfg.start == START_IMMEDIATE ? BITMAP_FLAG_STARTED : 0;
  g_strlcpy (info.source, cfg.source_id, sizeof info.source);
  if (bitmap_create (cfg.bitmap, &info) == -1)
    return -1;
  return bitmap_load (cfg.bitmap);
}

int
blkfile_open (uint64_t new_size)
{
  const struct bitmap_info *info;
  struct stat st;

  uint64_t counters[STATE_NCOUNTERS];
  int64_t recovered;

  if (fresh && create_bitmap (new_size) == -1)
    return -1;
  recovered = bitmap_attach_volatile ();
  if (recovered == -1)
    return -1;
  if (recovered > 0)
    nbdkit_debug ("relocate: %" PRIi64 " blocks that reached the local file "
                  "before the last run ended are present", recovered);
  bitmap_counters (counters);
  state_restore_counters (counters);
  info = bitmap_info ();
  blk_size = info->block_size;
  blk_nblocks = info->nblocks;
  blk_export_size = info->size;
  blk_fd = open (cfg.file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (blk_fd == -1) {
    nbdkit_error ("relocate-file %s: %m", cfg.file);
    return -1;
  }
  if (fsync_parent_dir (cfg.file) == -1)   /* the file must outlive a crash */
    return -1;
  /* Fetched data goes straight to disk: no copy into the page cache,
   * which stays the guest's.  Not every file system has O_DIRECT.
   */
  blk_direct_fd = cfg.direct
    ? open (cfg.file, O_WRONLY | O_DIRECT | O_CLOEXEC) : -1;
  /* The size is durable before any data goes in: a power loss must
   * not leave a file shorter than its bitmap says.
   */
  if (fstat (blk_fd, &st) == -1 ||
      ((uint64_t) st.st_size != blk_export_size &&
       (ftruncate (blk_fd, blk_export_size) == -1 ||
        fdatasync (blk_fd) == -1))) {
    nbdkit_error ("relocate-file %s: cannot size to %" PRIu64 ": %m",
                  cfg.file, blk_export_size);
    if (recovered > 0)
      bitmap_distrust_volatile ();
    return -1;
  }
  /* The blocks recovered from the volatile bitmap are in the page
   * cache, perhaps not on the disk: they are trusted only once a sync
   * says they reached it.  A failed writeback is reported to this
   * sync, and the next start fetches them again.
   */
  if (recovered > 0 && fdatasync (blk_fd) == -1) {
    nbdkit_error ("relocate-file %s: fdatasync of the %" PRIi64 " blocks "
                  "written before the last run ended failed: %m (they are "
                  "fetched again at the next start)", cfg.file, recovered);
    bitmap_distrust_volatile ();
    return -1;
  }
  return 0;
}

void
blkfile_close (void)
{
  if (blk_fd >= 0)
    close (blk_fd);
  if (blk_direct_fd >= 0)
    close (blk_direct_fd);
  blk_fd = blk_direct_fd = -1;
}
