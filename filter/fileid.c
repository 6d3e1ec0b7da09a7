/* nbdkit-relocate: remove a file the filter made, wherever it went. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>

#include "fileid.h"

int
file_id_note (struct file_id *id, const char *path)
{
  g_autofree char *dir = g_path_get_dirname (path);
  struct stat st;

  file_id_forget (id);
  id->dirfd = open (dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (id->dirfd == -1)
    return -1;
  id->name = g_path_get_basename (path);
  if (fstatat (id->dirfd, id->name, &st, AT_SYMLINK_NOFOLLOW) == -1) {
    int e = errno;
    file_id_forget (id);
    errno = e;
    return -1;
  }
  id->dev = st.st_dev;
  id->ino = st.st_ino;
  return 0;
}

void
file_id_remove (struct file_id *id)
{
  struct stat st;

  if (id->dirfd >= 0 &&
      fstatat (id->dirfd, id->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      st.st_dev == id->dev && st.st_ino == id->ino)
    unlinkat (id->dirfd, id->name, 0);
  file_id_forget (id);
}

void
file_id_forget (struct file_id *id)
{
  if (id->dirfd >= 0)
    close (id->dirfd);
  id->dirfd = -1;
  g_free (id->name);
  id->name = NULL;
}
