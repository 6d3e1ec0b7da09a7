"""QEMU's user and group, and NBD's TLS, as libvirt's qemu.conf sets them.

Over config (reads the Config it is handed).  libvirt runs QEMU as
qemu.conf's user and group (on Debian, libvirt-qemu:kvm when they are
not set); with serve = unix the relocation server's socket must be
theirs.  NBD disks use TLS where their <source tls=...> says so, else
where nbd_tls = 1; QEMU's certificates for them are in
nbd_tls_x509_cert_dir, else default_tls_x509_cert_dir, else
/etc/pki/qemu: the hook's servers use the same.
"""

import os

import grp
import pwd
import re

DEFAULT_USER = "libvirt-qemu"
DEFAULT_GROUP = "kvm"

DEFAULT_TLS_DIR = "/etc/pki/qemu"
# What a directory of certificates holds, as libvirt, QEMU, nbdkit and
# libnbd name the files: a server's, and a client's.
SERVER_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")
CLIENT_FILES = ("ca-cert.pem", "client-cert.pem", "client-key.pem")

_LINE_RE = re.compile(r'\s*(user|group|dynamic_ownership|nbd_tls|'
                      r'nbd_tls_x509_cert_dir|default_tls_x509_cert_dir)'
                      r'\s*=\s*("([^"]*)"|[0-9]+)\s*(#.*)?$')


def conf_values(path):
    """user, group, dynamic_ownership and the NBD TLS settings as the
    file sets them (a later line wins; a missing file sets nothing)."""
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


def nbd_tls(cfg):
    """Does qemu.conf turn TLS on for NBD disks without a tls attribute?"""
    return conf_values(cfg["qemu_conf"]).get("nbd_tls") == "1"


def tls_dir(cfg):
    """(directory, where it comes from) of the certificates for NBD:
    hook.conf's tls_dir, else QEMU's for NBD disks."""
    if cfg["tls_dir"] != "auto":
        return cfg["tls_dir"], "tls_dir"
    conf = conf_values(cfg["qemu_conf"])
    for key in ("nbd_tls_x509_cert_dir", "default_tls_x509_cert_dir"):
        if conf.get(key):
            return conf[key], "%s in %s" % (key, cfg["qemu_conf"])
    return DEFAULT_TLS_DIR, "libvirt's default"


def tls_missing(path, server):
    """The files a directory of certificates lacks: a client's, and with
    server a server's too (this host's QEMU is the client of its
    servers)."""
    need = CLIENT_FILES + (SERVER_FILES[1:] if server else ())
    return [f for f in need if not os.path.isfile(os.path.join(path, f))]
