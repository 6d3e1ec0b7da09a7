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
/* While any member's guest fetches (group_tick's fetching), the
 * background copies together take at most QUIET_SHARE of the limit:
 * on a link filled to the limit their replies queue ahead of the
 * guest's fetch (bench fleet: p99 2.1 x with the whole limit, 1.1 x
 * with three quarters of it).
 */
#define QUIET_SHARE 0.75

/* The file: a header and SLOTS slots, read and written whole under
 * flock.  Native layout: its members are processes of one host.
 */
struct slot {
  int32_t pid;                 /* 0: free */
  uint32_t flags;              /* SLOT_* */
  double seen;                 /* monotonic seconds */
  double demand;               /* this member's guests' fetches, bytes/s */
};
#define SLOT_COPYING 1         /* its background copy runs */
#define SLOT_FETCHING 2        /* its guest fetches (group_tick) */
/* Members built before SLOT_FETCHING share the file: they never set it
 * (their guests do not make the others yield) and count a slot with
 * any flag as copying (a member that only fetches costs the others a
 * share it does not use).  Either way the copies stay under the limit.
 */

struct group_file {
  char magic[8];
  uint32_t version, slots;
  uint64_t limit;              /* bytes/s, the newest member's */
  struct slot slot[SLOTS];
};

/* lock covers what group_cap and group_status read, and opening and
 * closing; the rest is the coordinator's (group_tick).
 */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int fd = -1;
static int me = -1;                      /* our slot */
static uint64_t cap;                     /* our share, bytes/s */
static unsigned members_copying;
static uint64_t demand_all;
static bool quiet;                       /* a member's guest fetches */
static double demand_rate, last_tick;    /* ours, averaged */
static uint64_t last_demand_bytes;

/* Read the file under flock: false if it is neither empty (a new
 * group: initialised here) nor a group file of this version.
 */
static bool
read_locked (struct group_file *g)
{
  ssize_t r = pread (fd, g, sizeof *g, 0);

  if (r == 0) {
    memset (g, 0, sizeof *g);
    memcpy (g->magic, MAGIC, 8);
    g->version = FILE_VERSION;
    g->slots = SLOTS;
    return true;
  }
  if (r == -1)
    return false;
  if ((size_t) r < sizeof *g)
    return false;
  return memcmp (g->magic, MAGIC, 8) == 0 &&
    g->version == FILE_VERSION && g->slots == SLOTS;
}

/* flock FILE, waiting at most about a second: a member that is stopped
 * while it holds the lock must not stop the others.
 */
static bool
lock_file (void)
{
  int i;

  for (i = 0; i < 100; ++i) {
    if (flock (fd, LOCK_EX | LOCK_NB) == 0)
      return true;
    if (errno != EWOULDBLOCK && errno != EINTR)
      return false;
    usleep (10 * 1000);
  }
  errno = EWOULDBLOCK;
  return false;
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

/* Our share of g's limit, bytes/s: an equal one, with the members
 * copying now and us, of what their guests' fetches leave (of
 * QUIET_SHARE of the limit while a guest fetches).  Says how many
 * members copy, how fast their guests fetch (bytes/s) and whether one
 * fetches now, and frees the slots of members that died.  Caller holds
 * the file locked.
 */
static uint64_t
divide (struct group_file *g, double now, bool copying,
        unsigned *n, uint64_t *demand, bool *guest)
{
  double fetching = 0, budget;
  int i;

  *n = 0;
  *guest = false;
  for (i = 0; i < SLOTS; ++i) {
    struct slot *s = &g->slot[i];
    if (s->pid == 0)
      continue;
    if (i != me && !alive (s)) {
      memset (s, 0, sizeof *s);  /* crashed: its share comes back */
      continue;
    }
    if (now - s->seen > STALE_SECONDS)
      continue;                  /* stopped, or not looking in */
    fetching += s->demand;
    *n += (s->flags & SLOT_COPYING) != 0;
    *guest |= (s->flags & SLOT_FETCHING) != 0;
  }
  *demand = fetching;
  budget = MAX ((*guest ? QUIET_SHARE : 1.0) * g->limit - fetching,
                MIN_SHARE * g->limit);
  return MAX (1, (uint64_t) (budget / (*n + !copying)));
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
  if (!lock_file ()) {
    nbdkit_error ("relocate-rate-group: %s: cannot lock it: %m",
                  cfg.rate_group);
    goto err;
  }
  if (!read_locked (&g)) {
    nbdkit_error ("relocate-rate-group: %s: not empty and not a rate "
                  "group file of this version: refusing to touch it",
                  cfg.rate_group);
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
  /* A share from the start: a member that copied uncapped until its
   * first pass would take the whole link.
   */
  cap = divide (&g, state_now (), false, &members_copying, &demand_all,
               &quiet);
  if (!write_locked (&g)) {
    nbdkit_error ("relocate-rate-group: %s: write: %m", cfg.rate_group);
    goto err;
  }
  flock (fd, LOCK_UN);
  return 0;

 err:
  me = -1;
  cap = 0;
  close (fd);
  fd = -1;
  return -1;
}

void
group_close (void)
{
  struct group_file g;

  /* Called by the coordinator, or once it has stopped (see group_tick). */
  if (fd == -1)
    return;
  if (me >= 0 && lock_file ()) {
    if (read_locked (&g) && g.slot[me].pid == getpid ()) {
      memset (&g.slot[me], 0, sizeof g.slot[me]);
      write_locked (&g);
    }
    flock (fd, LOCK_UN);
  }
  /* A slot left behind (the file stayed locked) is freed by the next
   * member that finds this process gone.
   */
  close (fd);
  fd = -1;
  me = -1;
  pthread_mutex_lock (&lock);
  cap = 0;
  quiet = false;
  pthread_mutex_unlock (&lock);
}

void
group_tick (bool copying, bool fetching, uint64_t demand_bytes)
{
  struct group_file g;
  double now = state_now (), dt;
  unsigned n;
  uint64_t demand, share;
  bool guest;

  /* fd, me and our averages are the coordinator's (the only caller;
   * open and close never run beside it): lock is taken only for what
   * others read, so that no one waits while the file is locked.
   */
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

  if (flock (fd, LOCK_EX | LOCK_NB) == -1)
    return;                      /* busy: next pass */
  if (!read_locked (&g)) {
    flock (fd, LOCK_UN);
    return;
  }
  g.slot[me].pid = getpid ();    /* taken back if another freed it */
  g.slot[me].flags = (copying ? SLOT_COPYING : 0) |
    (fetching ? SLOT_FETCHING : 0);
  g.slot[me].seen = now;
  g.slot[me].demand = demand_rate;
  share = divide (&g, now, copying, &n, &demand, &guest);
  write_locked (&g);
  flock (fd, LOCK_UN);

  pthread_mutex_lock (&lock);
  cap = share;
  members_copying = n;
  demand_all = demand;
  quiet = guest;
  pthread_mutex_unlock (&lock);
}

uint64_t
group_cap (void)
{
  LOCK_FOR_SCOPE (&lock);

  return cap;
}

bool
group_guest_fetching (void)
{
  LOCK_FOR_SCOPE (&lock);

  return quiet;
}

void
group_status (unsigned *copying, uint64_t *demand)
{
  LOCK_FOR_SCOPE (&lock);

  *copying = members_copying;
  *demand = demand_all;
}
