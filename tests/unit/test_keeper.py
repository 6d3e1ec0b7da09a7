"""The keeper: it runs a stand-in "nbdkit", records the pids, stops it
when it idles, and says in hook.log when it exited by itself; how
start_server launches it; the hook.conf it reads.

The keeper runs in a thread of the test (its watch loop looks every
second), with ctl_status and server_clients mocked where it matters."""

import os
import signal
import subprocess
import sys
import threading
import time
import unittest
from unittest import mock

import hooktest
from hooktest import UUID
from relocate_hook import keeper, server, state


def exits(status, *lines):
    """A stand-in nbdkit that prints lines to stderr and exits."""
    return ("import sys\nprint('nbdkit: debug: started')\n"
            "print(%r, file=sys.stderr)\nsys.exit(%d)\n" %
            ("\n".join(lines), status))


class KeeperTest(hooktest.TempDirTest):
    """A planned unix relocation of vm1's vda, and a keeper for it."""

    def setUp(self):
        super().setUp()
        self.cfg = self.config(serve="unix", stop_grace="0.5",
                               onward_window="0.5", restarts="0")
        ddir = os.path.join(self.cfg["state_root"], UUID)
        self.rel = state.plan(self.cfg, "vm1", ddir, "vda",
                              ("old-host", "10809", "disk1", False))
        self.ddisk = os.path.join(ddir, "vda")

    def keeper(self, code, *args, standby=0, argv=None):
        """A Keeper running python3 -c code ARGS... MARKER (or argv)."""
        k = keeper.Keeper(self.cfg, self.ddisk, "vm1", standby, argv or
                          [sys.executable, "-c", code, *args,
                           server.nbdkit_marker(self.ddisk)])
        self.addCleanup(os.close, k.dfd)
        return k

    def sleeper(self, deaf=False, standby=0):
        return self.keeper(hooktest._SLEEPER, "deaf" if deaf else "-",
                           standby=standby)

    def start(self, k):
        """Run k in a thread, once its nbdkit has started."""
        t = threading.Thread(target=k.run, daemon=True)
        t.start()
        self.addCleanup(self._end, k, t)
        self.wait_for(lambda: k.child is not None)
        return t

    def _end(self, k, t):
        self.stop(k)
        t.join(10)

    def stop(self, k):
        """Kill nbdkit as the hook stops it: marked, so not started again."""
        state.mark(self.ddisk, state.STOPPING)
        if k.child.poll() is None:
            k.child.kill()

    def wait_for(self, cond, timeout=5):
        deadline = time.time() + timeout
        while not cond():
            self.assertLess(time.time(), deadline, "timed out")
            time.sleep(0.02)

    def finish(self, t, timeout=6):
        t.join(timeout)
        self.assertFalse(t.is_alive(), "the keeper still runs")

    def run_keeper(self, k):
        self.finish(self.start(k))

    def nbdkit_log(self):
        with open(os.path.join(self.ddisk, "nbdkit.log")) as f:
            return f.read()

    def log_line(self, text):
        """The one line of hook.log that holds text (from its message on)."""
        lines = [l.split("]: ", 1)[1] for l in self.hook_log().splitlines()
                 if text in l]
        self.assertEqual(len(lines), 1, self.hook_log())
        return lines[0]

    def keeps_running(self, k, t):
        """After two of the keeper's looks, nbdkit still runs; then end it."""
        time.sleep(2.2)
        self.assertIsNone(k.child.poll())
        self.assertTrue(t.is_alive())
        self.assertFalse(state.marked(self.ddisk, state.STOPPING))
        self.assertNotIn("server stopped", self.hook_log())
        self.stop(k)
        self.finish(t)


class Run(KeeperTest):
    """Keeper.run: nbdkit's pids and messages, and its exit by itself."""

    def test_pids_and_log(self):
        """pids.json: both pids; stdout, stderr appended to nbdkit.log."""
        self.write(os.path.join(self.ddisk, "nbdkit.log"), "earlier run\n")
        k = self.keeper(exits(0, "nbdkit: on stderr"))
        self.run_keeper(k)
        self.assertEqual(state.read_pids(self.ddisk),
                         {"keeper": os.getpid(), "nbdkit": k.child.pid})
        self.assertRegex(self.nbdkit_log(), r"^earlier run\n[0-9T:-]+ "
                         "nbdkit-relocate-hook: starting nbdkit\nnbdkit: debug: "
                         "started\nnbdkit: on stderr\n$")

    def test_exits_by_itself(self):
        """An exit the hook did not ask for: its status and last message."""
        self.run_keeper(self.keeper(exits(3, "nbdkit: error: something broke",
                                          "", "  ")))
        self.assertEqual(self.log_line("exited"), "domain 'vm1' disk vda: "
                         "relocation server exited by itself (status 3): "
                         "nbdkit: error: something broke; not started again "
                         "(restarts = 0)")

    def test_last_message_of_this_run(self):
        """The last message is this run's, not an earlier run's."""
        self.write(os.path.join(self.ddisk, "nbdkit.log"),
                   "nbdkit: error: an earlier run's\n")
        self.run_keeper(self.keeper(exits(3)))
        self.assertEqual(self.log_line("exited"), "domain 'vm1' disk vda: "
                         "relocation server exited by itself (status 3): "
                         "nbdkit: debug: started; not started again "
                         "(restarts = 0)")

    def test_filter_standby_timeout(self):
        """Status 0 after the filter's standby timeout: no client came
        (with another status: an exit by itself)."""
        last = "nbdkit: relocate: no client in standby for 7 s: exiting"
        self.run_keeper(self.keeper(exits(0, last)))
        self.run_keeper(self.keeper(exits(1, last)))
        self.assertEqual(self.log_line("came in"), "domain 'vm1' disk vda: "
                         "no client came in 7 s of standby (the migration "
                         "failed before QEMU started?): server stopped")
        self.assertEqual(self.log_line("exited"), "domain 'vm1' disk vda: "
                         "relocation server exited by itself (status 1): "
                         + last + "; not started again (restarts = 0)")

    def test_stopped_by_the_hook(self):
        """The stopping marker when nbdkit exits: nothing logged, nothing
        started again."""
        self.cfg = self.config(serve="unix", restarts="2")
        k = self.sleeper()
        t = self.start(k)
        first = k.child.pid
        state.mark(self.ddisk, state.STOPPING)
        k.child.kill()
        self.finish(t)
        self.assertEqual(k.child.pid, first)
        self.assertEqual(self.hook_log(), "")

    def test_nbdkit_missing(self):
        """An nbdkit that cannot be run: nbdkit.log and hook.log say why."""
        missing = os.path.join(self.tmp, "no-nbdkit")
        self.keeper(None, argv=[missing]).run()
        why = "cannot run %s: No such file or directory" % missing
        self.assertEqual(self.log_line("cannot run"), "domain 'vm1' disk vda: "
                         "relocation server: " + why)
        self.assertTrue(self.nbdkit_log().endswith(why + "\n"))


class Restart(KeeperTest):
    """A server that dies is started again over the same files, a bounded
    number of times."""

    def setUp(self):
        super().setUp()
        self.cfg = self.config(serve="unix", stop_grace="0.5", restarts="2",
                               restart_window="60")

    def test_killed_is_restarted(self):
        """kill -9: started again, pids.json names the new nbdkit, and the
        unix socket nbdkit 1.32 leaves behind is removed first."""
        k = self.sleeper()
        t = self.start(k)
        first = k.child.pid
        self.write(os.path.join(self.ddisk, "nbd.sock"), "")
        os.kill(first, signal.SIGKILL)
        self.wait_for(lambda: state.read_pids(self.ddisk)["nbdkit"] != first)
        self.assertIsNone(k.child.poll())
        self.assertEqual(state.read_pids(self.ddisk),
                         {"keeper": os.getpid(), "nbdkit": k.child.pid})
        self.assertFalse(os.path.exists(os.path.join(self.ddisk, "nbd.sock")))
        self.assertEqual(self.log_line("exited"), "domain 'vm1' disk vda: "
                         "relocation server exited by itself (killed by SIGKILL); "
                         "started again over the same files (1 of restarts "
                         "= 2 in restart_window = 60 s)")
        self.stop(k)
        self.finish(t)

    def test_bounded(self):
        """restarts times in restart_window, then given up, logged."""
        k = self.keeper(exits(3, "nbdkit: error: broken"))
        self.run_keeper(k)
        lines = [l.split("]: ", 1)[1] for l in self.hook_log().splitlines()]
        what = ("domain 'vm1' disk vda: relocation server exited by itself "
                "(status 3): nbdkit: error: broken; ")
        self.assertEqual(lines, [
            what + "started again over the same files (1 of restarts = 2 in "
            "restart_window = 60 s)",
            what + "started again over the same files (2 of restarts = 2 in "
            "restart_window = 60 s)",
            what + "it was started again 2 times in 60 s (restarts, "
            "restart_window): given up"])

    def test_clean_exit_not_restarted(self):
        """Status 0 (someone stopped it cleanly): not started again."""
        self.run_keeper(self.keeper(exits(0, "nbdkit: bye")))
        self.assertEqual(self.log_line("exited"), "domain 'vm1' disk vda: "
                         "relocation server exited by itself (status 0): "
                         "nbdkit: bye; it stopped cleanly (status 0): not "
                         "started again")

    def test_moved_aside_not_restarted(self):
        """Its directory moved to the attic: its command line would name
        the new relocation's files, so it is not started again."""
        k = self.keeper(exits(3, "nbdkit: error: broken"))
        os.rename(self.ddisk, self.ddisk + ".attic")
        os.makedirs(self.ddisk)
        self.run_keeper(k)
        self.assertIn("not started again: its directory was moved aside",
                      self.log_line("exited"))
        self.assertEqual(os.listdir(self.ddisk), [])

    def test_moved_and_gone_not_restarted(self):
        """Moved aside and nothing at the old path: not started again."""
        k = self.keeper(exits(3, "nbdkit: error: broken"))
        os.rename(self.ddisk, self.ddisk + ".attic")
        self.run_keeper(k)
        self.assertIn("not started again: its directory was moved aside",
                      self.log_line("exited"))

    def test_sigterm(self):
        """SIGTERM (the hook's stop): nbdkit goes, nothing is started
        again or logged."""
        k = self.sleeper()
        t = self.start(k)
        k.on_sigterm()
        self.finish(t)
        self.assertEqual(k.child.returncode, -signal.SIGTERM)
        self.assertEqual(self.hook_log(), "")

    def test_sigterm_in_the_restart_delay(self):
        """SIGTERM after nbdkit died, before it is started again: not
        started (the pid recorded is still the dead one's)."""
        k = self.sleeper()
        t = self.start(k)
        first = k.child.pid
        with mock.patch("relocate_hook.keeper.time.sleep",
                        side_effect=lambda s: s == keeper.RESTART_DELAY
                        and k.on_sigterm()):
            os.kill(first, signal.SIGKILL)
            self.finish(t)
        self.assertEqual(k.child.pid, first)
        self.assertEqual(state.read_pids(self.ddisk)["nbdkit"], first)


@mock.patch("relocate_hook.keeper.ctl_status", return_value={})
class Resume(KeeperTest):
    """pause_on_error: after a restart, a guest paused by an I/O error
    is resumed through virsh (a stand-in that records its calls)."""

    def virsh(self, state_line, **keys):
        calls = os.path.join(self.tmp, "virsh.calls")
        path = self.write("virsh", "#!/bin/sh\necho \"$*\" >> %s\n"
                          "case \"$*\" in *domstate*) echo '%s';; esac\n" %
                          (calls, state_line))
        os.chmod(path, 0o755)
        self.cfg = self.config(serve="unix", restarts="2", virsh=path,
                               libvirt_uri="test:///default", **keys)
        return calls

    def restart(self):
        """Kill nbdkit once; wait until it runs again; two looks later,
        stop it."""
        k = self.sleeper()
        t = self.start(k)
        first = k.child.pid
        os.kill(first, signal.SIGKILL)
        self.wait_for(lambda: k.child.pid != first)
        time.sleep(2.5)
        self.stop(k)
        self.finish(t)

    def calls(self, path):
        try:
            with open(path) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def test_paused_by_io_error(self, status):
        """paused (I/O error): resumed, logged."""
        calls = self.virsh("paused (I/O error)")
        self.restart()
        self.assertIn("-c test:///default resume vm1", self.calls(calls))
        self.assertIn("-c test:///default domstate --reason vm1",
                      self.calls(calls))
        self.assertIn("domain 'vm1' disk vda: the guest was paused by an I/O "
                      "error while the server was down: resumed",
                      self.hook_log())

    @mock.patch("relocate_hook.keeper.RESUME_WINDOW", 1.5)
    def test_window_from_first_answer(self, status):
        """A restarted server that answers only after RESUME_WINDOW (it
        waited for the source): the window starts then, the guest is
        resumed."""
        calls = self.virsh("paused (I/O error)")
        answers_at = []
        status.side_effect = lambda *a, **k: (
            {} if answers_at and time.time() >= answers_at[0] else None)
        k = self.sleeper()
        t = self.start(k)
        first = k.child.pid
        os.kill(first, signal.SIGKILL)
        self.wait_for(lambda: k.child.pid != first)
        answers_at.append(time.time() + 2.5)
        time.sleep(4.5)
        self.stop(k)
        self.finish(t)
        self.assertIn("-c test:///default resume vm1", self.calls(calls))

    def test_paused_otherwise(self, status):
        """Paused by the operator, or running: not resumed."""
        for line in ("paused (user)", "running (booted)"):
            with self.subTest(line=line):
                calls = self.virsh(line)
                self.restart()
                self.assertTrue(self.calls(calls))
                self.assertNotIn("-c test:///default resume vm1",
                                 self.calls(calls))
                os.unlink(calls)
                state.unmark(self.ddisk, state.STOPPING)

    def test_off(self, status):
        """pause_on_error = no: virsh is never run."""
        calls = self.virsh("paused (I/O error)", pause_on_error="no")
        self.restart()
        self.assertEqual(self.calls(calls), [])


@mock.patch("relocate_hook.keeper.server_clients", return_value=0)
class Onward(KeeperTest):
    """The domain left: nbdkit stops once the next host says it is
    complete, or onward_window after its last client."""

    ONWARD_LINE = ("domain 'vm1' disk vda: no host has read from this "
                   "server for 0 s since the domain left, and none said it "
                   "was complete: server stopped")
    DONE_LINE = ("domain 'vm1' disk vda: the next host said its relocation "
                 "from this server is complete (a flush), and has gone: "
                 "server stopped")

    def handed_over(self, k, flushes, pid=None):
        """The marker release writes: nbdkit's pid, its counts."""
        state.write_json(os.path.join(self.ddisk, state.ONWARD), {
            "when": "2024-05-01T10:00:00", "reader_flushes": flushes,
            "written_bytes": 4096,
            "nbdkit": k.child.pid if pid is None else pid})

    def flushed_after_hand_over(self, end, **keys):
        """onward_window an hour; 7 flushes at the hand-over, 8 now;
        end(keeper, thread) while ctl_status says so."""
        self.cfg = self.config(serve="unix", onward_window="3600", **keys)
        k = self.sleeper()
        with mock.patch("relocate_hook.keeper.ctl_status",
                        return_value={"reader_flushes": 8,
                                      "written_bytes": 4096}):
            t = self.start(k)
            self.handed_over(k, 7)
            end(k, t)
        return k

    def test_next_host_complete(self, clients):
        """A flush after the hand-over, then no client: stopped at once
        (onward_window is an hour), logged as the next host's completion."""
        k = self.flushed_after_hand_over(lambda k, t: self.finish(t))
        self.assertEqual(k.child.returncode, -signal.SIGTERM)
        self.assertEqual(self.log_line("server stopped"), self.DONE_LINE)

    def test_next_host_complete_needs_gone(self, clients):
        """The flush came but the next host is still connected: serving."""
        clients.return_value = 1
        self.flushed_after_hand_over(self.keeps_running)

    def test_complete_stray_client(self, clients):
        """The flush came, and a client stays (not the next host, which
        closes its connections): stopped onward_grace later."""
        clients.return_value = 1
        k = self.flushed_after_hand_over(lambda k, t: self.finish(t),
                                         onward_grace="1.5")
        self.assertEqual(k.child.returncode, -signal.SIGTERM)
        self.assertEqual(self.log_line("server stopped"), self.DONE_LINE.replace(
            "has gone:", "has gone (1 other client(s) still connected are "
            "not the next host):"))

    def test_no_flush_since(self, clients):
        """No flush since the hand-over (or its count unknown): the
        domain's own flushes do not count; serving for onward_window."""
        self.cfg = self.config(serve="unix", onward_window="3600")
        for base in (8, None):
            with self.subTest(base=base):
                k = self.sleeper()
                with mock.patch("relocate_hook.keeper.ctl_status",
                                return_value={"reader_flushes": 8,
                                      "written_bytes": 4096}):
                    t = self.start(k)
                    self.handed_over(k, base)
                    self.keeps_running(k, t)
                state.unmark(self.ddisk, state.STOPPING)

    def test_a_writer_is_not_the_next_host(self, clients):
        """A flush, but someone wrote since the hand-over (a QEMU that uses
        this server as its disk, flushing on a fresh connection): not
        complete; serving, though a client stays."""
        clients.return_value = 1
        self.cfg = self.config(serve="unix", onward_window="3600",
                               onward_grace="0")
        k = self.sleeper()
        with mock.patch("relocate_hook.keeper.ctl_status",
                        return_value={"reader_flushes": 8,
                                      "written_bytes": 8192}):
            t = self.start(k)
            self.handed_over(k, 7)
            self.keeps_running(k, t)

    def test_restarted_counts_from_zero(self, clients):
        """nbdkit started again after the hand-over: every flush it
        counts is the next host's."""
        self.cfg = self.config(serve="unix", onward_window="3600")
        k = self.sleeper()
        with mock.patch("relocate_hook.keeper.ctl_status",
                        return_value={"reader_flushes": 1,
                                      "written_bytes": 4096}):
            t = self.start(k)
            self.handed_over(k, 7, pid=k.child.pid + 100000)
            self.finish(t)
        self.assertEqual(self.log_line("server stopped"), self.DONE_LINE)

    def test_no_client(self, clients):
        """No client: SIGTERM at the keeper's next look, stopping marked."""
        state.mark(self.ddisk, state.ONWARD)
        k = self.sleeper()
        t0 = time.time()
        self.run_keeper(k)
        self.assertLess(time.time() - t0, 4)
        self.assertEqual(k.child.returncode, -signal.SIGTERM)
        self.assertTrue(state.marked(self.ddisk, state.STOPPING))
        self.assertEqual(self.log_line("server stopped"), self.ONWARD_LINE)
        clients.assert_called_with(k.rel)

    def test_grace_from_last_client(self, clients):
        """A client at the first look (1 s): the grace counts from then."""
        clients.side_effect = [1] + [0] * 100
        self.cfg = self.config(serve="unix", onward_window="1.5")
        state.mark(self.ddisk, state.ONWARD)
        k = self.sleeper()
        t0 = time.time()
        self.run_keeper(k)
        self.assertGreaterEqual(time.time() - t0, 2.9)     # not at 2 s
        self.assertEqual(k.child.returncode, -signal.SIGTERM)
        self.assertEqual(self.log_line("server stopped"),
                         self.ONWARD_LINE.replace(" 0 s ", " 1 s "))

    def test_client_keeps_it(self, clients):
        """A client still reading: nbdkit keeps serving."""
        clients.return_value = 1
        state.mark(self.ddisk, state.ONWARD)
        k = self.sleeper()
        self.keeps_running(k, self.start(k))
        clients.assert_called_with(k.rel)

    def test_deaf_gets_sigkill(self, clients):
        """nbdkit deaf to SIGTERM: SIGKILL stop_grace after the stop."""
        k = self.sleeper(deaf=True)
        t = self.start(k)
        self.wait_for(lambda: "ready" in self.nbdkit_log())
        state.mark(self.ddisk, state.ONWARD)
        self.finish(t)
        stopped = os.stat(os.path.join(self.ddisk, state.STOPPING)).st_mtime
        self.assertGreaterEqual(time.time() - stopped, 0.5)
        self.assertEqual(k.child.returncode, -signal.SIGKILL)
        self.assertEqual(self.log_line("server stopped"), self.ONWARD_LINE)


@mock.patch("relocate_hook.keeper.server_clients", return_value=0)
@mock.patch("relocate_hook.keeper.ctl_status")
class Standby(KeeperTest):
    """STANDBY > 0: the keeper's own standby timeout."""

    def test_stops_in_standby(self, status, clients):
        """In standby with no client for STANDBY s: stopped, logged."""
        status.return_value = {"state": "standby"}
        k = self.sleeper(standby=1.0)
        t0 = time.time()
        self.run_keeper(k)
        self.assertLess(time.time() - t0, 4)
        self.assertEqual(k.child.returncode, -signal.SIGTERM)
        self.assertEqual(self.log_line("server stopped"),
                         "domain 'vm1' disk vda: no client came in 1 s of "
                         "standby (the migration failed before QEMU "
                         "started?): server stopped")
        status.assert_called_with(self.cfg, os.path.join(k.here,
                                                         "control.sock"))

    def test_relocating_keeps_it(self, status, clients):
        """Out of standby (relocating): nbdkit keeps serving."""
        status.return_value = {"state": "relocating"}
        k = self.sleeper(standby=1.0)
        self.keeps_running(k, self.start(k))
        self.assertTrue(status.called)


class Main(KeeperTest):
    """keeper.main: its command line, as start_server gives it."""

    def test_usage(self):
        """Too few arguments, or no -- before nbdkit's: the usage message."""
        for argv in ([], ["c", "d", "vm1", "0", "nbdkit", "-f"]):
            with self.subTest(argv=argv):
                with self.assertRaises(SystemExit) as cm:
                    keeper.main(argv)
                self.assertTrue(str(cm.exception.code).startswith(
                    "usage: python3 -m relocate_hook.keeper HOOK.CONF DDISK "
                    "DOMAIN STANDBY -- NBDKIT-ARGS..."))

    def test_as_a_process(self):
        """python3 -m relocate_hook.keeper from LIBDIR: pids, hook.log."""
        proc = subprocess.Popen(
            [sys.executable, "-B", "-E", "-s", "-m", "relocate_hook.keeper",
             self.cfg.path, self.ddisk, "vm1", "0", "--", sys.executable,
             "-c", exits(3, "nbdkit: error: something broke")],
            cwd=server.LIBDIR, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(proc.stderr.close)
        self.addCleanup(proc.wait)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        err = proc.communicate(timeout=20)[1]
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(state.read_pids(self.ddisk)["keeper"], proc.pid)
        with open(os.path.join(self.cfg["state_root"], "hook.log")) as f:
            self.assertIn("domain 'vm1' disk vda: relocation server exited "
                          "by itself (status 3): nbdkit: error: something "
                          "broke; not started again (restarts = 0)\n", f.read())


class StartServer(KeeperTest):
    """server.start_server: the keeper's command line, and a keeper that
    does not serve (subprocess.Popen mocked: nothing runs)."""

    def start_server(self, poll, standby_param=False):
        """start_server with a keeper whose poll() returns poll; (its
        result, the Popen mock, the keeper's mock); proc.seen: the
        markers when Popen was called."""
        proc = mock.Mock()
        proc.poll.return_value = poll
        proc.seen = {}

        def popen(*args, **kwargs):
            proc.seen.update((m, state.marked(self.ddisk, m))
                        for m in (state.STOPPING, state.ONWARD))
            return proc

        state.mark(self.ddisk, state.STOPPING)
        state.mark(self.ddisk, state.ONWARD)
        with mock.patch("relocate_hook.server.subprocess.Popen",
                        side_effect=popen) as p:
            ok = server.start_server(self.cfg, self.ddisk, self.rel,
                                     (0, 0, True), standby_param)
        return ok, p, proc

    def test_command_line(self):
        """keeper -m from LIBDIR, in its own session; STANDBY 0 when the
        filter has its own standby timeout."""
        self.assertTrue(os.path.isfile(os.path.join(
            server.LIBDIR, "relocate_hook", "keeper.py")))
        self.cfg = self.config(serve="unix", standby_timeout="2.5")
        for param, standby in ((True, "0"), (False, "2.5")):
            with self.subTest(standby_param=param):
                _, p, _ = self.start_server(1, param)
                args, kwargs = p.call_args
                self.assertEqual(args[0], [
                    sys.executable, "-B", "-E", "-s", "-m",
                    "relocate_hook.keeper", self.cfg.path, self.ddisk, "vm1",
                    standby, "--"] + server.nbdkit_args(self.cfg, self.rel,
                                                        param))
                self.assertEqual(kwargs["cwd"], server.LIBDIR)
                self.assertIs(kwargs["start_new_session"], True)
                self.assertEqual(kwargs["stdin"], subprocess.DEVNULL)
                # Recorded beside the relocation.
                self.assertEqual(state.read_json(os.path.join(
                    self.ddisk, "relocation.json"))["command"], args[0][11:])

    def test_keeper_exited(self):
        """The keeper exited: False at once, markers cleared then, stopping
        marked after."""
        t0 = time.time()
        ok, _, proc = self.start_server(1)
        self.assertLess(time.time() - t0, 5)        # start_timeout is 30
        self.assertIs(ok, False)
        self.assertEqual(proc.seen, {state.STOPPING: False,
                                     state.ONWARD: False})
        self.assertTrue(state.marked(self.ddisk, state.STOPPING))
        proc.kill.assert_not_called()
        proc.wait.assert_called_once_with()

    def test_not_serving_in_time(self):
        """A keeper still running at start_timeout: killed, False."""
        self.cfg = self.config(serve="unix", start_timeout="0.3")
        ok, _, proc = self.start_server(None)
        self.assertIs(ok, False)
        proc.kill.assert_called_once_with()
        proc.wait.assert_called_once_with()


if __name__ == "__main__":
    unittest.main()
