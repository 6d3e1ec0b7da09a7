/* Preloaded after libasan.so and libp11-kit.so.0 in the ASan passes of
 * scripts/check (never in a normal run).
 *
 * A preloaded ASan runtime initialises lazily, at the process's first
 * malloc.  In nbdkit that is inside p11-kit's constructor (nbdkit links
 * GnuTLS, which links p11-kit): newlocale() holds glibc's locale lock
 * while it mallocs, ASan's initialisation calls dlerror(), whose gettext
 * unlocks that lock once more than it locked it, and from the next
 * strerror() on the lock can never be taken for writing again: at exit
 * p11-kit's destructor (freelocale) waits for ever.  So an ASan nbdkit
 * that ever printed a %m error hangs after SIGTERM, with or without this
 * filter (`nbdkit -f -U s file /nonexistent` is enough).
 *
 * Loaded after p11-kit, this object is initialised before it: its malloc
 * is the first, and ASan initialises outside any lock.
 */
#include <stdlib.h>

static void __attribute__ ((constructor))
asan_first (void)
{
  free (malloc (1));
}
