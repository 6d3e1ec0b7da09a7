"""hook.log: one line per disk per event, in STATE_ROOT and on stderr.

Bottom layer: imports nothing of the package.  init() says where the
log goes; until then lines go to stderr only.
"""

import os
import sys
import time

_path = None


def init(state_root):
    """Log to STATE_ROOT/hook.log from now on."""
    global _path
    _path = os.path.join(state_root, "hook.log")


def log(msg):
    """One line, with the time and this process's pid."""
    line = "%s nbdkit-relocate-hook[%d]: %s\n" % (
        time.strftime("%Y-%m-%dT%H:%M:%S"), os.getpid(), msg)
    if _path:
        try:
            os.makedirs(os.path.dirname(_path), mode=0o711, exist_ok=True)
            with open(_path, "a") as f:
                f.write(line)
        except OSError:
            pass
    sys.stderr.write(line)
