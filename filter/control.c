/* nbdkit-relocate: the control socket that relocatectl talks to. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib.h>
#include <nbdkit-filter.h>

#include "fileid.h"
#include "params.h"
#include "pace.h"
#include "group.h"
#include "state.h"
#include "blk.h"
#include "blkfile.h"
#include "bgcopy.h"
#include "control.h"
#include "upstream.h"

/* Operators' connections.  An idle one is closed after IDLE_SECONDS,
 * and when MAX_CLIENTS are open the longest idle makes room for a new
 * one: idle clients can never lock operators out.
 */
#define MAX_CLIENTS 256
#define IDLE_SECONDS 30

struct client {
  int fd;
  double last;                  /* when it last sent something */
  size_t len;
  char buf[CONTROL_MAX_LINE + 1];
};

static int listen_fd = -1;
static int wake[2] = { -1, -1 };   /* control_stop writes here */
static pthread_t thread;
static bool running;
static struct file_id socket_id = FILE_ID_INIT;   /* removed at stop */

int
control_parse_size (const char *s, uint64_t *out)
{
  char *end;
  guint64 v, mult = 1;

  if (!g_ascii_isdigit (*s))
    return -1;
  errno = 0;
  v = g_ascii_strtoull (s, &end, 10);
  if (errno)
    return -1;
  switch (*end) {
  case '\0': break;
  case 'k': case 'K': mult = 1ULL << 10; end++; break;
  case 'm': case 'M': mult = 1ULL << 20; end++; break;
  case 'g': case 'G': mult = 1ULL << 30; end++; break;
  case 't': case 'T': mult = 1ULL << 40; end++; break;
  default: return -1;
  }
  if (*end != '\0' || v > UINT64_MAX / mult)
    return -1;
  *out = v * mult;
  return 0;
}

int
control_parse (const char *line, struct control_cmd *cmd,
               char *why, size_t whylen)
{
  static const struct { const char *name; enum control_verb verb; } verbs[] = {
    { "status", CMD_STATUS }, { "start", CMD_START }, { "pause", CMD_PAUSE },
    { "resume", CMD_RESUME }, { "rate", CMD_RATE },
    { "reconnect", CMD_RECONNECT }, { "retry", CMD_RETRY },
  };
  g_auto (GStrv) words = NULL;
  g_autofree char *copy = NULL;
  size_t i, n;

  if (strlen (line) > CONTROL_MAX_LINE) {
    snprintf (why, whylen, "request longer than %d bytes", CONTROL_MAX_LINE);
    return -1;
  }
  for (i = 0; line[i]; ++i) {
    if (!g_ascii_isprint (line[i])) {
      snprintf (why, whylen, "request has a control character");
      return -1;
    }
  }
  copy = g_strstrip (g_strdup (line));
  words = g_strsplit_set (copy, " \t", -1);
  /* Drop empty words left by repeated spaces. */
  for (i = n = 0; words[i]; ++i) {
    if (*words[i])
      words[n++] = words[i];
    else
      g_free (words[i]);
  }
  words[n] = NULL;
  if (n == 0) {
    snprintf (why, whylen, "empty request");
    return -1;
  }
  for (i = 0; i < G_N_ELEMENTS (verbs); ++i)
    if (strcmp (words[0], verbs[i].name) == 0)
      break;
  if (i == G_N_ELEMENTS (verbs)) {
    snprintf (why, whylen, "unknown command '%.32s'", words[0]);
    return -1;
  }
  cmd->verb = verbs[i].verb;
  if (cmd->verb == CMD_RATE) {
    if (n != 2 || control_parse_size (words[1], &cmd->rate) == -1) {
      snprintf (why, whylen, "usage: rate SIZE (bytes per second, 0 = unlimited)");
      return -1;
    }
  }
  else if (n != 1) {
    snprintf (why, whylen, "'%s' takes no argument", words[0]);
    return -1;
  }
  return 0;
}

void
control_json_string (GString *out, const char *s)
{
  /* JSON must be UTF-8: a path that is not is sent byte by byte. */
  bool utf8 = g_utf8_validate (s, -1, NULL);

  g_string_append_c (out, '"');
  for (; *s; ++s) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      g_string_append_printf (out, "\\%c", c);
    else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
      g_string_append_printf (out, "\\u%04x", c);
    else
      g_string_append_c (out, c);
  }
  g_string_append_c (out, '"');
}

static const char *
state_name (enum reloc_state s)
{
  switch (s) {
  case STATE_STANDBY: return "standby";
  case STATE_RELOCATING: return "relocating";
  case STATE_COMPLETE: return "complete";
  }
  return "unknown";
}

static void
reply_status (GString *out)
{
  char err[256];
  enum reloc_state state = state_get ();
  g_autofree char *failure = state_failure ();
  uint64_t present = blk_present_bytes ();
  double elapsed = state_elapsed (), current = bgcopy_current_rate ();
  /* What this run made present: fetched, skipped as zero or written. */
  double gained = STAT_GET (fetched_demand) + STAT_GET (fetched_background) +
    STAT_GET (skipped_zero);

  unsigned up, wanted, abandoned, group_copying;
  uint64_t group_demand, in_flight, most_in_flight;
  uint64_t first_failed[8], nfailed;
  size_t nfirst, i;

  upstream_last_error (err, sizeof err);
  upstream_counts (&up, &wanted, &abandoned);
  bgcopy_in_flight (&in_flight, &most_in_flight);
  nfailed = blk_failed_blocks (first_failed, G_N_ELEMENTS (first_failed),
                               &nfirst);
  g_string_append_printf (out, "{\"ok\":true,\"state\":\"%s\"", state_name (state));
  g_string_append_printf (out, ",\"size\":%" PRIu64, blk_export_size);
  g_string_append_printf (out, ",\"present_bytes\":%" PRIu64, present);
  g_string_append_printf (out, ",\"block_size\":%" PRIu32, blk_size);
  g_string_append_printf (out, ",\"fetched_demand_bytes\":%" PRIu64,
                          STAT_GET (fetched_demand));
  g_string_append_printf (out, ",\"fetched_background_bytes\":%" PRIu64,
                          STAT_GET (fetched_background));
  g_string_append_printf (out, ",\"skipped_zero_bytes\":%" PRIu64,
                          STAT_GET (skipped_zero));
  g_string_append_printf (out, ",\"written_bytes\":%" PRIu64, STAT_GET (written));
  g_string_append_printf (out, ",\"reader_flushes\":%" PRIu64,
                          STAT_GET (reader_flushes));
  g_string_append_printf (out, ",\"blocks_taken_over\":%" PRIu64,
                          STAT_GET (taken_over));
  g_string_append_printf (out, ",\"elapsed_seconds\":%.3f", elapsed);
  g_string_append_printf (out, ",\"current_bytes_per_second\":%.0f", current);
  g_string_append_printf (out, ",\"average_bytes_per_second\":%.0f",
                          elapsed > 0 ? gained / elapsed : 0);
  if (state == STATE_RELOCATING && current > 0)
    g_string_append_printf (out, ",\"eta_seconds\":%.1f",
                            (blk_export_size - present) / current);
  else
    g_string_append (out, ",\"eta_seconds\":null");
  g_string_append_printf (out, ",\"failed\":%s", failure ? "true" : "false");
  g_string_append (out, ",\"failure\":");
  control_json_string (out, failure ? failure : "");
  g_string_append_printf (out, ",\"paused\":%s",
                          state_paused () ? "true" : "false");
  g_string_append_printf (out, ",\"background\":%s",
                          cfg.background ? "true" : "false");
  g_string_append_printf (out, ",\"rate\":%" PRIu64, state_rate ());
  g_string_append_printf (out, ",\"pace_cap\":%" PRIu64, pace_cap ());
  g_string_append_printf (out, ",\"pace_ratio\":%.2f", pace_ratio ());
  group_status (&group_copying, &group_demand);
  g_string_append_printf (out, ",\"group_share\":%" PRIu64, group_cap ());
  g_string_append_printf (out, ",\"group_copying\":%u", group_copying);
  g_string_append_printf (out, ",\"group_demand\":%" PRIu64, group_demand);
  g_string_append_printf (out, ",\"group_guest_fetching\":%s",
                          group_guest_fetching () ? "true" : "false");
  g_string_append_printf (out, ",\"upstream_connected\":%s",
                          up > 0 ? "true" : "false");
  g_string_append_printf (out, ",\"connections\":%u", up);
  g_string_append_printf (out, ",\"connections_wanted\":%u", wanted);
  g_string_append_printf (out, ",\"connections_abandoned\":%u", abandoned);
  g_string_append_printf (out, ",\"request_bytes\":%" PRIu32,
                          bgcopy_request_bytes ());
  g_string_append_printf (out, ",\"in_flight_bytes\":%" PRIu64
                          ",\"most_in_flight_bytes\":%" PRIu64,
                          in_flight, most_in_flight);
  g_string_append_printf (out, ",\"failed_blocks\":%" PRIu64, nfailed);
  g_string_append (out, ",\"failed_offsets\":[");
  for (i = 0; i < nfirst; ++i)
    g_string_append_printf (out, "%s%" PRIu64, i ? "," : "",
                            first_failed[i] * blk_size);
  g_string_append (out, "]");
  g_string_append (out, ",\"last_error\":");
  control_json_string (out, err);
  g_string_append (out, ",\"file\":");
  control_json_string (out, cfg.file);
  g_string_append (out, "}");
}

/* Execute one request line and append the one-line reply. */
static void
execute (const char *line, GString *out)
{
  struct control_cmd cmd;
  char why[128];

  if (control_parse (line, &cmd, why, sizeof why) == -1) {
    g_string_append (out, "{\"ok\":false,\"error\":");
    control_json_string (out, why);
    g_string_append (out, "}");
    return;
  }
  switch (cmd.verb) {
  case CMD_STATUS:
    reply_status (out);
    return;
  case CMD_START:
    if (bgcopy_start_relocation ("relocatectl start") == -1) {
      g_string_append (out, "{\"ok\":false,\"error\":\"cannot start: "
                       "see the nbdkit log\"}");
      return;
    }
    break;
  case CMD_PAUSE: state_set_paused (true); bgcopy_kick (); break;
  case CMD_RESUME: state_set_paused (false); bgcopy_kick (); break;
  case CMD_RATE: state_set_rate (cmd.rate); bgcopy_kick (); break;
  case CMD_RECONNECT: upstream_reconnect (); break;
  case CMD_RETRY:
    /* Not failed until a fetch fails again: a wait right after the
     * retry must not see the failure it answers.
     */
    blk_retry_failed ();
    state_clear_failure (FAILURE_BLOCKS);
    bgcopy_kick ();
    break;
  }
  g_string_append (out, "{\"ok\":true}");
}

/* Handle what a client sent; false when it must be dropped. */
static bool
serve_client (struct client *c)
{
  ssize_t r = read (c->fd, c->buf + c->len, CONTROL_MAX_LINE + 1 - c->len);
  char *nl;

  if (r <= 0)
    return r == -1 && (errno == EAGAIN || errno == EINTR);
  c->len += r;
  while ((nl = memchr (c->buf, '\n', c->len)) != NULL) {
    g_autoptr (GString) out = g_string_new (NULL);
    size_t used = nl - c->buf + 1;

    *nl = '\0';
    if (nl > c->buf && nl[-1] == '\r')
      nl[-1] = '\0';
    execute (c->buf, out);
    g_string_append_c (out, '\n');
    if (send (c->fd, out->str, out->len, MSG_NOSIGNAL | MSG_DONTWAIT)
        != (ssize_t) out->len)
      return false;
    memmove (c->buf, c->buf + used, c->len - used);
    c->len -= used;
  }
  if (c->len > CONTROL_MAX_LINE) {
    static const char msg[] =
      "{\"ok\":false,\"error\":\"request line too long\"}\n";
    char junk[4096];
    if (send (c->fd, msg, sizeof msg - 1, MSG_NOSIGNAL | MSG_DONTWAIT)) {}
    /* Discard what is queued, else closing resets the connection
     * before the client reads the reply.
     */
    while (read (c->fd, junk, sizeof junk) > 0)
      ;
    return false;
  }
  return true;
}

/* Close client i, moving the last one into its place. */
static void
drop_client (GArray *clients, guint i)
{
  close (g_array_index (clients, struct client, i).fd);
  g_array_remove_index_fast (clients, i);
}

/* Accept a new client, dropping the longest idle one if full. */
static void
accept_client (GArray *clients)
{
  int fd = accept4 (listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  struct client c = { .fd = fd, .last = state_now () };
  guint i, oldest = 0;

  if (fd == -1) {
    if (errno != EAGAIN && errno != EINTR)
      usleep (100 * 1000);      /* EMFILE and the like: do not spin */
    return;
  }
  if (clients->len == MAX_CLIENTS) {
    for (i = 1; i < clients->len; ++i)
      if (g_array_index (clients, struct client, i).last <
          g_array_index (clients, struct client, oldest).last)
        oldest = i;
    drop_client (clients, oldest);
  }
  g_array_append_val (clients, c);
}

static void *
control_thread (void *arg)
{
  g_autoptr (GArray) clients = g_array_new (false, false, sizeof (struct client));
  g_autofree struct pollfd *pfd = g_new (struct pollfd, MAX_CLIENTS + 2);
  guint i;

  for (;;) {
    pfd[0] = (struct pollfd) { .fd = wake[0], .events = POLLIN };
    pfd[1] = (struct pollfd) { .fd = listen_fd, .events = POLLIN };
    for (i = 0; i < clients->len; ++i)
      pfd[i + 2] = (struct pollfd) {
        .fd = g_array_index (clients, struct client, i).fd, .events = POLLIN
      };
    if (poll (pfd, clients->len + 2, 1000) == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("relocate-control: poll: %m");
      break;
    }
    if (pfd[0].revents)
      break;
    for (i = clients->len; i-- > 0; ) {
      struct client *c = &g_array_index (clients, struct client, i);
      if (pfd[i + 2].revents) {
        c->last = state_now ();
        if (!serve_client (c))
          drop_client (clients, i);
      }
      else if (state_now () - c->last > IDLE_SECONDS)
        drop_client (clients, i);
    }
    if (pfd[1].revents & POLLIN)
      accept_client (clients);
  }
  while (clients->len > 0)
    drop_client (clients, 0);
  return arg;
}

/* Is something already listening on path? */
static bool
socket_in_use (const struct sockaddr_un *addr)
{
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool r;

  if (fd == -1)
    return false;
  r = connect (fd, (const struct sockaddr *) addr, sizeof *addr) == 0;
  close (fd);
  return r;
}

int
control_check_path (const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  g_autofree char *dir = g_path_get_dirname (path);
  struct stat st;

  if (strlen (path) >= sizeof addr.sun_path) {
    nbdkit_error ("relocate-control %s: path too long for a unix socket", path);
    return -1;
  }
  strcpy (addr.sun_path, path);
  if (access (dir, W_OK | X_OK) == -1) {
    nbdkit_error ("relocate-control %s: directory %s is not writable: %m",
                  path, dir);
    return -1;
  }
  if (lstat (path, &st) == 0 &&
      (!S_ISSOCK (st.st_mode) || socket_in_use (&addr))) {
    nbdkit_error ("relocate-control %s: exists and is %s", path,
                  S_ISSOCK (st.st_mode) ? "in use" : "not a socket");
    return -1;
  }
  return 0;
}

int
control_start (const char *path, unsigned mode)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  struct stat st;
  mode_t old;
  int e;

  if (control_check_path (path) == -1)
    return -1;
  strcpy (addr.sun_path, path);
  if (lstat (path, &st) == 0)
    unlink (path);              /* stale, from a killed nbdkit */
  listen_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd == -1) {
    nbdkit_error ("relocate-control: socket: %m");
    return -1;
  }
  old = umask (0077);
  e = bind (listen_fd, (struct sockaddr *) &addr, sizeof addr);
  umask (old);
  if (e == -1 || chmod (path, mode) == -1 || listen (listen_fd, 16) == -1) {
    nbdkit_error ("relocate-control %s: %m", path);
    return -1;
  }
  if (file_id_note (&socket_id, path) == -1) {
    nbdkit_error ("relocate-control %s: %m", path);
    return -1;
  }
  if (pipe2 (wake, O_CLOEXEC) == -1) {
    nbdkit_error ("relocate-control: pipe: %m");
    return -1;
  }
  e = pthread_create (&thread, NULL, control_thread, NULL);
  if (e) {
    errno = e;
    nbdkit_error ("relocate-control: pthread_create: %m");
    return -1;
  }
  running = true;
  return 0;
}

void
control_stop (void)
{
  if (running) {
    if (write (wake[1], "x", 1)) {}
    pthread_join (thread, NULL);
    running = false;
  }
  if (listen_fd >= 0) {
    close (listen_fd);
    file_id_remove (&socket_id);
  }
  listen_fd = -1;
}
