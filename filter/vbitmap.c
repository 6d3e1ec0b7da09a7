/* nbdkit-relocate: the volatile bitmap, what survives a process crash. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "fileid.h"
#include "vbitmap.h"

/* The file: this header (in the first 4096 bytes), then the bits as
 * little-endian 64 bit words, like the durable bitmap's.
 */
struct vheader {
  char magic[8];                /* written last when initialising */
  char boot_id[40];             /* /proc/sys/kernel/random/boot_id */
  unsigned char id[16];         /* the relocation's id */
  uint64_t nblocks;
  uint64_t counters[STATE_NCOUNTERS];
};
#define VMAGIC "NBDKRVO1"
#define VHEADER_SIZE 4096

static struct vheader *map;     /* the whole file, mapped */
static uint64_t *words;         /* map + VHEADER_SIZE */
static size_t map_len;
static bool trusted;
static struct file_id map_id = FILE_ID_INIT;   /* removed once complete */

/* The kernel's id of this boot, or "" if it cannot be read. */
static void
read_boot_id (char out[40])
{
  g_autofree char *s = NULL;

  memset (out, 0, 40);
  if (g_file_get_contents ("/proc/sys/kernel/random/boot_id", &s, NULL, NULL))
    g_strlcpy (out, g_strstrip (s), 40);
}

int
vbitmap_open (const char *path, const unsigned char id[16], uint64_t nblocks)
{
  char boot_id[40];
  size_t bytes = (nblocks + 63) / 64 * 8;
  struct stat st;
  int fd;

  read_boot_id (boot_id);
  map_len = VHEADER_SIZE + bytes;
  fd = open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd == -1 || fstat (fd, &st) == -1 ||
      ((uint64_t) st.st_size != map_len && ftruncate (fd, map_len) == -1)) {
    nbdkit_error ("relocate: volatile bitmap %s: %m", path);
    if (fd >= 0)
      close (fd);
    return -1;
  }
  map = mmap (NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close (fd);
  if (map == MAP_FAILED) {
    map = NULL;
    nbdkit_error ("relocate: volatile bitmap %s: mmap: %m", path);
    return -1;
  }
  words = (uint64_t *) ((char *) map + VHEADER_SIZE);
  if (file_id_note (&map_id, path) == -1) {
    nbdkit_error ("relocate: volatile bitmap %s: %m", path);
    return -1;
  }

  trusted = (uint64_t) st.st_size == map_len &&
    memcmp (map->magic, VMAGIC, 8) == 0 && boot_id[0] &&
    strncmp (map->boot_id, boot_id, sizeof boot_id) == 0 &&
    memcmp (map->id, id, 16) == 0 && map->nblocks == nblocks;
  if (!trusted) {
    /* Stale (another boot, another relocation) or new: start empty.
     * The magic goes last, so a crash in between leaves it untrusted
     * (a kill loses no store the CPU made: only the compiler's order
     * matters, hence compiler barriers).
     */
    memset (map->magic, 0, 8);
    __atomic_signal_fence (__ATOMIC_SEQ_CST);
    memset ((char *) map + 8, 0, map_len - 8);
    memcpy (map->boot_id, boot_id, sizeof boot_id);
    memcpy (map->id, id, 16);
    map->nblocks = nblocks;
    __atomic_signal_fence (__ATOMIC_SEQ_CST);
    memcpy (map->magic, VMAGIC, 8);
  }
  return trusted;
}

void
vbitmap_close (void)
{
  if (map)
    munmap (map, map_len);
  map = NULL;
  words = NULL;
  file_id_forget (&map_id);
}

void
vbitmap_remove (void)
{
  file_id_remove (&map_id);
}

void
vbitmap_distrust (void)
{
  if (map)
    memset (map->magic, 0, 8);
  trusted = false;
}

uint64_t
vbitmap_word (uint64_t i)
{
  return GUINT64_FROM_LE (words[i]);
}

void
vbitmap_set_word (uint64_t i, uint64_t w)
{
  words[i] |= GUINT64_TO_LE (w);
}

void
vbitmap_set (uint64_t blk)
{
  vbitmap_set_word (blk / 64, UINT64_C (1) << (blk % 64));
}

bool
vbitmap_counters (uint64_t c[STATE_NCOUNTERS])
{
  if (trusted)
    memcpy (c, map->counters, sizeof map->counters);
  return trusted;
}

void
vbitmap_save_counters (const uint64_t c[STATE_NCOUNTERS])
{
  memcpy (map->counters, c, sizeof map->counters);
}
