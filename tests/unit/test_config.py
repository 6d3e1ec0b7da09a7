"""hook.conf: every key with good and bad values, and how it is read."""

import configparser
import os
import socket
import unittest
from unittest import mock

import hooktest
from relocate_hook import config

# Values each key takes, and values it refuses.  Every key of DEFAULTS
# is here (test_every_key_is_covered).
GOOD = {
    "state_root": ["/var/lib/nbdkit-relocate", "/srv/relocate"],
    "domains": ["all", "vm1", "vm1 vm2"],
    "disks": ["all", "vda", "vda vdb sdc"],
    "rate": ["0", "50M", "1048576", "1G", "100k"],
    "rate_group": ["0", "125M", "1G"],
    "block_size": ["4K", "64K", "1M", "32M", "65536"],
    "start": ["on-write", "manual"],
    "local_hosts": ["auto", "host-a 192.0.2.1"],
    "nbdkit": ["nbdkit", "/usr/sbin/nbdkit"],
    "filter": ["relocate", "/usr/lib/nbdkit/filters/nbdkit-relocate-filter.so"],
    "relocatectl": ["relocatectl", "/usr/local/bin/relocatectl"],
    "extra_args": ["", "relocate-workers=8", "relocate-workers=8 relocate-timeout=120"],
    "start_timeout": ["30", "0.5"],
    "standby_timeout": ["300", "0", "2.5"],
    "stop_grace": ["10", "0"],
    "qemu_conf": ["/etc/libvirt/qemu.conf"],
    "qemu_user": ["auto", "nobody", "+64055"],
    "qemu_group": ["auto", "nogroup", "+0"],
    "serve": ["tcp", "unix"],
    "serve_name": ["host-b.example.org", "192.0.2.7", "relocate-hostb"],
    "listen": ["127.0.0.1", "::1"],
    "insecure": ["no", "yes"],
    "tls_dir": ["auto", "/etc/pki/qemu"],
    "ports": ["10810-10909", "20000-20000", " 1 - 65535 "],
    "onward_grace": ["60", "0"],
    "onward_window": ["3600", "0", "0.5"],
    "qemu_log_dir": ["/var/log/libvirt/qemu"],
    "attic_days": ["7", "0", "0.5", "forever"],
    "plan_days": ["7", "0", "0.5", "forever"],
    "restarts": ["5", "0", "100"],
    "restart_window": ["60", "0.5"],
    "pause_on_error": ["yes", "no"],
    "reconnect_delay": ["10", "0", "2.5"],
    "virsh": ["virsh", "/usr/bin/virsh"],
    "libvirt_uri": ["qemu:///system", "qemu+unix:///system?socket=/run/x.sock"],
}
BAD = {
    "state_root": ["var/lib/nbdkit-relocate", ""],
    "domains": [""],
    "disks": ["", "vda ../etc", "vd$a"],
    "rate": ["fast", "-1", "10 M", "1.5G", "10MB"],
    "rate_group": ["1 Gbit", "-5", "x"],
    "block_size": ["1K", "64M", "100K", "big", "0"],
    "start": ["immediate", "on-read", ""],
    "local_hosts": [""],
    "nbdkit": ["", "nbdkit --verbose"],
    "filter": [""],
    "relocatectl": ["", "relocatectl status"],
    "extra_args": ["relocate-start=immediate", "relocate-file=/tmp/x",
                   "relocate-standby-timeout=1", "-v", "=x"],
    "start_timeout": ["0", "-1", "soon", "nan", "inf"],
    "standby_timeout": ["-5", "five", "inf"],
    "stop_grace": ["-1", "a while"],
    "qemu_conf": ["qemu.conf"],
    "qemu_user": ["", "libvirt qemu"],
    "qemu_group": ["", "kvm users"],
    "serve": ["http", "TCP", ""],
    "serve_name": ["host b", "host/b"],
    "listen": ["127.0.0.1 ::1"],
    "insecure": ["", "true", "No"],
    "tls_dir": ["", "pki/qemu"],
    "ports": ["10810", "10909-10810", "0-10", "1-65536", "a-b"],
    "onward_grace": ["-1", "an hour"],
    "onward_window": ["-1", "a day", "inf"],
    "qemu_log_dir": ["log"],
    "attic_days": ["-1", "never", "inf", ""],
    "plan_days": ["-1", "never", "inf", ""],
    "restarts": ["-1", "1.5", "many", ""],
    "restart_window": ["0", "-1", "a minute"],
    "pause_on_error": ["", "true", "Yes"],
    "reconnect_delay": ["-1", "soon"],
    "virsh": ["", "virsh -c qemu:///system"],
    "libvirt_uri": ["", "system", "qemu:///system extra"],
}


class EveryKey(hooktest.TempDirTest):

    def test_every_key_is_covered(self):
        """The tables name every key the hook knows, and no other."""
        self.assertEqual(set(GOOD), set(config.DEFAULTS))
        self.assertEqual(set(BAD), set(config.DEFAULTS))

    def test_defaults_are_accepted(self):
        """An empty hook.conf (all defaults, serve_name set) is accepted."""
        self.assertIsNone(self.config().refusal())

    def test_good_values(self):
        """Each good value of each key is accepted."""
        for key, values in GOOD.items():
            for v in values:
                with self.subTest(key=key, value=v):
                    cfg = self.config(**{key: v})
                    self.assertEqual(cfg[key], v.strip())
                    self.assertIsNone(cfg.refusal())

    def test_bad_values(self):
        """Each bad value is refused in one line that names the key."""
        for key, values in BAD.items():
            for v in values:
                with self.subTest(key=key, value=v):
                    why = self.config(**{key: v}).refusal()
                    self.assertIsNotNone(why)
                    self.assertNotIn("\n", why)
                    self.assertTrue(why.startswith(key + " "), why)


class Listen(hooktest.TempDirTest):
    """listen_address: listen, else the address serve_name resolves to."""

    def test_listen_given(self):
        self.assertEqual(self.config(listen=" ::1 ").listen_address(), "::1")

    def test_serve_name_address(self):
        """listen empty: serve_name's address, not every address."""
        cfg = self.config(listen="", serve_name="127.0.0.2")
        self.assertIsNone(cfg.refusal())
        self.assertEqual(cfg.listen_address(), "127.0.0.2")

    def test_serve_name_loopback(self):
        """listen empty and serve_name a name that resolves to a loopback
        address here (Debian's 127.0.1.1 for the host's own name):
        refused, naming both; an address given as serve_name is taken
        as meant."""
        fake = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.1.1", 0))]
        with mock.patch("socket.getaddrinfo", return_value=fake):
            why = self.config(listen="", serve_name="host-b").refusal()
        self.assertTrue(why.startswith("listen is empty and serve_name "
                                       "'host-b' resolves to 127.0.1.1 here"),
                        why)
        self.assertNotIn("\n", why)

    def test_serve_name_unresolved(self):
        """listen empty and serve_name resolving to nothing: refused,
        naming both."""
        why = self.config(listen="", serve_name="relocate-nowhere.invalid").refusal()
        self.assertTrue(why.startswith("listen is empty and serve_name "
                                       "'relocate-nowhere.invalid' does not "
                                       "resolve here"), why)
        self.assertNotIn("\n", why)


class Reading(hooktest.TempDirTest):

    def test_example_is_the_defaults(self):
        """hook.conf.example lists every key with the hook's default."""
        cp = configparser.ConfigParser(interpolation=None)
        cp.read(os.path.join(hooktest.SCRIPTS, "hook.conf.example"))
        self.assertEqual(dict(cp["hook"]), config.DEFAULTS)

    def test_missing_file_is_the_defaults(self):
        """A missing hook.conf is no error: the defaults hold."""
        cfg = config.load(os.path.join(self.tmp, "none.conf"))
        self.assertIsNone(cfg.error)
        self.assertEqual(cfg["ports"], config.DEFAULTS["ports"])

    def test_relative_path(self):
        """A relative path is made absolute: the keeper reads the same
        file again, from /."""
        self.write("rel.conf", "[hook]\nrate = 7M\n")
        cwd = os.getcwd()
        os.chdir(self.tmp)
        self.addCleanup(os.chdir, cwd)
        cfg = config.load("rel.conf")
        self.assertEqual(cfg.path, os.path.join(self.tmp, "rel.conf"))
        os.chdir("/")
        self.assertEqual(config.load(cfg.path)["rate"], "7M")

    def test_later_key_wins(self):
        """A key given twice: the later one holds (strict=False)."""
        cfg = config.load(self.write("h.conf", "[hook]\nrate = 1M\nrate = 2M\n"))
        self.assertEqual(cfg["rate"], "2M")

    def test_unknown_key(self):
        """A misspelt key is refused, by name, not silently ignored."""
        why = self.config(rat="10M").refusal()
        self.assertTrue(why.startswith("unknown key rat "), why)

    def test_other_section(self):
        """Keys outside [hook] are refused, naming the section."""
        path = self.write("h.conf", "[hook]\nrate = 1M\n[hooks]\nrate = 2M\n")
        why = config.load(path).refusal()
        self.assertEqual(why, "%s: section [hooks]: the keys go in [hook]" % path)

    def test_unparsable_file(self):
        """A file that is not INI is refused, naming the file, on one line."""
        path = self.write("h.conf", "rate = 1M\n")
        cfg = config.load(path)
        self.assertTrue(cfg.refusal().startswith("cannot read %s: " % path))
        self.assertNotIn("\n", cfg.refusal())
        self.assertEqual(cfg["rate"], config.DEFAULTS["rate"])

    def test_not_utf8(self):
        """Bytes that are not UTF-8: refused, naming the file, on one line."""
        path = os.path.join(self.tmp, "hook.conf")
        with open(path, "wb") as f:
            f.write(b"[hook]\nrate = \xff\n")
        why = config.load(path).refusal()
        self.assertTrue(why.startswith("cannot read %s: " % path), why)
        self.assertNotIn("\n", why)

    def test_start_refusal_says_why(self):
        """start = immediate: the line says which modes are safe and why."""
        why = self.config(start="immediate").refusal()
        self.assertEqual(why.split(" (")[0], "start = immediate is refused: "
                         "only on-write or manual are safe during a live "
                         "migration")

    def test_extra_args_own_param(self):
        """extra_args may not set a parameter the hook sets."""
        self.assertEqual(self.config(extra_args="relocate-workers=2 "
                                     "relocate-control=/x").refusal(),
                         "extra_args may not set relocate-control "
                         "(the hook sets it)")


class Values(hooktest.TempDirTest):

    def test_parse_size(self):
        """Sizes as nbdkit_parse_size reads them."""
        self.assertEqual(config.parse_size("64K"), 65536)
        self.assertEqual(config.parse_size("2m"), 2 << 20)
        self.assertEqual(config.parse_size("3s"), 1536)
        self.assertEqual(config.parse_size("10b"), 10)
        self.assertEqual(config.parse_size("1E"), 1 << 60)
        for bad in ("", "K", "1.5M", "1MB", "-1", "1 K"):
            self.assertIsNone(config.parse_size(bad), bad)

    def test_port_range(self):
        self.assertEqual(self.config(ports="20000-20009").port_range(),
                         (20000, 20009))
        self.assertIsNone(self.config(ports="20009-20000").port_range())

    def test_serve_name_auto_is_the_fqdn(self):
        """serve_name = auto is this host's FQDN; a loopback one is refused."""
        with mock.patch("socket.getfqdn", return_value="b.example.org"):
            cfg = self.config(serve_name="auto")
            self.assertEqual(cfg.serve_name(), "b.example.org")
            self.assertIsNone(cfg.refusal())
        with mock.patch("socket.getfqdn", return_value="localhost.localdomain"):
            why = self.config(serve_name="auto").refusal()
            self.assertTrue(why.startswith("serve_name = auto gives "
                                           "'localhost.localdomain', which "
                                           "names every host"), why)
            # serve = unix names no host: nothing to refuse.
            self.assertIsNone(self.config(serve_name="auto",
                                          serve="unix").refusal())

    def test_local_names(self):
        """local_hosts lists this host's names, plus serve_name with tcp."""
        cfg = self.config(local_hosts="a 192.0.2.1", serve_name="b")
        self.assertEqual(cfg.local_names(), {"a", "192.0.2.1", "b"})
        cfg = self.config(local_hosts="a", serve="unix")
        self.assertEqual(cfg.local_names(), {"a"})
        auto = self.config(local_hosts="auto").local_names()
        self.assertTrue({"localhost", "127.0.0.1", "::1"} <= auto)

    def test_wanted(self):
        """domains and disks opt domains and disks in."""
        cfg = self.config(domains="vm1 vm2", disks="vdb")
        self.assertTrue(cfg.wanted("vm2", "vdb"))
        self.assertFalse(cfg.wanted("vm3", "vdb"))
        self.assertFalse(cfg.wanted("vm1", "vda"))
        self.assertTrue(self.config().wanted("any name", "sdz"))


if __name__ == "__main__":
    unittest.main()
