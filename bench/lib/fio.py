"""Running one fio job on an NBD URI and reading IOPS, bandwidth and latency from its JSON."""

import json
import os
import random
import subprocess


def run(tmp, uri, rw, bs, iodepth, size, runtime=None, offset=0,
        fsync=0):
    """fio (ioengine=nbd) on uri, its output in TMP/fio.json; time-based
    if runtime, else until size bytes from offset are done.  fsync=N:
    a flush after every N writes, its latency in flush_p50_us etc."""
    out = os.path.join(tmp, "fio.json")
    argv = ["fio", "--name=bench", "--ioengine=nbd", "--uri=" + uri,
            "--rw=" + rw, "--bs=%d" % bs, "--iodepth=%d" % iodepth,
            "--offset=%d" % offset, "--size=%d" % size,
            "--lat_percentiles=1", "--randseed=%d" % random.randrange(1 << 30),
            "--output-format=json", "--output=" + out]
    if runtime:
        argv += ["--runtime=%d" % runtime, "--time_based"]
    if fsync:
        argv.append("--fsync=%d" % fsync)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return parse(out, rw, fsync)


def parse(path, rw, fsync=0):
    """The numbers of fio's JSON output in PATH (its first job; reads
    if rw reads, else writes).  lat_* and p50/p99 are total latency
    (with --lat_percentiles=1), clat_* completion latency (clat_p50_us
    and clat_p99_us only when fio gave clat percentiles)."""
    with open(path) as f:
        s = f.read()
    job = json.loads(s[s.index("{"):])["jobs"][0]
    d = job["read" if "read" in rw else "write"]
    pct = d["lat_ns"].get("percentile") or d["clat_ns"]["percentile"]
    r = dict(iops=d["iops"], bw_bytes=d["bw_bytes"],
             io_bytes=d["io_bytes"], lat_mean_us=d["lat_ns"]["mean"] / 1e3,
             p50_us=pct["50.000000"] / 1e3, p99_us=pct["99.000000"] / 1e3,
             clat_mean_us=d["clat_ns"]["mean"] / 1e3)
    cpct = d["clat_ns"].get("percentile")
    if cpct:
        r.update(clat_p50_us=cpct["50.000000"] / 1e3,
                 clat_p99_us=cpct["99.000000"] / 1e3)
    sync = job.get("sync", {})
    if fsync and sync.get("total_ios"):
        sp = sync["lat_ns"]["percentile"]
        r.update(flushes=sync["total_ios"],
                 flush_mean_us=sync["lat_ns"]["mean"] / 1e3,
                 flush_p50_us=sp["50.000000"] / 1e3,
                 flush_p99_us=sp["99.000000"] / 1e3)
    return r
