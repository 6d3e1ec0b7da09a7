#!/usr/bin/python3
"""I/O helpers for the tests, over libnbd (python3-libnbd).

nbdio.py read URI OUT                      copy the whole export to OUT
nbdio.py writes URI ORACLE SEED N [CONNS]  N random writes (unaligned
                                           included) from CONNS connections,
                                           applied to the ORACLE file too
nbdio.py pwrite URI OFFSET HEXBYTES [flush]
nbdio.py compare URI FILE [LENGTH]         the export (its first LENGTH
                                           bytes) equals FILE
nbdio.py race URI ORACLE SEED N            N rounds: read a block (its fetch
                                           is slow) and write into it while
                                           the fetch is in flight
nbdio.py reads URI FILE SEED N CONNS       N random reads (any offset and
                                           length, up to 1 MiB), from CONNS
                                           connections at once, each equal
                                           to FILE
"""

import random
import sys
import threading

import nbd


def connect(uri):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)   # nbds://...?tls-certificates=DIR
    h.connect_uri(uri)
    return h


def read_all(uri, out):
    h = connect(uri)
    size = h.get_size()
    step = 4 * 1024 * 1024
    with open(out, "wb") as f:
        for off in range(0, size, step):
            f.write(h.pread(min(step, size - off), off))
    h.shutdown()


def compare(uri, path, length=None):
    h = connect(uri)
    size = h.get_size() if length is None else length
    step = 4 * 1024 * 1024
    with open(path, "rb") as f:
        for off in range(0, size, step):
            n = min(step, size - off)
            f.seek(off)
            if h.pread(n, off) != f.read(n):
                sys.exit("mismatch in [%d, %d)" % (off, off + n))
    h.shutdown()


def writes(uri, oracle, seed, n, conns=2):
    """Random writes from several connections at once.  Each
    connection owns a disjoint set of 1 MiB stripes, so the final
    content does not depend on how the connections interleave."""
    rng = random.Random(seed)
    h0 = connect(uri)
    size = h0.get_size()
    h0.shutdown()
    stripe = 1024 * 1024
    plan = [[] for _ in range(conns)]
    for _ in range(n):
        c = rng.randrange(conns)
        stripes = [s for s in range(size // stripe) if s % conns == c]
        s = rng.choice(stripes)
        length = rng.choice([1, 7, 512, 4096, 65536, 65537, 100000, 300000])
        length = min(length, stripe)
        off = s * stripe + rng.randrange(stripe - length + 1)
        pattern = bytes(rng.getrandbits(8) for _ in range(64))
        plan[c].append((off, (pattern * (length // 64 + 1))[:length]))
    with open(oracle, "r+b") as f:
        for p in plan:
            for off, data in p:
                f.seek(off)
                f.write(data)
    errors = []

    def run(p):
        try:
            h = connect(uri)
            for off, data in p:
                h.pwrite(data, off)
            h.flush()
            h.shutdown()
        except Exception as e:   # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("write failed: %s" % errors[0])


def race(uri, oracle, seed, n, bs=65536):
    """A write to a block whose fetch is in flight must not be lost."""
    import time
    rng = random.Random(seed)
    hr, hw = connect(uri), connect(uri)
    size = hr.get_size()
    blocks = rng.sample(range(size // bs), n)
    errors = []
    with open(oracle, "r+b") as f:
        for b in blocks:
            length = rng.choice([1, 512, 4096, bs - 3, bs])
            off = b * bs + rng.randrange(bs - length + 1)
            data = bytes([rng.randrange(256)]) * length

            def reader():
                try:
                    hr.pread(bs, b * bs)
                except Exception as e:
                    errors.append(e)

            t = threading.Thread(target=reader)
            t.start()
            time.sleep(rng.uniform(0.01, 0.1))   # the fetch is in flight
            hw.pwrite(data, off)
            t.join()
            f.seek(off)
            f.write(data)
    hw.flush()
    hr.shutdown()
    hw.shutdown()
    if errors:
        sys.exit("read failed: %s" % errors[0])


def reads(uri, path, seed, n, conns):
    """Random reads, most of them the first touch of their blocks."""
    rng = random.Random(seed)
    with open(path, "rb") as f:
        data = f.read()
    lengths = [1, 511, 4096, 65533, 65536, 65539, 200000, 1 << 20]
    plan = [[] for _ in range(conns)]
    for i in range(n):
        length = rng.choice(lengths)
        plan[i % conns].append((rng.randrange(len(data) - length + 1), length))
    errors = []

    def reader(ios):
        try:
            h = connect(uri)
            for off, length in ios:
                if h.pread(length, off) != data[off:off + length]:
                    errors.append("mismatch in [%d, %d)" % (off, off + length))
                    return
            h.shutdown()
        except Exception as e:
            errors.append("read failed: %s" % e)

    threads = [threading.Thread(target=reader, args=(ios,)) for ios in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(errors[0])


def main():
    cmd, uri = sys.argv[1], sys.argv[2]
    if cmd == "read":
        read_all(uri, sys.argv[3])
    elif cmd == "compare":
        compare(uri, sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
    elif cmd == "writes":
        conns = int(sys.argv[6]) if len(sys.argv) > 6 else 2
        writes(uri, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), conns)
    elif cmd == "race":
        race(uri, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "reads":
        reads(uri, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
              int(sys.argv[6]))
    elif cmd == "pwrite":
        h = connect(uri)
        h.pwrite(bytes.fromhex(sys.argv[4]), int(sys.argv[3]))
        if len(sys.argv) > 5 and sys.argv[5] == "flush":
            h.flush()
        h.shutdown()
    else:
        sys.exit("unknown command %s" % cmd)


if __name__ == "__main__":
    main()
