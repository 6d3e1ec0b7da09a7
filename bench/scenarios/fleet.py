"""Scenario 6, fleet: a virtual cluster's disks leave one old host at once: 8 relocations sharing one budget (relocate-rate-group) vs 8 nbdcopy in parallel, over wan-streams."""

import os
import subprocess
import threading
import time

from lib import fio
from lib.common import KiB, MiB, log, rm
from lib.images import make_dense, make_sparse, same, settle
from lib.procs import Sampler, allocated, proc_cpu
from lib.relay import size as parse_rate
from lib.servers import RELAYS

N = 8
NET = "wan-streams"
# The group's budget: the link's cap (the relay's), and half of it
# (a budget below what the link carries: is it held?).
METHODS = ("relocate group=link", "relocate group=link/2", "nbdcopy x8")


def images(b, dense=False):
    """N images in one directory, the old host's exports by name: even
    ones dense random, odd ones sparse (an eighth of them data); with
    dense, all of them dense and of fleet_dense bytes."""
    d = os.path.join(b.tmp, "fleet-dense" if dense else "fleet")
    os.makedirs(d, exist_ok=True)
    each = b.prof["fleet_dense" if dense else "fleet_each"]
    names = []
    for i in range(N):
        name = "disk%d" % i
        p = os.path.join(d, name)
        if not os.path.exists(p):
            if dense or i % 2 == 0:
                make_dense(p, each)
            else:
                make_sparse(p, each, each // 8, seed=i)
        names.append(name)
    return d, names


def source_read(b):
    """Bytes the source process has read from its files so far."""
    with open("/proc/%d/io" % b.procs.pid("src")) as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def peak_rate(samples, window=2.0):
    """The highest rate of (t, bytes) samples over the shortest span of
    at least window seconds ending at each sample (None: too short)."""
    best, j = None, 0
    for i in range(len(samples)):
        while j + 1 < i and samples[i][0] - samples[j + 1][0] >= window:
            j += 1
        dt = samples[i][0] - samples[j][0]
        if dt >= window:
            rate = (samples[i][1] - samples[j][1]) / dt
            best = rate if best is None else max(best, rate)
    return best


def proc_status(pid, key):
    """A number from /proc/PID/status: Threads, or VmRSS in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def together(b, t0, over, timeout=10.0):
    """When (since t0) every relocation has seen all N copying, or
    None once over() or after timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not over():
        try:
            if all(b.status("f%d" % i)["group_copying"] >= N for i in range(N)):
                return time.monotonic() - t0
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    return None


def relocate_all(b, d, names, limit, verify):
    local = os.path.join(b.tmp, "fleet-local")
    os.makedirs(local, exist_ok=True)
    group = os.path.join(b.tmp, "fleet.group")
    rm(group)
    for n in names:
        rm(os.path.join(local, n), os.path.join(local, n + ".bitmap"))
    settle()
    b.start_source(d, NET)
    t0 = time.monotonic()
    src = Sampler(lambda: source_read(b), t0, interval=0.25)
    for i, n in enumerate(names):
        b.start_dest("f%d" % i, os.path.join(local, n),
                     extra=["export=" + n, "relocate-rate-group=" + group,
                            "relocate-rate-group-limit=%d" % limit])
    pids = [b.procs.pid("f%d" % i) for i in range(N)]
    most_threads = [0] * N
    rss = Sampler(lambda: [proc_status(p, "VmRSS") for p in pids], t0, interval=0.1)

    def count_threads():
        for i, p in enumerate(pids):
            try:
                most_threads[i] = max(most_threads[i], proc_status(p, "Threads"))
            except OSError:
                pass
        return 0
    thr = Sampler(count_threads, t0, interval=0.5)
    done = [None] * N

    def wait(i):
        subprocess.run([b.ctl, "wait", b.procs.path("f%d" % i, "ctl")],
                       check=True, stdout=subprocess.DEVNULL)
        done[i] = time.monotonic() - t0
    t_all = []

    def watch():
        t_all.append(together(b, t0, lambda: any(x is not None for x in done)))
    ws = [threading.Thread(target=wait, args=(i,)) for i in range(N)]
    ws.append(threading.Thread(target=watch))
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    t = time.monotonic() - t0
    thr.stop()
    # The largest RSS while all N copy together: from when each had
    # seen the N copying until the first completed.
    rs = rss.stop()
    rss_together = [max((v[i] for ts, v in rs
                         if t_all[0] is not None and t_all[0] <= ts <= min(done)),
                        default=None) for i in range(N)]
    # A complete relocation is idle: CPU over 3 s after the last one.
    cpu_done = [proc_cpu(p)[0] for p in pids]
    time.sleep(3)
    idle_cpu = sum(proc_cpu(p)[0] for p in pids) - sum(cpu_done)
    samples = src.stop()
    r = dict(time_s=t, each_s=done, limit=limit, source_read=samples,
             src_peak_rate=peak_rate(samples),
             src_mean_rate=samples[-1][1] / samples[-1][0] if samples else None,
             rss_kib=[proc_cpu(p)[1] for p in pids], rss_together_kib=rss_together,
             cpu_s=cpu_done,
             threads=most_threads, idle_cpu_s=idle_cpu,
             local_allocated=sum(allocated(os.path.join(local, n))
                                 for n in names))
    if verify:
        r["verified"] = all(same(os.path.join(d, n), os.path.join(local, n))
                            for n in names)
    for i in range(N):
        b.procs.stop("f%d" % i)
    b.stop_source()
    for n in names:
        rm(os.path.join(local, n), os.path.join(local, n + ".bitmap"))
    return r


def nbdcopy_all(b, d, names, verify):
    out = os.path.join(b.tmp, "fleet-copy")
    os.makedirs(out, exist_ok=True)
    settle()
    b.start_source(d, NET)
    t0 = time.monotonic()
    src = Sampler(lambda: source_read(b), t0, interval=0.25)
    ps = [subprocess.Popen(["nbdcopy", "--flush", b.src_uri() + n,
                            os.path.join(out, n)]) for n in names]
    for p in ps:
        if p.wait() != 0:
            raise RuntimeError("nbdcopy failed")
    t = time.monotonic() - t0
    samples = src.stop()
    r = dict(time_s=t, source_read=samples, src_peak_rate=peak_rate(samples),
             src_mean_rate=samples[-1][1] / samples[-1][0] if samples else None)
    if verify:
        r["verified"] = all(same(os.path.join(d, n), os.path.join(out, n))
                            for n in names)
    b.stop_source()
    for n in names:
        rm(os.path.join(out, n))
    return r


def guest_view(b, d, names, limit):
    """The guest's view: fio 4K random reads at depth 1 on relocation
    0's disk, all of it absent (its own background copy off, so that
    every read fetches), first with no other relocation in the group,
    then while the other N-1 copy under the same budget.  The ratio is
    what the others' copies cost its fetches; the baseline is stricter
    than its own copy running alone (issue 23 measures that one)."""
    local = os.path.join(b.tmp, "fleet-local")
    os.makedirs(local, exist_ok=True)
    group = os.path.join(b.tmp, "fleet.group")
    res = {}
    for others in (0, N - 1):
        rm(group)
        for n in names:
            rm(os.path.join(local, n), os.path.join(local, n + ".bitmap"))
        settle()
        b.start_source(d, NET)
        for i in range(others + 1):
            extra = ["export=" + names[i], "relocate-rate-group=" + group,
                     "relocate-rate-group-limit=%d" % limit]
            if i == 0:
                extra.append("relocate-background=false")
            b.start_dest("f%d" % i, os.path.join(local, names[i]),
                         extra=extra)
        time.sleep(1)               # the others' copies under way
        r = fio.run(b.tmp, b.uri("f0"), "randread", 4 * KiB, 1,
                    b.prof["fleet_each"], runtime=b.prof["fio_runtime"])
        st = b.status("f0")
        r["fetched_demand_bytes"] = st["fetched_demand_bytes"]
        r["block_size"] = st["block_size"]
        r["others_copying"] = sum(
            b.status("f%d" % i)["state"] == "relocating"
            for i in range(1, others + 1))
        for i in range(others + 1):
            b.procs.stop("f%d" % i)
        b.stop_source()
        key = "alone" if others == 0 else "with %d copying" % others
        log("fleet guest %s: p99 %.0f us, %.0f IOPS, %d others still "
            "copying at the end" % (key, r["p99_us"], r["iops"],
                                    r["others_copying"]))
        res[key] = r
    for n in names:
        rm(os.path.join(local, n), os.path.join(local, n + ".bitmap"))
    return res


def dense_memory(b):
    """The memory of 8 relocations of dense images (fleet_dense each),
    all copying at once under the link's budget, once: peak RSS,
    threads and CPU; the images go afterwards."""
    d, names = images(b, dense=True)
    log("fleet %s: %d dense images of %d MiB, group=link" % (
        NET, N, b.prof["fleet_dense"] // MiB))
    r = relocate_all(b, d, names, parse_rate(RELAYS[NET]["link_rate"]),
                     verify=False)
    log("  %.2f s; peak RSS %d MiB at most (%s with all %d copying), %d "
        "threads at most" % (
            r["time_s"], max(r["rss_kib"]) // 1024,
            max(r["rss_together_kib"] or [0]) // 1024
            if None not in r["rss_together_kib"] else "-", N,
            max(r["threads"])))
    for n in names:
        rm(os.path.join(d, n))
    return r


def run(b):
    d, names = images(b)
    link = parse_rate(RELAYS[NET]["link_rate"])
    res, guest = {}, {}
    for rep in range(b.reps):
        for m in METHODS:
            log("fleet %s rep %d: %s" % (NET, rep + 1, m))
            if m.startswith("relocate"):
                limit = link if m.endswith("=link") else link // 2
                r = relocate_all(b, d, names, limit, verify=rep == 0)
                log("  %.2f s; at the source %.1f MiB/s at most (budget "
                    "%.1f), peak RSS %d MiB at most (%s with all %d copying), "
                    "%d threads at most, %.2f s CPU idle" % (
                        r["time_s"], (r["src_peak_rate"] or 0) / MiB, limit / MiB,
                        max(r["rss_kib"]) // 1024,
                        max(r["rss_together_kib"] or [0]) // 1024
                        if None not in r["rss_together_kib"] else "-", N,
                        max(r["threads"]),
                        r["idle_cpu_s"]))
            else:
                r = nbdcopy_all(b, d, names, verify=rep == 0)
                log("  %.2f s; at the source %.1f MiB/s at most"
                    % (r["time_s"], (r["src_peak_rate"] or 0) / MiB))
            res.setdefault(m, []).append(r)
        for k, r in guest_view(b, d, names, link).items():
            guest.setdefault(k, []).append(r)
    for n in names:
        rm(os.path.join(d, n))
    return dict(n=N, each=b.prof["fleet_each"], net=NET, link=link, runs=res,
                guest=guest, fio_runtime=b.prof["fio_runtime"],
                dense=dense_memory(b), dense_each=b.prof["fleet_dense"])
