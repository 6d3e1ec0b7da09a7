"""Running one fio job on an NBD URI and reading IOPS, bandwidth and latency from its JSON."""

import json
import os
import random
import subprocess


def run(tmp, uri, rw, bs, iodepth, size, runtime=None, offset=0,
        fsync=0, prefix=(), bins=False):
    """fio (ioengine=nbd) on uri, its output in TMP/fio.json; time-based
    if runtime, else until size bytes from offset are done.  fsync=N:
    a flush after every N writes, its latency in flush_p50_us etc.
    prefix: words to run fio under (taskset).  bins: keep fio's latency
    histograms too, for merge."""
    out = os.path.join(tmp, "fio.json")
    argv = ["fio", "--name=bench", "--ioengine=nbd", "--uri=" + uri,
            "--rw=" + rw, "--bs=%d" % bs, "--iodepth=%d" % iodepth,
            "--offset=%d" % offset, "--size=%d" % size,
            "--lat_percentiles=1", "--randseed=%d" % random.randrange(1 << 30),
            "--output-format=" + ("json+" if bins else "json"),
            "--output=" + out]
    if runtime:
        argv += ["--runtime=%d" % runtime, "--time_based"]
    if fsync:
        argv.append("--fsync=%d" % fsync)
    subprocess.run(list(prefix) + argv, check=True, stdout=subprocess.DEVNULL)
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
             clat_mean_us=d["clat_ns"]["mean"] / 1e3,
             runtime_s=d["runtime"] / 1e3)
    if "bins" in d["lat_ns"]:
        r["lat_bins"] = {int(k): v for k, v in d["lat_ns"]["bins"].items()}
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
        if "bins" in sync["lat_ns"]:
            r["flush_bins"] = {int(k): v
                               for k, v in sync["lat_ns"]["bins"].items()}
    return r


def percentile(bins, p):
    """The p-th percentile, in us, of a fio latency histogram (ns ->
    count), as fio computes it: the first bucket at or past p%."""
    total = sum(bins.values())
    if not total:
        return None
    seen = 0
    for ns in sorted(bins):
        seen += bins[ns]
        if seen >= total * p / 100:
            return ns / 1e3
    return max(bins) / 1e3


def merge(rs):
    """One result for several runs of one job (made with bins=True):
    the I/O and time summed, IOPS over the total time, p50/p99 from the
    summed histograms.  The runs are left without their histograms."""
    def add(key):
        out = {}
        for r in rs:
            for ns, n in r.pop(key, {}).items():
                out[ns] = out.get(ns, 0) + n
        return out
    lat, flush = add("lat_bins"), add("flush_bins")
    t = sum(r["runtime_s"] for r in rs)
    ios = sum(r["iops"] * r["runtime_s"] for r in rs)
    m = dict(runs=len(rs), runtime_s=t, iops=ios / t if t else None,
             io_bytes=sum(r["io_bytes"] for r in rs),
             bw_bytes=sum(r["io_bytes"] for r in rs) / t if t else None,
             lat_mean_us=sum(r["lat_mean_us"] * r["iops"] * r["runtime_s"]
                             for r in rs) / ios if ios else None,
             p50_us=percentile(lat, 50), p99_us=percentile(lat, 99))
    if flush:
        m.update(flushes=sum(flush.values()),
                 flush_p50_us=percentile(flush, 50),
                 flush_p99_us=percentile(flush, 99))
    return m
