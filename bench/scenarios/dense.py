"""Scenario 1, dense: time to a complete local copy of a random image, relocate vs nbdcopy, scan+cache, qsd."""

import os

from lib import copies


def methods(b):
    m = ["relocate", "nbdcopy", "scan+cache (2M blocks)",
         "scan+cache (defaults)"]
    if b.qsd:
        m.append("qsd block-stream")
    return m


def run(b):
    size = b.prof["dense"]
    img = b.need_dense()
    local = os.path.join(b.tmp, "dense-local.img")

    def run_one(m, net, rep):
        if m == "relocate":
            return copies.relocate(b, img, net, local, size, verify=rep == 0)
        if m == "nbdcopy":
            return copies.nbdcopy(b, img, net, verify=rep == 0)
        if m.startswith("scan+cache"):
            tuned = "2M" in m
            cap = 600 if tuned else b.prof["scan_default_cap"]
            return copies.scan_cache(b, img, net, size, tuned, cap)
        return copies.qsd(b, img, net, size)

    def summary(r):
        return "%.2f s%s" % (r["time_s"], "" if r.get("complete", True)
                             else " (gave up; projected %.0f s)"
                             % (r.get("projected_s") or 0))

    res = copies.compare(b, "dense", methods(b), run_one, summary)
    # dense-local.img (complete, with its bitmap) is left for "after".
    return dict(size=size, runs=res)
