"""QEMU's user and group, read from libvirt's qemu.conf."""

import grp
import pwd
import unittest
from unittest import mock

import hooktest
from relocate_hook import qemuconf

NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_gid


class QemuConf(hooktest.TempDirTest):

    def identity(self, conf_text, **keys):
        return qemuconf.identity(self.config(
            qemu_conf=self.write("qemu.conf", conf_text), **keys))

    def test_values(self):
        """user, group, dynamic_ownership: quoted or numeric, comments
        and commented-out lines skipped, the later line wins."""
        path = self.write("qemu.conf",
                          '# user = "root"\n'
                          'user = "first"\n'
                          'user = "nobody"   # as libvirt-qemu\n'
                          '  group="nogroup"\n'
                          'dynamic_ownership = 0\n'
                          'security_driver = "none"\n'
                          'user_extra = "x"\n')
        self.assertEqual(qemuconf.conf_values(path),
                         {"user": "nobody", "group": "nogroup",
                          "dynamic_ownership": "0"})

    def test_missing_file(self):
        self.assertEqual(qemuconf.conf_values(self.tmp + "/none"), {})

    def test_identity_from_qemu_conf(self):
        """auto: the user and group qemu.conf names; dynamic ownership on."""
        self.assertEqual(self.identity('user = "nobody"\ngroup = "nogroup"\n'),
                         (NOBODY, NOGROUP, True))

    def test_numeric_ids(self):
        """+N is a numeric id, as in qemu.conf, even if no name has it."""
        self.assertEqual(self.identity('user = "+4242"\ngroup = "+4343"\n'
                                       'dynamic_ownership = 0\n'),
                         (4242, 4343, False))

    def test_hook_conf_overrides(self):
        """qemu_user and qemu_group in hook.conf win over qemu.conf."""
        self.assertEqual(self.identity('user = "root"\n', qemu_user="nobody",
                                       qemu_group="+7"), (NOBODY, 7, True))

    def test_debian_defaults(self):
        """Not set in qemu.conf: Debian's libvirt-qemu and kvm."""
        with mock.patch("pwd.getpwnam", return_value=mock.Mock(pw_uid=64055)) as u, \
                mock.patch("grp.getgrnam", return_value=mock.Mock(gr_gid=993)) as g:
            self.assertEqual(self.identity("# nothing set\n"), (64055, 993, True))
        u.assert_called_once_with("libvirt-qemu")
        g.assert_called_once_with("kvm")

    def test_unknown_user_and_group(self):
        """A user or group that does not exist: one line naming it and
        the file it came from."""
        with self.assertRaises(ValueError) as e:
            self.identity('user = "no-such-user"\n')
        self.assertEqual(str(e.exception), "QEMU's user 'no-such-user' (from "
                         "%s/qemu.conf) does not exist" % self.tmp)
        with self.assertRaises(ValueError) as e:
            self.identity('user = "nobody"\ngroup = "no-such-group"\n')
        self.assertEqual(str(e.exception), "QEMU's group 'no-such-group' (from "
                         "%s/qemu.conf) does not exist" % self.tmp)
        # Set in hook.conf: the line names the key there.
        with self.assertRaises(ValueError) as e:
            self.identity('user = "nobody"\n', qemu_user="no-such-user")
        self.assertEqual(str(e.exception), "qemu_user = no-such-user: no such user")
        with self.assertRaises(ValueError) as e:
            self.identity('user = "nobody"\n', qemu_group="+x")
        self.assertEqual(str(e.exception), "qemu_group = +x: no such group")


if __name__ == "__main__":
    unittest.main()
