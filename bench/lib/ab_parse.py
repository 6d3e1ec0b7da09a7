"""The report of bench/ab-write-latency: per-round lines, then per depth
the medians of builds A and B and their B/A ratios.

    PYTHONPATH=bench /usr/bin/python3 -m lib.ab_parse RESDIR

RESDIR holds rROUND_BUILD_dDEPTH.json (fio's JSON) and, next to each,
.status (`relocatectl status --json` just after fio ended).
"""

import collections
import glob
import json
import os
import re
import sys

from . import fio
from .common import median

KEYS = [("clat_mean_us", "clat mean us"), ("clat_p50_us", "clat p50 us"),
        ("clat_p99_us", "clat p99 us"), ("iops", "IOPS")]


def state(path):
    try:
        with open(path) as f:
            return json.load(f).get("state", "?")
    except (OSError, ValueError):
        return "?"


def main(resdir):
    rows = collections.defaultdict(list)
    pat = re.compile(r"r(\d+)_([AB])_d(\d+)\.json$")
    found = []
    for p in glob.glob(os.path.join(resdir, "r*_*_d*.json")):
        m = pat.search(p)
        if m:
            found.append((int(m.group(1)), int(m.group(3)), m.group(2), p))
    for rnd, depth, b, p in sorted(found):
        try:
            v = fio.parse(p, "randwrite")
        except (OSError, ValueError, KeyError) as e:
            print("round %d %s d=%-2d unreadable: %s" % (rnd, b, depth, e))
            continue
        rows[(b, depth)].append(v)
        print("round %d %s d=%-2d clat mean=%8.1f p50=%8.1f p99=%8.1f us"
              " iops=%7.1f state_at_end=%s"
              % (rnd, b, depth, v["clat_mean_us"], v["clat_p50_us"],
                 v["clat_p99_us"], v["iops"], state(p + ".status")))
    print()
    print("%-6s %-5s %4s" % ("depth", "build", "n")
          + "".join("%14s" % label for _, label in KEYS))
    for depth in sorted({d for _, d in rows}):
        med = {}
        for b in "AB":
            runs = rows.get((b, depth), [])
            med[b] = {k: median([r.get(k) for r in runs]) for k, _ in KEYS}
            print("%-6d %-5s %4d" % (depth, b, len(runs))
                  + "".join("%14s" % ("-" if med[b][k] is None
                                      else "%.1f" % med[b][k])
                            for k, _ in KEYS))
        ratio = {k: (med["B"][k] / med["A"][k]
                     if med["A"][k] and med["B"][k] is not None else None)
                 for k, _ in KEYS}
        print("%-6d %-5s %4s" % (depth, "B/A", "")
              + "".join("%14s" % ("-" if ratio[k] is None
                                  else "%.3f" % ratio[k])
                        for k, _ in KEYS))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: %s RESDIR" % sys.argv[0])
    main(sys.argv[1])
