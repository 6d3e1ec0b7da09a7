"""Units, paths, logging and small helpers used by every part of the benchmarks."""

import os
import statistics
import sys
import time

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bench/
TOP = os.path.dirname(HERE)


def log(*a):
    print("[%s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rm(*paths):
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)
