"""QEMU's user and group, as libvirt's qemu.conf sets them.

Over config.  libvirt runs QEMU as qemu.conf's user and group (on
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


def identity(cfg):
    """(uid, gid, dynamic_ownership) of the QEMU processes libvirt runs,
    or raise ValueError with a reason."""
    conf = conf_values(cfg["qemu_conf"])
    user = cfg["qemu_user"] if cfg["qemu_user"] != "auto" else \
        conf.get("user", DEFAULT_USER)
    group = cfg["qemu_group"] if cfg["qemu_group"] != "auto" else \
        conf.get("group", DEFAULT_GROUP)
    try:
        uid = resolve(user, "user")
    except KeyError:
        raise ValueError("QEMU's user %r (from %s) does not exist" %
                         (user, cfg["qemu_conf"]))
    try:
        gid = resolve(group, "group")
    except KeyError:
        raise ValueError("QEMU's group %r (from %s) does not exist" %
                         (group, cfg["qemu_conf"]))
    return uid, gid, conf.get("dynamic_ownership", "1") != "0"
