#!/usr/bin/python3
"""A client that behaves like QEMU's NBD client with reconnect-delay.

reconnect.py run URI SOURCE STATEDIR [options]
    HANDLES connections, each with up to DEPTH asynchronous reads,
    writes, zeroes, trims and (rarely) flushes in flight, like a guest.
    Each connection owns its own 1 MiB stripes and never has two
    overlapping requests in flight, so the expected content never
    depends on ordering.  When the connection drops (the server was
    killed or stopped) it reconnects, retrying for up to
    --reconnect-timeout seconds, and resends every request that had no
    reply, as QEMU does; then (with --verify-on-reconnect, the default)
    it reads back every block it has written or zeroed in its stripes
    before it carries on.

    A request counts as ACKNOWLEDGED when the server replied without
    error.  An acknowledged write or zero must read back, flushed or
    not; trimmed bytes are unknown until written again; bytes never
    written must be SOURCE's.  An error reply (as opposed to a dropped
    connection, after which the request is resent) is counted and
    printed: it is what a guest would have seen as an I/O error.

    It runs until STOPFILE (--stop-file) exists or --ops requests per
    connection were acknowledged, then completes what is in flight
    (reconnecting if it must), flushes, reads the whole export and
    checks it.  It writes STATEDIR/progress (JSON, rewritten several
    times a second: acked, drops, reconnects, generation, errors,
    lost_blocks, connected) for a driving shell test, and at the end
    STATEDIR/oracle.img and oracle.img.mask (one byte per 512 byte
    sector: 1 = known) and STATEDIR/result.json.  Exit status 0 only
    if there was no error reply and no acknowledged byte was lost.

reconnect.py verify URI|FILE ORACLE SOURCE
    The export (or a raw image file) equals ORACLE wherever
    ORACLE.mask says known; prints how many 4 KiB blocks differ.
"""

import argparse
import errno
import json
import mmap
import os
import random
import sys
import threading
import time

import nbd

STRIPE = 1 << 20
BLK = 4096
SECTOR = 512        # the unit of the known mask: trims and failed
                    # requests are always sector-aligned
# What libnbd turns an NBD error reply into.  Anything else (ENOTCONN
# for the requests in flight when the connection died) is a drop.
SERVER_ERRNOS = {errno.EPERM, errno.EIO, errno.ENOMEM, errno.EINVAL,
                 errno.ENOSPC, errno.EOVERFLOW, errno.ENOTSUP,
                 errno.ESHUTDOWN}


def errname(e):
    return errno.errorcode.get(e, str(e)) if e else "?"


def is_dead(h):
    try:
        return h.aio_is_dead() or h.aio_is_closed()
    except nbd.Error:
        return True


def dropped(h, e):
    """Whether nbd.Error e means the connection went away (the request
    got no reply) rather than an error reply from the server."""
    if e.errnum == errno.ENOTCONN:
        return True
    if e.errnum in SERVER_ERRNOS:
        # Even if the handle is dead now: this request had its error
        # reply before that, and libnbd reports the reply's errno.
        return False
    return is_dead(h)


class Fatal(Exception):
    pass


class Oracle:
    """Expected content: data, known (per sector: 1 = known), touched
    (per 4K block: written or zeroed by this client), src (the source,
    mapped)."""

    def __init__(self, source):
        with open(source, "rb") as f:
            self.src = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        self.data = bytearray(self.src)
        self.known = bytearray(b"\1") * (len(self.src) // SECTOR)
        self.touched = bytearray(len(self.src) // BLK + 1)
        self.lock = threading.Lock()
        self.lost = {}       # 4K block -> description (acknowledged data lost)
        self.wrong = {}      # 4K block -> description (never written, not the source's)

    def write(self, off, buf):
        n = len(buf)
        self.data[off:off + n] = buf
        s, e = off // SECTOR, (off + n - 1) // SECTOR + 1
        self.known[s:e] = b"\1" * (e - s)
        self.touched[off // BLK:(off + n - 1) // BLK + 1] = \
            b"\1" * ((off + n - 1) // BLK + 1 - off // BLK)

    def unknown(self, off, n):
        assert off % SECTOR == 0 and n % SECTOR == 0, (off, n)
        self.known[off // SECTOR:(off + n) // SECTOR] = bytes(n // SECTOR)

    def check(self, off, got, what):
        """Compare got (read at off) with the expectation; record and
        return the number of newly found bad 4K blocks."""
        n = len(got)
        if got == self.data[off:off + n]:
            return 0
        new = 0
        b = off // BLK * BLK
        while b < off + n:
            lo, hi = max(b, off), min(b + BLK, off + n)
            g = got[lo - off:hi - off]
            w = self.data[lo:hi]
            if g != w:
                k = self.known
                bad = [i for i in range(hi - lo)
                       if k[(lo + i) // SECTOR] and g[i] != w[i]]
                if bad:
                    blk = b // BLK
                    if g == self.src[lo:hi]:
                        found = "the source's data"
                    elif g == bytes(hi - lo):
                        found = "zeroes"
                    else:
                        found = "other data"
                    desc = "%s: 4K block at %d: %d bytes wrong from %d, found %s" \
                        % (what, b, len(bad), lo + bad[0], found)
                    with self.lock:
                        table = self.lost if self.touched[blk] else self.wrong
                        if blk not in table:
                            table[blk] = desc
                            new += 1
                            if len(self.lost) + len(self.wrong) <= 20:
                                print("MISMATCH " + desc, file=sys.stderr,
                                      flush=True)
            b += BLK
        return new

    def save(self, path):
        with open(path, "wb") as f:
            f.write(self.data)
        with open(path + ".mask", "wb") as f:
            f.write(self.known)


class Req:
    __slots__ = ("op", "off", "n", "data", "flags", "buf", "sends")

    def __init__(self, op, off=0, n=0, data=None, flags=0):
        self.op, self.off, self.n, self.data, self.flags = op, off, n, data, flags
        self.buf = None
        self.sends = 0

    def __repr__(self):
        return "%s(off=%d, n=%d%s)" % (self.op, self.off, self.n,
                                       ", fua" if self.flags & nbd.CMD_FLAG_FUA else "")


class Client:
    def __init__(self, args):
        self.a = args
        self.oracle = Oracle(args.source)
        self.size = len(self.oracle.src)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.st = {"acked": 0, "write": 0, "zero": 0, "trim": 0, "read": 0,
                   "flush": 0, "drops": 0, "reconnects": 0, "resent": 0,
                   "errors": 0, "verified_bytes": 0}
        self.errors = []
        self.fatal = None
        self.workers = []

    def count(self, key, n=1):
        with self.lock:
            self.st[key] += n

    def error_reply(self, idx, gen, r, e):
        with self.lock:
            self.st["errors"] += 1
            rec = {"op": r.op, "off": r.off, "n": r.n, "errno": errname(e.errnum),
                   "message": e.string, "connection": idx, "generation": gen,
                   "resent": r.sends > 1, "time": round(time.time(), 3)}
            self.errors.append(rec)
        print("ERROR REPLY: %r on connection %d (generation %d, sent %d times): %s"
              % (r, idx, gen, r.sends, e.string), file=sys.stderr, flush=True)

    def connect(self, what):
        """A new handle, retrying for --reconnect-timeout seconds."""
        deadline = time.monotonic() + self.a.reconnect_timeout
        while True:
            h = nbd.NBD()
            try:
                h.connect_uri(self.a.uri)
                return h
            except nbd.Error as e:
                if time.monotonic() > deadline:
                    raise Fatal("%s: could not connect within %g s: %s"
                                % (what, self.a.reconnect_timeout, e.string))
            del h
            time.sleep(self.a.reconnect_delay)

    def progress(self):
        with self.lock:
            p = dict(self.st)
        p["lost_blocks"] = len(self.oracle.lost)
        p["wrong_blocks"] = len(self.oracle.wrong)
        p["generation"] = min((w.gen for w in self.workers), default=0)
        p["connected"] = all(w.connected for w in self.workers)
        p["acked_this_generation"] = min((w.acked_gen for w in self.workers), default=0)
        p["stopping"] = self.stop.is_set()
        return p

    def write_progress(self):
        path = os.path.join(self.a.statedir, "progress")
        with open(path + ".tmp", "w") as f:
            json.dump(self.progress(), f)
        os.rename(path + ".tmp", path)

    def should_stop(self):
        if self.stop.is_set():
            return True
        if self.a.stop_file and os.path.exists(self.a.stop_file):
            self.stop.set()
        return self.stop.is_set()


class Worker(threading.Thread):
    def __init__(self, client, idx):
        super().__init__(daemon=True)
        self.c, self.a, self.idx = client, client.a, idx
        self.o = client.oracle
        self.rng = random.Random("%d-%d" % (self.a.seed, idx))
        self.mine = [s for s in range(client.size // STRIPE)
                     if s % self.a.handles == idx]
        self.h = None
        self.gen = 0                # connections made so far
        self.connected = False
        self.pending = []           # sent (or to send), no reply yet, in order
        self.inflight = {}          # cookie -> Req on the current handle
        self.drop = False
        self.need_verify = False
        self.acked = 0
        self.acked_gen = 0
        self.next_issue = 0.0

    # -- requests --

    def pick(self):
        rng, a = self.rng, self.a
        x = rng.random()
        if x < a.flush_prob:
            return Req("flush")
        x = rng.random()
        s = rng.choice(self.mine) * STRIPE
        if x < 0.30:
            op = "read"
            n = rng.choice([512, 4096, 4096, 16384, 65536, 131072])
        elif x < 0.80:
            op = "write"
            n = rng.choice([512, 4096, 4096, 4096, 8192, 12288, 65536, 65536,
                            131072, 51200, 262144])
        elif x < 0.92 or not a.trim:
            op = "zero"
            n = rng.choice([4096, 65536, 131072, 262144])
        else:
            op = "trim"
            n = rng.choice([4096, 65536, 131072])
        if op == "trim" or rng.random() < 0.5:
            align = min(n, 65536)
        else:
            align = 512
        off = s + align * rng.randrange((STRIPE - n) // align + 1)
        for r in self.pending:
            if r.op != "flush" and off < r.off + r.n and r.off < off + n:
                return None          # overlaps a request without a reply
        flags = 0
        if op == "write":
            data = rng.randbytes(n)
            if rng.random() < 0.05:
                flags = nbd.CMD_FLAG_FUA
            return Req(op, off, n, data, flags)
        if op == "zero" and rng.random() < 0.5:
            flags = nbd.CMD_FLAG_NO_HOLE
        return Req(op, off, n, None, flags)

    def send(self, r):
        """Send r on the current handle; False if the connection is gone."""
        h = self.h
        try:
            if r.op == "write":
                c = h.aio_pwrite(r.data, r.off, flags=r.flags)
            elif r.op == "zero":
                c = h.aio_zero(r.n, r.off, flags=r.flags)
            elif r.op == "trim":
                c = h.aio_trim(r.n, r.off)
            elif r.op == "read":
                r.buf = nbd.Buffer(r.n)
                c = h.aio_pread(r.buf, r.off)
            else:
                c = h.aio_flush()
        except nbd.Error as e:
            if e.errnum == errno.ENOTCONN or is_dead(self.h):
                self.drop = True
                return False
            raise
        r.sends += 1
        if r.sends > 1:
            self.c.count("resent")
        self.inflight[c] = r
        return True

    def ack(self, r):
        o = self.o
        if r.op == "write":
            o.write(r.off, r.data)
        elif r.op == "zero":
            o.write(r.off, bytes(r.n))
        elif r.op == "trim":
            o.unknown(r.off, r.n)
        elif r.op == "read":
            o.check(r.off, bytes(r.buf.to_bytearray()),
                    "read %r on connection %d gen %d" % (r, self.idx, self.gen))
            r.buf = None
        self.acked += 1
        self.acked_gen += 1
        self.c.count(r.op)
        self.c.count("acked")

    def failed(self, r, e):
        """An error reply: the guest would see an I/O error."""
        self.c.error_reply(self.idx, self.gen, r, e)
        if r.op in ("write", "zero", "trim"):
            self.o.unknown(r.off, r.n)      # may or may not have happened

    def harvest(self):
        for c, r in list(self.inflight.items()):
            try:
                done = self.h.aio_command_completed(c)
            except nbd.Error as e:
                del self.inflight[c]
                if dropped(self.h, e):
                    self.drop = True        # stays pending: resent
                else:
                    self.pending.remove(r)
                    self.failed(r, e)
                continue
            if done:
                del self.inflight[c]
                self.pending.remove(r)
                self.ack(r)
        if not self.drop and is_dead(self.h):
            self.drop = True

    # -- connections --

    def reconnect(self):
        if self.h is not None:
            self.c.count("drops")
        self.connected = False
        self.inflight.clear()
        self.h = None
        self.h = self.c.connect("connection %d" % self.idx)
        if self.gen > 0:
            self.c.count("reconnects")
            self.need_verify = self.a.verify_on_reconnect
        self.gen += 1
        self.acked_gen = 0
        self.drop = False
        self.connected = True
        for r in list(self.pending):       # as QEMU does: resend, in order
            if not self.send(r):
                return

    def verify_mine(self):
        """Read back every block this connection wrote or zeroed."""
        t = self.o.touched
        runs = []
        for s in self.mine:
            b0 = s * STRIPE // BLK
            start = None
            for b in range(b0, b0 + STRIPE // BLK + 1):
                if b < b0 + STRIPE // BLK and t[b]:
                    if start is None:
                        start = b
                elif start is not None:
                    runs.append((start * BLK, (b - start) * BLK))
                    start = None
        for off, n in runs:
            try:
                got = self.h.pread(n, off)
            except nbd.Error as e:
                if dropped(self.h, e):
                    self.drop = True
                    return False
                self.failed(Req("read", off, n), e)
                continue
            self.o.check(off, got, "read-back after reconnect %d of connection %d"
                         % (self.gen - 1, self.idx))
            self.c.count("verified_bytes", n)
        return True

    def run(self):
        try:
            self.loop()
        except Fatal as e:
            self.c.fatal = str(e)
            self.c.stop.set()
        except Exception as e:          # a bug: report it, stop everything
            self.c.fatal = "connection %d: %r" % (self.idx, e)
            self.c.stop.set()
            raise

    def loop(self):
        a = self.a
        self.reconnect()
        while True:
            if self.drop:
                self.reconnect()
                continue
            if self.need_verify and not self.inflight:
                if self.verify_mine():
                    self.need_verify = False
                    self.acked_gen = 0
                continue
            stopping = self.c.should_stop() or (a.ops and self.acked >= a.ops)
            if self.c.fatal:
                return
            wait = 0.2
            if not stopping and not self.need_verify:
                tries = 0
                while len(self.inflight) < a.depth and tries < 4 * a.depth:
                    if a.rate:
                        now = time.monotonic()
                        if now < self.next_issue:
                            wait = min(wait, self.next_issue - now)
                            break
                        self.next_issue = max(self.next_issue, now - 0.5) + 1 / a.rate
                    tries += 1
                    r = self.pick()
                    if r is None:
                        continue
                    self.pending.append(r)
                    if not self.send(r):
                        break
            if not self.inflight and not self.pending and stopping:
                return
            if not self.drop:
                if self.inflight:
                    try:
                        self.h.poll(max(1, int(wait * 1000)))
                    except nbd.Error:
                        pass                # seen in harvest
                else:
                    time.sleep(wait)
                self.harvest()


def final_phase(client):
    """Flush, then read the whole export back and check it."""
    c, o = client, client.oracle
    h = c.connect("final check")
    for attempt in range(3):
        try:
            h.flush()
            break
        except nbd.Error as e:
            if not dropped(h, e):
                c.error_reply(-1, 0, Req("flush"), e)
                break
            h = c.connect("final check")
    step = 4 << 20
    off = 0
    while off < c.size:
        n = min(step, c.size - off)
        try:
            got = h.pread(n, off)
        except nbd.Error as e:
            if dropped(h, e):
                h = c.connect("final check")
                continue
            c.error_reply(-1, 0, Req("read", off, n), e)
            off += n
            continue
        o.check(off, got, "final read-back")
        off += n
    try:
        h.shutdown()
    except nbd.Error:
        pass


def run(a):
    os.makedirs(a.statedir, exist_ok=True)
    c = Client(a)
    print("reconnect client: seed %d, %d connections x depth %d, %d MiB export"
          % (a.seed, a.handles, a.depth, c.size >> 20), flush=True)
    c.workers = [Worker(c, i) for i in range(a.handles)]
    for w in c.workers:
        w.start()
    while any(w.is_alive() for w in c.workers):
        c.should_stop()
        c.write_progress()
        time.sleep(0.1)
    if not c.fatal:
        try:
            final_phase(c)
        except Fatal as e:
            c.fatal = str(e)
    c.write_progress()
    o = c.oracle
    o.save(os.path.join(a.statedir, "oracle.img"))
    st = c.st
    result = dict(c.progress(), error_replies=c.errors, fatal=c.fatal,
                  lost=sorted(o.lost.values())[:100],
                  wrong=sorted(o.wrong.values())[:100])
    with open(os.path.join(a.statedir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    by_errno = {}
    for e in c.errors:
        key = "%s %s" % (e["op"], e["errno"])
        by_errno[key] = by_errno.get(key, 0) + 1
    print("acknowledged %d requests (%d writes, %d zeroes, %d trims, %d reads, "
          "%d flushes); %d connection drops, %d reconnects, %d requests resent; "
          "%d bytes read back after reconnects"
          % (st["acked"], st["write"], st["zero"], st["trim"], st["read"],
             st["flush"], st["drops"], st["reconnects"], st["resent"],
             st["verified_bytes"]))
    print("error replies: %d %s" % (len(c.errors), json.dumps(by_errno)))
    print("acknowledged 4K blocks lost: %d; never-written 4K blocks wrong: %d"
          % (len(o.lost), len(o.wrong)))
    if c.fatal:
        print("FATAL: %s" % c.fatal)
    ok = not c.fatal and not c.errors and not o.lost and not o.wrong
    return 0 if ok else 1


def verify(target, oracle_path, source):
    o = Oracle(source)
    o.data = bytearray(open(oracle_path, "rb").read())
    o.known = bytearray(open(oracle_path + ".mask", "rb").read())
    o.touched = bytearray(b"\1") * len(o.touched)   # any mismatch is a loss
    step = 4 << 20
    if target.startswith("nbd"):
        h = nbd.NBD()
        h.connect_uri(target)
        assert h.get_size() == len(o.data), "size differs"
        for off in range(0, len(o.data), step):
            o.check(off, h.pread(min(step, len(o.data) - off), off), "verify")
        h.shutdown()
    else:
        with open(target, "rb") as f:
            assert os.fstat(f.fileno()).st_size == len(o.data), "size differs"
            for off in range(0, len(o.data), step):
                o.check(off, f.read(step), "verify file")
    unknown = (len(o.known) - o.known.count(1)) * SECTOR
    print("verify %s: %d 4K blocks differ (%d bytes unknown: trimmed)"
          % (target, len(o.lost), unknown))
    return 1 if o.lost else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "verify":
        if len(sys.argv) != 5:
            sys.exit("usage: reconnect.py verify URI|FILE ORACLE SOURCE")
        sys.exit(verify(sys.argv[2], sys.argv[3], sys.argv[4]))
    p = argparse.ArgumentParser(prog="reconnect.py run")
    p.add_argument("cmd", choices=["run"])
    p.add_argument("uri")
    p.add_argument("source")
    p.add_argument("statedir")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--handles", type=int, default=2)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--ops", type=int, default=0,
                   help="stop after this many acknowledged requests per connection")
    p.add_argument("--stop-file")
    p.add_argument("--rate", type=float, default=0,
                   help="at most this many requests per second per connection")
    p.add_argument("--flush-prob", type=float, default=0.01)
    p.add_argument("--no-trim", dest="trim", action="store_false")
    p.add_argument("--reconnect-timeout", type=float, default=60)
    p.add_argument("--reconnect-delay", type=float, default=0.05)
    p.add_argument("--no-verify-on-reconnect", dest="verify_on_reconnect",
                   action="store_false")
    a = p.parse_args()
    if not a.ops and not a.stop_file:
        p.error("give --ops or --stop-file")
    sys.exit(run(a))


if __name__ == "__main__":
    main()
