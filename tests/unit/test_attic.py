"""The attic: earlier relocations moved aside, their servers stopped (or
left to serve the next host), and the starts they refuse."""

import os
import re
import time
import unittest
from unittest import mock

import hooktest
from hooktest import UUID, bitmap_header, domain, nbd_disk, sleeper
from relocate_hook import attic, domxml, server, state

STILL_SERVES = (" (its server still serves the host the domain moved on to, "
                "and stops once that host is done with it)")


def relocation(ddisk, hostname="old-host", port=10815, target="vda"):
    """A tcp relocation record of disk TARGET in ddisk (its directory, or
    an attic's), from nbd://HOSTNAME:10809/disk1, served at
    nbd://this-host:PORT; written to its relocation.json."""
    os.makedirs(ddisk, exist_ok=True)
    rel = {"domain": "vm1", "target": target,
           "source": "nbd://%s:10809/disk1" % hostname,
           "hostname": hostname, "port_src": "10809", "export": "disk1",
           "file": os.path.join(ddisk, "disk.img"),
           "control": os.path.join(ddisk, "control.sock"),
           "serve": "tcp", "serve_name": "this-host", "port": port}
    state.write_json(os.path.join(ddisk, "relocation.json"), rel)
    return rel


class AtticTest(hooktest.TempDirTest):
    """ddir is a domain's directory, ddisk its disk vda's."""

    def setUp(self):
        super().setUp()
        self.cfg = self.config(stop_grace="1")
        self.ddir = os.path.join(self.cfg["state_root"], UUID)
        self.ddisk = os.path.join(self.ddir, "vda")
        self.attic = os.path.join(self.ddir, "attic")


class MoveAside(AtticTest):
    """move_aside: UUID/vda goes to UUID/attic/, its server stopped."""

    def move(self):
        return attic.move_aside(self.cfg, self.ddir, "vda")

    def test_nothing_there(self):
        """No directory: None, and no attic is made."""
        self.assertIsNone(self.move())
        self.assertFalse(os.path.exists(self.ddir))

    def test_moves(self):
        """Moved whole to attic/TIME-vda (attic 0700), then to TIME-vda.2."""
        rel = relocation(self.ddisk)
        with mock.patch("time.strftime", return_value="20240501T100000"):
            first = self.move()
            relocation(self.ddisk, hostname="older-host")
            second = self.move()
        self.assertEqual(first, self.attic + "/20240501T100000-vda")
        self.assertEqual(second, self.attic + "/20240501T100000-vda.2")
        self.assertFalse(os.path.lexists(self.ddisk))
        self.assertEqual(os.stat(self.attic).st_mode & 0o777, 0o700)
        self.assertEqual(state.read_json(first + "/relocation.json"), rel)
        self.assertEqual(
            state.read_json(second + "/relocation.json")["hostname"],
            "older-host")
        self.assertTrue(state.marked(first, state.STOPPING))

    def test_time_in_name(self):
        """Without a clock of its own: attic/YYYYmmddTHHMMSS-vda."""
        relocation(self.ddisk)
        self.assertRegex(self.move(),
                         "^" + re.escape(self.attic) + r"/\d{8}T\d{6}-vda$")

    def test_stops_server(self):
        """A server still running (its pid holds the marker) is stopped."""
        relocation(self.ddisk)
        nbdkit = sleeper(self, server.nbdkit_marker(self.ddisk))
        state.write_pids(self.ddisk, 0, nbdkit.pid)
        self.assertNotIn("still serves", self.move())
        self.assertFalse(server.alive(nbdkit.pid))

    def test_stops_onward_server_not_running(self):
        """An onward marker with no server running: moved, no words added."""
        relocation(self.ddisk)
        state.mark(self.ddisk, state.ONWARD)
        self.assertRegex(self.move(), r"-vda$")

    def test_onward_server_keeps_serving(self):
        """An onward server keeps serving from the attic, and says so."""
        relocation(self.ddisk)
        nbdkit = sleeper(self, server.nbdkit_marker(self.ddisk))
        state.write_pids(self.ddisk, 0, nbdkit.pid)
        state.mark(self.ddisk, state.ONWARD)
        where = self.move()
        self.assertTrue(where.endswith(STILL_SERVES), where)
        dest = where[:-len(STILL_SERVES)]
        self.assertTrue(state.marked(dest, state.ONWARD))
        self.assertFalse(state.marked(dest, state.STOPPING))
        self.assertTrue(server.alive(nbdkit.pid))

    def test_never_signals_a_stranger(self):
        """A pid (pids.json, nbdkit.pid) without the marker is spared."""
        relocation(self.ddisk)
        other = sleeper(self, server.nbdkit_marker(self.ddisk + "x"))
        state.write_pids(self.ddisk, other.pid, other.pid)
        with open(os.path.join(self.ddisk, "nbdkit.pid"), "w") as f:
            f.write("%d\n" % other.pid)
        self.move()
        self.assertTrue(server.alive(other.pid))


class History(AtticTest):
    """history: the relocations this host made of a disk, newest first."""

    def at(self, name, hostname, target="vda"):
        return relocation(os.path.join(self.attic, name), hostname,
                          target=target)

    def sources(self):
        return [r["hostname"] for r in attic.history(self.ddir, "vda")]

    def test_order(self):
        """Current first, then the attic's newest first, same disk only."""
        self.assertEqual(self.sources(), [])
        self.at("20240101T100000-vda", "host-1")
        self.at("20240103T100000-vda", "host-3")
        self.at("20240102T100000-vda", "host-2")
        self.at("20240102T100000-vda.2", "host-2b")
        self.at("20240104T100000-vdb", "host-vdb", "vdb")
        os.makedirs(os.path.join(self.attic, "20240105T100000-vda"))
        self.assertEqual(self.sources(),
                         ["host-3", "host-2b", "host-2", "host-1"])
        relocation(self.ddisk, "host-now")
        self.assertEqual(self.sources(),
                         ["host-now", "host-3", "host-2b", "host-2", "host-1"])

    def test_order_ten_in_one_second(self):
        """Ten moves in one second: .10 is the newest of them."""
        self.at("20240101T100000-vda", "host-1")
        for n in range(2, 11):
            self.at("20240101T100000-vda.%d" % n, "host-%d" % n)
        self.assertEqual(self.sources(),
                         ["host-%d" % n for n in range(10, 0, -1)])


class MovedOn(AtticTest):
    """moved_on: why a start of a relocation the domain left is refused."""

    def test_moved_on(self):
        """None without the moved-on file; else when, and the file."""
        rel = relocation(self.ddisk)
        self.assertIsNone(attic.moved_on(self.ddisk, rel))
        state.write_json(os.path.join(self.ddisk, state.MOVED_ON),
                         {"when": "2024-05-01T10:00:00", "clients": 1})
        self.assertEqual(
            attic.moved_on(self.ddisk, rel),
            "the domain moved on from this host (2024-05-01T10:00:00), so "
            "%s/disk.img is older than its disk there: start it where it "
            "moved to, or migrate it here" % self.ddisk)


class Rollback(AtticTest):
    """rollback: a definition that reads a host the disk was relocated
    from is refused once the guest wrote here."""

    def setUp(self):
        super().setUp()
        self.rel = relocation(self.ddisk, "old-host")
        self.rels = [self.rel,
                     relocation(self.attic + "/20240101T100000-vda",
                                "older-host", 10816)]

    def bitmap(self, flags):
        with open(self.rel["file"] + ".bitmap", "wb") as f:
            f.write(bitmap_header(flags))

    def rollback(self, host):
        """rollback of a definition whose vda reads host."""
        disk = domxml.parse(domain(nbd_disk("vda", host=host))).find(
            "devices/disk")
        return attic.rollback(disk, self.ddisk, self.rels)

    def test_never_started(self):
        """No bitmap, or one not STARTED: nothing here to lose."""
        self.assertIsNone(self.rollback("old-host"))
        self.bitmap(0)
        self.assertIsNone(self.rollback("old-host"))
        self.assertIsNone(self.rollback("older-host"))

    def test_names_no_source(self):
        """A host this disk was never relocated from: not judged here."""
        self.bitmap(state.STARTED)
        self.assertIsNone(self.rollback("other-host"))
        state.write_json(os.path.join(self.ddisk, state.MOVED_ON), {})
        self.assertIsNone(self.rollback("other-host"))

    def test_started(self):
        """Started, incomplete: refused; point the disk at its server."""
        self.bitmap(state.STARTED)
        self.assertEqual(
            self.rollback("old-host"),
            "the guest wrote to this disk here, and its definition would "
            "read nbd://old-host:10809/disk1 again and lose those writes.  "
            "The relocation is not complete: point the disk at its server "
            "(nbd://this-host:10815) with virsh edit, so that the start "
            "resumes it, or finish it first (README, 'Persistent domains').")

    def test_complete(self):
        """Complete: refused; point the disk at the image."""
        self.bitmap(state.STARTED | state.COMPLETE)
        why = self.rollback("old-host")
        self.assertIn("would read nbd://old-host:10809/disk1 again", why)
        self.assertIn("The relocation is complete: point the disk at "
                      "%s (<disk type='file'>" % self.rel["file"], why)
        self.assertIn("<source file='%s'/>" % self.rel["file"], why)

    def test_moved_on(self):
        """Moved on since (no bitmap needed): refused; start it there."""
        state.write_json(os.path.join(self.ddisk, state.MOVED_ON),
                         {"when": "2024-05-01T10:00:00", "clients": 0})
        why = self.rollback("old-host")
        self.assertIn("would read nbd://old-host:10809/disk1 again", why)
        self.assertTrue(why.endswith(
            "The domain has moved on from this host since: start it where "
            "it runs now."), why)

    def test_older_host(self):
        """A host of an attic relocation is refused as well."""
        self.bitmap(state.STARTED)
        why = self.rollback("older-host")
        self.assertIn("would read nbd://older-host:10809/disk1 again", why)
        self.assertIn("The relocation is not complete: point the disk at its "
                      "server (nbd://this-host:10815)", why)


class Sweep(AtticTest):
    """sweep: attic copies go once attic_days old and unused."""

    NOW = 1700000000.0

    def moved(self, days_ago, target="vda"):
        """An attic copy moved aside days_ago days before NOW, as
        move_aside names it; returns (its directory, its record)."""
        when = time.strftime("%Y%m%dT%H%M%S",
                             time.localtime(self.NOW - days_ago * 86400))
        entry = os.path.join(self.attic, "%s-%s" % (when, target))
        rel = relocation(entry)
        # The record names where the relocation was before the move.
        rel.update(control=os.path.join(self.ddisk, "control.sock"))
        state.write_json(os.path.join(entry, "relocation.json"), rel)
        return entry, rel

    def sweep(self, **keys):
        attic.sweep(self.config(**keys), self.ddir, now=self.NOW)

    def test_old_copy_removed(self):
        """Older than attic_days, no server: removed, with a log line."""
        old, _ = self.moved(8)
        young, _ = self.moved(6)
        self.sweep(attic_days="7")
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(young))
        self.assertRegex(self.hook_log(), r"domain 'vm1' disk vda: removed %s "
                         r"from the attic \(moved there [0-9T:-]+, attic_days "
                         r"= 7\)" % re.escape(old))

    def test_forever(self):
        """attic_days = forever: nothing is removed."""
        old, _ = self.moved(1000)
        self.sweep(attic_days="forever")
        self.assertTrue(os.path.exists(old))

    def test_in_use(self):
        """A server still serving from the attic (its command line names
        the directory where it was) keeps its copy, however old."""
        old, rel = self.moved(30)
        nbdkit = sleeper(self, server.nbdkit_marker(self.ddisk))
        state.write_pids(old, 0, nbdkit.pid)
        self.sweep(attic_days="0")
        self.assertTrue(os.path.exists(old))
        # Its keeper alone keeps it too.
        keeper = sleeper(self, server.keeper_marker(self.ddisk))
        state.write_pids(old, keeper.pid, 0)
        self.sweep(attic_days="0")
        self.assertTrue(os.path.exists(old))
        # A process whose command line names another directory does not.
        other = sleeper(self, server.nbdkit_marker(self.ddisk + "x"))
        state.write_pids(old, 0, other.pid)
        self.sweep(attic_days="0")
        self.assertFalse(os.path.exists(old))

    def test_other_names_kept(self):
        """What move_aside did not name is not the sweep's."""
        stray = os.path.join(self.attic, "notes")
        os.makedirs(stray)
        self.sweep(attic_days="0")
        self.assertTrue(os.path.exists(stray))


if __name__ == "__main__":
    unittest.main()
