/* nbdkit-relocate: remove a file the filter made, wherever it went.
 *
 * The libvirt hook moves a relocation's directory aside while its
 * server may still run (it serves the next host from the attic), and a
 * new relocation then creates its files at the same paths.  A server
 * must remove its own files, not those: it notes each file it will
 * remove later by its directory (an open descriptor, which follows the
 * directory when it is renamed), its name and its identity (device and
 * inode), and removes it only if the name there still is that file.
 *
 * Bottom layer.
 */

#ifndef RELOCATE_FILEID_H
#define RELOCATE_FILEID_H

#include <stdbool.h>
#include <sys/types.h>

struct file_id {
  int dirfd;                    /* -1: nothing noted */
  char *name;
  dev_t dev;
  ino_t ino;
};
#define FILE_ID_INIT { .dirfd = -1 }

/* Note the file that path names now.  Returns 0, or -1 with errno. */
int file_id_note (struct file_id *id, const char *path);

/* Remove the noted file if its name still is that file, and forget it. */
void file_id_remove (struct file_id *id);

/* Forget the noted file without removing it. */
void file_id_forget (struct file_id *id);

#endif /* RELOCATE_FILEID_H */
