"""A relocation's files on disk: its record, its pids, its port.

Over log (and the Config it is handed).  Each domain has a directory
STATE_ROOT/UUID holding domain.json (its disks) and attic/ (see attic.py);
STATE_ROOT/.ports.lock serialises the choice of ports.  Each disk of each domain has a directory
STATE_ROOT/UUID/TARGET holding:

  relocation.json  the record: source, image, control socket, address
  disk.img         the image (and the filter's bitmap files beside it)
  control.sock     the filter's control socket
  nbd.sock         the server, with serve = unix
  nbdkit.pid       nbdkit's own pid file
  pids.json        the keeper's and nbdkit's pids
  nbdkit.log       nbdkit's messages
  stopping         the hook stops the server: not an exit by itself
  onward           the domain left, the server serves the next host
  moved-on         the domain moved on from here: a start is refused

Nothing here starts or stops a process.
"""

import contextlib
import fcntl
import json
import os
import random
import socket
import struct
import time

from .log import log

STOPPING, ONWARD, MOVED_ON = "stopping", "onward", "moved-on"

# The filter's bitmap header: magic, version, then flags.
BITMAP_MAGIC = b"NBDKRELO"
STARTED, COMPLETE = 1, 2


def make_dir(path, gid=None):
    """A directory of the hook's, 0700; with gid (QEMU's group), 0710
    and that group's: QEMU may pass through to the socket (serve =
    unix) and to a complete image, and list nothing; no one else may
    even pass."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, 0o700 if gid is None else 0o710)


def read_json(path):
    """The object in a JSON file, or None if it is missing or broken."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, obj):
    """Replace path with obj as JSON, in one rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.rename(tmp, path)


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def mark(ddisk, name):
    """Create the marker file name (STOPPING, ONWARD) in ddisk."""
    try:
        open(os.path.join(ddisk, name), "w").close()
    except OSError:
        pass


def unmark(ddisk, name):
    try:
        os.unlink(os.path.join(ddisk, name))
    except OSError:
        pass


def marked(ddisk, name):
    return os.path.exists(os.path.join(ddisk, name))


def read_pids(ddisk):
    """{"keeper": pid, "nbdkit": pid} as the keeper recorded them."""
    return read_json(os.path.join(ddisk, "pids.json")) or {}


def write_pids(ddisk, keeper, nbdkit):
    write_json(os.path.join(ddisk, "pids.json"),
               {"keeper": keeper, "nbdkit": nbdkit})


def bitmap_flags(path):
    """The bitmap header's flags (STARTED, COMPLETE), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if len(head) < 16 or head[:8] != BITMAP_MAGIC:
        return None
    return struct.unpack_from("<I", head, 12)[0]


def served_at(rel):
    """The relocation server's address, as a log line shows it."""
    if rel["serve"] == "tcp":
        return "nbd%s://%s:%s" % ("s" if rel.get("tls") else "",
                                  rel["serve_name"], rel["port"])
    return rel["socket"]


def relocations(root):
    """Every current relocation of this host (not the attics'):
    (directory, its relocation.json)."""
    out = []
    try:
        uuids = sorted(os.listdir(root))
    except OSError:
        return out
    for u in uuids:
        try:
            devs = sorted(os.listdir(os.path.join(root, u)))
        except OSError:
            continue
        for dev in devs:
            ddisk = os.path.join(root, u, dev)
            if dev != "attic":
                rel = read_json(os.path.join(ddisk, "relocation.json"))
                if rel:
                    out.append((ddisk, rel))
    return out


def _bindable(listen, port):
    s = socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((listen, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _keeper_lives(ddisk):
    """Does the keeper pids.json names exist (or a process that took its
    pid: then the port is held a while longer, which is harmless)?"""
    pid = read_pids(ddisk).get("keeper")
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def holds_port(ddisk, rel, plan_keep=None, now=None):
    """Does a current relocation keep its port?  While its server is
    kept (a restart briefly unbinds the port), and while a definition
    may still name it to resume it: started and not complete, or
    planned and never run (an offline migration's definition) for
    plan_keep seconds (None: for ever).  A complete one, and one whose
    server ran and stopped in standby (a live migration that failed),
    gives it back: nothing of the disk is only here."""
    if rel.get("serve") != "tcp":
        return False
    if _keeper_lives(ddisk):
        return True
    flags = bitmap_flags(rel.get("file", "") + ".bitmap")
    if flags is None and not os.path.exists(rel.get("file", "") + ".bitmap"):
        try:
            planned = time.mktime(time.strptime(rel["planned"],
                                                "%Y-%m-%dT%H:%M:%S"))
        except (KeyError, ValueError):
            return True
        now = time.time() if now is None else now
        return plan_keep is None or now - planned < plan_keep
    return flags is None or (flags & STARTED and not flags & COMPLETE)


@contextlib.contextmanager
def ports_lock(cfg):
    """Serialise the choice and the taking of ports (plan, and the start
    of a relocation that gave its port back)."""
    with open(os.path.join(cfg["state_root"], ".ports.lock"), "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        yield


def port_taken(cfg, ddisk, rel):
    """The other current relocation that holds rel's port (rel gave it
    back), as (directory, record), or None."""
    if rel.get("serve") != "tcp":
        return None
    for d, r in relocations(cfg["state_root"]):
        if d != ddisk and holds_port(d, r, cfg.days("plan_days")) and \
                int(r.get("port", 0)) == int(rel["port"]):
            return d, r
    return None


def pick_port(cfg, bindable=_bindable, listen=None):
    """A port of cfg's range that no incomplete relocation here was given
    and that can be bound now on listen (default: hook.conf's address),
    or None.  (Call with the ports lock held.)"""
    first, last = cfg.port_range()
    taken = {int(r.get("port", 0)) for d, r in relocations(cfg["state_root"])
             if holds_port(d, r, cfg.days("plan_days"))}
    ports = [p for p in range(first, last + 1) if p not in taken]
    random.shuffle(ports)
    listen = listen or cfg.listen_address()
    for p in ports:
        if bindable(listen, p):
            return p
    return None


def plan(cfg, name, ddir, target, src, gid=None, tls_dir=None):
    """A fresh relocation of one disk from src (hostname, port, export,
    whether it uses TLS), not started yet: its directory (make_dir's
    gid), relocation.json, and the address its server will have, with
    TLS (certificates in tls_dir) unless insecure = yes.  Returns the
    record, or None (logged)."""
    hostname, port, export, tls_source = src
    ddisk = os.path.join(ddir, target)
    make_dir(ddisk, gid)
    rel = {"domain": name, "target": target,
           "source": "nbd%s://%s:%s/%s" % ("s" if tls_source else "",
                                           hostname, port, export),
           "hostname": hostname, "port_src": port, "export": export,
           "tls_source": tls_source, "tls": cfg.server_tls(),
           "file": os.path.join(ddisk, "disk.img"),
           "control": os.path.join(ddisk, "control.sock"),
           "serve": cfg["serve"],
           "planned": now()}
    if tls_source or rel["tls"]:
        rel["tls_dir"] = tls_dir
    if cfg["serve"] == "tcp":
        with ports_lock(cfg):
            try:
                listen = cfg.listen_address()      # looked up once
                p = pick_port(cfg, listen=listen)
            except ValueError as e:
                log("domain %r disk %s: %s: left alone" % (name, target, e))
                return None
            if p is None:
                log("domain %r disk %s: no free port in ports = %s: left "
                    "alone" % (name, target, cfg["ports"]))
                return None
            rel.update(serve_name=cfg.serve_name(), port=p, listen=listen)
            write_json(os.path.join(ddisk, "relocation.json"), rel)
    else:
        rel["socket"] = os.path.join(ddisk, "nbd.sock")
        write_json(os.path.join(ddisk, "relocation.json"), rel)
    return rel
