"""Ways to copy the whole disk from the source, each timed until done, and the loop comparing them (scenarios 1, 2)."""

import json
import os
import shutil
import socket
import subprocess
import time

from .common import log, rm
from .images import same, settle
from .procs import Sampler, allocated, ctl_status, proc_cpu
from .servers import RELAYS


def relay_conns(b):
    """How many connections the relay served (counted from its log
    when the source stopped): None without a relay."""
    return b.relay_conns


# The methods measured on the relay models (bench/lib/relay.py): the
# filter with its default number of connections to the source and with
# one, nbdcopy with its default and with one.
RELAY_METHODS = ("relocate", "relocate connections=1", "nbdcopy",
                 "nbdcopy --connections=1")
# On wan-streams also the filter over TLS (source: --tls=require
# --tls-verify-peer; the filter's nbd plugin: tls=require), beside the
# plain runs: what encryption costs.
TLS_NET = "wan-streams"
TLS_METHOD = "relocate tls"


def relay_methods(net):
    """The methods measured on relay model net."""
    return RELAY_METHODS + ((TLS_METHOD,) if net == TLS_NET else ())


def compare(b, scen, methods, run_one, summary):
    """{net: {method: [result of every repetition]}}: run_one(method,
    net, rep) for every repetition, every network model of the run
    (b.nets), every method (methods(net)); logs summary(result) after
    each.  On a relay model, "relocate" is n/a if the filter has no
    relocate-connections parameter (it then has one connection, which
    "relocate connections=1" measures)."""
    res = {}
    for rep in range(b.reps):
        for net in b.nets:
            for m in methods(net):
                if m == "relocate" and net in RELAYS and not b.multiconn:
                    r = dict(na="the filter has no relocate-connections "
                             "parameter", time_s=None)
                else:
                    log("%s %s rep %d: %s" % (scen, net, rep + 1, m))
                    r = run_one(m, net, rep)
                    log("  " + summary(r))
                res.setdefault(net, {}).setdefault(m, []).append(r)
    return res


def relocate_extra(b, m):
    """The filter parameters of relocate method m."""
    if m == "relocate connections=1" and b.multiconn:
        return ["relocate-connections=1"]
    return []


def relocate(b, img, net, local, size, verify=False, extra=(), tls=False):
    """Wall time from starting nbdkit until relocatectl wait returns;
    with tls, the source requires TLS and the filter uses it."""
    rm(local, local + ".bitmap")
    settle()
    b.start_source(img, net, tls=tls)
    t0 = time.monotonic()
    b.start_dest("dst", local, extra=extra, tls=tls)
    ctl = b.procs.path("dst", "ctl")

    def sample():
        st = ctl_status(ctl)
        return (st["present_bytes"], st["fetched_background_bytes"]
                + st["fetched_demand_bytes"], st["state"])
    samp = Sampler(sample, t0)
    subprocess.run([b.ctl, "wait", ctl], check=True)
    t = time.monotonic() - t0
    cpu, hwm = proc_cpu(b.procs.pid("dst"))
    src_cpu, _ = proc_cpu(b.procs.pid("src"))
    st = b.status("dst")
    tl = samp.stop()
    full = [x[0] for x in tl if x[1][0] >= size]
    tl = [(x[0], x[1][0], x[1][1]) for x in tl]
    tl.append((round(t, 3), st["present_bytes"],
               st["fetched_background_bytes"] + st["fetched_demand_bytes"]))
    b.procs.stop("dst")
    stats = b.stop_source()
    r = dict(time_s=t, cpu_s=cpu, rss_kib=hwm, src_cpu_s=src_cpu,
             tls=tls, connections=relay_conns(b),
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
        r["verified"] = same(img, local)
    return r


def nbdcopy(b, img, net, verify=False, args=()):
    """nbdcopy --flush [ARGS] from the source to TMP/copy.img (removed
    after), under /usr/bin/time for its CPU and peak RSS."""
    out = os.path.join(b.tmp, "copy.img")
    rm(out)
    settle()
    b.start_source(img, net)
    tfile = os.path.join(b.tmp, "nbdcopy.time")
    t0 = time.monotonic()
    samp = Sampler(lambda: allocated(out), t0)
    subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", tfile,
                    "nbdcopy", "--flush"] + list(args) + [b.src_uri(), out],
                   check=True)
    t = time.monotonic() - t0
    tl = samp.stop()
    tl.append((round(t, 3), allocated(out)))
    stats = b.stop_source()
    with open(tfile) as f:
        e, u, s, m = f.read().split()[-4:]
    r = dict(time_s=t, connections=relay_conns(b),
             cpu_s=float(u) + float(s), rss_kib=int(m),
             src_read_bytes=stats["read_bytes"],
             src_read_ops=stats["read_ops"],
             local_allocated=allocated(out), timeline=tl)
    if verify:
        r["verified"] = same(img, out)
    rm(out)
    return r


def scan_cache(b, img, net, size, tuned, cap):
    """nbdkit --filter=scan --filter=cache cache-on-read=true in front
    of the nbd plugin, one idle client connected (the scan filter
    only prefetches while a client is connected).  Done when the
    cache file (unlinked, found through /proc/PID/fd) has every
    byte allocated: the image is dense random data.  Gives up after
    cap seconds and reports the projected time at the rate so far."""
    cdir = os.path.join(b.tmp, "cachedir")
    shutil.rmtree(cdir, ignore_errors=True)
    os.mkdir(cdir)
    settle()
    b.start_source(img, net)
    env = dict(os.environ, TMPDIR=cdir)
    args = ["--filter=scan", "--filter=cache", "nbd",
            "socket=" + b.sock("src"), "cache-on-read=true"]
    if tuned:
        args.append("cache-min-block-size=2M")
    t0 = time.monotonic()
    b.nbdkit("cache", args, env=env)
    pid = b.procs.pid("cache")
    client = subprocess.Popen(
        ["/usr/bin/python3", "-c",
         "import nbd,sys; h=nbd.NBD(); h.connect_unix(sys.argv[1]); "
         "sys.stdin.read()", b.sock("cache")],
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
    b.procs.stop("cache")
    stats = b.stop_source()
    shutil.rmtree(cdir, ignore_errors=True)
    r = dict(complete=done, time_s=t, cpu_s=cpu, rss_kib=hwm,
             src_read_bytes=stats["read_bytes"],
             src_read_ops=stats["read_ops"], cached_bytes=last,
             timeline=tl)
    if not done:
        r["projected_s"] = t * size / last if last else None
    return r


def qsd(b, img, net, size, cap=900):
    """qemu-storage-daemon: a qcow2 overlay whose backing file is the
    source over NBD, a copy-on-read node exported over NBD (what the
    VM would use), and a block-stream job pulling every block into
    the overlay; done when the job completes (it then drops the
    backing file: the source can go)."""
    ov = os.path.join(b.tmp, "qsd-overlay.qcow2")
    qmp_path = os.path.join(b.tmp, "qmp.sock")
    rm(ov)
    backing = json.dumps({"driver": "raw", "file": {
        "driver": "nbd", "server": {"type": "unix",
                                    "path": b.sock("src")}}})
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u",
                    "-b", "json:" + backing, "-F", "raw", ov, str(size)],
                   check=True)
    settle()
    b.start_source(img, net)
    pidf = b.procs.path("qsd", "pid")
    t0 = time.monotonic()
    b.procs.start("qsd", [
        b.qsd,
        "--blockdev", "driver=qcow2,node-name=top,file.driver=file,"
                      "file.filename=" + ov,
        "--blockdev", "driver=copy-on-read,node-name=cor,file=top",
        "--nbd-server", "addr.type=unix,addr.path=" + b.sock("qsd"),
        "--export", "type=nbd,id=exp,node-name=cor,name=,writable=on",
        "--chardev", "socket,id=qmp,path=%s,server=on,wait=off" % qmp_path,
        "--monitor", "chardev=qmp", "--pidfile", pidf],
        wait_paths=[qmp_path, b.sock("qsd")], pidfile=pidf)
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
    cpu, hwm = proc_cpu(b.procs.pid("qsd"))
    s.close()
    b.procs.stop("qsd")
    stats = b.stop_source()
    r = dict(complete=done, time_s=t, cpu_s=cpu, rss_kib=hwm,
             src_read_bytes=stats["read_bytes"],
             src_read_ops=stats["read_ops"],
             local_allocated=allocated(ov), timeline=tl)
    rm(ov)
    return r
