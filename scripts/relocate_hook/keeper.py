"""The keeper: the process that runs one relocation server and watches it.

Over config, log, state and server.  Run by server.start_server as

  python3 -m relocate_hook.keeper HOOK.CONF DDISK DOMAIN STANDBY -- NBDKIT-ARGS...

The keeper runs nbdkit in the foreground (-f --exit-with-parent:
nbdkit never outlives it; the hook itself exits at once), its messages
to nbdkit.log in the disk's directory DDISK, records both pids, and
waits.  SIGTERM stops both.  It stops nbdkit:

- with STANDBY > 0 (the filter has no relocate-standby-timeout), when
  it has been in standby with no client for that long;
- once the domain has left this host (the marker onward exists), when
  the next host has said it is complete (a client flush, counted in
  the filter's status, after those recorded in the marker) and its
  connections are gone (other clients keep it onward_grace seconds at
  most), or when no client has been connected for onward_window
  seconds.

When nbdkit exits without the hook having stopped it (no marker
stopping), hook.log says so, with nbdkit's last message, and the keeper
starts it again over the same files (at most restarts times in
restart_window seconds).  With pause_on_error, QEMU paused the guest
on the I/O error instead of failing its I/O: for RESUME_WINDOW seconds
from when the restarted server first answers, a domain paused by an I/O
error is resumed (virsh resume, with a hook.log line).  The keeper is
not inside a hook call, so it may call libvirt.
"""

import os
import re
import signal
import subprocess
import sys
import time

from . import config, state
from .log import init as init_log, log
from .server import STARTING, ctl_status, server_clients
# How long after an exit nbdkit is started again.
RESTART_DELAY = 0.3
# For how long after a restart a guest paused by an I/O error is resumed.
RESUME_WINDOW = 30


def _how(rc):
    """How a process ended, from its Popen returncode."""
    if rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "status %d" % rc


class Keeper:
    def __init__(self, cfg, ddisk, name, standby, args):
        self.cfg, self.name, self.standby, self.args = cfg, name, standby, args
        self.ddisk = ddisk
        self.target = os.path.basename(ddisk)
        self.rel = state.read_json(os.path.join(ddisk, "relocation.json")) or {}
        # The directory may move to the attic while nbdkit runs
        # (attic.move_aside): reach it through a descriptor, by a path
        # other processes can use too.
        self.dfd = os.open(ddisk, os.O_RDONLY | os.O_DIRECTORY)
        self.here = "/proc/%d/fd/%d" % (os.getpid(), self.dfd)
        self.child = None
        self.terminated = False     # SIGTERM: stop, and start nothing
        # Since when nbdkit idles in standby, and has had no client since
        # the domain left (across restarts: a restart is no activity).
        self.idle_since = self.onward_idle = time.monotonic()
        self.resume_until = 0       # after a restart: resume the guest
        self.resume_pending = False  # restarted, not answering yet
        self.completed_at = None    # when the next host said it is complete

    def on_sigterm(self, signum=None, frame=None):
        """The hook stops the server: nbdkit goes, nothing is started."""
        self.terminated = True
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    def _stopped(self):
        """Has the hook stopped this server (SIGTERM, or the marker)?"""
        return self.terminated or state.marked(self.here, state.STOPPING)

    def _stop(self, why):
        """SIGTERM nbdkit, SIGKILL after stop_grace (it is this process's
        child: its pid cannot be reused before it is waited for)."""
        log("domain %r disk %s: %s: server stopped" %
            (self.name, self.target, why))
        state.mark(self.here, state.STOPPING)
        self.child.terminate()
        try:
            self.child.wait(self.cfg.seconds("stop_grace"))
        except subprocess.TimeoutExpired:
            self.child.kill()

    def _watch(self):
        """Until nbdkit exits, look every second: resume the guest after
        a restart, stop nbdkit when it idles (above)."""
        ctl = os.path.join(self.here, "control.sock")
        n = 0
        while self.child.poll() is None:
            time.sleep(0.2)
            n += 1
            if n % 5:
                continue
            now = time.monotonic()
            if self.resume_pending and ctl_status(self.cfg, ctl) is not None:
                # It answers (a restart may wait relocate-timeout for the
                # source first): resume the guest for RESUME_WINDOW s.
                self.resume_pending = False
                self.resume_until = now + RESUME_WINDOW
            if now < self.resume_until:
                self._resume_guest(ctl)
            if state.marked(self.here, state.ONWARD):
                if self._onward_done(ctl, now):
                    return
                continue
            self.onward_idle = now
            if self.standby > 0 and self._standby_done(ctl, now):
                return

    def _onward_done(self, ctl, now):
        """The domain left: stop nbdkit once the next host said it is
        complete and has gone (other clients, a stray nbdsh or a probe,
        keep it onward_grace s at most), or once no client has been
        connected for onward_window s.  True if stopped."""
        clients = server_clients(self.rel)
        if not self._next_host_complete(ctl):
            self.completed_at = None
        elif self.completed_at is None:
            self.completed_at = now
        if clients > 0:
            self.onward_idle = now
        if self.completed_at is not None and (
                clients == 0 or
                now - self.completed_at >= self.cfg.seconds("onward_grace")):
            self._stop("the next host said its relocation from this server "
                       "is complete (a flush), and has gone%s" %
                       ("" if clients == 0 else
                        " (%d other client(s) still connected are not the "
                        "next host)" % clients))
            return True
        window = self.cfg.seconds("onward_window")
        if clients == 0 and now - self.onward_idle >= window:
            self._stop("no host has read from this server for %d s since "
                       "the domain left, and none said it was complete" %
                       window)
            return True
        return False

    def _standby_done(self, ctl, now):
        """STANDBY > 0: stop nbdkit once it has been in standby with no
        client for STANDBY s.  True if stopped."""
        st = ctl_status(self.cfg, ctl)
        if st is None or st.get("state") != "standby" or \
                server_clients(self.rel) != 0:
            self.idle_since = now
        elif now - self.idle_since >= self.standby:
            self._stop("no client came in %d s of standby (the migration "
                       "failed before QEMU started?)" % self.standby)
            return True
        return False

    def _virsh(self, *args):
        """virsh -c libvirt_uri ARGS...: its output, or None."""
        try:
            r = subprocess.run([self.cfg["virsh"], "-c", self.cfg["libvirt_uri"]]
                               + list(args), capture_output=True, text=True,
                               timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout if r.returncode == 0 else None

    def _resume_guest(self, ctl):
        """The server serves again: resume the domain if an I/O error
        paused it (never one paused for another reason)."""
        if state.marked(self.here, state.ONWARD) or \
                ctl_status(self.cfg, ctl) is None:
            return
        st = self._virsh("domstate", "--reason", self.name)
        if st is None or not st.strip().startswith("paused (I/O error)"):
            return
        if self._virsh("resume", self.name) is None:
            log("domain %r disk %s: the guest is paused by an I/O error and "
                "%s resume failed" % (self.name, self.target,
                                      self.cfg["virsh"]))
            return
        log("domain %r disk %s: the guest was paused by an I/O error while "
            "the server was down: resumed" % (self.name, self.target))

    def _next_host_complete(self, ctl):
        """Has the next host said it is complete: a flush on a connection
        that never wrote since the domain left, and no write by anyone
        (a QEMU that uses this server as its disk writes, and may flush
        on a fresh connection after a reconnection)?  The marker holds
        nbdkit's pid and both counts at the hand-over; an nbdkit started
        again since counts flushes from 0 (written_bytes carries on).
        Unknown: no."""
        marker = state.read_json(os.path.join(self.here, state.ONWARD)) or {}
        written = marker.get("written_bytes")
        if marker.get("nbdkit") is None or written is None:
            return False
        base = 0
        if marker["nbdkit"] == self.child.pid:
            base = marker.get("reader_flushes")
            if base is None:
                return False
        st = ctl_status(self.cfg, ctl) or {}
        if st.get("reader_flushes") is None or st.get("written_bytes") is None:
            return False
        return st["reader_flushes"] > base and st["written_bytes"] <= written

    def _last_message(self):
        """nbdkit's last message since the keeper last started it."""
        try:
            with open(os.path.join(self.here, "nbdkit.log"),
                      errors="replace") as f:
                text = f.read().rsplit(STARTING, 1)[-1]
        except OSError:
            return ""
        lines = [l for l in text.splitlines()[1:] if l.strip()]
        return ": " + lines[-1].strip() if lines else ""

    def _start(self):
        """Start nbdkit, its messages to nbdkit.log after a line saying
        so, and record the pids.  False (logged) if it cannot run, or
        must not run any more."""
        if self._stopped():
            return False
        with open(os.path.join(self.here, "nbdkit.log"), "ab") as logf:
            logf.write(("%s %s\n" % (state.now(), STARTING)).encode())
            logf.flush()
            try:
                self.child = subprocess.Popen(self.args,
                                              stdin=subprocess.DEVNULL,
                                              stdout=logf, stderr=logf)
            except OSError as e:
                why = "cannot run %s: %s" % (self.args[0], e.strerror)
                logf.write((why + "\n").encode())
                log("domain %r disk %s: relocation server: %s" %
                    (self.name, self.target, why))
                return False
        state.write_pids(self.here, os.getpid(), self.child.pid)
        if self._stopped():         # SIGTERM came during the start
            self.child.terminate()
        return True

    def _in_place(self):
        """Is the disk's directory still where nbdkit's command line
        says (not moved to the attic)?"""
        try:
            return os.path.samestat(os.stat(self.ddisk), os.fstat(self.dfd))
        except OSError:
            return False

    def _no_restart(self, rc, restarts):
        """Why nbdkit, which exited by itself with status rc, is not
        started again, or None."""
        limit = int(self.cfg["restarts"])
        window = self.cfg.seconds("restart_window")
        if rc == 0:
            return "it stopped cleanly (status 0): not started again"
        if limit == 0:
            return "not started again (restarts = 0)"
        if not self._in_place():
            return ("not started again: its directory was moved aside, "
                    "and its command line names the new relocation's files")
        recent = [t for t in restarts if time.monotonic() - t < window]
        if len(recent) >= limit:
            return ("it was started again %d times in %g s (restarts, "
                    "restart_window): given up" % (len(recent), window))
        return None

    def run(self):
        """Run nbdkit until it is stopped, or exits and is not started
        again."""
        restarts = []
        if not self._start():
            return
        while True:
            self._watch()
            rc = self.child.wait()
            if self._stopped():
                return
            last = self._last_message()
            m = re.search(r"no client in standby for (\d+) s", last)
            if rc == 0 and m:       # the filter's relocate-standby-timeout
                log("domain %r disk %s: no client came in %s s of standby "
                    "(the migration failed before QEMU started?): server "
                    "stopped" % (self.name, self.target, m.group(1)))
                return
            what = ("domain %r disk %s: relocation server exited by itself "
                    "(%s)%s" % (self.name, self.target, _how(rc), last))
            why_not = self._no_restart(rc, restarts)
            if why_not:
                log("%s; %s" % (what, why_not))
                return
            restarts.append(time.monotonic())
            log("%s; started again over the same files (%d of restarts = %s "
                "in restart_window = %s s)" %
                (what, len([t for t in restarts
                            if time.monotonic() - t < self.cfg.seconds("restart_window")]),
                 self.cfg["restarts"], self.cfg["restart_window"]))
            if self.rel.get("serve") == "unix":
                # nbdkit 1.32 leaves its socket behind and will not
                # start over it.
                try:
                    os.unlink(os.path.join(self.here, "nbd.sock"))
                except OSError:
                    pass
            time.sleep(RESTART_DELAY)
            if not self._in_place() or not self._start():
                return
            self.resume_pending = self.cfg["pause_on_error"] == "yes"


def main(argv):
    """argv: HOOK.CONF DDISK DOMAIN STANDBY -- NBDKIT-ARGS..."""
    if len(argv) < 6 or argv[4] != "--":
        sys.exit("usage: python3 -m relocate_hook.keeper HOOK.CONF DDISK "
                 "DOMAIN STANDBY -- NBDKIT-ARGS...")
    os.chdir("/")
    cfg = config.load(argv[0])
    init_log(cfg["state_root"])
    k = Keeper(cfg, argv[1], argv[2], float(argv[3]), argv[5:])
    signal.signal(signal.SIGTERM, k.on_sigterm)
    k.run()


if __name__ == "__main__":
    main(sys.argv[1:])
