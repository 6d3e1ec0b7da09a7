"""A relocation's files on disk: its record, markers, pids, bitmap
header, and the port and address each relocation gets."""

import os
import socket
import time
import unittest

import hooktest
from hooktest import UUID, bitmap_header
from relocate_hook import config, state

def mode(path):
    return os.stat(path).st_mode & 0o7777


class Files(hooktest.TempDirTest):
    """Directories, JSON files, markers and pids."""

    def test_make_dir(self):
        """make_dir: missing parents made; 0700, or with QEMU's group
        0710 and that group's, whatever the umask and the mode before."""
        path = os.path.join(self.tmp, "root", UUID, "vda")
        old = os.umask(0o022)
        try:
            state.make_dir(path)
        finally:
            os.umask(old)
        self.assertEqual(mode(path), 0o700)
        os.chmod(path, 0o755)
        state.make_dir(path, os.getgid())
        self.assertEqual(mode(path), 0o710)
        self.assertEqual(os.stat(path).st_gid, os.getgid())
        state.make_dir(path)
        self.assertEqual(mode(path), 0o700)

    def test_json_round_trip(self):
        """write_json then read_json gives the object back; no .tmp is left."""
        path = os.path.join(self.tmp, "relocation.json")
        obj = {"source": "nbd://old-host:10809/disk1", "port": 10815,
               "disks": [{"target": "vda"}], "none": None}
        state.write_json(path, obj)
        state.write_json(path, obj)
        self.assertEqual(state.read_json(path), obj)
        self.assertEqual(os.listdir(self.tmp), ["relocation.json"])

    def test_read_json_missing_or_broken(self):
        """read_json: None for a missing file, broken JSON or bad UTF-8."""
        self.assertIsNone(state.read_json(os.path.join(self.tmp, "none")))
        self.assertIsNone(state.read_json(self.write("broken", '{"a": ')))
        bad = os.path.join(self.tmp, "bad")
        with open(bad, "wb") as f:
            f.write(b'{"a": "\xff"}')
        self.assertIsNone(state.read_json(bad))

    def test_markers(self):
        """mark, unmark (twice too), marked; no error without the dir."""
        self.assertFalse(state.marked(self.tmp, state.ONWARD))
        state.mark(self.tmp, state.ONWARD)
        self.assertTrue(os.path.isfile(os.path.join(self.tmp, "onward")))
        self.assertTrue(state.marked(self.tmp, state.ONWARD))
        self.assertFalse(state.marked(self.tmp, state.STOPPING))
        state.unmark(self.tmp, state.ONWARD)
        state.unmark(self.tmp, state.ONWARD)
        self.assertFalse(state.marked(self.tmp, state.ONWARD))
        state.mark(os.path.join(self.tmp, "none"), state.STOPPING)
        self.assertFalse(state.marked(os.path.join(self.tmp, "none"),
                                      state.STOPPING))

    def test_pids(self):
        """read_pids: {} before write_pids, then what it wrote."""
        self.assertEqual(state.read_pids(self.tmp), {})
        state.write_pids(self.tmp, 1234, 1235)
        self.assertEqual(state.read_pids(self.tmp),
                         {"keeper": 1234, "nbdkit": 1235})

    def test_bitmap_flags(self):
        """bitmap_flags: flags at offset 12 of a NBDKRELO header, else None."""
        cases = [(bitmap_header(state.STARTED), state.STARTED),
                 (bitmap_header(state.STARTED | state.COMPLETE) + b"\xff" * 64,
                  state.STARTED | state.COMPLETE),
                 (bitmap_header(0x01020304), 0x01020304),
                 (bitmap_header(state.STARTED, magic=b"NBDKRELX"), None),
                 (bitmap_header(state.STARTED)[:15], None),
                 (b"", None)]
        path = os.path.join(self.tmp, "disk.img.bitmap")
        for data, flags in cases:
            with self.subTest(data=data):
                with open(path, "wb") as f:
                    f.write(data)
                self.assertEqual(state.bitmap_flags(path), flags)
        self.assertIsNone(state.bitmap_flags(path + ".none"))

    def test_served_at(self):
        """served_at: nbd://NAME:PORT for tcp, the socket's path for unix."""
        self.assertEqual(state.served_at({"serve": "tcp", "serve_name": "b",
                                          "port": 10815}), "nbd://b:10815")
        self.assertEqual(state.served_at({"serve": "unix",
                                          "socket": "/r/u/vda/nbd.sock"}),
                         "/r/u/vda/nbd.sock")


class Relocations(hooktest.TempDirTest):
    """relocations() and pick_port: which relocations hold which ports."""

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "root")
        os.makedirs(self.root)

    def relocation(self, where, serve="tcp", port=None):
        """A relocation.json in root/WHERE; returns (its directory, it)."""
        ddisk = os.path.join(self.root, where)
        os.makedirs(ddisk)
        rel = {"target": os.path.basename(ddisk), "serve": serve}
        if port is not None:
            rel["port"] = port
        state.write_json(os.path.join(ddisk, "relocation.json"), rel)
        return ddisk, rel

    def test_relocations(self):
        """Current relocations in order: no attic, no dir without a record."""
        b = self.relocation("u2/vda", port=20001)
        a2 = self.relocation("u1/vdb", serve="unix")
        a1 = self.relocation("u1/vda", port=20000)
        self.relocation("u1/attic/20240101T000000-vda", port=20002)
        os.makedirs(os.path.join(self.root, "u1", "vdc"))   # no record
        self.write("root/u1/domain.json", "{}")
        self.write("root/hook.log", "")
        self.write("root/.ports.lock", "")
        self.assertEqual(state.relocations(self.root), [a1, a2, b])
        self.assertEqual(state.relocations(os.path.join(self.tmp, "none")),
                         [])

    def test_pick_port_skips_taken(self):
        """A port another relocation here holds is never picked."""
        self.relocation("u1/vda", port=20000)
        self.relocation("u1/vdb", port=20001)
        self.relocation("u2/vda", port=20003)
        # An attic's port is free again (bindable judges a server on it).
        self.relocation("u2/attic/20240101T000000-vdb", port=20002)
        cfg = self.config(ports="20000-20003")
        for _ in range(20):
            self.assertEqual(state.pick_port(cfg, lambda a, p: True), 20002)

    def test_complete_relocation_gives_its_port_back(self):
        """A complete relocation's port is free again, and one that ran
        and stopped in standby; a planned one's (no bitmap, or one not
        written yet) and a started one's are not, nor any whose keeper
        lives (its server may be between two runs)."""
        ddisk, rel = self.relocation("u1/vda", port=20000)
        rel["file"] = os.path.join(ddisk, "disk.img")
        state.write_json(os.path.join(ddisk, "relocation.json"), rel)
        cfg = self.config(ports="20000-20000")
        free = lambda: state.pick_port(cfg, lambda a, p: True) == 20000
        self.assertFalse(free())                    # planned
        self.write("root/u1/vda/disk.img.bitmap", "")
        self.assertFalse(free())
        for flags, given_back in ((state.STARTED, False),
                                  (state.STARTED | state.COMPLETE, True),
                                  (0, True)):
            with self.subTest(flags=flags):
                with open(rel["file"] + ".bitmap", "wb") as f:
                    f.write(bitmap_header(flags))
                state.write_pids(ddisk, 0, 0)
                self.assertEqual(free(), given_back)
                state.write_pids(ddisk, os.getpid(), 0)   # a keeper lives
                self.assertFalse(free())

    def test_plan_never_started_gives_its_port_back(self):
        """Planned, never run: its port is held plan_days (default 7),
        then given back; "forever" holds it."""
        ddisk, rel = self.relocation("u1/vda", port=20000)
        rel["file"] = os.path.join(ddisk, "disk.img")
        for age_days, keys, given_back in ((6.9, {}, False), (7.1, {}, True),
                                           (0.6, {"plan_days": "0.5"}, True),
                                           (400, {"plan_days": "forever"}, False)):
            with self.subTest(age_days=age_days, keys=keys):
                rel["planned"] = time.strftime(
                    "%Y-%m-%dT%H:%M:%S",
                    time.localtime(time.time() - age_days * 86400))
                state.write_json(os.path.join(ddisk, "relocation.json"), rel)
                cfg = self.config(ports="20000-20000", **keys)
                self.assertEqual(state.pick_port(cfg, lambda a, p: True) == 20000,
                                 given_back)

    def test_150_relocations_through_100_ports(self):
        """150 relocations planned one after another, each complete before
        the next (the default 100 ports): none is refused for want of a
        port, and no two incomplete ones share one."""
        cfg = self.config(ports=config.DEFAULTS["ports"], listen="127.0.0.1")
        ddir = os.path.join(self.root, UUID)
        for i in range(150):
            rel = state.plan(cfg, "vm%d" % i, ddir + "-%d" % i, "vda",
                             ("old-host", "10809", "disk1", False))
            self.assertIsNotNone(rel, "relocation %d refused" % i)
            with open(rel["file"] + ".bitmap", "wb") as f:
                f.write(bitmap_header(state.STARTED | state.COMPLETE))
        self.assertNotIn("no free port", self.hook_log())

    def test_pick_port_asks_bindable(self):
        """Ports bindable refuses are skipped; it is asked with listen."""
        asked = []

        def bindable(listen, port):
            asked.append((listen, port))
            return port == 20002

        cfg = self.config(ports="20000-20003", listen="192.0.2.7")
        self.assertEqual(state.pick_port(cfg, bindable), 20002)
        self.assertIn(("192.0.2.7", 20002), asked)
        self.assertLessEqual(set(asked), {("192.0.2.7", p)
                                          for p in range(20000, 20004)})

    def test_pick_port_none_free(self):
        """None when every port is taken or cannot be bound."""
        cfg = self.config(ports="20000-20001")
        self.assertIsNone(state.pick_port(cfg, lambda a, p: False))
        self.relocation("u1/vda", port=20000)
        self.relocation("u1/vdb", port=20001)
        self.assertIsNone(state.pick_port(
            cfg, lambda a, p: self.fail("bindable asked for %d" % p)))

    def test_pick_port_really_binds(self):
        """The real bindable skips a port a listening socket holds."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            cfg = self.config(ports="%d-%d" % (port, port), listen="127.0.0.1")
            self.assertIsNone(state.pick_port(cfg))
        self.assertEqual(state.pick_port(cfg), port)


class Plan(hooktest.TempDirTest):
    """plan(): a fresh relocation's record and directory."""

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "root")
        self.ddir = os.path.join(self.root, UUID)
        state.make_dir(self.root)

    def plan(self, tls_source=False, **keys):
        return state.plan(self.config(**keys), "vm1", self.ddir, "vda",
                          ("old-host", "10809", "disk1", tls_source),
                          os.getgid(), "/etc/pki/qemu")

    def expected(self, **more):
        ddisk = os.path.join(self.ddir, "vda")
        rel = {"domain": "vm1", "target": "vda",
               "source": "nbd://old-host:10809/disk1",
               "hostname": "old-host", "port_src": "10809", "export": "disk1",
               "tls_source": False, "tls": False,
               "file": ddisk + "/disk.img", "control": ddisk + "/control.sock"}
        rel.update(more)
        return rel

    def assertPlanned(self, rel, expected):
        """rel is expected (and a time it was planned), and is what
        relocation.json holds, in a 0710 directory of the group given."""
        ddisk = os.path.join(self.ddir, "vda")
        self.assertRegex(rel.pop("planned"),
                         r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
        self.assertEqual(rel, expected)
        saved = state.read_json(os.path.join(ddisk, "relocation.json"))
        saved.pop("planned")
        self.assertEqual(saved, expected)
        self.assertEqual(mode(ddisk), 0o710)
        self.assertEqual(os.stat(ddisk).st_gid, os.getgid())

    def test_tcp(self):
        """tcp: serve_name and a free port of the range; TLS, with the
        certificates' directory."""
        rel = self.plan(serve="tcp", serve_name="host-b.example.org",
                        listen="127.0.0.1", ports="20000-20009")
        self.assertIn(rel.get("port"), range(20000, 20010))
        self.assertPlanned(rel, self.expected(
            serve="tcp", serve_name="host-b.example.org", port=rel["port"],
            listen="127.0.0.1", tls=True, tls_dir="/etc/pki/qemu"))

    def test_tcp_insecure(self):
        """insecure = yes: no TLS, and no directory of certificates."""
        rel = self.plan(serve="tcp", insecure="yes", listen="127.0.0.1",
                        ports="20000-20009")
        self.assertPlanned(rel, self.expected(
            serve="tcp", serve_name="this-host", port=rel["port"],
            listen="127.0.0.1"))

    def test_tls_source(self):
        """A source that uses TLS: nbds:// in the record, and the
        directory of certificates even with insecure = yes."""
        rel = self.plan(tls_source=True, serve="unix")
        self.assertPlanned(rel, self.expected(
            serve="unix", socket=os.path.join(self.ddir, "vda", "nbd.sock"),
            source="nbds://old-host:10809/disk1", tls_source=True,
            tls_dir="/etc/pki/qemu"))

    def test_unix(self):
        """unix: the socket beside the image, no port."""
        rel = self.plan(serve="unix")
        self.assertPlanned(rel, self.expected(
            serve="unix", socket=os.path.join(self.ddir, "vda", "nbd.sock")))

    def test_tcp_no_free_port(self):
        """tcp with no free port: None, no record, and hook.log says why."""
        other = os.path.join(self.root, "u2", "vda")
        os.makedirs(other)
        state.write_json(os.path.join(other, "relocation.json"),
                         {"serve": "tcp", "port": 20000})
        self.assertIsNone(self.plan(serve="tcp", ports="20000-20000"))
        self.assertFalse(os.path.exists(
            os.path.join(self.ddir, "vda", "relocation.json")))
        self.assertIn(" nbdkit-relocate-hook[%d]: domain 'vm1' disk vda: no "
                      "free port in ports = 20000-20000: left alone\n" %
                      os.getpid(), self.hook_log())


if __name__ == "__main__":
    unittest.main()
