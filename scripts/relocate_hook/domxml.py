"""The domain XML: which disks to relocate, and how a disk is rewritten.

Over config.  Pure functions of the XML (and of the relocation's
record, a dict): nothing here reads a file or runs a program.  The XML
is parsed with a real parser; no value from it ever reaches a shell.
"""

import hashlib
import io
import re
import xml.etree.ElementTree as ET

from .config import TARGET_RE

NBD_PORT = "10809"


def parse(text):
    """The domain's root element (ET.ParseError if the text is not XML).

    The namespace prefixes of the text (e.g. libosinfo's in <metadata>)
    are kept for tostring, so that the XML handed back says what it
    said."""
    it = ET.iterparse(io.StringIO(text), events=("start-ns",))
    for _, (prefix, uri) in it:
        if prefix and not re.fullmatch(r"ns\d+", prefix):
            try:
                ET.register_namespace(prefix, uri)
            except ValueError:
                pass
    return it.root


def tostring(root):
    return ET.tostring(root, encoding="unicode")


def domain_key(name, root):
    """The domain's directory name: its UUID, or if it has none that
    looks like one, a digest of its name (never the name itself, which
    may hold spaces, quotes or anything else)."""
    uuid = (root.findtext("uuid") or "").strip().lower()
    if re.fullmatch(r"[0-9a-f-]{32,36}", uuid):
        return uuid
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def target_dev(disk):
    """The disk's target dev, if it can name a directory, else None."""
    target = disk.find("target")
    dev = target.get("dev") if target is not None else None
    if not dev or not TARGET_RE.fullmatch(dev) or dev in ("attic", ".", ".."):
        return None
    return dev


def _nbd_host(disk):
    """The <source> and <host> of an NBD network disk, or (None, None)."""
    src = disk.find("source")
    if disk.get("type") != "network" or src is None or \
            src.get("protocol") != "nbd":
        return None, None
    return src, src.find("host")


def source_tls(src, tls_default):
    """Does QEMU use TLS for this NBD <source>?  Its tls attribute says
    so, else qemu.conf's nbd_tls (tls_default), as libvirt decides."""
    return {"yes": True, "no": False}.get(src.get("tls"), tls_default)


def nbd_source(disk, local_names, tls_default=False):
    """((hostname, port, export, tls), None) for a remote NBD disk this
    host can relocate (tls: its source uses TLS, see source_tls), else
    (None, why not)."""
    if disk.get("type") != "network":
        return None, "not a network disk"
    src = disk.find("source")
    if src is None or src.get("protocol") != "nbd":
        return None, "not NBD"
    hosts = src.findall("host")
    if not hosts:
        return None, "no <host>"
    if len(hosts) > 1:
        return None, "%d <host> elements: NBD has one" % len(hosts)
    host = hosts[0]
    if host.get("transport", "tcp") != "tcp":
        return None, ("transport %s: a local socket, which this host "
                      "cannot reach (a previous host with serve = unix? "
                      "serve = tcp there lets the domain move on)" %
                      host.get("transport"))
    hostname = host.get("name", "")
    if not hostname or hostname in local_names:
        return None, "source host %r is this host" % hostname
    if src.find("auth") is not None:
        return None, "a source with <auth> is not handled"
    return (hostname, host.get("port", NBD_PORT), src.get("name", ""),
            source_tls(src, tls_default)), None


def point_at_server(disk, rel, pause=False, reconnect_delay=0):
    """Rewrite the disk's <source> to name the relocation server, with
    tls='yes' if it requires TLS, else tls='no' (whatever nbd_tls says
    on this host).  pause:
    an I/O error pauses the guest (error_policy and rerror_policy
    'stop', unless the definition sets them); reconnect_delay > 0
    seconds: <reconnect delay='N'/> in <source> (whole seconds, at least
    1), unless there is one."""
    source = disk.find("source")
    for h in source.findall("host"):
        source.remove(h)
    if rel["serve"] == "tcp":
        ET.SubElement(source, "host", name=rel["serve_name"],
                      port=str(rel["port"]))
    else:
        ET.SubElement(source, "host", transport="unix", socket=rel["socket"])
    source.set("tls", "yes" if rel.get("tls") else "no")
    if reconnect_delay > 0 and source.find("reconnect") is None:
        ET.SubElement(source, "reconnect",
                      delay=str(max(1, round(reconnect_delay))))
    if pause:
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        for attr in ("error_policy", "rerror_policy"):
            driver.attrib.setdefault(attr, "stop")


def names_server(disk, rel):
    """Does the disk's definition name this relocation's server?"""
    _, host = _nbd_host(disk)
    if host is None:
        return False
    if rel.get("serve", "unix") == "tcp":
        return (host.get("transport", "tcp") == "tcp" and
                host.get("name") == rel.get("serve_name") and
                host.get("port", NBD_PORT) == str(rel.get("port")))
    return (host.get("transport") == "unix" and
            host.get("socket") == rel.get("socket"))


def names_source(disk, rel):
    """Does the disk's definition name the host rel relocated from?"""
    src, host = _nbd_host(disk)
    return (host is not None and
            host.get("transport", "tcp") == "tcp" and
            host.get("name") == rel.get("hostname") and
            host.get("port", NBD_PORT) == str(rel.get("port_src",
                                                      rel.get("port"))) and
            src.get("name", "") == rel.get("export"))
