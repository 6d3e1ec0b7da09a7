#!/usr/bin/python3
"""Benchmarks for nbdkit-relocate (run through bench/run; see README.md).

Every server is started here in the foreground (nbdkit -f, so its
messages reach its log), on a unix socket in a private temp dir, with a
pid file; each is stopped by the pid in its own pid file, and any still
running at exit (also on ^C) is stopped the same way.
"""

import argparse
import bisect
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROFILES = {
    "full": dict(dense=2 * GiB, sparse=16 * GiB, sparse_data=1 * GiB,
                 seq=1 * GiB, region=256 * MiB, fio_runtime=10,
                 scan_default_cap=30, reps=3),
    "quick": dict(dense=256 * MiB, sparse=2 * GiB, sparse_data=128 * MiB,
                  seq=128 * MiB, region=32 * MiB, fio_runtime=3,
                  scan_default_cap=8, reps=1),
}
SCENARIOS = ["dense", "sparse", "vmview", "firsttouch", "after"]


def log(*a):
    print("[%s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- processes

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


def data_extents(path):
    """[(start, end)] of the ranges of path that are not holes."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, off = os.fstat(fd).st_size, 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break                   # ENXIO: only a hole is left
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, h))
            off = h
    finally:
        os.close(fd)
    return out


def settle():
    """Write back dirty pages left by the previous step (copies, images,
    fio writes), so that they do not compete with the next measurement."""
    os.sync()
    time.sleep(0.2)


def warm(path):
    """Read path into the page cache (the filter writes fetched data
    with O_DIRECT, so a fresh local file is not cached)."""
    with open(path, "rb") as f:
        for s, e in data_extents(path):
            f.seek(s)
            while s < e:
                n = len(f.read(min(16 * MiB, e - s)))
                if not n:
                    break
                s += n


def parse_stats(path):
    """Bytes and requests read, from nbdkit-stats-filter's statsfile."""
    units = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": 1 << 40}
    out = {"read_bytes": 0, "read_ops": 0}
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r"read: (\d+) ops, [\d.]+ s, ([\d.]+) (\w+)", line)
                if m:
                    out = {"read_ops": int(m.group(1)),
                           "read_bytes": int(float(m.group(2))
                                             * units[m.group(3)])}
    except OSError:
        out = {"read_bytes": None, "read_ops": None}
    return out


# ---------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args):
        self.args = args
        self.prof = dict(PROFILES["quick" if args.quick else "full"])
        self.reps = args.reps or self.prof["reps"]
        self.tmp = tempfile.mkdtemp(prefix="relocate-bench.",
                                    dir=args.tmpdir)
        self.procs = Procs(self.tmp)
        self.relocate_args = shlex.split(os.environ.get("RELOCATE_ARGS", ""))
        self.wan_args = shlex.split(os.environ.get("WAN_ARGS",
                                                   "rdelay=20ms rate=1G"))
        self.rtt = self._rdelay_seconds()
        # A snapshot of the filter and relocatectl: another build may
        # replace them during the run.
        self.filter = os.path.join(self.tmp, "nbdkit-relocate-filter.so")
        shutil.copy(os.environ["FILTER"], self.filter)
        self.ctl = os.path.join(self.tmp, "relocatectl")
        shutil.copy(os.environ["RELOCATECTL"], self.ctl)
        self.qsd = shutil.which("qemu-storage-daemon")
        # what is measured, as of the start
        self.git = subprocess.run(["git", "describe", "--always", "--dirty"],
                                  capture_output=True, text=True,
                                  cwd=TOP).stdout.strip() or None
        self.results = {}
        self.timelines = {}

    def _rdelay_seconds(self):
        for a in self.wan_args:
            m = re.match(r"(?:r?delay)=([\d.]+)(ms|us|s)?$", a)
            if m:
                scale = {"ms": 1e-3, "us": 1e-6, "s": 1, None: 1}[m.group(2)]
                return float(m.group(1)) * scale
        return None

    def sock(self, name):
        return os.path.join(self.tmp, name + ".sock")

    def uri(self, name):
        return "nbd+unix:///?socket=" + self.sock(name)

    # -------------------------------------------------- servers

    def nbdkit(self, name, args, env=None, extra_wait=()):
        argv = ["nbdkit", "-f", "--log=stderr", "-U", self.sock(name),
                "-P", self.procs.path(name, "pid")] + args
        return self.procs.start(name, argv, env=env,
                                wait_paths=[self.sock(name)] + list(extra_wait),
                                pidfile=self.procs.path(name, "pid"))

    def start_source(self, img, net, stats=True):
        """The old host: nbdkit file IMG, behind the WAN model if wan.
        Always the same socket: the relocate bitmap records it."""
        filters = ["--filter=stats"] if stats else []
        params = ["statsfile=" + self.procs.path("src", "stats")] if stats else []
        if net == "wan":
            filters += ["--filter=delay", "--filter=rate"]
            params += self.wan_args
        if stats and os.path.exists(self.procs.path("src", "stats")):
            os.unlink(self.procs.path("src", "stats"))
        self.nbdkit("src", filters + ["file", img] + params)

    def stop_source(self):
        """Stop the source; its read statistics (written at exit)."""
        self.procs.stop("src")
        return parse_stats(self.procs.path("src", "stats"))

    def start_dest(self, name, local, start="immediate", extra=()):
        ctl = self.procs.path(name, "ctl")
        args = ["--filter=" + self.filter, "nbd", "socket=" + self.sock("src"),
                "relocate-file=" + local, "relocate-control=" + ctl]
        if start:
            args.append("relocate-start=" + start)
        args += list(extra) + self.relocate_args
        return self.nbdkit(name, args, extra_wait=[ctl])

    def relocatectl(self, name, *cmd):
        subprocess.run([self.ctl, cmd[0], self.procs.path(name, "ctl")]
                       + list(cmd[1:]), check=True, stdout=subprocess.DEVNULL)

    def status(self, name):
        return ctl_status(self.procs.path(name, "ctl"))

    # -------------------------------------------------- images

    def make_dense(self, path, size):
        log("making %s: %d MiB of random data" % (os.path.basename(path),
                                                   size // MiB))
        with open(path, "wb") as f:
            for _ in range(0, size, 16 * MiB):
                f.write(os.urandom(16 * MiB))

    def make_sparse(self, path, size, data, seed=42):
        """SIZE bytes holding DATA bytes of random data in scattered
        extents of 64K to 4M at 64K-aligned places, the rest holes."""
        log("making %s: %d GiB holding %d MiB in scattered extents"
            % (os.path.basename(path), size // GiB, data // MiB))
        rng = random.Random(seed)
        starts, ends, total = [], [], 0
        with open(path, "wb") as f:
            f.truncate(size)
            while total < data:
                n = min(rng.choice([64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB]),
                        data - total)
                off = rng.randrange(0, (size - n) // (64 * KiB)) * 64 * KiB
                i = bisect.bisect(starts, off)
                # keep at least 64K of hole between extents
                if i and ends[i - 1] + 64 * KiB > off:
                    continue
                if i < len(starts) and off + n + 64 * KiB > starts[i]:
                    continue
                starts.insert(i, off)
                ends.insert(i, off + n)
                f.seek(off)
                f.write(os.urandom(n))
                total += n
        return len(starts)

    def same(self, a, b):
        """a and b hold the same bytes (holes compared as zeroes; only
        ranges that hold data in either file are read)."""
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        ranges = sorted(data_extents(a) + data_extents(b))
        merged = []
        for s, e in ranges:
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        with open(a, "rb") as fa, open(b, "rb") as fb:
            for s, e in merged:
                fa.seek(s)
                fb.seek(s)
                while s < e:
                    n = min(8 * MiB, e - s)
                    if fa.read(n) != fb.read(n):
                        return False
                    s += n
        return True

    def rm(self, *paths):
        for p in paths:
            if os.path.exists(p):
                os.unlink(p)

    # -------------------------------------------------- copy methods

    def run_relocate(self, img, net, local, size, verify=False):
        """Wall time from starting nbdkit until relocatectl wait returns."""
        self.rm(local, local + ".bitmap")
        settle()
        self.start_source(img, net)
        t0 = time.monotonic()
        self.start_dest("dst", local)
        ctl = self.procs.path("dst", "ctl")
        def sample():
            st = ctl_status(ctl)
            return (st["present_bytes"], st["fetched_background_bytes"]
                    + st["fetched_demand_bytes"], st["state"])
        samp = Sampler(sample, t0)
        subprocess.run([self.ctl, "wait", ctl], check=True)
        t = time.monotonic() - t0
        cpu, hwm = proc_cpu(self.procs.pid("dst"))
        st = self.status("dst")
        tl = samp.stop()
        full = [x[0] for x in tl if x[1][0] >= size]
        tl = [(x[0], x[1][0], x[1][1]) for x in tl]
        tl.append((round(t, 3), st["present_bytes"],
                   st["fetched_background_bytes"] + st["fetched_demand_bytes"]))
        self.procs.stop("dst")
        stats = self.stop_source()
        r = dict(time_s=t, cpu_s=cpu, rss_kib=hwm,
                 all_present_s=full[0] if full else None,
                 src_read_bytes=stats["read_bytes"],
                 src_read_ops=stats["read_ops"],
                 fetched_bytes=st["fetched_background_bytes"]
                 + st["fetched_demand_bytes"],
                 fetched_demand_bytes=st["fetched_demand_bytes"],
                 skipped_zero_bytes=st["skipped_zero_bytes"],
                 local_allocated=allocated(local),
                 filter_elapsed_s=st.get("elapsed_seconds"),
                 state=st["state"], timeline=tl)
        if verify:
            r["verified"] = self.same(img, local)
        return r

    def run_nbdcopy(self, img, net, out, verify=False):
        self.rm(out)
        settle()
        self.start_source(img, net)
        tfile = os.path.join(self.tmp, "nbdcopy.time")
        t0 = time.monotonic()
        samp = Sampler(lambda: allocated(out), t0)
        subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", tfile,
                        "nbdcopy", "--flush", self.uri("src"), out],
                       check=True)
        t = time.monotonic() - t0
        tl = samp.stop()
        tl.append((round(t, 3), allocated(out)))
        stats = self.stop_source()
        with open(tfile) as f:
            e, u, s, m = f.read().split()[-4:]
        r = dict(time_s=t, cpu_s=float(u) + float(s), rss_kib=int(m),
                 src_read_bytes=stats["read_bytes"],
                 src_read_ops=stats["read_ops"],
                 local_allocated=allocated(out), timeline=tl)
        if verify:
            r["verified"] = self.same(img, out)
        self.rm(out)
        return r

    def run_scan_cache(self, img, net, size, tuned, cap):
        """nbdkit --filter=scan --filter=cache cache-on-read=true in front
        of the nbd plugin, one idle client connected (the scan filter
        only prefetches while a client is connected).  Done when the
        cache file (unlinked, found through /proc/PID/fd) has every
        byte allocated: the image is dense random data.  Gives up after
        cap seconds and reports the projected time at the rate so far."""
        cdir = os.path.join(self.tmp, "cachedir")
        shutil.rmtree(cdir, ignore_errors=True)
        os.mkdir(cdir)
        settle()
        self.start_source(img, net)
        env = dict(os.environ, TMPDIR=cdir)
        args = ["--filter=scan", "--filter=cache", "nbd",
                "socket=" + self.sock("src"), "cache-on-read=true"]
        if tuned:
            args.append("cache-min-block-size=2M")
        t0 = time.monotonic()
        self.nbdkit("cache", args, env=env)
        pid = self.procs.pid("cache")
        client = subprocess.Popen(
            ["/usr/bin/python3", "-c",
             "import nbd,sys; h=nbd.NBD(); h.connect_unix(sys.argv[1]); "
             "sys.stdin.read()", self.sock("cache")],
            stdin=subprocess.PIPE)

        def cached():
            for fd in os.listdir("/proc/%d/fd" % pid):
                p = "/proc/%d/fd/%s" % (pid, fd)
                try:
                    if os.readlink(p).startswith(cdir):
                        return os.stat(p).st_blocks * 512
                except OSError:
                    pass
            return 0

        samp = Sampler(cached, t0, interval=0.05)
        done = False
        while time.monotonic() - t0 < cap:
            if samp.samples and samp.samples[-1][1] >= size:
                done = True
                break
            time.sleep(0.02)
        t = samp.samples[-1][0] if done else time.monotonic() - t0
        last = samp.samples[-1][1] if samp.samples else 0
        cpu, hwm = proc_cpu(pid)
        tl = samp.stop()
        tl = tl[::4] + tl[-1:]          # thin the 0.05 s samples to 0.2 s
        client.stdin.close()
        client.wait()
        self.procs.stop("cache")
        stats = self.stop_source()
        shutil.rmtree(cdir, ignore_errors=True)
        r = dict(complete=done, time_s=t, cpu_s=cpu, rss_kib=hwm,
                 src_read_bytes=stats["read_bytes"],
                 src_read_ops=stats["read_ops"], cached_bytes=last,
                 timeline=tl)
        if not done:
            r["projected_s"] = t * size / last if last else None
        return r

    def run_qsd(self, img, net, size, cap=900):
        """qemu-storage-daemon: a qcow2 overlay whose backing file is the
        source over NBD, a copy-on-read node exported over NBD (what the
        VM would use), and a block-stream job pulling every block into
        the overlay; done when the job completes (it then drops the
        backing file: the source can go)."""
        ov = os.path.join(self.tmp, "qsd-overlay.qcow2")
        qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.rm(ov)
        backing = json.dumps({"driver": "raw", "file": {
            "driver": "nbd", "server": {"type": "unix",
                                        "path": self.sock("src")}}})
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u",
                        "-b", "json:" + backing, "-F", "raw", ov, str(size)],
                       check=True)
        settle()
        self.start_source(img, net)
        pidf = self.procs.path("qsd", "pid")
        t0 = time.monotonic()
        self.procs.start("qsd", [
            self.qsd,
            "--blockdev", "driver=qcow2,node-name=top,file.driver=file,"
                          "file.filename=" + ov,
            "--blockdev", "driver=copy-on-read,node-name=cor,file=top",
            "--nbd-server", "addr.type=unix,addr.path=" + self.sock("qsd"),
            "--export", "type=nbd,id=exp,node-name=cor,name=,writable=on",
            "--chardev", "socket,id=qmp,path=%s,server=on,wait=off" % qmp_path,
            "--monitor", "chardev=qmp", "--pidfile", pidf],
            wait_paths=[qmp_path, self.sock("qsd")], pidfile=pidf)
        s = socket.socket(socket.AF_UNIX)
        s.connect(qmp_path)
        f = s.makefile("rw")
        events = []

        def cmd(c, **a):
            f.write(json.dumps({"execute": c, "arguments": a}) + "\n")
            f.flush()
            while True:
                m = json.loads(f.readline())
                if "event" in m:
                    events.append(m)
                    continue
                if "error" in m:
                    raise RuntimeError("QMP %s: %s" % (c, m["error"]))
                return m["return"]

        json.loads(f.readline())        # greeting
        cmd("qmp_capabilities")
        cmd("block-stream", **{"job-id": "stream", "device": "top"})
        tl, done = [], False
        while time.monotonic() - t0 < cap:
            jobs = cmd("query-block-jobs")
            now = round(time.monotonic() - t0, 3)
            if any(e["event"] == "BLOCK_JOB_COMPLETED" for e in events):
                done = True
                break
            if jobs:
                tl.append((now, jobs[0]["offset"]))
            time.sleep(0.1)
        t = time.monotonic() - t0
        tl = tl[::2] + [(round(t, 3), size if done else tl[-1][1] if tl else 0)]
        cpu, hwm = proc_cpu(self.procs.pid("qsd"))
        s.close()
        self.procs.stop("qsd")
        stats = self.stop_source()
        r = dict(complete=done, time_s=t, cpu_s=cpu, rss_kib=hwm,
                 src_read_bytes=stats["read_bytes"],
                 src_read_ops=stats["read_ops"],
                 local_allocated=allocated(ov), timeline=tl)
        self.rm(ov)
        return r

    # -------------------------------------------------- fio

    def fio(self, uri, rw, bs, iodepth, size, runtime=None, offset=0):
        out = os.path.join(self.tmp, "fio.json")
        argv = ["fio", "--name=bench", "--ioengine=nbd", "--uri=" + uri,
                "--rw=" + rw, "--bs=%d" % bs, "--iodepth=%d" % iodepth,
                "--offset=%d" % offset, "--size=%d" % size,
                "--lat_percentiles=1", "--randseed=%d" % random.randrange(1 << 30),
                "--output-format=json", "--output=" + out]
        if runtime:
            argv += ["--runtime=%d" % runtime, "--time_based"]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            s = f.read()
        job = json.loads(s[s.index("{"):])["jobs"][0]
        d = job["read" if "read" in rw else "write"]
        pct = d["lat_ns"].get("percentile") or d["clat_ns"]["percentile"]
        return dict(iops=d["iops"], bw_bytes=d["bw_bytes"],
                    io_bytes=d["io_bytes"], lat_mean_us=d["lat_ns"]["mean"] / 1e3,
                    p50_us=pct["50.000000"] / 1e3, p99_us=pct["99.000000"] / 1e3)

    # -------------------------------------------------- scenarios

    def methods_dense(self):
        m = ["relocate", "nbdcopy", "scan+cache (2M blocks)",
             "scan+cache (defaults)"]
        if self.qsd:
            m.append("qsd block-stream")
        return m

    def scenario_dense(self):
        size = self.prof["dense"]
        img = os.path.join(self.tmp, "dense.img")
        self.dense_img = img
        self.make_dense(img, size)
        local = os.path.join(self.tmp, "dense-local.img")
        res = {}
        for rep in range(self.reps):
            for net in ("wan", "lan"):
                for m in self.methods_dense():
                    log("dense %s rep %d: %s" % (net, rep + 1, m))
                    if m == "relocate":
                        r = self.run_relocate(img, net, local, size,
                                              verify=rep == 0)
                    elif m == "nbdcopy":
                        r = self.run_nbdcopy(img, net,
                                             os.path.join(self.tmp, "copy.img"),
                                             verify=rep == 0)
                    elif m.startswith("scan+cache"):
                        tuned = "2M" in m
                        cap = 600 if tuned else self.prof["scan_default_cap"]
                        r = self.run_scan_cache(img, net, size, tuned, cap)
                    else:
                        r = self.run_qsd(img, net, size)
                    log("  %.2f s%s" % (r["time_s"], "" if r.get("complete", True)
                                       else " (gave up; projected %.0f s)"
                                       % (r.get("projected_s") or 0)))
                    res.setdefault(net, {}).setdefault(m, []).append(r)
        self.results["dense"] = dict(size=size, runs=res)
        # dense-local.img (complete, with its bitmap) is left for "after".

    def scenario_sparse(self):
        size, data = self.prof["sparse"], self.prof["sparse_data"]
        img = os.path.join(self.tmp, "sparse.img")
        extents = self.make_sparse(img, size, data)
        local = os.path.join(self.tmp, "sparse-local.img")
        res = {}
        for rep in range(self.reps):
            for net in ("wan", "lan"):
                for m in ("relocate", "nbdcopy"):
                    log("sparse %s rep %d: %s" % (net, rep + 1, m))
                    if m == "relocate":
                        r = self.run_relocate(img, net, local, size,
                                              verify=rep == 0)
                        self.rm(local, local + ".bitmap")
                    else:
                        r = self.run_nbdcopy(img, net,
                                             os.path.join(self.tmp, "copy.img"),
                                             verify=rep == 0)
                    log("  %.2f s, %d MiB from the source, %d MiB allocated"
                        % (r["time_s"], (r["src_read_bytes"] or 0) // MiB,
                           r["local_allocated"] // MiB))
                    res.setdefault(net, {}).setdefault(m, []).append(r)
        self.results["sparse"] = dict(size=size, data=data, extents=extents,
                                      source_allocated=allocated(img),
                                      runs=res)
        self.rm(img)

    def need_dense(self):
        if not getattr(self, "dense_img", None):
            self.dense_img = os.path.join(self.tmp, "dense.img")
            self.make_dense(self.dense_img, self.prof["dense"])
        return self.dense_img

    def scenario_vmview(self):
        """fio 4K random reads (iodepth 1) on a present region while the
        background copy is paused, then while it runs."""
        img = self.need_dense()
        region, rt = self.prof["region"], self.prof["fio_runtime"]
        local = os.path.join(self.tmp, "vmview-local.img")
        runs = []
        for rep in range(self.reps):
            log("vmview rep %d" % (rep + 1))
            self.rm(local, local + ".bitmap")
            settle()
            self.start_source(img, "wan", stats=False)
            self.start_dest("dst", local, start="manual")
            self.relocatectl("dst", "pause")
            self.relocatectl("dst", "start")
            self.fio(self.uri("dst"), "read", 1 * MiB, 8, region)
            # again, from the local file now: the fetch wrote with
            # O_DIRECT, and the paused run must not warm the page cache
            # for the running one
            self.fio(self.uri("dst"), "read", 1 * MiB, 8, region)
            st = self.status("dst")
            r = dict(region_present_before=st["present_bytes"])
            r["paused"] = self.fio(self.uri("dst"), "randread", 4 * KiB, 1,
                                   region, rt)
            ctl = self.procs.path("dst", "ctl")
            t0 = time.monotonic()
            samp = Sampler(lambda: (lambda s: (s["present_bytes"], s["state"]))
                           (ctl_status(ctl)), t0, interval=0.2)
            time.sleep(0.3)
            self.relocatectl("dst", "resume")
            ta = time.monotonic() - t0
            r["copying"] = self.fio(self.uri("dst"), "randread", 4 * KiB, 1,
                                    region, rt)
            tb = time.monotonic() - t0
            tl = samp.stop()
            # copy throughput while fio ran, until the copy completed
            win = [(t, p) for t, (p, s) in tl if ta <= t <= tb]
            act = [(t, p) for t, (p, s) in tl
                   if ta <= t <= tb and s != "complete"]
            done = [(t, p) for t, (p, s) in tl if s == "complete"]
            end = done[0] if done and done[0][0] <= tb else (win[-1] if win else None)
            start = act[0] if act else None
            if start and end and end[0] > start[0]:
                r["copy_mib_s"] = (end[1] - start[1]) / MiB / (end[0] - start[0])
                r["copy_active_s"] = end[0] - start[0]
            else:
                r["copy_mib_s"] = None
            r["fio_window_s"] = tb - ta
            self.procs.stop("dst")
            self.procs.stop("src")
            runs.append(r)
            log("  paused p50 %.0f us p99 %.0f us; copying p50 %.0f us "
                "p99 %.0f us; copy %.1f MiB/s"
                % (r["paused"]["p50_us"], r["paused"]["p99_us"],
                   r["copying"]["p50_us"], r["copying"]["p99_us"],
                   r["copy_mib_s"] or 0))
        self.rm(local, local + ".bitmap")
        self.results["vmview"] = dict(region=region, runtime=rt, runs=runs)

    def scenario_firsttouch(self):
        """Reads of absent data (background copy off) vs the same fio
        straight at the delayed source; each test on a fresh relocation
        and a fresh source (so the rate filter's bucket is full for both)."""
        img, size = self.need_dense(), self.prof["dense"]
        rt, seq = self.prof["fio_runtime"], self.prof["seq"]
        local = os.path.join(self.tmp, "firsttouch-local.img")
        tests = {
            "rand4k_qd1": ("randread", 4 * KiB, 1, size, rt),
            "rand4k_qd16": ("randread", 4 * KiB, 16, size, rt),
            "seq64k_qd1": ("read", 64 * KiB, 1, seq, rt),
            "seq1m_qd1": ("read", 1 * MiB, 1, seq, None),
            "seq1m_qd8": ("read", 1 * MiB, 8, seq, None),
        }
        res = {}
        for rep in range(self.reps):
            for tname, (rw, bs, qd, sz, runtime) in tests.items():
                for target in ("relocate", "direct"):
                    self.rm(local, local + ".bitmap")
                    settle()
                    self.start_source(img, "wan", stats=False)
                    if target == "relocate":
                        self.start_dest("dst", local,
                                        extra=["relocate-background=false"])
                        uri = self.uri("dst")
                    else:
                        uri = self.uri("src")
                    r = self.fio(uri, rw, bs, qd, sz, runtime)
                    if target == "relocate":
                        st = self.status("dst")
                        r["fetched_demand_bytes"] = st["fetched_demand_bytes"]
                        r["block_size"] = st["block_size"]
                        self.procs.stop("dst")
                    self.procs.stop("src")
                    log("firsttouch rep %d %s %s: %.0f IOPS, mean %.0f us, "
                        "%.1f MiB/s" % (rep + 1, tname, target, r["iops"],
                                        r["lat_mean_us"], r["bw_bytes"] / MiB))
                    res.setdefault(tname, {}).setdefault(target, []).append(r)
        self.rm(local, local + ".bitmap")
        self.results["firsttouch"] = dict(
            runtime=rt, seq=seq, rtt_s=self.rtt,
            iodepth16_bound_iops=16 / self.rtt if self.rtt else None,
            runs=res)

    def scenario_after(self):
        """The completed relocation (restarted over its files, the source
        not running) vs nbdkit file on the same local file."""
        local = os.path.join(self.tmp, "dense-local.img")
        size, rt = self.prof["dense"], self.prof["fio_runtime"]
        if not os.path.exists(local + ".bitmap"):
            img = self.need_dense()
            log("after: relocating over the lan first")
            self.run_relocate(img, "lan", local, size)
        tests = {"randread4k_qd16": ("randread", 4 * KiB),
                 "randwrite64k_qd16": ("randwrite", 64 * KiB)}
        res = {}
        for rep in range(self.reps):
            for tname, (rw, bs) in tests.items():
                for target in ("relocate", "file"):
                    if target == "relocate":
                        self.start_dest("dst", local, start=None)
                        st = self.status("dst")
                        if st["state"] != "complete":
                            raise RuntimeError("after: relocation is %s"
                                               % st["state"])
                        uri = self.uri("dst")
                    else:
                        self.nbdkit("plain", ["file", local])
                        uri = self.uri("plain")
                    warm(local)
                    settle()
                    r = self.fio(uri, rw, bs, 16, size, rt)
                    self.procs.stop("dst" if target == "relocate" else "plain")
                    log("after rep %d %s %s: %.0f IOPS, p99 %.0f us"
                        % (rep + 1, tname, target, r["iops"], r["p99_us"]))
                    res.setdefault(tname, {}).setdefault(target, []).append(r)
        self.results["after"] = dict(runtime=rt, runs=res)

    # -------------------------------------------------- output

    def run(self):
        t_start = time.monotonic()
        only = self.args.only.split(",") if self.args.only else SCENARIOS
        for s in only:
            if s not in SCENARIOS:
                raise SystemExit("unknown scenario %s (of %s)"
                                 % (s, ",".join(SCENARIOS)))
        for s in SCENARIOS:
            if s in only:
                getattr(self, "scenario_" + s)()
        self.results["meta"] = self.meta(time.monotonic() - t_start)
        os.makedirs(self.args.out, exist_ok=True)
        with open(os.path.join(self.args.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1)
        md = report(self.results)
        with open(os.path.join(self.args.out, "results.md"), "w") as f:
            f.write(md)
        try:
            plot(self.results, os.path.join(self.args.out, "progress.png"))
        except Exception as e:
            log("plot failed: %s" % e)
        print(md)
        log("results in %s (%.0f s)" % (self.args.out,
                                         time.monotonic() - t_start))

    def meta(self, elapsed):
        def out(*c):
            try:
                return subprocess.run(c, capture_output=True, text=True,
                                      cwd=TOP).stdout.strip()
            except OSError:
                return None
        return dict(
            profile="quick" if self.args.quick else "full", reps=self.reps,
            elapsed_s=elapsed, date=time.strftime("%Y-%m-%d %H:%M:%S"),
            relocate_args=self.relocate_args, wan_args=self.wan_args,
            filter=os.environ["FILTER"],
            filter_sha256=out("sha256sum", self.filter).split()[0],
            git=self.git,
            nbdkit=out("nbdkit", "--version"),
            qemu_storage_daemon=bool(self.qsd), nproc=os.cpu_count(),
            **{k: v for k, v in self.prof.items() if k != "reps"})


# ---------------------------------------------------------------- report

def fmt(x, spec="%.2f"):
    return "n/a" if x is None else spec % x


def ratio(a, b):
    return None if a is None or not b else a / b


def med(runs, key):
    return median([r.get(key) for r in runs])


def report(R):
    m = R["meta"]
    L = ["# nbdkit-relocate benchmark (%s, %d rep%s, median)\n"
         % (m["profile"], m["reps"], "" if m["reps"] == 1 else "s"),
         "%s, git %s, nbdkit %s, WAN = delay+rate filters `%s`, "
         "RELOCATE_ARGS=`%s`. MiB/s = 2^20 bytes/s; `1G` in the rate "
         "filter is 2^30 bit/s = 128 MiB/s.\n"
         % (m["date"], m["git"], m["nbdkit"], " ".join(m["wan_args"]),
            " ".join(m["relocate_args"]))]

    if "dense" in R:
        D = R["dense"]
        L.append("## 1. Dense random image, %d MiB\n" % (D["size"] // MiB))
        L.append("Time to a complete local copy.  ratio = time / nbdcopy's "
                 "time (nbdcopy is the limit: a plain copy, no serving).\n")
        L.append("| net | method | time s | MiB/s | ratio | CPU s | peak RSS MiB | read at source MiB |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for net, methods in D["runs"].items():
            base = med(methods.get("nbdcopy", []), "time_s")
            for name, runs in methods.items():
                t = med(runs, "time_s")
                note = ""
                if not all(r.get("complete", True) for r in runs):
                    t = med(runs, "projected_s")
                    note = " (projected: gave up after %.0f s)" % med(runs, "time_s")
                if any(r.get("verified") is False for r in runs):
                    note += " **DATA MISMATCH**"
                L.append("| %s | %s%s | %s | %s | %s | %s | %s | %s |" % (
                    net, name, note, fmt(t), fmt(D["size"] / MiB / t if t else None, "%.1f"),
                    fmt(ratio(t, base)), fmt(med(runs, "cpu_s")),
                    fmt((med(runs, "rss_kib") or 0) / 1024, "%.0f"),
                    fmt((med(runs, "src_read_bytes") or 0) / MiB, "%.0f")))
        for net, methods in D["runs"].items():
            runs = methods.get("relocate", [])
            ap = med(runs, "all_present_s")
            if ap is not None:
                L.append("\n%s: relocate had every block present at %.2f s "
                         "(status poll every 0.2 s); relocatectl wait returned "
                         "at %.2f s." % (net, ap, med(runs, "time_s")))
        L.append("")

    if "sparse" in R:
        S = R["sparse"]
        L.append("## 2. Sparse image, %d MiB holding %d MiB in %d extents\n"
                 % (S["size"] // MiB, S["data"] // MiB, S["extents"]))
        L.append("| net | method | time s | ratio | fetched MiB | skipped zero MiB | read at source MiB | local du MiB | verified |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for net, methods in S["runs"].items():
            base = med(methods.get("nbdcopy", []), "time_s")
            for name, runs in methods.items():
                t = med(runs, "time_s")
                L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    net, name, fmt(t), fmt(ratio(t, base)),
                    fmt(med(runs, "fetched_bytes") / MiB if "fetched_bytes" in runs[0] else None, "%.0f"),
                    fmt(med(runs, "skipped_zero_bytes") / MiB if "skipped_zero_bytes" in runs[0] else None, "%.0f"),
                    fmt((med(runs, "src_read_bytes") or 0) / MiB, "%.0f"),
                    fmt(med(runs, "local_allocated") / MiB, "%.0f"),
                    {True: "yes", False: "**NO**", None: "-"}[runs[0].get("verified")]))
        L.append("\nSource image allocated: %d MiB.\n"
                 % (S["source_allocated"] // MiB))

    if "vmview" in R:
        V = R["vmview"]
        runs = V["runs"]
        L.append("## 3. VM view during the relocation (wan)\n")
        L.append("fio 4 KiB random reads, iodepth 1, %d s, on a %d MiB region "
                 "already present; background copy paused vs running.\n"
                 % (V["runtime"], V["region"] // MiB))
        L.append("| copy | p50 us | p99 us | mean us | IOPS | copy MiB/s meanwhile |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for k in ("paused", "copying"):
            rs = [r[k] for r in runs]
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                k, fmt(med(rs, "p50_us"), "%.0f"), fmt(med(rs, "p99_us"), "%.0f"),
                fmt(med(rs, "lat_mean_us"), "%.0f"), fmt(med(rs, "iops"), "%.0f"),
                fmt(med(runs, "copy_mib_s"), "%.1f") if k == "copying" else "-"))
        L.append("\nratio running/paused: p50 %s, p99 %s; the copy was active "
                 "for %s s of the %s s fio window.\n" % (
                     fmt(ratio(med([r["copying"] for r in runs], "p50_us"),
                               med([r["paused"] for r in runs], "p50_us"))),
                     fmt(ratio(med([r["copying"] for r in runs], "p99_us"),
                               med([r["paused"] for r in runs], "p99_us"))),
                     fmt(med(runs, "copy_active_s"), "%.1f"),
                     fmt(med(runs, "fio_window_s"), "%.1f")))

    if "firsttouch" in R:
        F = R["firsttouch"]
        L.append("## 4. First touch: reads of absent data (wan, background copy off)\n")
        L.append("| test | metric | relocate | direct from source | ratio | bound |")
        L.append("|---|---|---:|---:|---:|---:|")
        for tname, (metric, key, scale, spec) in {
                "rand4k_qd1": ("mean latency us", "lat_mean_us", 1, "%.0f"),
                "rand4k_qd16": ("IOPS", "iops", 1, "%.0f"),
                "seq64k_qd1": ("MiB/s", "bw_bytes", 1 / MiB, "%.1f"),
                "seq1m_qd1": ("MiB/s", "bw_bytes", 1 / MiB, "%.1f"),
                "seq1m_qd8": ("MiB/s", "bw_bytes", 1 / MiB, "%.1f")}.items():
            if tname not in F["runs"]:
                continue
            a = med(F["runs"][tname]["relocate"], key)
            b = med(F["runs"][tname]["direct"], key)
            bound = "-"
            if tname == "rand4k_qd16" and F["iodepth16_bound_iops"]:
                bound = "16/RTT = %.0f" % F["iodepth16_bound_iops"]
            if tname == "rand4k_qd1" and F["rtt_s"]:
                bound = "RTT = %.0f" % (F["rtt_s"] * 1e6)
            label = tname if not tname.startswith("seq") else \
                "seq %s %s, %d MiB%s" % (
                    "64K" if "64k" in tname else "1M", tname[-3:],
                    F["seq"] // MiB,
                    " (or %d s)" % F["runtime"] if "64k" in tname else "")
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                label, metric, fmt(a * scale if a is not None else None, spec),
                fmt(b * scale if b is not None else None, spec),
                fmt(ratio(a, b)), bound))
        L.append("")
        for tname in ("rand4k_qd1", "rand4k_qd16"):
            runs = F["runs"].get(tname, {}).get("relocate", [])
            dm, io = med(runs, "fetched_demand_bytes"), med(runs, "io_bytes")
            if dm and io:
                bsz = runs[0]["block_size"]
                L.append("%s: %.0f MiB fetched on demand for %.1f MiB read "
                         "(x%.1f); %.0f%% of the reads found their block "
                         "already fetched (%d KiB blocks)." % (
                             tname, dm / MiB, io / MiB, dm / io,
                             max(0, 100 * (1 - (dm / bsz) / (io / 4096))),
                             bsz // KiB))
        L.append("")

    if "after" in R:
        A = R["after"]
        L.append("## 5. After completion: relocate (source gone) vs nbdkit file, same local file\n")
        L.append("| test | relocate IOPS | file IOPS | ratio | relocate p99 us | file p99 us |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for tname, t in A["runs"].items():
            a, b = med(t["relocate"], "iops"), med(t["file"], "iops")
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                tname, fmt(a, "%.0f"), fmt(b, "%.0f"), fmt(ratio(a, b)),
                fmt(med(t["relocate"], "p99_us"), "%.0f"),
                fmt(med(t["file"], "p99_us"), "%.0f")))
        L.append("")
    L.append("Whole run: %.0f s.\n" % m["elapsed_s"])
    return "\n".join(L)


def plot(R, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = []
    for scen in ("dense", "sparse"):
        if scen in R:
            for net in R[scen]["runs"]:
                panels.append((scen, net))
    if not panels:
        return
    cols = 2
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(12, 4.2 * rows), squeeze=False)
    styles = {"relocate": "C0", "nbdcopy": "C1", "scan+cache (2M blocks)": "C2",
              "scan+cache (defaults)": "C3", "qsd block-stream": "C4"}
    for ax, (scen, net) in zip(axes.flat, panels):
        size = R[scen]["size"]
        ax_present = ax
        if scen == "sparse":
            # data on the left axis; relocate's present_bytes (mostly
            # holes, marked present at once) on the right
            ax_present = ax.twinx()
            ax_present.set_ylabel("GiB present (relocate)", color="C0")
        for name, runs in R[scen]["runs"][net].items():
            r = runs[0]
            tl = r.get("timeline") or []
            if not tl:
                continue
            xs = [0] + [x[0] for x in tl]
            ys = [0] + [x[1] / GiB for x in tl]
            if name == "relocate" and scen == "sparse":
                ax.plot(xs, [0] + [x[2] / GiB for x in tl], color="C0",
                        ls="--", label="relocate (fetched bytes)")
                ax_present.plot(xs, ys, color="C0", lw=0.8, alpha=0.6)
                ax_present.axhline(size / GiB, color="grey", lw=0.5, ls=":")
                ax.plot([r["time_s"]], [tl[-1][2] / GiB], marker="x",
                        color="C0", markersize=9)
                continue
            label = name
            if name == "nbdcopy":
                label += " (output allocated)"
            elif name.startswith("scan"):
                label += " (cache allocated)"
            elif name.startswith("qsd"):
                label += " (job offset)"
            else:
                label += " (present_bytes)"
            ax.plot(xs, ys, color=styles.get(name), label=label)
            end_t = r["time_s"]
            ax.plot([end_t], [ys[-1]], marker="x" if r.get("complete", True)
                    else "o", color=styles.get(name), markersize=9)
        if scen == "dense":
            ax.axhline(size / GiB, color="grey", lw=0.5, ls=":")
        ax.set_title("%s image (%d MiB), %s" % (scen, size // MiB, net))
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("GiB" if scen == "dense" else "GiB of data copied")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("progress (first repetition); x = done, o = gave up")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small images, 1 rep: a smoke run")
    ap.add_argument("--reps", type=int, help="repetitions (median taken)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"),
                    help="where results.md/json and progress.png go")
    ap.add_argument("--only", help="comma list of " + ",".join(SCENARIOS))
    ap.add_argument("--tmpdir", default=os.environ.get("BENCH_TMPDIR", "/var/tmp"),
                    help="where images go (needs ~3x the dense size free)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    b = Bench(args)
    log("temp dir %s" % b.tmp)

    def on_signal(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        b.run()
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
    except Exception:
        for name in list(b.procs.live):
            log("---- %s log:\n%s" % (name, b.procs.tail(name)))
        raise
    finally:
        b.procs.stop_all()
        if args.keep:
            log("kept %s" % b.tmp)
        else:
            shutil.rmtree(b.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
