#!/usr/bin/python3
"""Power-cut model for tests/test-powercut.sh.

powercut.py build SNAPDIR MANIFEST LOG LIVEDIR OUTDIR SEED
    Build in OUTDIR what a disk might hold after a power cut (with SEED
    "drop-all": the disk that kept nothing unsynced), from
    SNAPDIR (a copy of the directory as it was before the shimmed run),
    MANIFEST ("INODE NAME" per line for the directory "." and each file
    of the directory at that time), LOG (tests/powercut-shim.c's log and
    its LOG.data) and LIVEDIR (the directory as the killed process left
    it).
powercut.py adopt URI ORACLE LOG SEED
    After tests/torture.py settle: read the whole export; bytes the
    oracle knows must match (torture.py verify's check), and every unknown
    byte must be the oracle's previous byte or that of some write
    issued after the last acknowledged flush (writer LOG, SEED).  Then
    the oracle adopts what was read: from now on it is all known.

The model, per inode (a file, or the directory):
  - Every change logged before the start of the last completed fsync or
    fdatasync of that inode is on disk.  (A change logged between the
    start and the end of a sync may have raced it: it is not covered.)
  - Every later change is kept or dropped at random: a write or an
    fallocate is torn into 4 KiB pieces (file offsets), each kept or
    dropped on its own; ftruncate (and O_TRUNC) is kept or dropped.
  - The directory: creating a file (the first open of an inode not in
    MANIFEST; inode numbers are assumed not to be reused within a
    round), rename and unlink are durable once an fsync of the
    directory started after them completed.  Later ones reach the disk
    as a journal would replay them: a random prefix of them, in order.
    A file whose name did not survive is gone, whatever its data.
    Each round starts from the files the previous one left, so files
    created by the filter (the bitmap, the local file) go through this.
  - FILE.bitmap.volatile (written through mmap, never synced: its
    stores cannot be logged) is taken as the killed process left it,
    the worst case for a file that must never be trusted after a
    reboot; the test restarts with another boot id.
"""

import os
import random
import shutil
import sys

sys.dont_write_bytecode = True          # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torture  # noqa: E402

PIECE = 4096
VOLATILE_SUFFIX = ".volatile"


def read_log(path):
    recs = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) < 2:
            continue                         # torn by the kill
        recs.append((int(f[0]), f[1], f[2:]))
    return recs


class DropAll:
    """In place of random.Random: every change not yet synced is lost."""
    def random(self):
        return 1.0

    def randint(self, a, b):
        return a


def build(snapdir, manifest, log_path, livedir, outdir, seed):
    rng = DropAll() if seed == "drop-all" else random.Random(seed)
    recs = read_log(log_path)
    data = open(log_path + ".data", "rb")

    start_names = {}                         # name -> inode, at the start
    dir_ino = None
    for line in open(manifest):
        ino, name = line.split(None, 1)
        name = name.strip()
        if name == ".":
            dir_ino = int(ino)
        else:
            start_names[name] = int(ino)
    initial = {ino: name for name, ino in start_names.items()}

    # Sort the log into changes per inode, syncs per inode, and
    # directory changes.
    ops = {}                                 # inode -> [(seq, kind, args)]
    synced = {}                              # inode -> cut-off seq
    dirops = []                              # [(seq, kind, args)]
    known = set(start_names.values())
    for seq, kind, a in recs:
        if kind == "open":
            ino, flags, path = int(a[0]), int(a[1], 16), a[2]
            if ino == dir_ino:
                continue
            if os.path.dirname(path) != os.path.abspath(livedir):
                sys.exit("powercut: %s is not directly in %s" % (path, livedir))
            if ino not in known:
                known.add(ino)
                dirops.append((seq, "create", (os.path.basename(path), ino)))
            if flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR):
                ops.setdefault(ino, []).append((seq, "trunc", (0,)))
        elif kind == "write":
            ino, off, n, doff = map(int, a)
            ops.setdefault(ino, []).append((seq, "write", (off, n, doff)))
        elif kind == "falloc":
            ino, mode, off, n = int(a[0]), int(a[1], 16), int(a[2]), int(a[3])
            ops.setdefault(ino, []).append((seq, "falloc", (mode, off, n)))
        elif kind == "trunc":
            ops.setdefault(int(a[0]), []).append((seq, "trunc", (int(a[1]),)))
        elif kind == "sync":
            ino, begin = int(a[0]), int(a[1])
            synced[ino] = max(synced.get(ino, -1), begin)
        elif kind == "rename":
            dirops.append((seq, "rename", (os.path.basename(a[0]),
                                          os.path.basename(a[1]))))
        elif kind == "unlink":
            dirops.append((seq, "unlink", (os.path.basename(a[0]),)))
        # close and syncb need nothing

    # The directory: durable prefix, then a random prefix of the rest.
    cut = synced.get(dir_ino, -1)
    durable = [d for d in dirops if d[0] < cut]
    rest = [d for d in dirops if d[0] >= cut]
    kept_dirops = durable + rest[:rng.randint(0, len(rest))]
    names = dict(start_names)
    for _, kind, a in kept_dirops:
        if kind == "create":
            names[a[0]] = a[1]
        elif kind == "rename":
            if a[0] in names:
                names[a[1]] = names.pop(a[0])
        elif kind == "unlink":
            names.pop(a[0], None)

    os.makedirs(outdir)
    stats = [0, 0]
    for name, ino in sorted(names.items()):
        out = os.path.join(outdir, name)
        if ino in initial:
            shutil.copyfile(os.path.join(snapdir, initial[ino]), out)
        else:
            open(out, "wb").close()
        with open(out, "r+b") as f:
            for seq, kind, a in ops.get(ino, []):
                sure = seq < synced.get(ino, -1)
                stats[0] += not sure
                stats[1] += apply_op(f, kind, a, data, sure, rng)
    # The volatile bitmap: as the killed process left it.
    vol = []
    if os.path.isdir(livedir):
        for name in os.listdir(livedir):
            if name.endswith(VOLATILE_SUFFIX):
                shutil.copyfile(os.path.join(livedir, name),
                                os.path.join(outdir, name))
                vol.append(name)
    print("power cut: %d records; %d changes after the last sync, %d of "
          "them (or pieces) kept; %d/%d directory changes not yet synced "
          "kept; files: %s%s"
          % (len(recs), stats[0], stats[1], len(kept_dirops) - len(durable),
             len(rest), " ".join(sorted(names)) or "none",
             (" (volatile, as left: %s)" % " ".join(vol)) if vol else ""))


def apply_op(f, kind, a, data, sure, rng):
    """Apply one change to open file f, all of it if sure, else kept or
    dropped at random (a range torn into 4 KiB pieces).  Returns 1 if
    something of an unsure change was kept."""
    if kind == "trunc":
        if sure or rng.random() < 0.5:
            f.truncate(a[0])
            return 0 if sure else 1
        return 0
    if kind == "write":
        off, n, doff = a
        data.seek(doff)
        buf = data.read(n)
    else:
        mode, off, n = a
        if mode & ~(0x01 | 0x02 | 0x10):      # KEEP_SIZE PUNCH_HOLE ZERO_RANGE
            sys.exit("powercut: fallocate mode %#x is not modelled" % mode)
        size = f.seek(0, os.SEEK_END)
        if mode & 0x01:                       # KEEP_SIZE
            n = max(0, min(n, size - off))
        if not mode & (0x02 | 0x10):          # plain allocation
            if off + n > size and (sure or rng.random() < 0.5):
                f.truncate(off + n)
                return 0 if sure else 1
            return 0
        buf = bytes(n)                        # punch or zero a range
    kept = 0
    pos = off
    while pos < off + n:
        end = min((pos // PIECE + 1) * PIECE, off + n)
        if sure or rng.random() < 0.5:
            f.seek(pos)                      # past the end: extends
            f.write(buf[pos - off:end - off])
            kept = 1
        pos = end
    return 0 if sure else kept


def adopt(uri, oracle_path, log_path, seed):
    oracle = torture.Oracle(oracle_path)
    entries = []
    for line in open(log_path):
        try:
            entries.append(torture.json.loads(line))
        except ValueError:
            pass
    flushed = max([e["flushed"] for e in entries if "flushed" in e],
                  default=-1)
    maybe = [(e["off"], torture.write_data(seed, e["seq"], e["n"]))
             for e in entries if "seq" in e and e["seq"] > flushed]

    h = torture.connect(uri)
    size = h.get_size()
    got = bytearray()
    for off in range(0, size, 4 << 20):
        got += h.pread(min(4 << 20, size - off), off)
    h.shutdown()
    oracle.f.seek(0)
    old = oracle.f.read()
    mask = oracle.mask

    # Known bytes: exact.
    if got != old:
        for off in range(0, size, 1 << 16):
            a, b = got[off:off + (1 << 16)], old[off:off + (1 << 16)]
            if a == b:
                continue
            for i in range(len(a)):
                if mask[off + i] and a[i] != b[i]:
                    sys.exit("adopt: a flushed write or the source's data "
                             "was lost: byte %d: got %d, want %d"
                             % (off + i, a[i], b[i]))

    # Unknown bytes: within a 4 KiB page, between the edges of the
    # writes, every byte comes from the same candidate: the oracle's
    # byte or one of the writes covering it.
    pages = set()
    for off, d in maybe:
        pages.update(range(off // PIECE, (off + len(d) - 1) // PIECE + 1))
    from_writes = 0
    for p in sorted(pages):
        a, b = p * PIECE, min((p + 1) * PIECE, size)
        if got[a:b] == old[a:b]:
            continue
        cover = [(off, d) for off, d in maybe
                 if off < b and off + len(d) > a]
        edges = {a, b}
        for off, d in cover:
            edges.update(e for e in (off, off + len(d)) if a < e < b)
        edges = sorted(edges)
        for s, e in zip(edges, edges[1:]):
            g = got[s:e]
            if g == old[s:e]:
                continue
            if not any(off <= s and e <= off + len(d) and
                       d[s - off:e - off] == g for off, d in cover):
                sys.exit("adopt: bytes %d-%d are neither the oracle's nor "
                         "those of any write after the last flush"
                         % (s, e - 1))
            from_writes += e - s
    unknown = mask.count(0)
    oracle.write(0, bytes(got))
    oracle.save()
    print("adopted: %d unknown bytes, %d of them from unflushed writes"
          % (unknown, from_writes))


def main():
    cmd = sys.argv[1]
    if cmd == "build":
        seed = sys.argv[7]
        build(*sys.argv[2:7], seed if seed == "drop-all" else int(seed))
    elif cmd == "adopt":
        adopt(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit("unknown command %s" % cmd)


if __name__ == "__main__":
    main()
