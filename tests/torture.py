#!/usr/bin/python3
"""Randomised workloads with an oracle, for the torture and crash tests.

torture.py run URI ORACLE SEED OPS [CONNS]
    CONNS connections at once issue OPS random reads, unaligned writes,
    zeroes, trims, flushes and caches each, and check every read against
    the oracle.  Each connection owns its own 1 MiB stripes, so the
    expected content never depends on how they interleave.  ORACLE is
    updated (and ORACLE.mask marks trimmed bytes, whose content is
    unspecified, as unknown).
torture.py verify URI ORACLE
    The whole export equals the oracle where the mask says known.
torture.py writer URI ORACLE SEED LOG [PAUSE]
    Writes and flushes until killed, for the crash campaign (sleeping
    PAUSE seconds, default 0, after each write).  Appends to
    LOG one JSON line per write as issued and one per flush as
    acknowledged; the data is derived from SEED and the write's number.
torture.py settle ORACLE LOG SEED
    Applies the log to the oracle: writes covered by the last
    acknowledged flush are known; later ones may or may not have reached
    the disk, so their bytes become unknown.
"""

import json
import os
import random
import sys
import threading
import time

import nbd

STRIPE = 1 << 20


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


class Oracle:
    def __init__(self, path):
        self.f = open(path, "r+b")
        self.mpath = path + ".mask"
        size = os.path.getsize(path)
        if os.path.exists(self.mpath):
            self.mask = bytearray(open(self.mpath, "rb").read())
        else:
            self.mask = bytearray(b"\1") * size      # 1 = known
        self.lock = threading.Lock()

    def write(self, off, data):
        with self.lock:
            self.f.seek(off)
            self.f.write(data)
            self.mask[off:off + len(data)] = b"\1" * len(data)

    def unknown(self, off, n):
        with self.lock:
            self.mask[off:off + n] = b"\0" * n

    def check(self, off, got):
        with self.lock:
            self.f.seek(off)
            want = self.f.read(len(got))
            m = self.mask[off:off + len(got)]
        if got == want:
            return
        for i in range(len(got)):
            if m[i] and got[i] != want[i]:
                raise AssertionError("byte %d: got %d, want %d"
                                     % (off + i, got[i], want[i]))

    def save(self):
        self.f.flush()
        open(self.mpath, "wb").write(self.mask)


def run(uri, oracle_path, seed, nops, conns):
    print("torture seed %d: %d ops x %d connections" % (seed, nops, conns),
          flush=True)
    oracle = Oracle(oracle_path)
    size = os.path.getsize(oracle_path)
    errors = []

    def one(c):
        rng = random.Random(seed * 1000 + c)
        mine = [s for s in range(size // STRIPE) if s % conns == c]
        try:
            h = connect(uri)
            for _ in range(nops):
                s = rng.choice(mine) * STRIPE
                n = rng.choice([1, 17, 512, 4096, 65535, 65536, 65537, 200000])
                off = s + rng.randrange(STRIPE - n + 1)
                op = rng.random()
                if op < 0.35:
                    oracle.check(off, h.pread(n, off))
                elif op < 0.65:
                    data = rng.randbytes(n)
                    h.pwrite(data, off,
                             nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0)
                    oracle.write(off, data)
                elif op < 0.75:
                    h.zero(n, off, 0 if rng.random() < 0.5 else nbd.CMD_FLAG_NO_HOLE)
                    oracle.write(off, bytes(n))
                elif op < 0.82:
                    h.trim(n, off)
                    oracle.unknown(off, n)
                elif op < 0.90:
                    h.flush()
                elif op < 0.95:
                    h.cache(n, off)
                else:                                # a whole stripe
                    oracle.check(s, h.pread(STRIPE, s))
            h.flush()
            h.shutdown()
        except Exception as e:
            errors.append("connection %d: %r" % (c, e))

    threads = [threading.Thread(target=one, args=(c,)) for c in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    oracle.save()
    if errors:
        sys.exit("seed %d: %s" % (seed, errors[0]))


def verify(uri, oracle_path):
    oracle = Oracle(oracle_path)
    h = connect(uri)
    size = h.get_size()
    for off in range(0, size, 4 * STRIPE):
        oracle.check(off, h.pread(min(4 * STRIPE, size - off), off))
    h.shutdown()


def write_data(seed, seq, n):
    return random.Random("%d-%d" % (seed, seq)).randbytes(n)


def writer(uri, oracle_path, seed, log_path, pause=0.0):
    rng = random.Random(seed)
    size = os.path.getsize(oracle_path)
    # The log exists even if the server is killed before we connect.
    with open(log_path, "a") as log:
        h = connect(uri)
        seq = 0
        while True:
            n = rng.choice([512, 4096, 65536, 65537, 300000])
            off = rng.randrange(size - n)
            # Logged before it is sent: from then on it may be on disk.
            log.write(json.dumps({"seq": seq, "off": off, "n": n}) + "\n")
            log.flush()
            h.pwrite(write_data(seed, seq, n), off)
            if rng.random() < 0.2:
                h.flush()
                log.write(json.dumps({"flushed": seq}) + "\n")
                log.flush()
            seq += 1
            if pause:
                time.sleep(pause)


def settle(oracle_path, log_path, seed):
    """After a kill: writes covered by an acknowledged flush must be on
    disk; later ones may or may not be, so their bytes become unknown."""
    oracle = Oracle(oracle_path)
    entries = []
    for line in open(log_path):
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass                     # a line torn by the kill
    flushed = max([e["flushed"] for e in entries if "flushed" in e], default=-1)
    writes = [e for e in entries if "seq" in e]
    for e in writes:
        if e["seq"] <= flushed:
            oracle.write(e["off"], write_data(seed, e["seq"], e["n"]))
    for e in writes:
        if e["seq"] > flushed:
            oracle.unknown(e["off"], e["n"])
    oracle.save()
    known = sum(1 for e in writes if e["seq"] <= flushed)
    print("settled: %d writes flushed, %d maybe" % (known, len(writes) - known))


def main():
    cmd = sys.argv[1]
    if cmd == "run":
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
            int(sys.argv[6]) if len(sys.argv) > 6 else 3)
    elif cmd == "verify":
        verify(sys.argv[2], sys.argv[3])
    elif cmd == "writer":
        writer(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5],
               float(sys.argv[6]) if len(sys.argv) > 6 else 0.0)
    elif cmd == "settle":
        settle(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("unknown command %s" % cmd)


if __name__ == "__main__":
    main()
