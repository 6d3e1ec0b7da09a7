"""What the hook's unit tests share: the package on sys.path, a
configuration written to a temporary hook.conf, domain XML to feed it.

Run the tests with scripts/check, or by hand:

    /usr/bin/python3 tests/unit/run.py    (or: python3 -m unittest discover -s tests/unit)
"""

import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import unittest
from unittest import mock

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))

from relocate_hook import config, domxml, log, state  # noqa: E402

SCRIPTS = os.path.normpath(sys.path[0])
UUID = "6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0001"


class TempDirTest(unittest.TestCase):
    """A test with a temporary directory self.tmp, removed afterwards;
    hook.log goes there too."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="relocate-unit.")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        log.init(self.tmp)
        # hook.log's lines go to stderr too: keep the test's output clean.
        quiet = mock.patch("sys.stderr", io.StringIO())
        quiet.start()
        self.addCleanup(quiet.stop)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def config(self, **keys):
        """A Config from a hook.conf in self.tmp with these keys set (and
        state_root, qemu_conf and local_hosts pointing at self.tmp and
        at nothing of this machine, unless given)."""
        keys.setdefault("state_root", os.path.join(self.tmp, "root"))
        if "qemu_conf" not in keys:
            keys["qemu_conf"] = self.write(
                "qemu.conf", 'user = "nobody"\ngroup = "nogroup"\n')
        keys.setdefault("local_hosts", "this-host")
        keys.setdefault("serve_name", "this-host")
        keys.setdefault("listen", "127.0.0.1")      # this-host resolves nowhere
        keys.setdefault("tls_dir", self.pki())
        text = "[hook]\n" + "".join("%s = %s\n" % kv for kv in keys.items())
        return config.load(self.write("hook.conf", text))

    def pki(self, *files):
        """A directory of (empty) certificate files, by default every
        one a relocation server and its clients need."""
        path = os.path.join(self.tmp, "pki")
        shutil.rmtree(path, True)
        os.makedirs(path)
        for f in files or ("ca-cert.pem", "server-cert.pem", "server-key.pem",
                           "client-cert.pem", "client-key.pem"):
            open(os.path.join(path, f), "w").close()
        return path

    def hook_log(self):
        try:
            with open(os.path.join(self.tmp, "hook.log")) as f:
                return f.read()
        except OSError:
            return ""


def domain(*disks, name="vm1", uuid=UUID,
           extra=""):
    """A domain's XML with these <disk> elements."""
    return ("<domain type='kvm'><name>%s</name><uuid>%s</uuid>%s"
            "<devices>%s</devices></domain>" %
            (name, uuid, extra, "".join(disks)))


def nbd_disk(dev="vda", host="old-host", port=None, export="disk1",
             inner=""):
    """An NBD network disk over TCP."""
    return ("<disk type='network' device='disk'>"
            "<driver name='qemu' type='raw'/>"
            "<source protocol='nbd' name='%s'><host name='%s'%s/>%s</source>"
            "<target dev='%s' bus='virtio'/></disk>" %
            (export, host, " port='%s'" % port if port else "", inner, dev))


def file_disk(dev="vdc", path="/var/lib/libvirt/images/data.img"):
    return ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            "<source file='%s'/><target dev='%s' bus='virtio'/></disk>" %
            (path, dev))


def disk_of(xml_text, dev="vda"):
    """The <disk> element of target dev in a domain's XML."""
    for d in domxml.parse(xml_text).iter("disk"):
        if d.find("target").get("dev") == dev:
            return d
    raise KeyError(dev)


def bitmap_header(flags, magic=state.BITMAP_MAGIC, version=1):
    """The filter's 16-byte bitmap header."""
    return magic + struct.pack("<II", version, flags)


# A stand-in for nbdkit: a process that sleeps with the marker as its
# last argument ("deaf": it ignores SIGTERM, like an nbdkit with a hung
# source).  Python, not /bin/sh -c: dash execs the last command of -c,
# and sleep's command line no longer holds the marker.
_SLEEPER = ("import signal, sys, time\n"
            "if sys.argv[1] == 'deaf':\n"
            "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")


def sleeper(test, marker, deaf=False, reap=True):
    """Start a stand-in whose command line holds marker; it is killed and
    reaped at the test's cleanup.  reap: a thread waits for it, as the
    keeper waits for nbdkit, so that once it exits it leaves /proc (which
    kill_process waits for); join proc.reaper to see how it ended."""
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPER,
                             "deaf" if deaf else "-", marker],
                            stdout=subprocess.PIPE)
    test.addCleanup(_end, proc)
    proc.stdout.readline()      # its SIGTERM handling is set up
    proc.reaper = threading.Thread(target=proc.wait, daemon=True)
    if reap:
        proc.reaper.start()
    return proc


def _end(proc):
    if proc.returncode is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()


def ended_by(proc):
    """The signal that ended a reaped sleeper."""
    proc.reaper.join(5)
    return -proc.returncode if proc.returncode is not None else None
