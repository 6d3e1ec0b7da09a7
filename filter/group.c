/* nbdkit-relocate: one bandwidth budget for the relocations of a host. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "lock.h"
#include "params.h"
#include "state.h"
#include "group.h"

#define MAGIC "RELOCGRP"
#define FILE_VERSION 1
#define SLOTS 256
#define STALE_SECONDS 2.0      /* a slot not looked in for this long is idle */
#define DEMAND_SECONDS 1.0     /* the guests' fetches, averaged over this */
#define MIN_SHARE 0.05         /* background copy left when guests take all */

/* The file: a header and SLOTS slots, read and written whole under
 * flock.  Native layout: its members are processes of one host.
 */
struct slot {
  int32_t pid;                 /* 0: free */
  uint32_t copying;
  double seen;                 /* monotonic seconds */
  double demand;               /* this member's guests' fetches, bytes/s */
};

struct group_file {
  char magic[8];
  uint32_t version, slots;
  uint64_t limit;              /* bytes/s, the newest member's */
  struct slot slot[SLOTS];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int fd = -1;
static int me = -1;                      /* our slot */
static uint64_t cap;                     /* our share, bytes/s */
static unsigned members_copying;
static uint64_t demand_all;
static double demand_rate, last_tick;    /* ours, averaged */
static uint64_t last_demand_bytes;

/* Read the file under flock (a new one is all zeroes: initialised). */
static bool
read_locked (struct group_file *g)
{
  ssize_t r = pread (fd, g, sizeof *g, 0);

  if (r >= 0 && (size_t) r < sizeof *g)
    memset ((char *) g + r, 0, sizeof *g - r);
  if (r == -1)
    return false;
  if (memcmp (g->magic, MAGIC, 8) != 0) {
    memset (g, 0, sizeof *g);
    memcpy (g->magic, MAGIC, 8);
    g->version = FILE_VERSION;
    g->slots = SLOTS;
  }
  return g->version == FILE_VERSION && g->slots == SLOTS;
}

static bool
write_locked (const struct group_file *g)
{
  return pwrite (fd, g, sizeof *g, 0) == (ssize_t) sizeof *g;
}

/* Is the process of slot s alive? */
static bool
alive (const struct slot *s)
{
  return s->pid > 0 && (kill (s->pid, 0) == 0 || errno == EPERM);
}

int
group_open (void)
{
  LOCK_FOR_SCOPE (&lock);
  struct group_file g;
  int i;

  if (cfg.rate_group == NULL)
    return 0;
  fd = open (cfg.rate_group, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd == -1) {
    nbdkit_error ("relocate-rate-group: %s: %m", cfg.rate_group);
    return -1;
  }
  if (flock (fd, LOCK_EX) == -1 || !read_locked (&g)) {
    nbdkit_error ("relocate-rate-group: %s: not a rate group file of "
                  "this version (%m)", cfg.rate_group);
    goto err;
  }
  /* Our slot: a free one, or one whose process is gone. */
  for (i = 0; i < SLOTS && me == -1; ++i)
    if (g.slot[i].pid == 0 || g.slot[i].pid == getpid () ||
        !alive (&g.slot[i]))
      me = i;
  if (me == -1) {
    nbdkit_error ("relocate-rate-group: %s: %d relocations already share it",
                  cfg.rate_group, SLOTS);
    goto err;
  }
  memset (&g.slot[me], 0, sizeof g.slot[me]);
  g.slot[me].pid = getpid ();
  g.slot[me].seen = state_now ();
  if (g.limit != cfg.rate_group_limit && g.limit != 0)
    nbdkit_debug ("relocate-rate-group: %s: limit %" PRIu64 " -> %" PRIu64,
                  cfg.rate_group, g.limit, cfg.rate_group_limit);
  g.limit = cfg.rate_group_limit;
  if (!write_locked (&g)) {
    nbdkit_error ("relocate-rate-group: %s: write: %m", cfg.rate_group);
    goto err;
  }
  flock (fd, LOCK_UN);
  return 0;

 err:
  me = -1;
  close (fd);
  fd = -1;
  return -1;
}

void
group_close (void)
{
  LOCK_FOR_SCOPE (&lock);
  struct group_file g;

  if (fd == -1)
    return;
  if (me >= 0 && flock (fd, LOCK_EX) == 0) {
    if (read_locked (&g) && g.slot[me].pid == getpid ()) {
      memset (&g.slot[me], 0, sizeof g.slot[me]);
      write_locked (&g);
    }
    flock (fd, LOCK_UN);
  }
  close (fd);
  fd = -1;
  me = -1;
  cap = 0;
}

void
group_tick (bool copying, uint64_t demand_bytes)
{
  LOCK_FOR_SCOPE (&lock);
  struct group_file g;
  double now = state_now (), dt, budget;
  unsigned n = 0;
  uint64_t demand = 0;
  int i;

  if (fd == -1)
    return;
  /* Our guests' fetches, bytes/s over about DEMAND_SECONDS. */
  dt = last_tick > 0 ? now - last_tick : 0;
  if (dt > 0) {
    double w = MIN (1.0, dt / DEMAND_SECONDS);
    demand_rate += w * ((demand_bytes - last_demand_bytes) / dt - demand_rate);
  }
  last_tick = now;
  last_demand_bytes = demand_bytes;

  if (flock (fd, LOCK_EX) == -1)
    return;
  if (!read_locked (&g)) {
    flock (fd, LOCK_UN);
    return;
  }
  g.slot[me].pid = getpid ();    /* taken back if another freed it */
  g.slot[me].copying = copying;
  g.slot[me].seen = now;
  g.slot[me].demand = demand_rate;
  for (i = 0; i < SLOTS; ++i) {
    struct slot *s = &g.slot[i];
    if (s->pid == 0)
      continue;
    if (i != me && !alive (s)) {
      memset (s, 0, sizeof *s);  /* crashed: its share comes back */
      continue;
    }
    if (now - s->seen > STALE_SECONDS)
      continue;                  /* stopped, or not looking in */
    demand += s->demand;
    n += s->copying != 0;
  }
  write_locked (&g);
  flock (fd, LOCK_UN);

  /* Not copying yet: the share it will have once it does. */
  budget = MAX ((double) g.limit - demand, MIN_SHARE * g.limit);
  cap = MAX (1, (uint64_t) (budget / (n + !copying)));
  members_copying = n;
  demand_all = demand;
}

uint64_t
group_cap (void)
{
  LOCK_FOR_SCOPE (&lock);

  return cap;
}

void
group_status (unsigned *copying, uint64_t *demand)
{
  LOCK_FOR_SCOPE (&lock);

  *copying = members_copying;
  *demand = demand_all;
}
