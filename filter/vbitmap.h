/* nbdkit-relocate: the volatile bitmap, what survives a process crash.
 *
 * A block becomes present in memory the moment its data reaches the
 * local file, long before a flush makes the durable bitmap say so.  If
 * the process then dies (kill -9, a segfault, the OOM killer), the
 * data is still in the page cache, but the durable bitmap says absent
 * and a restart would fetch the block again over it.  The volatile
 * bitmap is a second copy of the bits in a file mapped MAP_SHARED and
 * never synced: every bit set in memory is set there too, before the
 * client is answered, and the page cache keeps it across the crash.
 * It is stamped with the kernel's boot id and the relocation's id, and
 * trusted on restart only if the machine has not rebooted since (a
 * power loss can drop the data it describes).
 *
 * Bottom layer, used only by bitmap.c, whose lock covers every call.
 */

#ifndef RELOCATE_VBITMAP_H
#define RELOCATE_VBITMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "state.h"

/* Map path for a relocation with this id and nblocks blocks.  Returns 1
 * if it holds bits written in this boot by the same relocation (read
 * them with vbitmap_word), 0 if it was (re)initialised empty, -1 after
 * nbdkit_error.
 */
int vbitmap_open (const char *path, const unsigned char id[16],
                  uint64_t nblocks);
void vbitmap_close (void);

/* Remove the file (fileid.h: wherever its directory went, and not a
 * file that replaced it): once the relocation is complete it is of no
 * use.
 */
void vbitmap_remove (void);

uint64_t vbitmap_word (uint64_t i);            /* bits of blocks 64i.. */
void vbitmap_set_word (uint64_t i, uint64_t w); /* OR w into them */
void vbitmap_set (uint64_t blk);

/* Never trust the file again (a write to the local file may not have
 * reached the disk): clear its magic, so that a restart starts empty.
 */
void vbitmap_distrust (void);

/* The counters as last saved, if the file was trusted. */
bool vbitmap_counters (uint64_t c[STATE_NCOUNTERS]);
void vbitmap_save_counters (const uint64_t c[STATE_NCOUNTERS]);

#endif /* RELOCATE_VBITMAP_H */
