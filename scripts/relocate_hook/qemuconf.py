"""QEMU's user and group, as libvirt's qemu.conf sets them.

Bottom layer (reads the Config it is handed).  libvirt runs QEMU as qemu.conf's user and group (on
Debian, libvirt-qemu:kvm when they are not set); with serve = unix the
relocation server's socket must be theirs.
"""

import grp
import pwd
import re

DEFAULT_USER = "libvirt-qemu"
DEFAULT_GROUP = "kvm"

_LINE_RE = re.compile(r'\s*(user|group|dynamic_ownership)\s*=\s*'
                      r'("([^"]*)"|[0-9]+)\s*(#.*)?$')


def conf_values(path):
    """user, group and dynamic_ownership as the file sets them (a later
    line wins; a missing file sets nothing)."""
    vals = {}
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return vals
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if m:
            vals[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(2)
    return vals


def resolve(value, kind):
    """The id of a user or group: '+N' is a numeric id (libvirt's
    syntax), else a name (KeyError if there is none)."""
    if value.startswith("+") and value[1:].isdigit():
        return int(value[1:])
    if kind == "user":
        return pwd.getpwnam(value).pw_uid
    return grp.getgrnam(value).gr_gid


def _lookup(cfg, conf, kind, default):
    """The id of QEMU's user or group: hook.conf's qemu_KIND unless it
    is auto, else qemu.conf's, else Debian's default."""
    key = "qemu_" + kind
    if cfg[key] != "auto":
        value, where = cfg[key], None
    else:
        value, where = conf.get(kind, default), cfg["qemu_conf"]
    try:
        return resolve(value, kind)
    except KeyError:
        if where is None:
            raise ValueError("%s = %s: no such %s" % (key, value, kind))
        raise ValueError("QEMU's %s %r (from %s) does not exist" %
                         (kind, value, where))


def identity(cfg):
    """(uid, gid, dynamic_ownership) of the QEMU processes libvirt runs,
    or raise ValueError with a reason."""
    conf = conf_values(cfg["qemu_conf"])
    return (_lookup(cfg, conf, "user", DEFAULT_USER),
            _lookup(cfg, conf, "group", DEFAULT_GROUP),
            conf.get("dynamic_ownership", "1") != "0")
