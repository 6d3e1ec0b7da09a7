/* nbdkit-relocate fuzzing: what the harnesses share. */

#ifndef RELOCATE_FUZZ_H
#define RELOCATE_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

/* An invariant of the code under test: abort, so libFuzzer saves the input. */
#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: invariant failed: %s\n",                 \
               __FILE__, __LINE__, #cond);                              \
      abort ();                                                         \
    }                                                                   \
  } while (0)

#endif /* RELOCATE_FUZZ_H */
