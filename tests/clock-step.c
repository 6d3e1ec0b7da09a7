/* LD_PRELOAD shim for the tests: a wall clock that steps.  Once the
 * file $CLOCK_STEP_FILE exists, CLOCK_REALTIME reads $CLOCK_STEP_SECONDS
 * (default 3600) later than it is: to the process, as if the system's
 * wall clock had been stepped back by that much, so that a deadline it
 * computes on CLOCK_REALTIME lies that far in the kernel's future.
 * CLOCK_MONOTONIC is untouched.
 * Built by the test that uses it:
 *   cc -shared -fPIC -o clock-step.so clock-step.c -ldl
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int
clock_gettime (clockid_t clk, struct timespec *ts)
{
  static int (*real) (clockid_t, struct timespec *);
  const char *file = getenv ("CLOCK_STEP_FILE");
  const char *secs = getenv ("CLOCK_STEP_SECONDS");
  int r;

  if (real == NULL)
    real = dlsym (RTLD_NEXT, "clock_gettime");
  r = real (clk, ts);
  if (r == 0 && clk == CLOCK_REALTIME && file && access (file, F_OK) == 0)
    ts->tv_sec += secs ? atol (secs) : 3600;
  return r;
}
