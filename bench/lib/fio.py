"""Running one fio job on an NBD URI and reading IOPS, bandwidth and latency from its JSON."""

import json
import os
import random
import subprocess


def run(tmp, uri, rw, bs, iodepth, size, runtime=None, offset=0):
    """fio (ioengine=nbd) on uri, its output in TMP/fio.json; time-based
    if runtime, else until size bytes from offset are done."""
    out = os.path.join(tmp, "fio.json")
    argv = ["fio", "--name=bench", "--ioengine=nbd", "--uri=" + uri,
            "--rw=" + rw, "--bs=%d" % bs, "--iodepth=%d" % iodepth,
            "--offset=%d" % offset, "--size=%d" % size,
            "--lat_percentiles=1", "--randseed=%d" % random.randrange(1 << 30),
            "--output-format=json", "--output=" + out]
    if runtime:
        argv += ["--runtime=%d" % runtime, "--time_based"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        s = f.read()
    job = json.loads(s[s.index("{"):])["jobs"][0]
    d = job["read" if "read" in rw else "write"]
    pct = d["lat_ns"].get("percentile") or d["clat_ns"]["percentile"]
    return dict(iops=d["iops"], bw_bytes=d["bw_bytes"],
                io_bytes=d["io_bytes"], lat_mean_us=d["lat_ns"]["mean"] / 1e3,
                p50_us=pct["50.000000"] / 1e3, p99_us=pct["99.000000"] / 1e3)
