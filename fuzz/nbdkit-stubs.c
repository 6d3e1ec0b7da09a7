/* Stand-ins for the nbdkit server functions that filter/bitmap.c and
 * filter/control.c call.  In the real filter they are resolved from
 * the nbdkit binary at load time; here they format their message (so
 * that ASan/UBSan check every format string and argument) and drop it.
 * Set FUZZ_VERBOSE=1 to see the messages.
 */

#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

static void
emit (const char *level, const char *fs, va_list args)
{
  char buf[1024];
  static int verbose = -1;

  vsnprintf (buf, sizeof buf, fs, args);
  if (verbose == -1)
    verbose = getenv ("FUZZ_VERBOSE") != NULL;
  if (verbose)
    fprintf (stderr, "nbdkit %s: %s\n", level, buf);
}

void
nbdkit_verror (const char *fs, va_list args)
{
  emit ("error", fs, args);
}

void
nbdkit_error (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  nbdkit_verror (fs, args);
  va_end (args);
}

void
nbdkit_vdebug (const char *fs, va_list args)
{
  emit ("debug", fs, args);
}

void
nbdkit_debug (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  nbdkit_vdebug (fs, args);
  va_end (args);
}
