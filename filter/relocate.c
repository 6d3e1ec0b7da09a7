/* nbdkit-relocate: the filter's callbacks.
 *
 * nbdkit --filter=relocate nbd uri=... relocate-file=FILE
 *
 * Top layer: this file holds only the nbdkit callbacks.  Below it:
 *
 *   control.c   the control socket (relocatectl)
 *   bgcopy.c    the background copy; standby -> relocating -> complete
 *   blk.c       the block store: the local file and which blocks it holds
 *   blkfile.c   the relocation's files: checked, created, opened, closed
 *   upstream.c  the connections to the source
 *   bitmap.c    the present-block bitmap and its file, over
 *   vbitmap.c   its volatile twin, what survives a crash of the process
 *   drain.c     SIGTERM: let the clients' requests finish, then exit
 *   pace.c      pacing: slow the copy while it slows the guest's flushes
 *   group.c     one bandwidth budget shared by a host's relocations
 *   state.c     life cycle, pause, rate, failure, counters
 *   params.c    the relocate-* parameters
 *
 * Each file includes only the headers of files below it.
 *
 * Clients never open the plugin: .open does not call next, so every
 * callback answers without it.  Every request to the source goes
 * through upstream.c, which from .after_fork on keeps up to
 * relocate-connections contexts of its own open on the plugin
 * (nbdkit_next_context_open), replacing those that fail or stop
 * answering.  Until the relocation starts (standby) reads pass through
 * and nothing is stored; then blocks are fetched on demand and in the
 * background into the local file; once all are present the contexts
 * are closed and the source is no longer used.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "params.h"
#include "state.h"
#include "bitmap.h"
#include "upstream.h"
#include "blk.h"
#include "blkfile.h"
#include "bgcopy.h"
#include "control.h"
#include "drain.h"
#include "group.h"

/* ---- Configuration and start-up ---- */

static int
relocate_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  if (params_is_ours (key))
    return params_set (key, value);
  params_note_source (key, value);
  return next (nxdata, key, value);
}

/* Everything that can be checked without the source, before nbdkit
 * forks: a failure here changes no file.
 */
static int
relocate_config_complete (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata)
{
  if (params_complete () == -1 ||
      (cfg.control && control_check_path (cfg.control) == -1) ||
      blkfile_check () == -1)
    return -1;
  state_set_rate (cfg.rate);
  return next (nxdata);
}

#define relocate_config_help PARAMS_HELP

static int
relocate_after_fork (nbdkit_backend *backend)
{
  int64_t size = -1;
  uint32_t flags;

  /* The rate group's file first: before touching any of ours. */
  if (group_open () == -1)
    return -1;
  /* A new relocation needs the source's size.  A resumed one may start
   * without the source, not with a source that changed: check before
   * touching any file.
   */
  if (blkfile_is_new ()) {
    if (upstream_connect_once (backend, &size) == -1) {
      nbdkit_error ("relocate: cannot reach the source (%s) to learn its "
                    "size; a new relocation needs it", cfg.source_id);
      return -1;
    }
  }
  else if (!(bitmap_info ()->flags & BITMAP_FLAG_COMPLETE) &&
           upstream_connect_once (backend, &size) == 0 &&
           (uint64_t) size != bitmap_info ()->size) {
    nbdkit_error ("relocate: the source has size %" PRIi64 ", but %s "
                  "holds %" PRIu64 " bytes", size, cfg.bitmap,
                  bitmap_info ()->size);
    return -1;
  }
  if (blk_open (size) == -1)
    return -1;

  flags = bitmap_info ()->flags;
  if (flags & BITMAP_FLAG_COMPLETE) {
    state_set (STATE_COMPLETE);
    group_close ();             /* nothing to copy: no share */
    nbdkit_debug ("relocate: %s is complete; the source is not used",
                  cfg.file);
  }
  else {
    if (upstream_start (backend, blk_export_size) == -1)
      return -1;
    state_set (flags & BITMAP_FLAG_STARTED ? STATE_RELOCATING : STATE_STANDBY);
    if (bgcopy_start_threads () == -1)
      return -1;
    if (cfg.start == START_IMMEDIATE &&
        bgcopy_start_relocation ("relocate-start=immediate") == -1)
      return -1;
  }
  if (cfg.control && control_start (cfg.control, cfg.control_mode) == -1)
    return -1;
  return drain_start (upstream_give_up);
}

static void
relocate_cleanup (nbdkit_backend *backend)
{
  int err;

  bool closed;

  drain_stop ();
  control_stop ();
  closed = upstream_stop ();
  bgcopy_stop ();
  blk_stop_storing ();
  if (state_get () != STATE_STANDBY) {
    blk_save_counters ();
    blk_flush (&err);          /* SIGTERM: leave the bitmap durable */
  }
  blk_close ();
  bitmap_unload ();
  /* A thread stuck in the nbd plugin on a source that does not answer
   * would run into the plugin's code after nbdkit unloads it: leave
   * now, everything of ours is durable.
   */
  if (!closed) {
    nbdkit_debug ("relocate: the source does not answer; exiting now");
    _exit (EXIT_SUCCESS);
  }
}

/* ---- Per-connection callbacks ---- */

/* A client request begins and ends (the background copy yields to them). */
static void client_begin (void) { state_client_begin (); }
static int client_end (int r) { state_client_end (); return r; }

/* Clients share everything but this: has the connection written?  A
 * next host relocating from us never does, and flushes once when it
 * is complete (upstream.c); a QEMU using us as its disk writes.
 */
struct conn {
  bool wrote;
};

static void *
relocate_open (nbdkit_next_open *next, nbdkit_context *nxdata,
               int readonly, const char *exportname, int is_tls)
{
  /* Deliberately not calling next: clients never open the plugin. */
  if (!drain_client_open ()) {
    nbdkit_error ("relocate: shutting down: connection refused");
    return NULL;
  }
  return g_new0 (struct conn, 1);
}

static void
relocate_close (void *h)
{
  g_free (h);
  drain_client_close ();
}

static void wrote (void *h) { ((struct conn *) h)->wrote = true; }

static int64_t
relocate_get_size (nbdkit_next *next, void *h)
{
  return blk_export_size;
}

static const char *
relocate_export_description (nbdkit_next *next, void *h)
{
  return "nbdkit-relocate";
}

static int
relocate_block_size (nbdkit_next *next, void *h,
                     uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  /* Any alignment: reads of the source are aligned to its minimum.
   * nbdkit 1.32 refuses requests over 64M; QEMU sends at most 32M.
   */
  *minimum = 1;
  *preferred = 4096;
  *maximum = 32 * 1024 * 1024;
  return 0;
}

static int relocate_one (nbdkit_next *next, void *h) { return 1; }
static int relocate_zero_flag (nbdkit_next *next, void *h) { return 0; }

static int
relocate_can_fua (nbdkit_next *next, void *h)
{
  return NBDKIT_FUA_NATIVE;
}

static int
relocate_can_zero (nbdkit_next *next, void *h)
{
  return NBDKIT_ZERO_NATIVE;
}

static int
relocate_can_cache (nbdkit_next *next, void *h)
{
  return NBDKIT_CACHE_NATIVE;
}

/* Before the relocation starts, a write must start it (on-write) or
 * is refused (manual): nothing may be stored in standby.
 */
static int
start_for_write (int *err)
{
  if (state_get () != STATE_STANDBY)
    return 0;
  if (cfg.start == START_MANUAL) {
    nbdkit_error ("relocate: write refused in standby "
                  "(relocate-start=manual): run relocatectl start first");
    *err = EROFS;
    return -1;
  }
  if (bgcopy_start_relocation ("first client write") == -1) {
    *err = EIO;
    return -1;
  }
  return 0;
}

static int
relocate_pread (nbdkit_next *next, void *h, void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  client_begin ();
  if (state_get () == STATE_STANDBY)
    return client_end (upstream_pread (buf, count, offset,
                                       state_now () + cfg.timeout, false, err)
                       == 0 ? 0 : -1);
  return client_end (blk_read (buf, count, offset, err));
}

static int
relocate_pwrite (nbdkit_next *next, void *h, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags, int *err)
{
  if (start_for_write (err) == -1)
    return -1;
  wrote (h);
  client_begin ();
  return client_end (blk_write (buf, count, offset, flags & NBDKIT_FLAG_FUA,
                                err));
}

static int
relocate_zero (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  if (start_for_write (err) == -1)
    return -1;
  wrote (h);
  client_begin ();
  return client_end (blk_zero (count, offset, flags & NBDKIT_FLAG_MAY_TRIM,
                               flags & NBDKIT_FLAG_FUA, err));
}

static int
relocate_trim (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  if (start_for_write (err) == -1)
    return -1;
  wrote (h);
  return blk_trim (count, offset, flags & NBDKIT_FLAG_FUA, err);
}

static int
relocate_flush (nbdkit_next *next, void *h, uint32_t flags, int *err)
{
  /* Counted: a next host relocating from us flushes when complete. */
  if (!((struct conn *) h)->wrote)
    STAT_ADD (reader_flushes, 1);
  if (state_get () == STATE_STANDBY)
    return 0;                   /* nothing stored yet */
  return blk_flush_client (err);
}

static int
relocate_extents (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  if (state_get () == STATE_STANDBY) {
    if (upstream_extents (count, offset, extents, err) == -1)
      return nbdkit_add_extent (extents, offset, count, 0);
    return 0;
  }
  return blk_extents (count, offset, extents, err);
}

static int
relocate_cache (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
                uint32_t flags, int *err)
{
  if (state_get () == STATE_STANDBY)
    return 0;                   /* caching now could store stale data */
  client_begin ();
  return client_end (blk_cache (count, offset, err));
}

static struct nbdkit_filter filter = {
  .name               = "relocate",
  .longname           = "nbdkit relocate filter",
  .config             = relocate_config,
  .config_complete    = relocate_config_complete,
  .config_help        = relocate_config_help,
  .after_fork         = relocate_after_fork,
  .cleanup            = relocate_cleanup,
  .open               = relocate_open,
  .close              = relocate_close,
  .get_size           = relocate_get_size,
  .export_description = relocate_export_description,
  .block_size         = relocate_block_size,
  .can_write          = relocate_one,
  .can_flush          = relocate_one,
  .is_rotational      = relocate_zero_flag,
  .can_trim           = relocate_one,
  .can_zero           = relocate_can_zero,
  .can_fast_zero      = relocate_zero_flag,
  .can_extents        = relocate_one,
  .can_fua            = relocate_can_fua,
  .can_multi_conn     = relocate_one,
  .can_cache          = relocate_can_cache,
  .pread              = relocate_pread,
  .pwrite             = relocate_pwrite,
  .zero               = relocate_zero,
  .trim               = relocate_trim,
  .flush              = relocate_flush,
  .extents            = relocate_extents,
  .cache              = relocate_cache,
};

NBDKIT_REGISTER_FILTER (filter)
