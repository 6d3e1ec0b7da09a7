"""The test images (dense, sparse), and reading, comparing and flushing files with holes skipped."""

import bisect
import os
import random
import time

from .common import GiB, KiB, MiB, log


def make_dense(path, size):
    log("making %s: %d MiB of random data" % (os.path.basename(path),
                                               size // MiB))
    with open(path, "wb") as f:
        for _ in range(0, size, 16 * MiB):
            f.write(os.urandom(16 * MiB))


def make_sparse(path, size, data, seed=42):
    """SIZE bytes holding DATA bytes of random data in scattered
    extents of 64K to 4M at 64K-aligned places, the rest holes."""
    log("making %s: %d GiB holding %d MiB in scattered extents"
        % (os.path.basename(path), size // GiB, data // MiB))
    rng = random.Random(seed)
    starts, ends, total = [], [], 0
    with open(path, "wb") as f:
        f.truncate(size)
        while total < data:
            n = min(rng.choice([64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB]),
                    data - total)
            off = rng.randrange(0, (size - n) // (64 * KiB)) * 64 * KiB
            i = bisect.bisect(starts, off)
            # keep at least 64K of hole between extents
            if i and ends[i - 1] + 64 * KiB > off:
                continue
            if i < len(starts) and off + n + 64 * KiB > starts[i]:
                continue
            starts.insert(i, off)
            ends.insert(i, off + n)
            f.seek(off)
            f.write(os.urandom(n))
            total += n
    return len(starts)


def data_extents(path):
    """[(start, end)] of the ranges of path that are not holes."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, off = os.fstat(fd).st_size, 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break                   # ENXIO: only a hole is left
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, h))
            off = h
    finally:
        os.close(fd)
    return out


def same(a, b):
    """a and b hold the same bytes (holes compared as zeroes; only
    ranges that hold data in either file are read)."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    ranges = sorted(data_extents(a) + data_extents(b))
    merged = []
    for s, e in ranges:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for s, e in merged:
            fa.seek(s)
            fb.seek(s)
            while s < e:
                n = min(8 * MiB, e - s)
                if fa.read(n) != fb.read(n):
                    return False
                s += n
    return True


def warm(path):
    """Read path into the page cache (the filter writes fetched data
    with O_DIRECT, so a fresh local file is not cached)."""
    with open(path, "rb") as f:
        for s, e in data_extents(path):
            f.seek(s)
            while s < e:
                n = len(f.read(min(16 * MiB, e - s)))
                if not n:
                    break
                s += n


def settle():
    """Write back dirty pages left by the previous step (copies, images,
    fio writes), so that they do not compete with the next measurement."""
    os.sync()
    time.sleep(0.2)
