/* Writes the seed corpus for fuzz-bitmap-header: a few valid headers
 * made by bitmap_encode_header.  Used by "fuzz/run --seeds"; the
 * output is kept in fuzz/corpus/bitmap-header/.
 *
 * Usage: gen-seeds DIR
 */

#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "bitmap.h"

static const struct {
  const char *name;
  uint32_t flags;
  uint64_t size;
  uint32_t block_size;
  const char *source;
} seeds[] = {
  { "fresh-1g-64k", 0, UINT64_C (1) << 30, 65536,
    "uri=nbd://old-host/vda" },
  { "started-odd-size", BITMAP_FLAG_STARTED, 1000000007, 4096,
    "socket=/run/src.sock" },
  { "complete-32m", BITMAP_FLAG_STARTED | BITMAP_FLAG_COMPLETE,
    UINT64_C (5) << 40, 32 * 1024 * 1024, "uri=nbd://h:10809/export" },
  { "empty", 0, 0, 4096, "" },
  { "max-size", BITMAP_FLAG_STARTED, INT64_MAX, 4096, "hostname=a" },
};

int
main (int argc, char *argv[])
{
  unsigned char buf[BITMAP_HEADER_SIZE];
  struct bitmap_info info;
  char why[256];
  size_t i;

  if (argc != 2) {
    fprintf (stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  for (i = 0; i < G_N_ELEMENTS (seeds); ++i) {
    g_autofree char *path = g_build_filename (argv[1], seeds[i].name, NULL);
    GError *err = NULL;

    memset (&info, 0, sizeof info);
    info.flags = seeds[i].flags;
    info.size = seeds[i].size;
    info.block_size = seeds[i].block_size;
    info.nblocks = info.size / info.block_size +
      (info.size % info.block_size != 0);
    g_strlcpy (info.source, seeds[i].source, sizeof info.source);
    bitmap_encode_header (&info, buf);
    if (bitmap_parse_header (buf, &info, why, sizeof why) == -1) {
      fprintf (stderr, "%s: does not parse: %s\n", seeds[i].name, why);
      return 1;
    }
    /* Only the first 328 bytes are used; the fuzzer pads with zeroes,
     * so a short seed is the same header and keeps the corpus small.
     */
    if (!g_file_set_contents (path, (const char *) buf, 512, &err)) {
      fprintf (stderr, "%s\n", err->message);
      return 1;
    }
  }
  /* One with a bad checksum, to start from the failure path too. */
  buf[300] ^= 0xff;
  {
    g_autofree char *path = g_build_filename (argv[1], "bad-checksum", NULL);
    GError *err = NULL;

    if (!g_file_set_contents (path, (const char *) buf, 512, &err)) {
      fprintf (stderr, "%s\n", err->message);
      return 1;
    }
  }
  return 0;
}
