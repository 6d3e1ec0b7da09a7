"""The attic: where earlier relocations of a disk go, and what they forbid.

Over config, domxml, state and server.  Every migration into this host
is a fresh relocation: what an earlier attempt or an earlier stay left
in UUID/TARGET is moved to UUID/attic/ and never served to this host's
QEMU again.  The attic remembers which hosts the disk was relocated
from, so that a definition naming one of them is refused once the guest
wrote here (it would read that host's older copy).
"""

import os
import re
import shutil
import time

from . import domxml, state
from .log import log
from .server import runs_from, server_running, stop_disk_server


def move_aside(cfg, ddir, target):
    """Stop anything still serving ddir/target and move the directory to
    ddir/attic/.  A server that still serves another host's relocation
    (the domain moved on from here and comes back before that host is
    complete) keeps serving, from the attic, until that host is done
    with it.  Returns where it went (and why a server still runs there),
    or None if there was nothing."""
    ddisk = os.path.join(ddir, target)
    if not os.path.lexists(ddisk):
        return None
    serving = state.marked(ddisk, state.ONWARD) and server_running(ddisk)
    if not serving:
        stop_disk_server(cfg, ddisk)
    attic = os.path.join(ddir, "attic")
    state.make_dir(attic)
    os.chmod(attic, 0o700)
    base = "%s-%s" % (time.strftime("%Y%m%dT%H%M%S"), target)
    dest, n = os.path.join(attic, base), 1
    while os.path.lexists(dest):
        n += 1
        dest = os.path.join(attic, "%s.%d" % (base, n))
    os.rename(ddisk, dest)
    if serving:
        dest += (" (its server still serves the host the domain moved on "
                 "to, and stops once that host is done with it)")
    return dest


def sweep(cfg, ddir, now=None):
    """Remove the attic copies older than attic_days that no server
    uses any more, each with a hook.log line."""
    keep = cfg.days("attic_days")
    attic = os.path.join(ddir, "attic")
    if keep is None or not os.path.isdir(attic):
        return
    now = time.time() if now is None else now
    for name in sorted(os.listdir(attic)):
        entry = os.path.join(attic, name)
        try:
            moved = time.mktime(time.strptime(name[:15], "%Y%m%dT%H%M%S"))
        except ValueError:
            continue            # not one of move_aside's
        rel = state.read_json(os.path.join(entry, "relocation.json")) or {}
        if now - moved < keep or runs_from(entry, rel):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log("domain %r disk %s: removed %s from the attic (moved there %s, "
            "attic_days = %s)" % (rel.get("domain", "?"), rel.get("target", "?"),
                                 entry, time.strftime("%Y-%m-%dT%H:%M:%S",
                                                      time.localtime(moved)),
                                 cfg["attic_days"]))


def _age(name):
    """An attic entry's place in time: move_aside names them TIME-TARGET,
    then TIME-TARGET.2, .3 ... within one second."""
    m = re.fullmatch(r"(.*?)(?:\.(\d+))?", name)
    return m.group(1), int(m.group(2) or 1)


def history(ddir, dev):
    """The relocations this host made of the disk: the current one first
    (if any), then the attic's, newest first."""
    out = []
    cur = state.read_json(os.path.join(ddir, dev, "relocation.json"))
    if cur:
        out.append(cur)
    attic = os.path.join(ddir, "attic")
    try:
        names = os.listdir(attic)
    except OSError:
        names = []
    for n in sorted(names, key=_age, reverse=True):
        rel = state.read_json(os.path.join(attic, n, "relocation.json"))
        if rel and rel.get("target") == dev:
            out.append(rel)
    return out


def moved_on(ddisk, rel):
    """Has the domain moved on from this relocation?  Why a start of it
    is refused, or None."""
    moved = state.read_json(os.path.join(ddisk, state.MOVED_ON))
    if not moved:
        return None
    return ("the domain moved on from this host (%s), so %s is older "
            "than its disk there: start it where it moved to, or "
            "migrate it here" % (moved.get("when", "?"), rel["file"]))


def rollback(disk, ddisk, rels):
    """Would the definition read a host this disk was relocated from,
    after the guest wrote here?  None, or why (and what to do)."""
    rel = rels[0]
    flags = state.bitmap_flags(rel["file"] + ".bitmap")
    moved = state.marked(ddisk, state.MOVED_ON)
    if not moved and (flags is None or not flags & state.STARTED):
        return None         # never left standby: nothing here to lose
    for old in rels:
        if domxml.names_source(disk, old):
            break
    else:
        return None
    why = ("the guest wrote to this disk here, and its definition would "
           "read %s again and lose those writes." % old["source"])
    if moved:
        todo = ("The domain has moved on from this host since: start it "
                "where it runs now.")
    elif flags & state.COMPLETE:
        todo = ("The relocation is complete: point the disk at %s "
                "(<disk type='file'><driver name='qemu' type='raw'/>"
                "<source file='%s'/>) with virsh edit, then start it." %
                (rel["file"], rel["file"]))
    else:
        todo = ("The relocation is not complete: point the disk at its "
                "server (%s) with virsh edit, so that the start resumes it, "
                "or finish it first (README, 'Persistent domains')." %
                state.served_at(rel))
    return why + "  " + todo
