"""Scenario 3, vmview: the guest's 4K random I/O and flush latency while the copy runs vs with it paused, on present and absent data."""

import os
import time

from lib import fio
from lib.common import KiB, MiB, log, rm
from lib.images import settle

# name: (where, fio rw, iodepth, fsync)
TESTS = {
    "present randread qd1": ("present", "randread", 1, 0),
    "present randread qd16": ("present", "randread", 16, 0),
    "present randwrite qd1": ("present", "randwrite", 1, 0),
    "present randwrite qd16": ("present", "randwrite", 16, 0),
    "present flush (write+flush qd1)": ("present", "randwrite", 1, 1),
    "absent randread qd1": ("absent", "randread", 1, 0),
    "absent randread qd16": ("absent", "randread", 16, 0),
    "absent randwrite qd1": ("absent", "randwrite", 1, 0),
    "absent randwrite qd16": ("absent", "randwrite", 16, 0),
}


def wait_present(b, n, timeout=600):
    t0 = time.monotonic()
    while b.status("dst")["present_bytes"] < n:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("vmview: the copy did not reach %d bytes" % n)
        time.sleep(0.05)


# fio runs of about this many seconds, paused and copying in turn
SEGMENT = 2


def one(b, img, local, size, region, rt, net, where, rw, qd, fsync):
    """A fresh relocation; REGION bytes of present data at the start
    of the disk (copied by the background copy, which is then paused,
    and read once sequentially so that both runs find it in the page
    cache) or absent data in the third quarter of the disk.

    Present data: RT seconds of fio paused and RT copying, in runs of
    about SEGMENT seconds taken in turn (paused, copying, copying,
    paused, ...), so that a drift of the machine's speed (a shared
    disk) weighs on both alike; each side's percentiles come from the
    summed histograms of its runs.  A paused run starts 0.2 s after the
    pause, once the copy's requests in flight are done.  Absent data:
    one run paused, then one copying on the fourth quarter (the first
    run fetched blocks of the third)."""
    rm(local, local + ".bitmap")
    settle()
    b.start_source(img, net, stats=False)
    b.start_dest("dst", local, start="manual")
    b.relocatectl("dst", "pause")
    b.relocatectl("dst", "start")
    uri = b.uri("dst")
    if where == "present":
        b.relocatectl("dst", "resume")
        wait_present(b, region + 64 * MiB)
        b.relocatectl("dst", "pause")
        fio.run(b.tmp, uri, "read", 1 * MiB, 8, region,
                prefix=b.pin("dest", []))
        rounds = max(1, rt // SEGMENT)
        order = [("paused", "copying")[(i + i // 2) % 2]
                 for i in range(2 * rounds)]
        offs = {"paused": 0, "copying": 0}
        span = region
    else:
        # the third quarter of the disk, then the fourth: large enough
        # that random 4K I/O keeps finding absent blocks
        rounds, order = 1, ["paused", "copying"]
        offs = {"paused": size // 2, "copying": size * 3 // 4}
        span = size // 4
    settle()
    runs = {"paused": [], "copying": []}
    fetched = {"paused": 0, "copying": 0}
    copied = window = 0.0
    complete = False
    paused = True
    for side in order:
        if side == "paused" and not paused:
            b.relocatectl("dst", "pause")
            time.sleep(0.2)
        elif side == "copying" and paused:
            b.relocatectl("dst", "resume")
        paused = side == "paused"
        st0, t0 = b.status("dst"), time.monotonic()
        runs[side].append(fio.run(b.tmp, uri, rw, 4 * KiB, qd, span,
                                  max(1, rt // rounds),
                                  offset=offs[side], fsync=fsync,
                                  prefix=b.pin("dest", []), bins=True))
        st1, t1 = b.status("dst"), time.monotonic()
        fetched[side] += (st1["fetched_demand_bytes"]
                          - st0["fetched_demand_bytes"])
        if side == "copying":
            # the copy's throughput while fio ran
            copied += st1["present_bytes"] - st0["present_bytes"]
            window += t1 - t0
            complete = complete or st1["state"] == "complete"
    r = {side: fio.merge(rs) for side, rs in runs.items()}
    for side in r:
        r[side]["fetched_demand_bytes"] = fetched[side]
    r["copy_mib_s"] = copied / MiB / window if window else None
    r["copy_completed"] = complete
    r["fio_window_s"] = window
    r["block_size"] = st1["block_size"]
    b.procs.stop("dst")
    b.stop_source()
    return r


def cpu_split():
    """With --vmview-cpus=split, the CPUs of each side: the source
    and the WAN model on the last CPU, relocate and fio on the others
    (on a real migration they are different hosts); None when shared
    or with a single CPU."""
    n = os.cpu_count() or 1
    if n < 2:
        return None
    return {"source": str(n - 1), "dest": "0" if n == 2 else "0-%d" % (n - 2)}


def run(b):
    """Every test of TESTS (or of --vmview-tests), each on a fresh
    relocation on the --vmview-net model: paused, then copying."""
    img, size = b.need_dense(), b.prof["dense"]
    region, rt = b.prof["region"], b.prof["fio_runtime"]
    net = b.args.vmview_net
    local = os.path.join(b.tmp, "vmview-local.img")
    pick = b.args.vmview_tests.split(",") if b.args.vmview_tests else None
    tests = {k: v for k, v in TESTS.items()
             if not pick or any(p in k for p in pick)}
    b.cpus = cpu_split() if b.args.vmview_cpus == "split" else None
    res = {}
    for rep in range(b.reps):
        for name, (where, rw, qd, fsync) in tests.items():
            log("vmview %s rep %d: %s" % (net, rep + 1, name))
            r = one(b, img, local, size, region, rt, net, where, rw, qd,
                    fsync)
            key = "flush_p99_us" if fsync else "p99_us"
            log("  p99 paused %.0f us, copying %.0f us (%.2f); copy %.1f "
                "MiB/s over %.1f s%s"
                % (r["paused"][key], r["copying"][key],
                   r["copying"][key] / r["paused"][key],
                   r["copy_mib_s"] or 0, r["fio_window_s"],
                   ", and it completed" if r["copy_completed"] else ""))
            res.setdefault(name, []).append(r)
    rm(local, local + ".bitmap")
    cpus, b.cpus = b.cpus, None
    return dict(net=net, region=region, runtime=rt, cpus=cpus, tests=res)
