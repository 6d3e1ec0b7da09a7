/* nbdkit-relocate: the relocation's files.
 *
 * relocate-file (the local file, which holds the relocated image) and
 * relocate-bitmap: checked before nbdkit forks, created for a fresh
 * relocation, opened in .after_fork and closed at unload.  Owns the
 * local file's descriptors and the export's geometry, which the bitmap
 * fixes; blk.c does every read and write of the local file.
 *
 * Named blkfile, not store: blk.c is the block store, and this file
 * holds only its files, not the I/O path.
 *
 * Middle layer, below blk.c: over bitmap.c, state.c and params.c; used
 * by blk.c, bgcopy.c, control.c and the callbacks.
 */

#ifndef RELOCATE_BLKFILE_H
#define RELOCATE_BLKFILE_H

#include <stdbool.h>
#include <stdint.h>

/* Before nbdkit forks: check relocate-file and relocate-bitmap, and
 * load the bitmap of a relocation being resumed.  Changes no file.
 */
int blkfile_check (void);

/* Is this a fresh relocation (no bitmap file yet)? */
bool blkfile_is_new (void);

/* Open the relocation's files, creating those of a fresh one for an
 * export of new_size bytes (ignored when resuming), and set the
 * geometry and descriptors below.
 */
int blkfile_open (uint64_t new_size);
void blkfile_close (void);

/* Set by blkfile_open, before any thread uses them; read-only after. */
extern uint32_t blk_size;     /* bytes per block */
extern uint64_t blk_nblocks;  /* blocks in the export */
extern uint64_t blk_export_size;

extern int blk_fd;            /* the local file, or -1 */
extern int blk_direct_fd;     /* the same, O_DIRECT, or -1 */

#endif /* RELOCATE_BLKFILE_H */
