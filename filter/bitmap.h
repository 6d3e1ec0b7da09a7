/* nbdkit-relocate: the present-block bitmap, in memory and in its file.
 *
 * The file is a 4096 byte header followed by one bit per block (1 =
 * the block's data is in the local file), stored as little-endian
 * 64 bit words.  Bits only ever go from 0 to 1, so a torn write of a
 * bitmap page can lose presence but never invent it.
 *
 * Every bit set in memory is also set in the volatile bitmap
 * (vbitmap.h) before the caller answers anyone, so that a crash of the
 * process loses nothing that reached the local file.  The counters of
 * state.h are kept in the file too.
 *
 * None of these functions lock: the caller (blk.c) holds its lock
 * around every call that touches the in-memory bits.  blkfile.c loads
 * and creates the bitmap before any thread runs.
 */

#ifndef RELOCATE_BITMAP_H
#define RELOCATE_BITMAP_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "state.h"

#define BITMAP_HEADER_SIZE 4096
#define BITMAP_FLAG_STARTED  1   /* the relocation has left standby */
#define BITMAP_FLAG_COMPLETE 2   /* every block is present */

/* What a bitmap file's header says. */
struct bitmap_info {
  uint32_t flags;
  uint64_t size;                /* export size in bytes */
  uint32_t block_size;
  uint64_t nblocks;
  char source[256];             /* identity of the source */
  unsigned char id[16];         /* random: which relocation this is */
};

/* Parse and check a header (BITMAP_HEADER_SIZE bytes); on failure
 * return -1 and write a one-line reason into why.
 */
int bitmap_parse_header (const unsigned char *buf, struct bitmap_info *info,
                         char *why, size_t whylen);

/* Encode a header into buf (BITMAP_HEADER_SIZE bytes). */
void bitmap_encode_header (const struct bitmap_info *info, unsigned char *buf);

/* Bytes of bits that follow the header for nblocks blocks. */
uint64_t bitmap_bits_size (uint64_t nblocks);

/* Read and check the header of an existing bitmap file, including
 * that the file is long enough to hold every bit.  Returns 0, or -1
 * after nbdkit_error naming the file.
 */
int bitmap_read_info (const char *path, struct bitmap_info *info);

/* Create a new, all-absent bitmap file atomically (write a temporary
 * file, fsync, rename, fsync the directory), with a new random id.
 */
int bitmap_create (const char *path, const struct bitmap_info *info);

/* fsync the directory holding path, so a new name in it is durable. */
int fsync_parent_dir (const char *path);

/* Open the bitmap file and load its bits into memory.  Changes
 * nothing in it (it syncs the file first: a crashed run may have left
 * bits unsynced).
 */
int bitmap_load (const char *path);

/* Open the volatile bitmap beside the loaded one (path.volatile) and
 * take the bits and counters that a crashed run left there, if they
 * are from this boot.  Returns how many blocks it added, or -1.
 */
int64_t bitmap_attach_volatile (void);

/* Close the files and free the bits. */
void bitmap_unload (void);

/* The counters as loaded (from the volatile bitmap if it was trusted,
 * else from the file), and saving them into the volatile bitmap.
 */
void bitmap_counters (uint64_t c[STATE_NCOUNTERS]);
void bitmap_save_counters (const uint64_t c[STATE_NCOUNTERS]);

/* The header as loaded (flags reflect in-memory changes). */
const struct bitmap_info *bitmap_info (void);

bool bitmap_get (uint64_t blk);          /* Is the block present? */
void bitmap_set (uint64_t blk);          /* Mark it present (and dirty). */
uint64_t bitmap_count (void);            /* How many blocks are present. */

/* Is the block's bit in the file, synced (as loaded, or written by a
 * snapshot since)?  How many such bits are there?
 */
bool bitmap_durable (uint64_t blk);
uint64_t bitmap_durable_count (void);
void bitmap_set_flag (uint32_t flag);    /* Set a header flag (dirty). */

/* The first block >= from that is absent, or nblocks if none. */
uint64_t bitmap_next_absent (uint64_t from);

/* An fdatasync of the local file failed: the kernel may have dropped
 * data that the volatile bitmap says is there.  Nothing but the
 * bitmap file is trusted on restart.
 */
void bitmap_distrust_volatile (void);

/* A copy of what is dirty, taken under the caller's lock and written
 * later by bitmap_write_snapshot, after the data it covers is durable.
 */
struct bitmap_snapshot;
struct bitmap_snapshot *bitmap_take_snapshot (const uint64_t c[STATE_NCOUNTERS]);
int bitmap_write_snapshot (struct bitmap_snapshot *snap); /* write + fdatasync */
void bitmap_snapshot_durable (const struct bitmap_snapshot *snap); /* after the write */
void bitmap_restore_snapshot (struct bitmap_snapshot *snap); /* re-dirty after a failure */
void bitmap_free_snapshot (struct bitmap_snapshot *snap);

#endif /* RELOCATE_BITMAP_H */
