"""Scenario 4, firsttouch: reads of absent data through relocate (no background copy) vs straight at the source."""

import os

from lib import fio
from lib.common import KiB, MiB, log, rm
from lib.images import settle


def run(b):
    """Reads of absent data (background copy off) vs the same fio
    straight at the delayed source; each test on a fresh relocation
    and a fresh source (so the rate filter's bucket is full for both)."""
    img, size = b.need_dense(), b.prof["dense"]
    rt, seq = b.prof["fio_runtime"], b.prof["seq"]
    local = os.path.join(b.tmp, "firsttouch-local.img")
    tests = {
        "rand4k_qd1": ("randread", 4 * KiB, 1, size, rt),
        "rand4k_qd16": ("randread", 4 * KiB, 16, size, rt),
        "seq64k_qd1": ("read", 64 * KiB, 1, seq, rt),
        "seq1m_qd1": ("read", 1 * MiB, 1, seq, None),
        "seq1m_qd8": ("read", 1 * MiB, 8, seq, None),
    }
    res = {}
    for rep in range(b.reps):
        for tname, (rw, bs, qd, sz, runtime) in tests.items():
            for target in ("relocate", "direct"):
                rm(local, local + ".bitmap")
                settle()
                b.start_source(img, "wan", stats=False)
                if target == "relocate":
                    b.start_dest("dst", local,
                                 extra=["relocate-background=false"])
                    uri = b.uri("dst")
                else:
                    uri = b.uri("src")
                r = fio.run(b.tmp, uri, rw, bs, qd, sz, runtime)
                if target == "relocate":
                    st = b.status("dst")
                    r["fetched_demand_bytes"] = st["fetched_demand_bytes"]
                    r["block_size"] = st["block_size"]
                    b.procs.stop("dst")
                b.procs.stop("src")
                log("firsttouch rep %d %s %s: %.0f IOPS, mean %.0f us, "
                    "%.1f MiB/s" % (rep + 1, tname, target, r["iops"],
                                    r["lat_mean_us"], r["bw_bytes"] / MiB))
                res.setdefault(tname, {}).setdefault(target, []).append(r)
    rm(local, local + ".bitmap")
    return dict(runtime=rt, seq=seq, rtt_s=b.rtt,
                iodepth16_bound_iops=16 / b.rtt if b.rtt else None,
                runs=res)
