"""Processes started by a run (Procs), their CPU, memory and allocation, a Sampler, ctl_status."""

import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time

from .common import log

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Procs:
    """Servers and helpers started by this run, by name."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.live = {}          # name -> (Popen, pidfile or None)

    def path(self, name, ext):
        return os.path.join(self.tmp, "%s.%s" % (name, ext))

    def start(self, name, argv, wait_paths=(), env=None, pidfile=None,
              timeout=30):
        """Start argv (foreground) logging to NAME.log; wait for the pid
        file and every path in wait_paths to exist."""
        if name in self.live:
            raise RuntimeError("%s already running" % name)
        for p in list(wait_paths) + ([pidfile] if pidfile else []):
            if os.path.lexists(p):
                os.unlink(p)            # stale socket or pid file
        logf = open(self.path(name, "log"), "ab")
        logf.write(("\n#### %s\n" % " ".join(map(shlex.quote, argv))).encode())
        logf.flush()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=logf, env=env)
        logf.close()
        self.live[name] = (p, pidfile)
        deadline = time.monotonic() + timeout
        need = list(wait_paths) + ([pidfile] if pidfile else [])
        while True:
            if all(os.path.exists(x) and (x != pidfile or os.path.getsize(x))
                   for x in need):
                return p
            if p.poll() is not None or time.monotonic() > deadline:
                self.stop(name)
                raise RuntimeError("%s did not start:\n%s"
                                   % (name, self.tail(name)))
            time.sleep(0.01)

    def pid(self, name):
        p, pidfile = self.live[name]
        if pidfile:
            with open(pidfile) as f:
                return int(f.read().split()[0])
        return p.pid

    def stop(self, name, sig=signal.SIGTERM, timeout=30):
        if name not in self.live:
            return
        p, pidfile = self.live.pop(name)
        pid = p.pid
        if pidfile and os.path.exists(pidfile) and os.path.getsize(pidfile):
            with open(pidfile) as f:
                pid = int(f.read().split()[0])
        if p.poll() is None:
            try:
                os.kill(pid, sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                p.wait()
            except ProcessLookupError:
                pass
        if pidfile and os.path.exists(pidfile):
            os.unlink(pidfile)

    def stop_all(self):
        for name in list(self.live):
            try:
                self.stop(name, timeout=10)
            except Exception as e:          # keep going: stop the others
                log("stopping %s: %s" % (name, e))

    def tail(self, name, n=15):
        try:
            with open(self.path(name, "log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def proc_cpu(pid):
    """utime+stime in seconds and VmHWM in KiB of a live process."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
    hwm = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return cpu, hwm


def allocated(path):
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


class Sampler(threading.Thread):
    """Call fn() every interval seconds, keeping (t - t0, value)."""

    def __init__(self, fn, t0, interval=0.2):
        super().__init__(daemon=True)
        self.fn, self.t0, self.interval = fn, t0, interval
        self.samples = []
        self.halt = threading.Event()
        self.start()

    def run(self):
        while not self.halt.is_set():
            try:
                v = self.fn()
            except Exception:
                v = None
            if v is not None:
                self.samples.append((round(time.monotonic() - self.t0, 3), v))
            self.halt.wait(self.interval)

    def stop(self):
        self.halt.set()
        self.join()
        return self.samples


def ctl_status(sock):
    """One status request on the control socket (same as relocatectl
    status --json, without a fork every 0.2 s)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(sock)
        s.sendall(b"status\n")
        buf = b""
        while not buf.endswith(b"\n"):
            d = s.recv(4096)
            if not d:
                break
            buf += d
    finally:
        s.close()
    return json.loads(buf)
