/* nbdkit-relocate: the block store.
 *
 * The local file holds the relocated image; the bitmap says which of
 * its blocks hold valid data.  A block is absent, busy (owned by one
 * thread that is fetching or writing it) or present.  Only the owner
 * of a busy block writes it, so a fetch can never overwrite a newer
 * client write, and two readers of one absent block fetch it once.
 * A client never waits for the background copy's fetch: it takes the
 * block over (fetching it itself), and the background copy then
 * leaves it alone.  Nor does a client's read wait for the local disk
 * when its own fetches bring all of it: it is answered from them, and a
 * storer thread writes the blocks (busy until then).
 * Blocks go absent -> busy -> present, or back to absent on failure;
 * a block the source rejects every time is marked failed.
 *
 * Middle layer: over blkfile.c (the files it reads and writes; see
 * there for blk_size and the other geometry), upstream.c (fetches),
 * bitmap.c, pace.c, state.c and params.c; called by the callbacks, the
 * background copy and control.
 */

#ifndef RELOCATE_BLK_H
#define RELOCATE_BLK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nbdkit-filter.h>

/* Open the block store: the relocation's files (blkfile_open, which
 * creates those of a fresh one for an export of new_size bytes), then
 * the tracking of busy and failed blocks.
 */
int blk_open (uint64_t new_size);
void blk_close (void);

/* Wait for the stores of fetches served already, and store any later
 * one at once (in .cleanup, before the last flush).
 */
void blk_stop_storing (void);

/* Client operations while relocating or complete. */
int blk_read (void *buf, uint32_t count, uint64_t offset, int *err);
int blk_write (const void *buf, uint32_t count, uint64_t offset, bool fua,
               int *err);
int blk_zero (uint32_t count, uint64_t offset, bool may_trim, bool fua,
              int *err);
int blk_trim (uint32_t count, uint64_t offset, bool fua, int *err);
int blk_cache (uint32_t count, uint64_t offset, int *err);
int blk_extents (uint32_t count, uint64_t offset,
                 struct nbdkit_extents *extents, int *err);

/* Make everything written so far durable: fdatasync the local file,
 * then write the dirty part of the bitmap and fdatasync it.
 */
int blk_flush (int *err);

/* A client's flush: what the client wrote so far durable.  The bitmap
 * is written only if a client write needs it (it made a block present,
 * or changed one whose bit was not durable yet); fetched blocks alone
 * can be fetched again.
 */
int blk_flush_client (int *err);

/* Set a bitmap header flag and make it durable with blk_flush. */
int blk_persist_flag (uint32_t flag);

/* For the background copy: claim the next run of at most max blocks
 * below limit that are absent and not busy, starting the search at
 * *cursor and wrapping once.  Returns false if there is none now.
 */
bool blk_claim_next (uint64_t *cursor, uint64_t max, uint64_t limit,
                     uint64_t *first, uint64_t *n);

/* Fetch a claimed run from the source, store it and mark it present;
 * on failure the run is released, and blocks the source rejects every
 * time are marked failed.  Its data is in memory while its request is
 * in flight only.
 */
int blk_fetch_claimed (uint64_t first, uint64_t n, int *err);

/* Mark a claimed run present as zeroes (punching a hole). */
int blk_zero_claimed (uint64_t first, uint64_t n, int *err);

/* Mark the absent, unowned blocks of [first, first+n) present as
 * zeroes (the source said they read as zero).
 */
int blk_mark_zero (uint64_t first, uint64_t n, int *err);

/* Release a claimed run unchanged. */
void blk_release (uint64_t first, uint64_t n);

/* Blocks the source rejects: how many, and the first up to max of them
 * in first[0..*n).  blk_retry_failed lets them be fetched again.
 */
uint64_t blk_failed_blocks (uint64_t *first, size_t max, size_t *n);
void blk_retry_failed (void);

/* Counters. */
uint64_t blk_present_blocks (void);
uint64_t blk_present_bytes (void);

/* Keep the counters where a crash of the process does not lose them
 * (the volatile bitmap); a flush writes them to the bitmap file.
 */
void blk_save_counters (void);

/* Where the client last fetched on demand: the background copy
 * continues from there (the guest tends to read on).
 */
uint64_t blk_demand_hint (void);

#endif /* RELOCATE_BLK_H */
