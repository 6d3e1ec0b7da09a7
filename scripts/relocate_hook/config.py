"""hook.conf: the hook's settings, their defaults, and why one is refused.

Bottom layer: imports nothing of the package.  Every key of
hook.conf.example is in DEFAULTS, with the same default.
"""

import configparser
import math
import os
import re
import socket

DEFAULTS = {
    "state_root": "/var/lib/nbdkit-relocate",
    "domains": "all",            # "all", or space-separated names to opt in
    "disks": "all",              # "all", or space-separated target devs (vda ...)
    "rate": "0",                 # relocate-rate
    "rate_group": "0",           # one budget for all this host's relocations, bytes/s; 0: none
    "block_size": "64K",         # relocate-block-size
    "start": "on-write",         # relocate-start: on-write or manual only
    "local_hosts": "auto",       # hosts that are this one; "auto" = this host's names
    "nbdkit": "nbdkit",
    "filter": "relocate",        # name, or path to nbdkit-relocate-filter.so
    "relocatectl": "relocatectl",
    "extra_args": "",            # more key=value parameters for nbdkit
    "start_timeout": "30",       # seconds to wait for a server to serve
    "standby_timeout": "300",    # a server no client came to stops after this
    "stop_grace": "10",          # SIGTERM, then SIGKILL after this many seconds
    "qemu_conf": "/etc/libvirt/qemu.conf",
    "qemu_user": "auto",         # auto: user = ... in qemu_conf, else libvirt-qemu
    "qemu_group": "auto",        # auto: group = ... in qemu_conf, else kvm
    "serve": "tcp",              # tcp (serve_name:port, onward moves) or unix
    "serve_name": "auto",        # the host name put in the XML; auto = FQDN
    "listen": "",                # nbdkit -i: an address; empty = serve_name's
    "insecure": "no",            # yes: servers without TLS (tcp); no: TLS with client certificates
    "tls_dir": "auto",           # certificates; auto: qemu.conf's NBD, else default, x509 dir
    "ports": "10810-10909",      # the relocation servers' TCP ports
    "onward_window": "3600",     # an onward server not told "complete" stops this long after its last client
    "onward_grace": "10",        # once told "complete", other clients keep it this long at most
    "qemu_log_dir": "/var/log/libvirt/qemu",
    "attic_days": "7",           # attic copies older than this go; "forever": kept
    "plan_days": "7",            # a plan never started gives its port back after this; "forever": never
    "restarts": "5",             # a server that dies is started again, at most
    "restart_window": "60",      # this many times in this many seconds
    "pause_on_error": "yes",     # yes: the guest pauses on an I/O error, resumed after a restart
    "reconnect_delay": "10",     # <reconnect delay='N'/> for QEMU, where libvirt knows it; 0: none
    "virsh": "/usr/bin/virsh",   # how the keeper resumes a paused guest
    "libvirt_uri": "qemu:///system",
}

# The start modes that are safe while the guest still runs, and
# writes, at the source: nothing is stored before it runs here.
SAFE_STARTS = ("on-write", "manual")

# Parameters that the hook sets itself: never from extra_args.
OWN_PARAMS = ("relocate-file", "relocate-bitmap", "relocate-control",
              "relocate-start", "relocate-standby-timeout")

# A target dev (vda, sdb, hdc ...) as a directory name: nothing else.
TARGET_RE = re.compile(r"[A-Za-z0-9_.-]+")

# What nbdkit_parse_size accepts: digits and one optional suffix.
_SIZE_RE = re.compile(r"(\d+)([bBsSkKmMgGtTpPeE]?)")
_SCALE = {"": 1, "b": 1, "s": 512, "k": 1 << 10, "m": 1 << 20,
          "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}


def parse_size(value):
    """Bytes in a size as nbdkit's parameters take it ("64K", "1M",
    "4096"), or None."""
    m = _SIZE_RE.fullmatch(value.strip())
    if not m:
        return None
    return int(m.group(1)) * _SCALE[m.group(2).lower()]


def _finite(value):
    """A finite number, or None."""
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _is_address(name):
    """Is name an IPv4 or IPv6 address, not a host name?"""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, name)
            return True
        except OSError:
            pass
    return False


def is_loopback(name):
    """Does the host name or address name every host (localhost)?"""
    return (name.split(".")[0] == "localhost" or name == "::1" or
            name.startswith("127."))


class Config:
    """The [hook] section over the defaults, with typed access.

    error is why the file could not be read (then the values are the
    defaults, and refusal() returns it)."""

    def __init__(self, values, path, error=None, unknown=()):
        self._values = values
        self.path = path
        self.error = error
        self.unknown = tuple(unknown)

    def __getitem__(self, key):
        return self._values[key]

    def seconds(self, key):
        """A key that holds a number of seconds, as a float."""
        return float(self._values[key])

    def port_range(self):
        """(first, last) of ports, or None."""
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", self["ports"])
        if not m:
            return None
        first, last = int(m.group(1)), int(m.group(2))
        return (first, last) if 1 <= first <= last <= 65535 else None

    def serve_name(self):
        """The host name other hosts (and this host's QEMU) reach this
        host's relocation servers by."""
        if self["serve_name"].strip() not in ("", "auto"):
            return self["serve_name"].strip()
        return socket.getfqdn()

    def listen_address(self):
        """The address the relocation servers listen on: listen, else
        the first address serve_name resolves to here.  A ValueError
        saying why if it resolves to none, or if a name resolves to a
        loopback address, which other hosts cannot reach."""
        if self["listen"].strip():
            return self["listen"].strip()
        name = self.serve_name()
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise ValueError("listen is empty and serve_name %r does not "
                             "resolve here (%s): set listen to the address "
                             "to serve on" % (name, e)) from None
        addr = infos[0][4][0]
        if is_loopback(addr) and not _is_address(name):
            raise ValueError("listen is empty and serve_name %r resolves to "
                             "%s here, which other hosts cannot reach (a "
                             "host's own name in Debian's /etc/hosts is "
                             "127.0.1.1): set listen to this host's address "
                             "on the hosts' network" % (name, addr))
        return addr

    def server_tls(self):
        """Do the relocation servers require TLS (serve = tcp without
        insecure = yes)?  (A unix socket is QEMU's user's alone.)"""
        return self["serve"] == "tcp" and self["insecure"] != "yes"

    def local_names(self):
        """Host names and addresses that are this host."""
        if self["local_hosts"].strip() != "auto":
            names = set(self["local_hosts"].split())
        else:
            names = {"localhost", "127.0.0.1", "::1", socket.gethostname()}
            try:
                names.add(socket.getfqdn())
                names.update(socket.gethostbyname_ex(socket.gethostname())[2])
            except OSError:
                pass
        if self["serve"] == "tcp":
            names.add(self.serve_name())
        return names

    def wanted(self, name, target):
        """Does the configuration opt this domain's disk in?"""
        domains, disks = self["domains"].split(), self["disks"].split()
        return ((domains == ["all"] or name in domains) and
                (disks == ["all"] or target in disks))

    def refusal(self):
        """Why this configuration must not be used for a live migration
        (one line naming the key), or None."""
        if self.error:
            return self.error
        if self.unknown:
            return ("unknown key %s (the keys are those of "
                    "hook.conf.example)" % ", ".join(self.unknown))
        for check in (self._check_paths, self._check_numbers,
                      self._check_sizes, self._check_start,
                      self._check_extra_args, self._check_serve,
                      self._check_lists):
            why = check()
            if why:
                return why
        return None

    def _check_paths(self):
        for key in ("state_root", "qemu_conf", "qemu_log_dir"):
            if not self[key].startswith("/"):
                return "%s = %s: an absolute path" % (key, self[key])
        for key in ("nbdkit", "filter", "relocatectl", "virsh"):
            if not self[key].strip() or len(self[key].split()) != 1:
                return "%s = %s: one program or file name" % (key, self[key])
        for key in ("qemu_user", "qemu_group"):
            if not self[key].strip() or len(self[key].split()) != 1:
                return ("%s = %s: auto, a name or +N (a numeric id)" %
                        (key, self[key]))
        if not re.fullmatch(r"[a-z0-9+]+://\S*", self["libvirt_uri"]):
            return ("libvirt_uri = %s: a libvirt connection URI such as "
                    "qemu:///system" % self["libvirt_uri"])
        for key in ("pause_on_error", "insecure"):
            if self[key] not in ("yes", "no"):
                return "%s = %s: yes or no" % (key, self[key])
        if self["tls_dir"] != "auto" and not self["tls_dir"].startswith("/"):
            return ("tls_dir = %s: auto, or the absolute path of a directory "
                    "of certificates" % self["tls_dir"])
        return None

    def days(self, key):
        """A key in days (attic_days, plan_days) as seconds, or None: for
        ever."""
        if self[key].strip() == "forever":
            return None
        return self.seconds(key) * 86400

    def _check_numbers(self):
        positive = ("start_timeout", "restart_window")
        days = ("attic_days", "plan_days")
        for key in ("start_timeout", "standby_timeout", "stop_grace",
                    "onward_window", "onward_grace", "restart_window",
                    "reconnect_delay") + days:
            if key in days and self[key].strip() == "forever":
                continue
            v = _finite(self[key])
            if v is None or v < 0 or (key in positive and v == 0):
                return ("%s = %s: a number of %s, %s%s" %
                        (key, self[key],
                         "days" if key in days else "seconds",
                         "more than 0" if key in positive else "0 or more",
                         ", or forever" if key in days else ""))
        if not re.fullmatch(r"\d+", self["restarts"].strip()):
            return ("restarts = %s: how many times a server that died is "
                    "started again within restart_window, 0 or more" %
                    self["restarts"])
        return None

    def _check_sizes(self):
        for key in ("rate", "rate_group"):
            if parse_size(self[key]) is None:
                return ("%s = %s: bytes per second, e.g. 0 (unlimited), "
                        "50M" % (key, self[key]))
        bs = parse_size(self["block_size"])
        if bs is None or bs < 4096 or bs > 32 << 20 or bs & (bs - 1):
            return ("block_size = %s: a power of 2 between 4K and 32M" %
                    self["block_size"])
        return None

    def _check_start(self):
        if self["start"] not in SAFE_STARTS:
            return ("start = %s is refused: only %s are safe during a live "
                    "migration (before the guest runs here it still writes "
                    "at the source, and %s would copy blocks it then "
                    "rewrites)" % (self["start"], " or ".join(SAFE_STARTS),
                                   self["start"]))
        return None

    def _check_extra_args(self):
        for a in self["extra_args"].split():
            key = a.split("=", 1)[0]
            if "=" not in a or not key:
                return ("extra_args = %s: key=value parameters for nbdkit, "
                        "%r is not one" % (self["extra_args"], a))
            if key in OWN_PARAMS:
                return "extra_args may not set %s (the hook sets it)" % key
        return None

    def _check_serve(self):
        if self["serve"] not in ("tcp", "unix"):
            return "serve = %s: tcp or unix" % self["serve"]
        if len(self["listen"].split()) > 1:
            return ("listen = %s: one address, or empty for serve_name's" %
                    self["listen"])
        if self["serve"] != "tcp":
            return None
        if self.port_range() is None:
            return "ports = %s: FIRST-LAST, within 1-65535" % self["ports"]
        name = self["serve_name"].strip()
        if name in ("", "auto"):
            if is_loopback(self.serve_name()):
                return ("serve_name = auto gives %r, which names every host: "
                        "set serve_name to a name of this host that the "
                        "other hosts resolve" % self.serve_name())
        elif not re.fullmatch(r"[A-Za-z0-9_.:-]+", name):
            return ("serve_name = %s: a host name or address of this host "
                    "that the other hosts reach" % name)
        try:
            self.listen_address()
        except ValueError as e:
            return str(e)
        return None

    def _check_lists(self):
        bad = [d for d in self["disks"].split() if not TARGET_RE.fullmatch(d)]
        if not self["disks"].split() or bad:
            return ("disks = %s: all, or target devs such as vda vdb" %
                    self["disks"])
        if not self["domains"].split():
            return "domains = : all, or the names of the domains to relocate"
        if not self["local_hosts"].split():
            return ("local_hosts = : auto, or the names and addresses of "
                    "this host")
        return None


def load(path):
    """The configuration in path (a missing file: the defaults)."""
    path = os.path.abspath(path)    # the keeper reads it again, from /
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp["hook"] = DEFAULTS
    try:
        read = cp.read(path)
    except (configparser.Error, UnicodeDecodeError) as e:
        return Config(dict(DEFAULTS), path, "cannot read %s: %s" %
                      (path, str(e).replace("\n", " ")))
    others = [s for s in cp.sections() if s != "hook"] if read else []
    if others:
        return Config(dict(DEFAULTS), path, "%s: section [%s]: the keys "
                      "go in [hook]" % (path, others[0]))
    unknown = sorted(set(cp["hook"]) - set(DEFAULTS))
    return Config(dict(cp["hook"]), path, None, unknown)
