"""The relocation server's process: its command line, start, watch, stop.

Over state (and the Config it is handed).  A server is nbdkit --filter=relocate run
by a keeper process (keeper.py), which nbdkit never outlives; the hook
exits at once.  Processes are found by the pids the keeper
recorded and signalled only while their command line still names the
disk's directory, so that a reused pid is never signalled.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from . import state
from .config import parse_size

# Where the package is: the keeper runs as python3 -m relocate_hook.keeper
# from here.
LIBDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The line the keeper writes into nbdkit.log before each start.
STARTING = "nbdkit-relocate-hook: starting nbdkit"


# ---- processes ----

def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def alive(pid):
    """Is pid a process that has not exited (a zombie has)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def ours(pid, marker):
    """Is pid a process whose command line holds marker?"""
    cmd = proc_cmdline(pid)
    return cmd is not None and marker.encode() in cmd


def _reaped(pid, timeout=5):
    """Wait until a process that has exited is reaped (by its keeper)."""
    deadline = time.time() + timeout
    while os.path.exists("/proc/%d" % pid) and time.time() < deadline:
        time.sleep(0.05)


def kill_process(pid, marker, grace):
    """SIGTERM, then SIGKILL after grace seconds; True if it is gone."""
    if not pid or not alive(pid) or not ours(pid, marker):
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.time() + grace
    while time.time() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid) and ours(pid, marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(100):
        if not alive(pid):
            _reaped(pid)
            return True
        time.sleep(0.1)
    return False


def nbdkit_marker(ddisk):
    """What every nbdkit of this disk has on its command line."""
    return "relocate-control=" + os.path.join(ddisk, "control.sock")


def keeper_marker(ddisk):
    """What the keeper of this disk has on its command line."""
    return ddisk


def server_running(ddisk):
    """Does this disk's nbdkit run?"""
    pid = state.read_pids(ddisk).get("nbdkit")
    return bool(pid) and alive(pid) and ours(pid, nbdkit_marker(ddisk))


def runs_from(entry, rel):
    """Does a process of rel's server (nbdkit or its keeper) still run,
    now that its directory has moved to entry?  (Their command lines
    name the directory where it was.)"""
    ddisk = os.path.dirname(rel.get("control", ""))
    pids = state.read_pids(entry)
    return any(pid and alive(pid) and ours(pid, marker) for pid, marker in
               ((pids.get("nbdkit"), nbdkit_marker(ddisk)),
                (pids.get("keeper"), keeper_marker(ddisk))))


def stop_disk_server(cfg, ddisk):
    """Stop the server of one disk directory: nbdkit by its pid (it may
    ignore SIGTERM, e.g. with a hung source), then its keeper, then any
    nbdkit the keeper started meanwhile.  True if nothing of it runs
    any more."""
    state.mark(ddisk, state.STOPPING)   # the keeper: start nothing more
    ok = _kill_nbdkit(cfg, ddisk)
    ok = kill_process(state.read_pids(ddisk).get("keeper"),
                      keeper_marker(ddisk), 2) and ok
    # A restart between the marker and the keeper's end: read again.
    return _kill_nbdkit(cfg, ddisk) and ok


def _kill_nbdkit(cfg, ddisk):
    """Stop the nbdkit the keeper recorded, and the one nbdkit's own pid
    file names (in case the keeper's record is missing)."""
    marker, grace = nbdkit_marker(ddisk), cfg.seconds("stop_grace")
    ok = kill_process(state.read_pids(ddisk).get("nbdkit"), marker, grace)
    try:
        with open(os.path.join(ddisk, "nbdkit.pid")) as f:
            pid = int(f.read().strip())
        ok = kill_process(pid, marker, grace) and ok
    except (OSError, ValueError):
        pass
    return ok


# ---- what the server says, and who is connected ----

def ctl_status(cfg, ctl, timeout=5):
    """relocatectl status --json of a control socket, or None."""
    try:
        r = subprocess.run([cfg["relocatectl"], "status", "--json", ctl],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode == 0:
            return json.loads(r.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    return None


def socket_clients(sock, proc_net_unix="/proc/net/unix"):
    """Connected sockets bound to path sock (accepted connections carry
    the listener's path in /proc/net/unix), or -1."""
    n = 0
    try:
        with open(proc_net_unix) as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == sock and fields[5] == "03":
                    n += 1
    except OSError:
        return -1
    return n


def tcp_clients(port, tables=("/proc/net/tcp", "/proc/net/tcp6")):
    """Established connections to local port (both address families)."""
    n = 0
    for path in tables:
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "01" and \
                            int(fields[1].rsplit(":", 1)[1], 16) == port:
                        n += 1
        except (OSError, ValueError, IndexError, StopIteration):
            pass
    return n


def server_clients(rel):
    """Clients connected to the relocation server now."""
    if rel.get("serve") == "tcp":
        return tcp_clients(int(rel["port"]))
    return max(0, socket_clients(rel.get("socket") or ""))


def log_size(ddisk):
    """nbdkit.log's size now (0 if there is none)."""
    try:
        return os.path.getsize(os.path.join(ddisk, "nbdkit.log"))
    except OSError:
        return 0


def start_errors(ddisk, since):
    """nbdkit's error lines after offset since of nbdkit.log (e.g. why
    the source could not be reached), as one line."""
    try:
        with open(os.path.join(ddisk, "nbdkit.log"), "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    errors = []
    for line in text.splitlines():
        line = line.strip()
        if "error:" in line and "no connection in this thread" not in line \
                and line not in errors:
            errors.append(line)
    return "; ".join(errors[-3:])


def filter_supports(cfg, param):
    """Does the installed filter take param?"""
    try:
        r = subprocess.run([cfg["nbdkit"], "--filter=" + cfg["filter"], "null",
                            "--help"], capture_output=True, text=True,
                           timeout=30)
        return (param + "=") in r.stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


# ---- starting ----

def listen_address(cfg, rel):
    """The address rel's server listens on: the one planned with it
    (looked up once), else (an earlier version's record) hook.conf's."""
    return rel.get("listen") or cfg.listen_address()


def nbdkit_args(cfg, rel, standby_param):
    """nbdkit's command line for a relocation (standby_param: the filter
    has relocate-standby-timeout)."""
    pidfile = os.path.join(os.path.dirname(rel["file"]), "nbdkit.pid")
    # In the foreground, under its keeper, which it never outlives.
    args = [cfg["nbdkit"], "-f", "--exit-with-parent", "--log=stderr"]
    if rel["serve"] == "tcp":
        args += ["-p", str(rel["port"]), "-i", listen_address(cfg, rel)]
    else:
        args += ["-U", rel["socket"]]
    if rel.get("tls"):
        # Only clients with a certificate of the cluster's CA: QEMU here,
        # the next host.
        args += ["--tls=require", "--tls-certificates=" + rel["tls_dir"],
                 "--tls-verify-peer"]
    args += ["-P", pidfile, "--filter=" + cfg["filter"], "nbd",
             "hostname=" + rel["hostname"],
             "port=" + str(rel.get("port_src", rel.get("port"))),
             "export=" + rel["export"]]
    if rel.get("tls_source"):
        # Verifies the old host's certificate; never the clear.
        args += ["tls=require", "tls-certificates=" + rel["tls_dir"]]
    args += ["relocate-file=" + rel["file"],
             "relocate-control=" + rel["control"],
             "relocate-rate=" + cfg["rate"],
             "relocate-block-size=" + cfg["block_size"],
             "relocate-start=" + cfg["start"]]
    if parse_size(cfg["rate_group"]):
        # One budget, shared by every relocation of this host.
        args += ["relocate-rate-group=" +
                 os.path.join(cfg["state_root"], "rate-group"),
                 "relocate-rate-group-limit=" + cfg["rate_group"]]
    standby = cfg.seconds("standby_timeout")
    if standby > 0 and standby_param:
        args.append("relocate-standby-timeout=%d" % max(1, round(standby)))
    return args + cfg["extra_args"].split()


def start_server(cfg, ddisk, rel, ident, standby_param):
    """Start (or resume) the relocation server of one planned disk and
    wait until it serves.  True if it does."""
    uid, gid, dynamic = ident
    state.unmark(ddisk, state.STOPPING)
    state.unmark(ddisk, state.ONWARD)
    if rel["serve"] == "unix":
        # nbdkit 1.32 leaves its socket behind, and will not start over it.
        try:
            os.unlink(rel["socket"])
        except FileNotFoundError:
            pass
    standby = "0" if standby_param else str(cfg.seconds("standby_timeout"))
    # Recorded beside the relocation: how to run its server by hand.
    rel["command"] = nbdkit_args(cfg, rel, standby_param)
    state.write_json(os.path.join(ddisk, "relocation.json"), rel)
    # -E -s: no PYTHON* variable, no user site; -m finds the package in
    # cwd (LIBDIR); -B: no bytecode written there.
    keeper_args = [sys.executable, "-B", "-E", "-s", "-m",
                   "relocate_hook.keeper", cfg.path, keeper_marker(ddisk),
                   rel["domain"], standby, "--"]
    proc = subprocess.Popen(keeper_args + rel["command"],
                            cwd=LIBDIR, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    if not _serving(cfg, rel, proc, ddisk):
        stop_disk_server(cfg, ddisk)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        return False
    if rel["serve"] == "unix":
        # QEMU runs as qemu.conf's user: the socket is its, and only its.
        os.chown(rel["socket"], uid, gid)
        os.chmod(rel["socket"], 0o660)
    # The image, like libvirt's own: root's at rest when libvirt chowns
    # images itself (dynamic_ownership), else QEMU's user's.
    if dynamic:
        os.chown(rel["file"], 0, 0)
        os.chmod(rel["file"], 0o600)
    else:
        os.chown(rel["file"], uid, gid)
        os.chmod(rel["file"], 0o660)
    return True


def _connects(cfg, rel):
    """Does the server accept a connection at its address?"""
    try:
        if rel["serve"] == "tcp":
            s = socket.create_connection((listen_address(cfg, rel),
                                          rel["port"]), timeout=2)
        else:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            s.connect(rel["socket"])
        s.close()
        return True
    except OSError:
        return False


def _serving(cfg, rel, proc, ddisk):
    """Wait until nbdkit listens and its control socket answers."""
    deadline = time.time() + cfg.seconds("start_timeout")
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if os.path.exists(rel["control"]) and server_running(ddisk) and \
                _connects(cfg, rel) and ctl_status(cfg, rel["control"]) is not None:
            return True
        time.sleep(0.1)
    return False
