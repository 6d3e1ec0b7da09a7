/* nbdkit-relocate: the connections to the source.
 *
 * Client connections never open the plugin.  Every request to the
 * source goes through up to relocate-connections contexts opened with
 * nbdkit_next_context_open, owned here, each served by threads of its
 * own.  A caller hands a request over and waits for it with a
 * deadline, so nothing ever waits on the source for longer than it
 * asked: the data arrives in a buffer owned by the request, and a
 * reply that comes after its caller gave up is thrown away.  A
 * connection whose request overstays relocate-timeout is abandoned (no
 * new request goes to it, another is opened, and it is closed if the
 * source ever answers); one that fails is closed and reopened.
 * Opening, the handshake included, is bounded the same way.  Requests
 * are aligned to the source's minimum block size and split at its
 * maximum.  Once the relocation is complete every context is closed.
 *
 * Middle layer: over state.c and params.c; used by blk.c, bgcopy.c,
 * control.c and the callbacks.
 */

#ifndef RELOCATE_UPSTREAM_H
#define RELOCATE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nbdkit-filter.h>

/* Open one context, waiting at most relocate-timeout (in .after_fork),
 * and return the source's size in *size; -1 if it cannot be reached.
 * It becomes the first connection.
 */
int upstream_connect_once (nbdkit_backend *backend, int64_t *size);

/* Start the supervisor: from now on a source of another size than
 * expected_size is refused.
 */
int upstream_start (nbdkit_backend *backend, uint64_t expected_size);

/* Stop every thread and close every context (in .cleanup).  Returns
 * false if some connection is stuck in the source and cannot be
 * closed: then nbdkit must not unload the plugin under it.
 */
bool upstream_stop (void);

/* We are stopping: requests waiting for the source return at once. */
void upstream_give_up (void);

/* What upstream_pread returns when the source rejected this request
 * the same way every time it was tried (a bad block, not a bad
 * connection).
 */
#define UPSTREAM_REJECTED (-2)

/* Read from the source by the monotonic deadline (state_now () +
 * seconds), which moves on while data arrives from the source (see
 * upstream_progress_deadline).  0, or -1 with *err = EIO if the source did
 * not answer in time (background: at once and quietly if no
 * connection is up), or UPSTREAM_REJECTED.
 */
int upstream_pread (void *buf, uint32_t count, uint64_t offset,
                    double deadline, bool background, int *err);

/* upstream_pread into a buffer of count bytes from buf_get, set in
 * *bufp when it returns 0 (the caller buf_puts it), else NULL.  The
 * reply's own buffer when one request to the source is all of it: the
 * data is not copied, and the memory of a read is its data once.
 */
int upstream_pread_buf (void **bufp, uint32_t count, uint64_t offset,
                        double deadline, bool background, int *err);

/* Block status of the source within relocate-timeout.  Fills extents
 * (created by the caller for [offset, offset+count)) from
 * base:allocation; a source without block status reports everything
 * as data.
 */
int upstream_extents (uint32_t count, uint64_t offset,
                      struct nbdkit_extents *extents, int *err);

/* Close every context for good: the relocation is complete. */
void upstream_detach (void);

/* The largest background request that a connection carries in a
 * quarter of relocate-timeout at the rate reads have been carried so
 * far: a multiple of block, at least block, at most most.
 */
uint32_t upstream_request_limit (uint32_t block, uint32_t most);

/* A wait for the source that follows its progress still ends this
 * many times relocate-timeout after it began.
 */
#define UPSTREAM_SLOW_FACTOR 4

/* relocate-timeout after data last arrived from the source over TCP
 * (0 if no connection can tell): a wait for the source may go on until
 * then, since a slow link is not a stuck one.
 */
double upstream_progress_deadline (void);

/* Replace every connection (relocatectl reconnect): a healthy one
 * finishes its requests and is closed, one that hangs is cut.
 */
void upstream_reconnect (void);

/* For status: is a connection up, how many, and the last error seen. */
bool upstream_connected (void);
void upstream_counts (unsigned *up, unsigned *wanted, unsigned *abandoned);
void upstream_last_error (char *buf, size_t len);

#endif /* RELOCATE_UPSTREAM_H */
