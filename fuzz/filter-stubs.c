/* Stand-ins for the filter files below control.c (params.c, blk.c,
 * blkfile.c, bgcopy.c, upstream.c; state.c, pace.c and group.c are
 * linked as they are) that it refers to, so that control.c links
 * unchanged into fuzz-control-line.  The fuzzer only calls the pure
 * parsers (control_parse, control_parse_size, control_json_string);
 * these stubs exist for the linker, and return harmless values should
 * anything reach them.
 */

#include <config.h>

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <glib.h>

#include "params.h"
#include "state.h"
#include "blk.h"
#include "blkfile.h"
#include "bgcopy.h"
#include "upstream.h"

struct config cfg = { .file = "/nonexistent/fuzz.img", .background = true };

uint32_t blk_size = 65536;
uint64_t blk_nblocks;
uint64_t blk_export_size;

uint64_t blk_present_bytes (void) { return 0; }
void blk_retry_failed (void) { }

uint64_t
blk_failed_blocks (uint64_t *first, size_t max, size_t *n)
{
  (void) first; (void) max;
  *n = 0;
  return 0;
}

double bgcopy_current_rate (void) { return 0; }
uint32_t bgcopy_request_bytes (void) { return 4 << 20; }
void bgcopy_in_flight (uint64_t *now, uint64_t *most) { *now = *most = 0; }
void bgcopy_kick (void) { }
int bgcopy_start_relocation (const char *why) { (void) why; return 0; }

bool upstream_connected (void) { return false; }
void upstream_reconnect (void) { }

void
upstream_counts (unsigned *up, unsigned *wanted, unsigned *abandoned)
{
  *up = *wanted = *abandoned = 0;
}

void
upstream_last_error (char *buf, size_t len)
{
  if (len)
    buf[0] = '\0';
}
