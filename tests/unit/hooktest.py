"""What the hook's unit tests share: the package on sys.path, a
configuration written to a temporary hook.conf, domain XML to feed it.

Run the tests with scripts/check, or by hand:

    /usr/bin/python3 -m unittest discover -s tests/unit -t tests/unit
"""

import os
import shutil
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))

from relocate_hook import config, log  # noqa: E402

SCRIPTS = os.path.normpath(sys.path[0])


class TempDirTest(unittest.TestCase):
    """A test with a temporary directory self.tmp, removed afterwards;
    hook.log goes there too."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="relocate-unit.")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        log.init(self.tmp)

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
        text = "[hook]\n" + "".join("%s = %s\n" % kv for kv in keys.items())
        return config.load(self.write("hook.conf", text))

    def hook_log(self):
        try:
            with open(os.path.join(self.tmp, "hook.log")) as f:
                return f.read()
        except OSError:
            return ""


def domain(*disks, name="vm1", uuid="6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0001",
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
