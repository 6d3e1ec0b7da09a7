/* nbdkit-relocate: the one shared connection to the source.
 *
 * Client connections never open the plugin.  Every fetch goes through
 * a single context opened with nbdkit_next_context_open, owned here.
 * A supervisor thread opens it, reopens it (with back-off) after an
 * error or on request, and closes it for good once the relocation is
 * complete.
 */

#ifndef RELOCATE_UPSTREAM_H
#define RELOCATE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nbdkit-filter.h>

/* Open the context once, synchronously (in .after_fork), and return
 * its size in *size; -1 if the source cannot be reached.
 */
int upstream_connect_once (nbdkit_backend *backend, int64_t *size);

/* Start the supervisor: from now on a source of another size than
 * expected_size is refused.
 */
int upstream_start (nbdkit_backend *backend, uint64_t expected_size);

/* Stop the supervisor and close the context (in .cleanup). */
void upstream_stop (void);

/* Read from the source, in pieces the source accepts, waiting for a
 * connection and retrying for up to timeout seconds (0: fail at once,
 * quietly, if not connected).
 */
int upstream_pread (void *buf, uint32_t count, uint64_t offset,
                    unsigned timeout, int *err);

/* Block status of the source.  Fills extents (created by the caller
 * for [offset, offset+count)) from base:allocation; a source without
 * block status reports everything as data.
 */
int upstream_extents (uint32_t count, uint64_t offset,
                      struct nbdkit_extents *extents, int *err);

/* Close the context for good: the relocation is complete. */
void upstream_detach (void);

/* Drop the connection now and reopen it (relocatectl reconnect). */
void upstream_reconnect (void);

/* For status: connected or not, and the last error seen. */
bool upstream_connected (void);
void upstream_last_error (char *buf, size_t len);

/* Largest request the source takes (never more than 32 MiB). */
uint32_t upstream_max_request (void);

#endif /* RELOCATE_UPSTREAM_H */
