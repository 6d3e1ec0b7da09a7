"""The relocation server's process: its command line, who is connected
to it, and how a process of it is found and stopped."""

import os
import signal
import subprocess
import time
import unittest
from unittest import mock

import hooktest
from hooktest import ended_by, sleeper
from relocate_hook import server, state

class CommandLine(hooktest.TempDirTest):
    """nbdkit_args: nbdkit's command line for a relocation."""

    def setUp(self):
        super().setUp()
        self.ddisk = os.path.join(self.tmp, "root", "u", "vda")
        self.rel = {"serve": "tcp", "serve_name": "this-host", "port": 10815,
                    "hostname": "old-host", "port_src": "10809",
                    "export": "disk1",
                    "file": os.path.join(self.ddisk, "disk.img"),
                    "control": os.path.join(self.ddisk, "control.sock"),
                    "socket": os.path.join(self.ddisk, "nbd.sock")}

    def args(self, standby_param=False, **keys):
        return server.nbdkit_args(self.config(**keys), self.rel, standby_param)

    def test_tcp(self):
        """tcp: in the foreground, never outliving its keeper; -p PORT, the
        pid file beside the image, the filter's params."""
        self.assertEqual(self.args(), [
            "nbdkit", "-f", "--exit-with-parent", "--log=stderr", "-p", "10815",
            "-i", "127.0.0.1",
            "-P", self.ddisk + "/nbdkit.pid", "--filter=relocate", "nbd",
            "hostname=old-host", "port=10809", "export=disk1",
            "relocate-file=" + self.ddisk + "/disk.img",
            "relocate-control=" + self.ddisk + "/control.sock",
            "relocate-rate=0", "relocate-block-size=64K",
            "relocate-start=on-write"])

    def test_rate_group(self):
        """rate_group = SIZE: every relocation of the host names the same
        group file, under state_root, with the budget; 0: none."""
        self.assertFalse([a for a in self.args() if "rate-group" in a])
        args = self.args(rate_group="100M", state_root="/srv/r")
        self.assertIn("relocate-rate-group=/srv/r/rate-group", args)
        self.assertIn("relocate-rate-group-limit=100M", args)

    def test_listen(self):
        """listen = ADDR: -i ADDR right after the port; listen empty: the
        address serve_name names (never every address)."""
        args = self.args(listen="::1")
        self.assertEqual(args[4:8], ["-p", "10815", "-i", "::1"])
        self.assertEqual(args.count("-i"), 1)
        args = self.args(listen="", serve_name="127.0.0.3")
        self.assertEqual(args[4:8], ["-p", "10815", "-i", "127.0.0.3"])

    def test_tls(self):
        """TLS: the server requires it with client certificates (nbdkit's
        options, before the plugin); the nbd plugin requires it of the
        source and verifies it (the plugin's parameters)."""
        self.rel.update(tls=True, tls_source=True, tls_dir="/etc/pki/qemu")
        args = self.args()
        plugin = args.index("nbd")
        self.assertEqual(args[8:11], ["--tls=require",
                                      "--tls-certificates=/etc/pki/qemu",
                                      "--tls-verify-peer"])
        self.assertEqual(args[plugin + 4:plugin + 6],
                         ["tls=require", "tls-certificates=/etc/pki/qemu"])
        self.rel.update(tls=False)
        args = self.args()
        self.assertFalse([a for a in args if a.startswith("--tls")])
        self.assertIn("tls=require", args)
        self.rel.update(tls=True, tls_source=False)
        args = self.args()
        self.assertIn("--tls=require", args)
        self.assertFalse([a for a in args if a.startswith("tls")])

    def test_unix(self):
        """unix: -U SOCKET instead of a port, even with listen set."""
        self.rel["serve"] = "unix"
        args = self.args(listen="127.0.0.1")
        self.assertEqual(args[:8], ["nbdkit", "-f", "--exit-with-parent",
                                    "--log=stderr", "-U",
                                    self.ddisk + "/nbd.sock", "-P",
                                    self.ddisk + "/nbdkit.pid"])
        self.assertNotIn("-p", args)
        self.assertNotIn("-i", args)

    def test_from_config(self):
        """nbdkit, filter, rate, block size and start come from hook.conf."""
        args = self.args(nbdkit="/usr/sbin/nbdkit", filter="/opt/relocate.so",
                         rate="50M", block_size="1M", start="manual")
        self.assertEqual(args[0], "/usr/sbin/nbdkit")
        self.assertIn("--filter=/opt/relocate.so", args)
        self.assertEqual(args[-3:], ["relocate-rate=50M",
                                     "relocate-block-size=1M",
                                     "relocate-start=manual"])

    def test_standby_timeout(self):
        """relocate-standby-timeout: if the filter has it and > 0; >= 1 s."""
        cases = [(True, "300", "relocate-standby-timeout=300"),
                 (True, "2.6", "relocate-standby-timeout=3"),
                 (True, "0.2", "relocate-standby-timeout=1"),
                 (True, "0", "relocate-start=on-write"),
                 (False, "300", "relocate-start=on-write")]
        for param, timeout, last in cases:
            with self.subTest(standby_param=param, standby_timeout=timeout):
                args = self.args(param, standby_timeout=timeout)
                self.assertEqual(args[-1], last)
                self.assertEqual(
                    len([a for a in args if "standby" in a]),
                    1 if "standby" in last else 0)

    def test_extra_args_last(self):
        """extra_args go last, split on whitespace."""
        args = self.args(True, extra_args="relocate-workers=8 \t "
                         "relocate-timeout=120")
        self.assertEqual(args[-3:], ["relocate-standby-timeout=300",
                                     "relocate-workers=8",
                                     "relocate-timeout=120"])


# /proc/net/tcp lines: sl, local address:port, remote, state (01
# ESTABLISHED, 0A LISTEN), then fields tcp_clients does not read.
TCP_HEAD = ("  sl  local_address rem_address   st tx_queue rx_queue tr "
            "tm->when retrnsmt   uid  timeout inode\n")
TCP_TAIL = " 00000000:00000000 00:00000000 00000000     0        0 4242\n"

# /proc/net/unix lines: fields[5] is St (03 connected), fields[7] Path.
UNIX_HEAD = "Num       RefCount Protocol Flags    Type St Inode Path\n"


def tcp_line(local, remote, st):
    return "   0: %s %s %s%s" % (local, remote, st, TCP_TAIL)


class Clients(hooktest.TempDirTest):
    """Who is connected to a server, from /proc/net's tables."""

    def test_tcp_clients(self):
        """Established connections to the local port, in every table."""
        # 0x2A3B = 10811, 0x2A3C = 10812
        tcp = self.write("tcp", TCP_HEAD +
                         tcp_line("0100007F:2A3B", "00000000:0000", "0A") +
                         tcp_line("0100007F:2A3B", "0100007F:D431", "01") +
                         tcp_line("0100007F:2A3B", "0200000A:C001", "01") +
                         tcp_line("0100007F:2A3B", "0200000A:C002", "06") +
                         tcp_line("0100007F:2A3C", "0100007F:D432", "01") +
                         # a client's end: its remote port is 10811
                         tcp_line("0100007F:D431", "0100007F:2A3B", "01"))
        tcp6 = self.write("tcp6", TCP_HEAD + tcp_line(
            "0000000000000000FFFF00000100007F:2A3B",
            "0000000000000000FFFF00000100007F:D433", "01"))
        missing = os.path.join(self.tmp, "none")
        self.assertEqual(server.tcp_clients(10811, (tcp, missing, tcp6)), 3)
        self.assertEqual(server.tcp_clients(10812, (tcp, tcp6)), 1)
        self.assertEqual(server.tcp_clients(10813, (tcp, tcp6)), 0)
        self.assertEqual(server.tcp_clients(10811, (missing,)), 0)

    def test_socket_clients(self):
        """Connected sockets with the server's path; -1 without the table."""
        sock = "/var/lib/nbdkit-relocate/u/vda/nbd.sock"
        rows = [("00010000", "01", sock),            # the listener
                ("00000000", "03", sock),
                ("00000000", "03", sock),
                ("00000000", "03", sock + ".other"),
                ("00000000", "03", ""),               # a client's end
                ("00000000", "02", sock)]
        unix = self.write("unix", UNIX_HEAD + "".join(
            "%016x: 00000002 00000000 %s 0001 %s %d %s\n" %
            (i, flags, st, 1000 + i, path)
            for i, (flags, st, path) in enumerate(rows)))
        self.assertEqual(server.socket_clients(sock, unix), 2)
        self.assertEqual(server.socket_clients("/no/such.sock", unix), 0)
        self.assertEqual(
            server.socket_clients(sock, os.path.join(self.tmp, "none")), -1)


MARKER = "relocate-control=/var/lib/nbdkit-relocate/u/vda/control.sock"


class Processes(hooktest.TempDirTest):
    """alive, kill_process and server_running: a process is signalled
    only while its command line holds the disk's marker."""

    def dead_pid(self):
        proc = subprocess.Popen(["true"])
        proc.wait()
        return proc.pid

    def test_alive(self):
        """A running process is alive; an exited one, zombie or not, is not."""
        proc = sleeper(self, MARKER, reap=False)
        self.assertTrue(server.alive(proc.pid))
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.time() + 5
        while server.alive(proc.pid) and time.time() < deadline:
            time.sleep(0.01)
        with open("/proc/%d/stat" % proc.pid) as f:
            self.assertIn(") Z ", f.read())     # not reaped: a zombie
        self.assertFalse(server.alive(proc.pid))
        proc.wait()
        self.assertFalse(server.alive(proc.pid))

    def test_kill_nothing(self):
        """No pid, a dead one, one without the marker: True, no signal."""
        self.assertTrue(server.kill_process(0, MARKER, 0.5))
        self.assertTrue(server.kill_process(None, MARKER, 0.5))
        self.assertTrue(server.kill_process(self.dead_pid(), MARKER, 0.5))
        other = sleeper(self, MARKER + ".other", reap=False)
        self.assertTrue(server.kill_process(other.pid, MARKER, 0.5))
        time.sleep(0.1)
        self.assertIsNone(other.poll())

    def test_kill_sigterm(self):
        """A marked process ends by SIGTERM; True."""
        proc = sleeper(self, MARKER)
        self.assertTrue(server.kill_process(proc.pid, MARKER, 5))
        self.assertEqual(ended_by(proc), signal.SIGTERM)
        self.assertFalse(os.path.exists("/proc/%d" % proc.pid))

    def test_kill_sigkill_after_grace(self):
        """A marked process deaf to SIGTERM gets SIGKILL after grace."""
        proc = sleeper(self, MARKER, deaf=True)
        t0 = time.time()
        self.assertTrue(server.kill_process(proc.pid, MARKER, 0.5))
        self.assertGreaterEqual(time.time() - t0, 0.5)
        self.assertEqual(ended_by(proc), signal.SIGKILL)

    def test_server_running(self):
        """server_running: pids.json's nbdkit is alive and holds the marker."""
        ddisk = os.path.join(self.tmp, "vda")
        os.mkdir(ddisk)
        self.assertFalse(server.server_running(ddisk))      # no pids.json
        ours = sleeper(self, server.nbdkit_marker(ddisk), reap=False)
        other = sleeper(self, server.nbdkit_marker(ddisk + "x"), reap=False)
        state.write_pids(ddisk, 0, other.pid)
        self.assertFalse(server.server_running(ddisk))
        state.write_pids(ddisk, other.pid, ours.pid)
        self.assertTrue(server.server_running(ddisk))
        state.write_pids(ddisk, ours.pid, self.dead_pid())
        self.assertFalse(server.server_running(ddisk))

    def test_stop_disk_server(self):
        """nbdkit, then its keeper, then an nbdkit the keeper started in
        between (pids.json read again): all gone, stopping marked."""
        ddisk = os.path.join(self.tmp, "vda")
        os.mkdir(ddisk)
        cfg = self.config(stop_grace="0.5")
        first = sleeper(self, server.nbdkit_marker(ddisk))
        keeper = sleeper(self, server.keeper_marker(ddisk))
        state.write_pids(ddisk, keeper.pid, first.pid)
        restarted = []
        kill = server.kill_process

        def kill_keeper_after_a_restart(pid, marker, grace):
            if pid == keeper.pid and not restarted:
                # The keeper started nbdkit again just before its end.
                restarted.append(sleeper(self, server.nbdkit_marker(ddisk)))
                state.write_pids(ddisk, keeper.pid, restarted[0].pid)
            return kill(pid, marker, grace)

        with mock.patch("relocate_hook.server.kill_process",
                        side_effect=kill_keeper_after_a_restart):
            self.assertTrue(server.stop_disk_server(cfg, ddisk))
        self.assertTrue(state.marked(ddisk, state.STOPPING))
        for proc in (first, keeper, restarted[0]):
            self.assertEqual(ended_by(proc), signal.SIGTERM)


if __name__ == "__main__":
    unittest.main()
