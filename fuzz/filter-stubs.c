/* Stand-ins for the other filter files (relocate.c, blk.c, bgcopy.c,
 * upstream.c) that filter/control.c refers to, so that control.c links
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

#include "relocate.h"
#include "blk.h"
#include "bgcopy.h"
#include "upstream.h"

struct config cfg = { .file = "/nonexistent/fuzz.img", .background = true };
struct stats stats;

uint32_t blk_size = 65536;
uint64_t blk_nblocks;
uint64_t blk_export_size;

static bool paused;
static uint64_t rate;

enum reloc_state relocate_state (void) { return STATE_STANDBY; }
int relocate_start (const char *why) { (void) why; return 0; }
void relocate_set_paused (bool p) { paused = p; }
bool relocate_paused (void) { return paused; }
void relocate_set_rate (uint64_t r) { rate = r; }
uint64_t relocate_rate (void) { return rate; }
double relocate_elapsed (void) { return 0; }
char *relocate_failure (void) { return NULL; }

uint64_t blk_present_bytes (void) { return 0; }

double bgcopy_current_rate (void) { return 0; }

bool upstream_connected (void) { return false; }
void upstream_reconnect (void) { }

void
upstream_last_error (char *buf, size_t len)
{
  if (len)
    buf[0] = '\0';
}
