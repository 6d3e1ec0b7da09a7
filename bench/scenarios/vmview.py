"""Scenario 3, vmview: the guest's 4K random I/O and flush latency while the copy runs vs with it paused, on present and absent data."""

import os
import time

from lib import fio
from lib.common import KiB, MiB, log, rm
from lib.images import settle
from lib.procs import Sampler, ctl_status

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


def one(b, img, local, size, region, rt, net, where, rw, qd, fsync):
    """A fresh relocation; REGION bytes of present data at the start
    of the disk (copied by the background copy, which is then paused,
    and read once sequentially so that both runs find it in the page
    cache) or absent data in the third quarter of the disk; fio with
    the copy paused, then the same with it running (on the fourth
    quarter for absent data: the first run fetched blocks of the
    third)."""
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
        fio.run(b.tmp, uri, "read", 1 * MiB, 8, region)
        offs, span = (0, 0), region
    else:
        # the third quarter of the disk, then the fourth: large enough
        # that random 4K I/O keeps finding absent blocks
        offs, span = (size // 2, size * 3 // 4), size // 4
    settle()
    r = {}
    ctl = b.procs.path("dst", "ctl")
    st0 = b.status("dst")
    r["paused"] = fio.run(b.tmp, uri, rw, 4 * KiB, qd, span, rt,
                          offset=offs[0], fsync=fsync)
    st1 = b.status("dst")
    r["paused"]["fetched_demand_bytes"] = (st1["fetched_demand_bytes"]
                                           - st0["fetched_demand_bytes"])
    t0 = time.monotonic()
    samp = Sampler(lambda: (lambda s: (s["present_bytes"], s["state"]))
                   (ctl_status(ctl)), t0, interval=0.2)
    time.sleep(0.3)
    b.relocatectl("dst", "resume")
    ta = time.monotonic() - t0
    r["copying"] = fio.run(b.tmp, uri, rw, 4 * KiB, qd, span, rt,
                           offset=offs[1], fsync=fsync)
    tb = time.monotonic() - t0
    tl = samp.stop()
    st2 = b.status("dst")
    r["copying"]["fetched_demand_bytes"] = (st2["fetched_demand_bytes"]
                                            - st1["fetched_demand_bytes"])
    # the copy's throughput while fio ran, until the copy completed
    win = [(t, p) for t, (p, s) in tl if ta <= t <= tb]
    act = [(t, p) for t, (p, s) in tl if ta <= t <= tb and s != "complete"]
    done = [(t, p) for t, (p, s) in tl if s == "complete"]
    end = done[0] if done and done[0][0] <= tb else (win[-1] if win else None)
    start = act[0] if act else None
    if start and end and end[0] > start[0]:
        r["copy_mib_s"] = (end[1] - start[1]) / MiB / (end[0] - start[0])
        r["copy_active_s"] = end[0] - start[0]
    else:
        r["copy_mib_s"] = r["copy_active_s"] = None
    r["fio_window_s"] = tb - ta
    r["block_size"] = st2["block_size"]
    b.procs.stop("dst")
    b.stop_source()
    return r


def run(b):
    """Every test of TESTS, each on a fresh relocation on the
    --vmview-net model: paused, then copying."""
    img, size = b.need_dense(), b.prof["dense"]
    region, rt = b.prof["region"], b.prof["fio_runtime"]
    net = b.args.vmview_net
    local = os.path.join(b.tmp, "vmview-local.img")
    res = {}
    for rep in range(b.reps):
        for name, (where, rw, qd, fsync) in TESTS.items():
            log("vmview %s rep %d: %s" % (net, rep + 1, name))
            r = one(b, img, local, size, region, rt, net, where, rw, qd,
                    fsync)
            key = "flush_p99_us" if fsync else "p99_us"
            log("  p99 paused %.0f us, copying %.0f us; copy %.1f MiB/s "
                "for %.1f of %.1f s"
                % (r["paused"][key], r["copying"][key],
                   r["copy_mib_s"] or 0, r["copy_active_s"] or 0,
                   r["fio_window_s"]))
            res.setdefault(name, []).append(r)
    rm(local, local + ".bitmap")
    return dict(net=net, region=region, runtime=rt, tests=res)
