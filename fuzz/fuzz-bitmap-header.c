/* libFuzzer target: bitmap_parse_header() from filter/bitmap.c.
 *
 * The bitmap file's header is read from disk on every start, so it is
 * untrusted input.  The input is truncated or zero-padded to exactly
 * BITMAP_HEADER_SIZE bytes, in a heap buffer of that size so ASan
 * catches any read past the header.
 *
 * Every header is parsed twice: as given, and "fixed up" (right magic
 * and version, SHA-256 recomputed) so that the field checks behind
 * the checksum are reached too; a fuzzer cannot forge SHA-256.
 *
 * When a parse succeeds, check:
 *  - block_size is a power of two in [4096, 32 MiB];
 *  - nblocks == ceil (size / block_size), size <= INT64_MAX;
 *  - flags only has STARTED and COMPLETE; source is NUL-terminated;
 *  - bitmap_bits_size (nblocks) holds nblocks bits, less 64 spare;
 *  - bitmap_encode_header + bitmap_parse_header gives the same info,
 *    and encoding that again gives the same bytes.
 * When it fails: why is a non-empty, NUL-terminated line.
 */

#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "bitmap.h"
#include "fuzz.h"

/* Header offsets, as in filter/bitmap.c (private there). */
#define OFF_MAGIC      0
#define OFF_VERSION    8
#define OFF_CHECKSUM 296


static void
fix_up (unsigned char *buf)
{
  GChecksum *c = g_checksum_new (G_CHECKSUM_SHA256);
  gsize len = 32;

  memcpy (buf + OFF_MAGIC, "NBDKRELO", 8);
  buf[OFF_VERSION] = 1;         /* little-endian u32 1 */
  buf[OFF_VERSION + 1] = buf[OFF_VERSION + 2] = buf[OFF_VERSION + 3] = 0;
  g_checksum_update (c, buf, OFF_CHECKSUM);
  g_checksum_get_digest (c, buf + OFF_CHECKSUM, &len);
  g_checksum_free (c);
}

static void
check_valid (const struct bitmap_info *info)
{
  uint32_t bs = info->block_size;
  uint64_t want, bits;

  CHECK (bs >= 4096 && bs <= 32 * 1024 * 1024);
  CHECK ((bs & (bs - 1)) == 0);
  CHECK (info->size <= INT64_MAX);
  want = info->size / bs + (info->size % bs != 0);
  CHECK (info->nblocks == want);
  CHECK ((info->flags & ~(uint32_t) (BITMAP_FLAG_STARTED |
                                     BITMAP_FLAG_COMPLETE)) == 0);
  CHECK (memchr (info->source, 0, sizeof info->source) != NULL);

  bits = bitmap_bits_size (info->nblocks);
  CHECK (bits % 8 == 0);
  CHECK (bits / 8 * 64 >= info->nblocks);
  CHECK (bits / 8 * 64 - info->nblocks < 64);
}

static void
check_failed (const char *why, size_t whylen)
{
  CHECK (memchr (why, 0, whylen) != NULL);
  CHECK (why[0] != '\0');
  CHECK (strchr (why, '\n') == NULL);
}

static void
round_trip (const struct bitmap_info *info)
{
  unsigned char *enc1 = malloc (BITMAP_HEADER_SIZE);
  unsigned char *enc2 = malloc (BITMAP_HEADER_SIZE);
  struct bitmap_info again;
  char why[256];

  CHECK (enc1 && enc2);
  memset (&again, 0xa5, sizeof again);
  bitmap_encode_header (info, enc1);
  if (bitmap_parse_header (enc1, &again, why, sizeof why) != 0) {
    fprintf (stderr, "re-encoded header does not parse: %s\n", why);
    abort ();
  }
  CHECK (again.flags == info->flags);
  CHECK (again.size == info->size);
  CHECK (again.block_size == info->block_size);
  CHECK (again.nblocks == info->nblocks);
  CHECK (strcmp (again.source, info->source) == 0);
  check_valid (&again);

  bitmap_encode_header (&again, enc2);
  CHECK (memcmp (enc1, enc2, BITMAP_HEADER_SIZE) == 0);
  free (enc1);
  free (enc2);
}

static void
parse_one (const unsigned char *buf)
{
  struct bitmap_info info;
  char why[256];

  memset (&info, 0xa5, sizeof info);
  memset (why, 0xa5, sizeof why);
  if (bitmap_parse_header (buf, &info, why, sizeof why) == 0) {
    check_valid (&info);
    round_trip (&info);
  }
  else
    check_failed (why, sizeof why);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  unsigned char *buf = malloc (BITMAP_HEADER_SIZE);

  if (buf == NULL)
    return 0;
  memset (buf, 0, BITMAP_HEADER_SIZE);
  memcpy (buf, data, size < BITMAP_HEADER_SIZE ? size : BITMAP_HEADER_SIZE);

  parse_one (buf);              /* as given */
  fix_up (buf);
  parse_one (buf);              /* past the magic, version and checksum */

  free (buf);
  return 0;
}
