"""libvirt's events: what the hook does for each call.

Top layer, over every other module.  libvirt calls the hook as

    nbdkit-relocate DOMAIN OPERATION SUB-OPERATION EXTRA   (domain XML on stdin)

* migrate begin (the destination host, an incoming migration): for
  each remote NBD disk, plan a fresh relocation (the earlier state goes
  to the attic) and print the domain XML with the disk pointing at this
  host's relocation server.  Nothing runs yet: an offline migration
  (which has no prepare) starts nothing.
* prepare begin (the domain starts here, before QEMU; an incoming live
  migration too): a disk that names this host's relocation server gets
  it started (a planned relocation begins, a stopped one resumes); the
  start is refused, saying what to do, if the server cannot start, if
  the domain has moved on from this host since, or if the disk names a
  host it was relocated from once the guest wrote here.
* stopped end, release end: stop the domain's relocation servers, or
  hand one over to the next host that still reads from it.

Never calls back into libvirt: libvirt waits for the hook.
"""

import os
import re
import sys
import xml.etree.ElementTree as ET

from . import attic, config, domxml, qemuconf, server, state
from .log import init as init_log, log


# ---- migrate begin ----

def _checked(cfg):
    """(QEMU's identity, None) if disks may be relocated with this
    configuration, else (None, why not)."""
    why = cfg.refusal()
    if why is not None:
        return None, why
    try:
        return qemuconf.identity(cfg), None
    except ValueError as e:
        return None, str(e)


def _tls_dir(cfg, disks):
    """(directory of certificates, None) if the relocations of disks
    have what TLS needs where they use it (their servers, unless
    insecure = yes; a source that uses TLS), else (None, why not)."""
    server = cfg.server_tls()
    if not server and not any(src[3] for _, _, src in disks):
        return None, None
    path, where = qemuconf.tls_dir(cfg)
    missing = qemuconf.tls_missing(path, server)
    if not missing:
        return path, None
    return None, ("%s (%s) has no %s: %s" % (
        path, where, ", ".join(missing),
        "the relocation servers require TLS with client certificates "
        "(libvirt's NBD certificates), or set insecure = yes" if server else
        "the source uses TLS, and its certificate is verified"))


def migrate_begin(cfg, name, xml_text):
    """The domain XML libvirt is to use here, with each disk to relocate
    pointing at its planned relocation server."""
    root = domxml.parse(xml_text)
    ddir = os.path.join(cfg["state_root"], domxml.domain_key(name, root))
    disks = []
    nbd_tls = qemuconf.nbd_tls(cfg)
    for disk in root.iter("disk"):
        dev = domxml.target_dev(disk)
        if dev is None:
            log("domain %r: a disk without a usable target dev: left alone"
                % name)
            continue
        if not cfg.wanted(name, dev):
            continue
        src, why = domxml.nbd_source(disk, cfg.local_names(), nbd_tls)
        if src is None:
            log("domain %r disk %s: left alone (%s)" % (name, dev, why))
            continue
        disks.append((disk, dev, src))
    if not disks:
        return xml_text
    ident, refusal = _checked(cfg)
    tls_dir = None
    if refusal is None:
        tls_dir, refusal = _tls_dir(cfg, disks)
    if refusal is not None:
        for _, dev, _ in disks:
            log("domain %r disk %s: not relocated: %s (%s)" %
                (name, dev, refusal, cfg.path))
        return xml_text
    gid = ident[1]
    state.make_dir(cfg["state_root"], gid)
    state.make_dir(ddir, gid)
    planned = []
    for disk, dev, src in disks:
        old = attic.move_aside(cfg, ddir, dev)
        rel = state.plan(cfg, name, ddir, dev, src, gid, tls_dir)
        if rel is None:
            continue
        domxml.point_at_server(disk, rel, cfg["pause_on_error"] == "yes",
                               cfg.seconds("reconnect_delay"))
        planned.append({"target": dev, "dir": os.path.join(ddir, dev),
                        "control": rel["control"], "file": rel["file"],
                        "source": rel["source"]})
        log("domain %r disk %s: relocating %s to %s (served at %s, control "
            "%s; starts with the domain)%s" %
            (name, dev, rel["source"], rel["file"], state.served_at(rel),
             rel["control"],
             "; the previous state was moved to %s" % old if old else ""))
    state.write_json(os.path.join(ddir, "domain.json"),
                     {"name": name, "disks": planned})
    attic.sweep(cfg, ddir)
    return domxml.tostring(root)


# ---- prepare begin: the domain starts here ----

def prepare(cfg, name, xml_text):
    """Start the relocation servers the definition names; refuse a start
    that would read a stale copy or roll back what the guest wrote
    here.  Returns the hook's exit status (1: refused)."""
    try:
        root = domxml.parse(xml_text)
    except ET.ParseError:
        return 0
    ddir = os.path.join(cfg["state_root"], domxml.domain_key(name, root))
    refused = 0
    for disk in root.iter("disk"):
        dev = domxml.target_dev(disk)
        if dev is None:
            continue
        ddisk = os.path.join(ddir, dev)
        cur = state.read_json(os.path.join(ddisk, "relocation.json"))
        if cur is None or disk.find("source") is None:
            continue        # no relocation of this disk here now
        if domxml.names_server(disk, cur):
            why = _start_named(cfg, name, ddisk, cur)
        elif server.server_running(ddisk):
            continue        # not ours to judge while it serves
        else:
            why = attic.rollback(disk, ddisk, attic.history(ddir, dev))
        if why:
            refused += 1
            log("domain %r disk %s: start refused: %s" % (name, dev, why))
    return 1 if refused else 0


def _start_named(cfg, name, ddisk, rel):
    """The definition names this relocation's server: have it serve
    (start a planned one, resume a stopped one).  None, or why not."""
    if server.server_running(ddisk):
        return None
    why = attic.moved_on(ddisk, rel)
    if why:
        return why
    ident, refusal = _checked(cfg)
    if refusal:
        return "%s (%s)" % (refusal, cfg.path)
    if rel["serve"] != "tcp":
        return _start(cfg, name, ddisk, rel, ident)
    # Until its keeper runs, a relocation that gave its port back holds
    # nothing: no plan may take the port meanwhile.
    with state.ports_lock(cfg):
        return _start(cfg, name, ddisk, rel, ident)


def _start(cfg, name, ddisk, rel, ident):
    """Start the server of a relocation whose port, if it has one, is
    not another's now.  None, or why not."""
    taken = state.port_taken(cfg, ddisk, rel)
    if taken:
        why = ("its relocation gave its port %s back and it is disk %s's of "
               "domain %r now: " % (rel["port"], taken[1].get("target"),
                                   taken[1].get("domain")))
        if (state.bitmap_flags(rel["file"] + ".bitmap") or 0) & state.COMPLETE:
            return why + ("it is complete: point the disk at %s (<disk "
                          "type='file'><driver name='qemu' type='raw'/>"
                          "<source file='%s'/>) with virsh edit, then start "
                          "it" % (rel["file"], rel["file"]))
        return why + ("the guest never wrote here, so its disk is at %s: "
                      "point the disk there again with virsh edit, then "
                      "start it" % rel["source"])
    resumed = os.path.exists(rel["file"] + ".bitmap")
    since = server.log_size(ddisk)
    if not server.start_server(cfg, ddisk, rel, ident,
                               server.filter_supports(
                                   cfg, "relocate-standby-timeout")):
        errors = server.start_errors(ddisk, since)
        return ("its relocation server (from %s) did not serve "
                "(start_timeout = %s s): %s (%s)" %
                (rel["source"], cfg["start_timeout"],
                 errors or "it said nothing", os.path.join(ddisk, "nbdkit.log")))
    log("domain %r disk %s: relocation server %s at %s" %
        (name, rel["target"], "resumed" if resumed else "started",
         state.served_at(rel)))
    if rel["serve"] == "tcp" and not rel.get("tls"):
        log("domain %r disk %s: WARNING: its server has no TLS and no "
            "authentication (planned with insecure = yes, or by a version "
            "without TLS): whoever reaches %s:%s reads and writes the "
            "guest's disk" % (name, rel["target"],
                              server.listen_address(cfg, rel), rel["port"]))
    return None


# ---- stopped end, release end: the domain stops here ----

def left_by_migration(cfg, name):
    """Did the domain's QEMU here stop because it migrated away?  (libvirt
    writes 'shutting down, reason=migrated' to the domain's log.)  True,
    False, or why it cannot tell (a string)."""
    path = os.path.join(cfg["qemu_log_dir"], name + ".log")
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return "cannot read %s (%s)" % (path, e.strerror)
    reasons = re.findall(r"shutting down, reason=(\w+)", text)
    return bool(reasons) and reasons[-1] == "migrated"


def _stopped_what(st, migrated, gone, d):
    """The log line's words for a server the hook stopped."""
    if st is None:
        return ("its server did not answer (hung source?) and was "
                "killed%s; the relocation is incomplete" %
                ("" if gone else ", but a process of it is still there"))
    if st.get("state") == "standby":
        return ("server stopped in standby: the guest never wrote here, "
                "nothing was relocated; %s is not a copy of the disk" %
                d["file"])
    if migrated is True:
        return ("server stopped: the domain migrated on, and this copy "
                "(%s) is older than its disk there now" % d["file"])
    if st.get("state") == "complete":
        return ("server stopped; the relocation was complete: %s is a "
                "plain raw image of the disk as the guest left it here "
                "(how to start the domain on it: README, 'Persistent "
                "domains')" % d["file"])
    pct = 100.0 * st["present_bytes"] / st["size"] if st.get("size") else 0.0
    return ("server stopped with the relocation incomplete "
            "(%.1f%% present); %s is not usable on its own; starting "
            "the domain here resumes it" % (pct, d["file"]))


def release(cfg, name, xml_text):
    """stopped end and release end: stop each server still running, one
    log line per disk for the stop that actually stopped it.  A server
    that another host still reads from is handed over instead."""
    try:
        root = domxml.parse(xml_text)
    except ET.ParseError:
        root = ET.fromstring("<domain/>")
    ddir = os.path.join(cfg["state_root"], domxml.domain_key(name, root))
    dstate = state.read_json(os.path.join(ddir, "domain.json"))
    if not dstate:
        return
    migrated = left_by_migration(cfg, name)
    unsure = migrated if isinstance(migrated, str) else None
    for d in dstate["disks"]:
        ddisk = d["dir"]
        rel = state.read_json(os.path.join(ddisk, "relocation.json")) or {}
        pids = state.read_pids(ddisk)
        if not any(server.alive(p) for p in pids.values() if p):
            continue        # stopped already (an earlier event, or by itself)
        if state.marked(ddisk, state.ONWARD):
            continue        # handed over already (stopped end, then release end)
        # This domain's QEMU has exited.  Only if it migrated away is a
        # client the next host, relocating from here; any other (a
        # stray nbdsh, a probe) neither keeps the server nor makes this
        # copy stale.  If the log cannot tell, a client may be the next
        # host: it is not cut off, and this copy is not trusted.
        clients = server.server_clients(rel) if migrated else 0
        if migrated is True or (unsure and clients > 0):
            state.write_json(os.path.join(ddisk, state.MOVED_ON),
                             {"when": state.now(), "clients": clients})
        if unsure and clients > 0:
            log("domain %r disk %s: %s: cannot tell whether the domain "
                "migrated away; as if it did, since %d client(s) read from "
                "its server (remove %s if it did not)" %
                (name, d["target"], unsure, clients,
                 os.path.join(ddisk, state.MOVED_ON)))
        st = server.ctl_status(cfg, d["control"])
        if clients > 0:
            # The flushes and writes so far are this domain's: the next
            # host's completion is a flush after them, with no write
            # (keeper.py).
            state.write_json(os.path.join(ddisk, state.ONWARD), {
                "when": state.now(), "nbdkit": pids.get("nbdkit"),
                "reader_flushes": (st or {}).get("reader_flushes"),
                "written_bytes": (st or {}).get("written_bytes")})
            log("domain %r disk %s: the domain left this host and %d "
                "client(s) still read from its server (the next host "
                "relocating it from here): the server keeps serving until "
                "that host is complete, or for %s s after its last client "
                "has gone" % (name, d["target"], clients,
                              cfg["onward_window"]))
            continue
        gone = server.stop_disk_server(cfg, ddisk)
        log("domain %r disk %s: %s" %
            (name, d["target"], _stopped_what(st, migrated, gone, d)))
    attic.sweep(cfg, ddir)


# ---- the entry point ----

def main(argv, conf_path):
    """The hook: argv is DOMAIN OPERATION SUB-OPERATION [EXTRA]."""
    if len(argv) < 3:
        sys.exit("usage: nbdkit-relocate DOMAIN OPERATION SUB-OPERATION "
                 "[EXTRA]   (domain XML on stdin)")
    name, op, subop = argv[:3]
    # What the hook and its servers create is root's alone unless made
    # otherwise on purpose (the socket QEMU opens, the image's owner).
    os.umask(0o077)
    cfg = config.load(conf_path)
    init_log(cfg["state_root"])
    xml_text = sys.stdin.read()
    if (op, subop) == ("migrate", "begin"):
        try:
            out = migrate_begin(cfg, name, xml_text)
        except ET.ParseError as e:
            log("domain %r: cannot parse the domain XML: %s" % (name, e))
            out = xml_text
        sys.stdout.write(out)
    elif (op, subop) == ("prepare", "begin"):
        sys.exit(prepare(cfg, name, xml_text))
    elif (op, subop) in (("release", "end"), ("stopped", "end")):
        release(cfg, name, xml_text)
