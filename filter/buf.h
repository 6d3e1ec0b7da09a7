/* nbdkit-relocate: buffers for data on its way from the source.
 *
 * The background copy's requests and the source's replies need
 * buffers of megabytes, many times a second, from many threads.
 * malloc keeps such buffers, once freed, in the arena of the thread
 * that freed them, so a relocation's memory grew to what every thread
 * had ever held (80 MiB with the defaults).  These come from a pool
 * instead: a buffer is made only when none of its size is free, so
 * the memory follows what is in use at once, and goes back to the
 * system when more are free than the pool keeps (32 MiB), when no one
 * asked for its size for a second (at the next buffer given back), and
 * all of it once the copy is over.  Aligned for O_DIRECT.
 *
 * Bottom layer: depends on nothing else in filter/.  Every function
 * takes the pool's own lock for its own scope.
 */

#ifndef RELOCATE_BUF_H
#define RELOCATE_BUF_H

#include <stddef.h>

/* A buffer of len bytes, page aligned; NULL with errno on failure. */
void *buf_get (size_t len);

/* Give back a buffer from buf_get, with the len it was asked for. */
void buf_put (void *p, size_t len);

/* The copy is over: every free buffer, and every one given back from
 * now on, goes back to the system. */
void buf_trim (void);

#endif /* RELOCATE_BUF_H */
