"""Scenario 3, vmview: the guest's 4K random read latency on present data, background copy paused vs running."""

import os
import time

from lib import fio
from lib.common import KiB, MiB, log, rm
from lib.images import settle
from lib.procs import Sampler, ctl_status


def run(b):
    """fio 4K random reads (iodepth 1) on a present region while the
    background copy is paused, then while it runs."""
    img = b.need_dense()
    region, rt = b.prof["region"], b.prof["fio_runtime"]
    local = os.path.join(b.tmp, "vmview-local.img")
    runs = []
    for rep in range(b.reps):
        log("vmview rep %d" % (rep + 1))
        rm(local, local + ".bitmap")
        settle()
        b.start_source(img, "wan", stats=False)
        b.start_dest("dst", local, start="manual")
        b.relocatectl("dst", "pause")
        b.relocatectl("dst", "start")
        fio.run(b.tmp, b.uri("dst"), "read", 1 * MiB, 8, region)
        # again, from the local file now: the fetch wrote with
        # O_DIRECT, and the paused run must not warm the page cache
        # for the running one
        fio.run(b.tmp, b.uri("dst"), "read", 1 * MiB, 8, region)
        st = b.status("dst")
        r = dict(region_present_before=st["present_bytes"])
        r["paused"] = fio.run(b.tmp, b.uri("dst"), "randread", 4 * KiB, 1,
                              region, rt)
        ctl = b.procs.path("dst", "ctl")
        t0 = time.monotonic()
        samp = Sampler(lambda: (lambda s: (s["present_bytes"], s["state"]))
                       (ctl_status(ctl)), t0, interval=0.2)
        time.sleep(0.3)
        b.relocatectl("dst", "resume")
        ta = time.monotonic() - t0
        r["copying"] = fio.run(b.tmp, b.uri("dst"), "randread", 4 * KiB, 1,
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
        b.procs.stop("dst")
        b.procs.stop("src")
        runs.append(r)
        log("  paused p50 %.0f us p99 %.0f us; copying p50 %.0f us "
            "p99 %.0f us; copy %.1f MiB/s"
            % (r["paused"]["p50_us"], r["paused"]["p99_us"],
               r["copying"]["p50_us"], r["copying"]["p99_us"],
               r["copy_mib_s"] or 0))
    rm(local, local + ".bitmap")
    return dict(region=region, runtime=rt, runs=runs)
