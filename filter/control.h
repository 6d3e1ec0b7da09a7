/* nbdkit-relocate: the control socket that relocatectl talks to.
 *
 * The protocol is one request line, answered by one line of JSON;
 * see nbdkit-relocate-filter(1), CONTROL PROTOCOL.
 */

#ifndef RELOCATE_CONTROL_H
#define RELOCATE_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include <glib.h>

#define CONTROL_MAX_LINE 256     /* longest request accepted */

enum control_verb {
  CMD_STATUS, CMD_START, CMD_PAUSE, CMD_RESUME, CMD_RATE, CMD_RECONNECT,
  CMD_RETRY,
};

struct control_cmd {
  enum control_verb verb;
  uint64_t rate;                 /* CMD_RATE: bytes per second, 0 = none */
};

/* Parse one request line (without its newline).  On error return -1
 * and write a one-line reason into why.  Pure: safe to fuzz.
 */
int control_parse (const char *line, struct control_cmd *cmd,
                   char *why, size_t whylen);

/* Parse SIZE as relocatectl and the socket accept it: a decimal
 * number with an optional K, M, G or T suffix (powers of 1024).
 */
int control_parse_size (const char *s, uint64_t *out);

/* Append s to out as a JSON string, quotes included. */
void control_json_string (GString *out, const char *s);

/* Can path be the control socket?  (Before any file is created.) */
int control_check_path (const char *path);

/* Create the socket and start serving it (in .after_fork). */
int control_start (const char *path, unsigned mode);

/* Stop serving and remove the socket (in .cleanup). */
void control_stop (void);

#endif /* RELOCATE_CONTROL_H */
