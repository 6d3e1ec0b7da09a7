"""Scenario 1, dense: time to a complete local copy of a random image, relocate vs nbdcopy, scan+cache, qsd."""

import os

from lib import copies
from lib.servers import RELAYS


def methods(b, net):
    if net in RELAYS:
        return copies.relay_methods(net)
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
        if m.startswith("relocate"):
            r = copies.relocate(b, img, net, local, size, verify=rep == 0,
                                extra=copies.relocate_extra(b, m),
                                tls=m == copies.TLS_METHOD)
            b.dense_local_net = net
            return r
        if m.startswith("nbdcopy"):
            return copies.nbdcopy(b, img, net, verify=rep == 0,
                                  args=m.split()[1:])
        if m.startswith("scan+cache"):
            tuned = "2M" in m
            cap = 600 if tuned else b.prof["scan_default_cap"]
            return copies.scan_cache(b, img, net, size, tuned, cap)
        return copies.qsd(b, img, net, size)

    def summary(r):
        return "%.2f s%s%s" % (r["time_s"], "" if r.get("complete", True)
                               else " (gave up; projected %.0f s)"
                               % (r.get("projected_s") or 0),
                               ", %d connections" % r["connections"]
                               if r.get("connections") else "")

    res = copies.compare(b, "dense", lambda net: methods(b, net), run_one,
                         summary)
    # dense-local.img (complete, with its bitmap) is left for "after".
    return dict(size=size, allocated=os.stat(img).st_blocks * 512, runs=res)
