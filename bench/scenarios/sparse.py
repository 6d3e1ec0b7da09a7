"""Scenario 2, sparse: relocate vs nbdcopy on a large image holding little data in scattered extents."""

import os

from lib import copies
from lib.common import MiB, rm
from lib.images import make_sparse
from lib.procs import allocated
from lib.servers import RELAYS


def run(b):
    size, data = b.prof["sparse"], b.prof["sparse_data"]
    img = os.path.join(b.tmp, "sparse.img")
    extents = make_sparse(img, size, data)
    local = os.path.join(b.tmp, "sparse-local.img")

    def run_one(m, net, rep):
        if m.startswith("relocate"):
            r = copies.relocate(b, img, net, local, size, verify=rep == 0,
                                extra=copies.relocate_extra(b, m),
                                tls=m == copies.TLS_METHOD)
            rm(local, local + ".bitmap")
            return r
        return copies.nbdcopy(b, img, net, verify=rep == 0,
                              args=m.split()[1:])

    def summary(r):
        return ("%.2f s, %d MiB from the source, %d MiB allocated%s"
                % (r["time_s"], (r["src_read_bytes"] or 0) // MiB,
                   r["local_allocated"] // MiB,
                   ", %d connections" % r["connections"]
                   if r.get("connections") else ""))

    def methods(net):
        return (copies.relay_methods(net) if net in RELAYS
                else ("relocate", "nbdcopy"))

    res = copies.compare(b, "sparse", methods, run_one, summary)
    r = dict(size=size, data=data, extents=extents,
             source_allocated=allocated(img), runs=res)
    rm(img)
    return r
