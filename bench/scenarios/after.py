"""Scenario 5, after: the completed relocation (source gone) vs nbdkit file on the same local file."""

import os

from lib import copies, fio
from lib.common import KiB, log
from lib.images import settle, warm


def run(b):
    """The completed relocation (restarted over its files, the source
    not running) vs nbdkit file on the same local file."""
    local = os.path.join(b.tmp, "dense-local.img")     # left by "dense"
    size, rt = b.prof["dense"], b.prof["fio_runtime"]
    # the bitmap records the source: restart only over a lan copy
    if (not os.path.exists(local + ".bitmap")
            or b.dense_local_net not in (None, "lan")):
        img = b.need_dense()
        log("after: relocating over the lan first")
        copies.relocate(b, img, "lan", local, size)
    tests = {"randread4k_qd16": ("randread", 4 * KiB),
             "randwrite64k_qd16": ("randwrite", 64 * KiB)}
    res = {}
    for rep in range(b.reps):
        for tname, (rw, bs) in tests.items():
            for target in ("relocate", "file"):
                if target == "relocate":
                    b.start_dest("dst", local, start=None)
                    st = b.status("dst")
                    if st["state"] != "complete":
                        raise RuntimeError("after: relocation is %s"
                                           % st["state"])
                    uri = b.uri("dst")
                else:
                    b.nbdkit("plain", ["file", local])
                    uri = b.uri("plain")
                warm(local)
                settle()
                r = fio.run(b.tmp, uri, rw, bs, 16, size, rt)
                b.procs.stop("dst" if target == "relocate" else "plain")
                log("after rep %d %s %s: %.0f IOPS, p99 %.0f us"
                    % (rep + 1, tname, target, r["iops"], r["p99_us"]))
                res.setdefault(tname, {}).setdefault(target, []).append(r)
    return dict(runtime=rt, runs=res)
