#!/usr/bin/python3
"""Benchmarks for nbdkit-relocate (run through bench/run; see README.md).

The command line, the run of the scenarios in order, and the output
files.  Every server is started in the foreground (nbdkit -f, so its
messages reach its log), on a unix socket in a private temp dir, with a
pid file; each is stopped by the pid in its own pid file, and any still
running at exit (also on ^C) is stopped the same way.

lib/ holds the helpers (processes, servers, images, copy methods, fio),
scenarios/ one module per scenario, report.py results.md and the plot.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from lib.common import HERE, TOP, log
from lib.servers import RELAYS, Bench
from report import plot, report
from scenarios import SCENARIOS


def meta(b, elapsed):
    """The settings and versions of the run, for results.json."""
    def out(*c):
        try:
            return subprocess.run(c, capture_output=True, text=True,
                                  cwd=TOP).stdout.strip()
        except OSError:
            return None
    return dict(
        profile="quick" if b.args.quick else "full", reps=b.reps,
        elapsed_s=elapsed, date=time.strftime("%Y-%m-%d %H:%M:%S"),
        relocate_args=b.relocate_args, wan_args=b.wan_args,
        nets=b.nets, relays=RELAYS, vmview_net=b.args.vmview_net,
        relocate_multiconn=b.multiconn,
        machine=out("uname", "-srm"),
        cpu=out("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        nbdcopy=out("nbdcopy", "--version").splitlines()[0] if out("nbdcopy", "--version") else None,
        fio=out("fio", "--version"),
        filter=os.environ["FILTER"],
        filter_sha256=out("sha256sum", b.filter).split()[0],
        git=b.git,
        nbdkit=out("nbdkit", "--version"),
        qemu_storage_daemon=bool(b.qsd), nproc=os.cpu_count(),
        **{k: v for k, v in b.prof.items() if k != "reps"})


def run(b):
    """The chosen scenarios in order, then results.json, results.md
    and progress.png in --out, and results.md on stdout."""
    t_start = time.monotonic()
    only = b.args.only.split(",") if b.args.only else list(SCENARIOS)
    for s in only:
        if s not in SCENARIOS:
            raise SystemExit("unknown scenario %s (of %s)"
                             % (s, ",".join(SCENARIOS)))
    results = {}
    for s, scenario in SCENARIOS.items():
        if s in only:
            results[s] = scenario.run(b)
    results["meta"] = meta(b, time.monotonic() - t_start)
    os.makedirs(b.args.out, exist_ok=True)
    with open(os.path.join(b.args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = report(results)
    with open(os.path.join(b.args.out, "results.md"), "w") as f:
        f.write(md)
    try:
        plot(results, os.path.join(b.args.out, "progress.png"))
    except Exception as e:
        log("plot failed: %s" % e)
    print(md)
    log("results in %s (%.0f s)" % (b.args.out, time.monotonic() - t_start))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small images, 1 rep: a smoke run")
    ap.add_argument("--reps", type=int, help="repetitions (median taken)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"),
                    help="where results.md/json and progress.png go")
    ap.add_argument("--only", help="comma list of " + ",".join(SCENARIOS))
    ap.add_argument("--nets", help="network models of scenarios 1 and 2, "
                    "comma list of wan-streams,wan-100ms,wan,lan (default all; "
                    "see README.md)")
    ap.add_argument("--vmview-net", default="wan-streams",
                    help="network model of scenario 3 (default wan-streams)")
    ap.add_argument("--vmview-cpus", choices=("split", "shared"),
                    default="split",
                    help="scenario 3: split = the source and the WAN model "
                    "on the last CPU, relocate and fio on the others "
                    "(default); shared = every process on every CPU")
    ap.add_argument("--vmview-tests",
                    help="scenario 3: only the tests whose names contain "
                    "one of these comma-separated words")
    ap.add_argument("--tmpdir", default=os.environ.get("BENCH_TMPDIR", "/var/tmp"),
                    help="where images go (needs ~3x the dense size free)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    b = Bench(args)
    log("temp dir %s" % b.tmp)

    def on_signal(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        run(b)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
    except Exception:
        for name in list(b.procs.live):
            log("---- %s log:\n%s" % (name, b.procs.tail(name)))
        raise
    finally:
        b.procs.stop_all()
        if args.keep:
            log("kept %s" % b.tmp)
        else:
            shutil.rmtree(b.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
