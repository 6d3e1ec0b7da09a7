"""libvirt's events: migrate begin rewrites the XML and plans, prepare
refuses the starts it must, release stops or hands over a server.

No nbdkit here: prepare is only called where it refuses or has nothing
to start, and release only meets a stand-in process (the shell tests
run the real server)."""

import contextlib
import fcntl
import io
import os
import signal
import socket
import unittest
from unittest import mock

import hooktest
from hooktest import (UUID, bitmap_header, disk_of, domain, ended_by,
                      file_disk, nbd_disk, sleeper)
from relocate_hook import domxml, events, server, state

PORTS = range(20000, 20010)     # below the ephemeral ports: no stray clients


class EventTest(hooktest.TempDirTest):
    """A tcp configuration serving as this-host on 127.0.0.1:PORTS."""

    def setUp(self):
        super().setUp()
        self.cfg = self.configure()
        self.ddir = os.path.join(self.cfg["state_root"], UUID)
        self.ddisk = os.path.join(self.ddir, "vda")

    def configure(self, **keys):
        keys = dict({"serve": "tcp", "serve_name": "this-host",
                     "listen": "127.0.0.1",
                     "ports": "%d-%d" % (PORTS[0], PORTS[-1]),
                     "qemu_log_dir": self.tmp}, **keys)
        return self.config(**keys)

    def begin(self, xml_text, cfg=None):
        return events.migrate_begin(cfg or self.cfg, "vm1", xml_text)

    def log_line(self, text):
        """The one line of hook.log that holds text (from its message on)."""
        lines = [l.split("]: ", 1)[1] for l in self.hook_log().splitlines()
                 if text in l]
        self.assertEqual(len(lines), 1, self.hook_log())
        return lines[0]

    def relocation(self):
        return state.read_json(os.path.join(self.ddisk, "relocation.json"))


class MigrateBegin(EventTest):
    """migrate_begin: the XML libvirt uses here, and the planned state."""

    def test_relocates_nbd_disk(self):
        """vda points at this host's server, vdc unchanged; state and log."""
        xml_text = domain(nbd_disk("vda"), file_disk("vdc"))
        out = self.begin(xml_text)
        rel = self.relocation()
        self.assertIn(rel["port"], PORTS)
        hosts = disk_of(out, "vda").findall("source/host")
        self.assertEqual([h.attrib for h in hosts],
                         [{"name": "this-host", "port": str(rel["port"])}])
        self.assertEqual(disk_of(out, "vda").find("source").get("tls"), "yes")
        self.assertEqual((rel["tls"], rel["tls_source"], rel["tls_dir"]),
                         (True, False, self.cfg["tls_dir"]))
        self.assertEqual(domxml.tostring(disk_of(out, "vdc")),
                         domxml.tostring(disk_of(xml_text, "vdc")))
        self.assertEqual(rel["source"], "nbd://old-host:10809/disk1")
        self.assertEqual(
            state.read_json(os.path.join(self.ddir, "domain.json")),
            {"name": "vm1", "disks": [{
                "target": "vda", "dir": self.ddisk,
                "control": self.ddisk + "/control.sock",
                "file": self.ddisk + "/disk.img",
                "source": "nbd://old-host:10809/disk1"}]})
        self.assertEqual(
            self.log_line("relocating"),
            "domain 'vm1' disk vda: relocating nbd://old-host:10809/disk1 to "
            "%s/disk.img (served at nbds://this-host:%d, control "
            "%s/control.sock; starts with the domain)" %
            (self.ddisk, rel["port"], self.ddisk))
        self.assertEqual(self.log_line("vdc"), "domain 'vm1' disk vdc: left "
                         "alone (not a network disk)")

    def test_left_alone(self):
        """Unix socket, auth, this host: XML unchanged, reasons logged."""
        unix = nbd_disk("vda").replace(
            "<host name='old-host'/>",
            "<host transport='unix' socket='/run/a.sock'/>")
        auth = nbd_disk("vdc", inner="<auth username='u'><secret "
                        "type='iscsi' usage='x'/></auth>")
        local = nbd_disk("vdd", host="this-host")
        xml_text = domain(unix, auth, local)
        self.assertEqual(self.begin(xml_text), xml_text)
        self.assertTrue(self.log_line("disk vda:").startswith(
            "domain 'vm1' disk vda: left alone (transport unix: a local "
            "socket"))
        self.assertEqual(self.log_line("disk vdc:"),
                         "domain 'vm1' disk vdc: left alone (a source with "
                         "<auth> is not handled)")
        self.assertEqual(self.log_line("disk vdd:"), "domain 'vm1' disk vdd: "
                         "left alone (source host 'this-host' is this host)")
        self.assertFalse(os.path.exists(self.ddir))

    def test_refused_config(self):
        """A refused config: XML unchanged; key, path logged."""
        cases = [({"start": "immediate"}, "start = immediate is refused: "),
                 ({"bogus_key": "1"}, "unknown key bogus_key ("),
                 ({"ports": "20009-20000"}, "ports = 20009-20000: ")]
        xml_text = domain(nbd_disk("vda"))
        for keys, why in cases:
            with self.subTest(**keys):
                cfg = self.configure(**keys)
                self.assertEqual(self.begin(xml_text, cfg), xml_text)
                line = self.log_line(why)
                self.assertTrue(line.startswith(
                    "domain 'vm1' disk vda: not relocated: " + why), line)
                self.assertTrue(line.endswith("(%s)" % cfg.path), line)
                self.assertFalse(os.path.exists(self.ddir))

    def test_tls_source(self):
        """A source with TLS (tls='yes', or nbd_tls = 1 in qemu.conf and
        no tls attribute) is relocated over TLS; tls='no' is plain."""
        tls = nbd_disk("vda").replace("<source protocol='nbd'",
                                      "<source protocol='nbd' tls='yes'")
        plain = nbd_disk("vda").replace("<source protocol='nbd'",
                                        "<source protocol='nbd' tls='no'")
        conf = self.write("qemu-tls.conf", 'user = "nobody"\n'
                          'group = "nogroup"\nnbd_tls = 1\n')
        for disk_xml, keys, tls_source in (
                (tls, {}, True), (nbd_disk("vda"), {"qemu_conf": conf}, True),
                (plain, {"qemu_conf": conf}, False),
                (nbd_disk("vda"), {}, False)):
            with self.subTest(xml=disk_xml, **keys):
                out = self.begin(domain(disk_xml), self.configure(**keys))
                rel = self.relocation()
                self.assertEqual(rel["tls_source"], tls_source)
                self.assertEqual(rel["source"].startswith("nbds://"),
                                 tls_source)
                self.assertEqual(disk_of(out).find("source").get("tls"), "yes")

    def test_tls_files_missing(self):
        """TLS without its certificates: nothing relocated, one line
        naming the directory and the files; a source with TLS needs a
        client's even with insecure = yes."""
        tls = nbd_disk("vda").replace("<source protocol='nbd'",
                                      "<source protocol='nbd' tls='yes'")
        cases = [({}, nbd_disk("vda"), ("ca-cert.pem", "client-key.pem",
                                        "server-cert.pem"),
                  "or set insecure = yes"),
                 ({"insecure": "yes"}, tls, ("ca-cert.pem", "client-key.pem"),
                  "the source uses TLS, and its certificate is verified")]
        for keys, disk_xml, missing, why in cases:
            with self.subTest(**keys):
                cfg = self.configure(**keys)
                pki = self.pki("server-key.pem", "client-cert.pem")
                xml_text = domain(disk_xml)
                self.assertEqual(self.begin(xml_text, cfg), xml_text)
                line = self.log_line("not relocated")
                self.assertTrue(line.startswith(
                    "domain 'vm1' disk vda: not relocated: %s (tls_dir) has "
                    "no %s: " % (pki, ", ".join(missing))), line)
                self.assertIn(why, line)
                self.assertFalse(os.path.exists(self.ddir))
                os.unlink(os.path.join(self.tmp, "hook.log"))

    def test_insecure(self):
        """insecure = yes: a plain server, tls='no' in the XML, and no
        certificate needed for a plain source."""
        cfg = self.configure(insecure="yes", tls_dir=self.tmp + "/none")
        out = self.begin(domain(nbd_disk("vda")), cfg)
        self.assertEqual(disk_of(out).find("source").get("tls"), "no")
        self.assertFalse(self.relocation()["tls"])

    def test_refused_qemu_user(self):
        """qemu_user naming no user: refused, naming the key qemu_user."""
        xml_text = domain(nbd_disk("vda"))
        cfg = self.configure(qemu_user="no-such-user")
        self.assertEqual(self.begin(xml_text, cfg), xml_text)
        line = self.log_line("not relocated")
        self.assertFalse(os.path.exists(self.ddir))
        self.assertIn("qemu_user", line)
        self.assertNotIn("qemu.conf", line)

    def test_opt_in(self):
        """A domain or disk hook.conf does not name: untouched, silently."""
        xml_text = domain(nbd_disk("vda"))
        for keys in ({"domains": "other"}, {"disks": "vdb"}):
            with self.subTest(**keys):
                self.assertEqual(self.begin(xml_text, self.configure(**keys)),
                                 xml_text)
                self.assertEqual(self.hook_log(), "")
                self.assertFalse(os.path.exists(self.ddir))

    def test_again_moves_aside(self):
        """A second migrate begin: the first relocation goes to the attic."""
        xml_text = domain(nbd_disk("vda"))
        self.begin(xml_text)
        first = self.relocation()
        self.begin(xml_text)
        second = self.log_line("the previous state")
        attic = os.path.join(self.ddir, "attic")
        (moved,) = os.listdir(attic)
        self.assertTrue(second.endswith("; the previous state was moved to "
                                        "%s/%s" % (attic, moved)), second)
        self.assertEqual(
            state.read_json(os.path.join(attic, moved, "relocation.json")),
            first)
        self.assertEqual(self.relocation()["source"], first["source"])


class Prepare(EventTest):
    """prepare: the starts it refuses (1) and lets through (0)."""

    def setUp(self):
        super().setUp()
        self.begin(domain(nbd_disk("vda")))
        self.rel = self.relocation()
        self.old = domain(nbd_disk("vda"))     # the definition before

    def prepare(self, xml_text):
        return events.prepare(self.cfg, "vm1", xml_text)

    def test_old_source_after_writes(self):
        """The old host again, once the guest wrote here: refused."""
        with open(self.rel["file"] + ".bitmap", "wb") as f:
            f.write(bitmap_header(state.STARTED))
        self.assertEqual(self.prepare(self.old), 1)
        self.assertTrue(self.log_line("start refused").startswith(
            "domain 'vm1' disk vda: start refused: the guest wrote to this "
            "disk here, and its definition would read "
            "nbd://old-host:10809/disk1 again"))

    def test_old_source_before_writes(self):
        """The old host again, the relocation never started: let through."""
        self.assertEqual(self.prepare(self.old), 0)
        self.assertNotIn("refused", self.hook_log())

    def test_moved_on(self):
        """This host's server, the domain moved on since: refused, not run."""
        state.write_json(os.path.join(self.ddisk, state.MOVED_ON),
                         {"when": "2024-05-01T10:00:00", "clients": 0})
        named = domain(nbd_disk("vda", host="this-host",
                                port=self.rel["port"]))
        self.assertEqual(self.prepare(named), 1)
        self.assertEqual(
            self.log_line("start refused"),
            "domain 'vm1' disk vda: start refused: the domain moved on from "
            "this host (2024-05-01T10:00:00), so %s is older than its disk "
            "there: start it where it moved to, or migrate it here" %
            self.rel["file"])
        self.assertEqual(state.read_pids(self.ddisk), {})

    def start_after_giving_port_away(self, flags):
        """vda's bitmap has flags, its port goes to vm2's vdb, then a
        definition naming vda's server starts: the prepare's status."""
        with open(self.rel["file"] + ".bitmap", "wb") as f:
            f.write(bitmap_header(flags))
        ddir2 = os.path.join(self.cfg["state_root"], "other-uuid")
        state.make_dir(ddir2)
        with mock.patch("relocate_hook.state.pick_port",
                        return_value=self.rel["port"]):
            state.plan(self.cfg, "vm2", ddir2, "vdb", ("h", "10809", "e", False))
        return self.prepare(domain(nbd_disk("vda", host="this-host",
                                            port=self.rel["port"])))

    def test_port_given_away(self):
        """Complete, its port since given to another domain's disk (a
        persistent definition still names it): refused, saying to point
        the disk at the file; nothing run."""
        self.assertEqual(self.start_after_giving_port_away(
            state.STARTED | state.COMPLETE), 1)
        self.assertEqual(
            self.log_line("start refused"),
            "domain 'vm1' disk vda: start refused: its relocation gave its "
            "port %d back and it is disk vdb's of domain 'vm2' now: it is "
            "complete: point the disk at %s (<disk type='file'><driver "
            "name='qemu' type='raw'/><source file='%s'/>) with virsh edit, "
            "then start it" %
            (self.rel["port"], self.rel["file"], self.rel["file"]))
        self.assertEqual(state.read_pids(self.ddisk), {})

    def test_port_given_away_standby(self):
        """Never left standby, its port since given to another: refused,
        saying to point the disk at its source again."""
        self.assertEqual(self.start_after_giving_port_away(0), 1)
        self.assertTrue(self.log_line("start refused").endswith(
            "now: the guest never wrote here, so its disk is at "
            "nbd://old-host:10809/disk1: point the disk there again with "
            "virsh edit, then start it"))

    def test_start_holds_the_ports_lock(self):
        """A tcp relocation starts with .ports.lock held (no plan may take
        its port before its keeper runs)."""
        held = []

        def start_server(cfg, ddisk, rel, ident, standby_param):
            with open(os.path.join(cfg["state_root"], ".ports.lock")) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(False)
                except BlockingIOError:
                    held.append(True)
            return True

        named = domain(nbd_disk("vda", host="this-host",
                                port=self.rel["port"]))
        with mock.patch("relocate_hook.server.start_server",
                        side_effect=start_server), \
                mock.patch("relocate_hook.server.filter_supports",
                           return_value=True), \
                mock.patch("relocate_hook.qemuconf.identity",
                           return_value=(0, 0, True)):
            self.assertEqual(self.prepare(named), 0)
        self.assertEqual(held, [True])

    def test_no_relocation_here(self):
        """Another domain, or XML that does not parse: 0, nothing logged."""
        log_before = self.hook_log()
        other = domain(nbd_disk("vda"), name="vm2",
                       uuid="6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0002")
        self.assertEqual(self.prepare(other), 0)
        self.assertEqual(self.prepare("<domain"), 0)
        self.assertEqual(self.hook_log(), log_before)


class Release(EventTest):
    """release: stop a server, or hand it over to the next host."""

    def migrated_away(self):
        self.write("vm1.log", "2024-05-01 10:00:00.000+0000: shutting down, "
                   "reason=migrated\n")

    def server(self):
        """Plan vda and run a stand-in for its nbdkit."""
        self.begin(domain(nbd_disk("vda")))
        nbdkit = sleeper(self, server.nbdkit_marker(self.ddisk))
        state.write_pids(self.ddisk, 0, nbdkit.pid)
        return nbdkit

    def release(self):
        events.release(self.configure(relocatectl="/bin/false"), "vm1",
                       domain(nbd_disk("vda")))

    def test_no_domain_state(self):
        """No domain.json: nothing done, nothing logged."""
        self.release()
        self.assertEqual(self.hook_log(), "")
        self.assertFalse(os.path.exists(self.ddir))

    def test_server_not_running(self):
        """Planned, no server running: nothing to stop, nothing logged."""
        self.begin(domain(nbd_disk("vda")))
        log_before = self.hook_log()
        self.migrated_away()
        self.release()
        self.assertEqual(self.hook_log(), log_before)
        self.assertFalse(state.marked(self.ddisk, state.MOVED_ON))

    def test_stops_after_migration(self):
        """Migrated away, no client: moved-on recorded, server stopped."""
        nbdkit = self.server()
        self.migrated_away()
        self.release()
        self.assertEqual(ended_by(nbdkit), signal.SIGTERM)
        self.assertEqual(state.read_json(os.path.join(
            self.ddisk, state.MOVED_ON))["clients"], 0)
        self.assertEqual(
            self.log_line("killed"), "domain 'vm1' disk vda: its server did "
            "not answer (hung source?) and was killed; the relocation is "
            "incomplete")

    def connected(self):
        """A client connected to the relocation's port while in the block."""
        port = self.relocation()["port"]
        stack = contextlib.ExitStack()
        lsock = stack.enter_context(socket.create_server(("127.0.0.1", port)))
        stack.enter_context(socket.create_connection(("127.0.0.1", port)))
        stack.enter_context(lsock.accept()[0])
        return stack

    def test_hands_over(self):
        """Migrated away and a client still reading (the next host): the
        server keeps serving, marked onward."""
        nbdkit = self.server()
        self.migrated_away()
        with self.connected():
            self.release()
            self.release()
        self.assertTrue(server.alive(nbdkit.pid))
        self.assertTrue(state.marked(self.ddisk, state.ONWARD))
        self.assertEqual(state.read_json(os.path.join(
            self.ddisk, state.MOVED_ON))["clients"], 1)
        onward = state.read_json(os.path.join(self.ddisk, state.ONWARD))
        self.assertEqual((onward["nbdkit"], onward["reader_flushes"]),
                         (nbdkit.pid, None))    # relocatectl: /bin/false
        self.assertEqual(
            self.log_line("still read"), "domain 'vm1' disk vda: the domain "
            "left this host and 1 client(s) still read from its server (the "
            "next host relocating it from here): the server keeps serving "
            "until that host is complete, or for 3600 s after its last "
            "client has gone")


    def test_stray_client(self):
        """Not migrated (virsh destroy), a client connected (a stray
        nbdsh): the server stops and the copy is not marked moved on."""
        nbdkit = self.server()
        self.write("vm1.log", "2024-05-01 10:00:00.000+0000: shutting down, "
                   "reason=destroyed\n")
        with self.connected():
            self.release()
        self.assertEqual(ended_by(nbdkit), signal.SIGTERM)
        self.assertFalse(state.marked(self.ddisk, state.MOVED_ON))
        self.assertFalse(state.marked(self.ddisk, state.ONWARD))

    def test_unreadable_log_client(self):
        """The QEMU log cannot be read and a client reads: it may be the
        next host, so the server keeps serving, the copy is marked moved
        on, and hook.log says why and how to undo it."""
        nbdkit = self.server()
        with self.connected():
            self.release()
        self.assertTrue(server.alive(nbdkit.pid))
        self.assertTrue(state.marked(self.ddisk, state.ONWARD))
        self.assertTrue(state.marked(self.ddisk, state.MOVED_ON))
        self.assertEqual(
            self.log_line("cannot tell"), "domain 'vm1' disk vda: cannot "
            "read %s (No such file or directory): cannot tell whether the "
            "domain migrated away; as if it did, since 1 client(s) read "
            "from its server (remove %s if it did not)" %
            (os.path.join(self.tmp, "vm1.log"),
             os.path.join(self.ddisk, state.MOVED_ON)))

    def test_unreadable_log_no_client(self):
        """The QEMU log cannot be read, no client: stopped, not moved on."""
        nbdkit = self.server()
        self.release()
        self.assertEqual(ended_by(nbdkit), signal.SIGTERM)
        self.assertFalse(state.marked(self.ddisk, state.MOVED_ON))


class LeftByMigration(EventTest):
    """left_by_migration: the last reason in the domain's QEMU log."""

    def test_reasons(self):
        """migrated last: True; another reason last: False; no log: why
        it cannot tell."""
        self.assertEqual(events.left_by_migration(self.cfg, "vm1"),
                         "cannot read %s (No such file or directory)" %
                         os.path.join(self.tmp, "vm1.log"))
        start = "2024-05-01 09:00:00.000+0000: starting up libvirt\n"
        cases = [("shutting down, reason=migrated\n", True),
                 ("shutting down, reason=migrated\n" + start +
                  "shutting down, reason=destroyed\n", False),
                 ("shutting down, reason=destroyed\n" + start +
                  "shutting down, reason=migrated\n", True),
                 ("shutting down, reason=shutdown\n", False),
                 ("", False)]
        for text, migrated in cases:
            with self.subTest(text=text):
                self.write("vm1.log", start + text)
                self.assertIs(events.left_by_migration(self.cfg, "vm1"),
                              migrated)


class Main(EventTest):
    """main: the hook as libvirt calls it, XML on stdin, on stdout."""

    def setUp(self):
        # main makes the files it creates root's alone: put the umask back.
        self.addCleanup(os.umask, os.umask(0o022))
        super().setUp()

    def configure(self, **keys):
        # main logs to state_root/hook.log: where hook_log() reads.
        return super().configure(state_root=self.tmp, **keys)

    def main(self, op, subop, xml_text, *extra):
        """main's output; its SystemExit is the caller's to catch."""
        out = io.StringIO()
        with mock.patch("sys.stdin", io.StringIO(xml_text)), \
                mock.patch("sys.stdout", out):
            events.main(["vm1", op, subop, *extra], self.cfg.path)
        return out.getvalue()

    def exit_status(self, op, subop, xml_text):
        with self.assertRaises(SystemExit) as cm:
            self.main(op, subop, xml_text)
        return cm.exception.code

    def test_migrate_begin(self):
        """migrate begin prints the XML with vda at this host's server."""
        out = self.main("migrate", "begin", domain(nbd_disk("vda")), "-")
        hosts = disk_of(out, "vda").findall("source/host")
        self.assertEqual([h.attrib for h in hosts],
                         [{"name": "this-host",
                           "port": str(self.relocation()["port"])}])

    def test_migrate_begin_not_xml(self):
        """Text that is not XML: printed back unchanged, logged."""
        self.assertEqual(self.main("migrate", "begin", "<domain"), "<domain")
        self.assertTrue(self.log_line("cannot parse").startswith(
            "domain 'vm1': cannot parse the domain XML: "))

    def test_prepare_exit_status(self):
        """prepare begin exits 1 when it refuses a start, else 0."""
        old = domain(nbd_disk("vda"))
        self.main("migrate", "begin", old)
        self.assertEqual(self.exit_status("prepare", "begin", old), 0)
        with open(self.relocation()["file"] + ".bitmap", "wb") as f:
            f.write(bitmap_header(state.STARTED))
        self.assertEqual(self.exit_status("prepare", "begin", old), 1)
        self.log_line("start refused")

    def test_other_operations(self):
        """Another operation: nothing printed, nothing done or logged."""
        for op, subop in (("started", "begin"), ("migrate", "end"),
                          ("prepare", "end"), ("release", "begin")):
            with self.subTest(op=op, subop=subop):
                self.assertEqual(self.main(op, subop,
                                           domain(nbd_disk("vda"))), "")
                self.assertFalse(os.path.exists(self.ddir))
                self.assertEqual(self.hook_log(), "")

    def test_usage(self):
        """Fewer than 3 arguments: exits with the usage message."""
        with self.assertRaises(SystemExit) as cm:
            events.main(["vm1", "migrate"], self.cfg.path)
        self.assertTrue(str(cm.exception.code).startswith(
            "usage: nbdkit-relocate DOMAIN OPERATION SUB-OPERATION"))

    def test_umask(self):
        """main sets the umask to 077."""
        self.main("started", "begin", "")
        self.assertEqual(os.umask(0o022), 0o077)


if __name__ == "__main__":
    unittest.main()
