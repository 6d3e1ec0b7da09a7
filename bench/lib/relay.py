#!/usr/bin/python3
"""A TCP relay that models a long-RTT path with per-stream limits.

    relay.py --upstream unix:/path/src.sock --listen 127.0.0.1:0
             --port-file F --pid-file P --rtt 20ms
             --conn-rate 32M --link-rate 128M

Listens on 127.0.0.1 (port 0: any free port, written to --port-file
once listening) and, for each accepted connection, opens one to the
upstream (a unix socket or tcp:HOST:PORT).  Each direction of each
connection is a pipe that:

- delays data by RTT/2: bytes read at t are written on at
  t + serialisation + RTT/2, in order (one queue per pipe, so a slow
  or full connection never holds up another);
- paces each connection to --conn-rate bytes/s (a token bucket with
  no burst credit), and all connections of one direction together to
  --link-rate (0 = no link cap): the link sends chunks one at a time
  in the order their connections release them, and is never idle
  while one is waiting (a chunk that its connection releases later
  does not hold a place on the link before then);
- keeps at most one bandwidth-delay product in flight, like a TCP
  window: bytes read count against the window until RTT/2 after they
  were written on (the ACK's way back), and the pipe stops reading its
  source while the window is full.  The window is conn-rate * RTT plus
  one read chunk (--chunk, default 64K): the chunk's own serialisation
  time is in every byte's round trip, and without that margin a single
  stream would top out at RTT / (RTT + chunk / rate) of the rate.

So one connection gets at most conn-rate, N connections at most
min(N * conn-rate, link-rate).  Single-threaded (selectors); at exit
(SIGTERM) or when a connection closes it logs that connection's bytes
each way and duration to stderr.
"""

import argparse
import collections
import heapq
import os
import selectors
import signal
import socket
import sys
import time

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def size(s):
    """Bytes (or bytes/s): 128M, 64K, 1048576."""
    s = s.strip()
    u = s[-1:].upper() if s[-1:].isalpha() else ""
    return int(float(s[:len(s) - len(u)]) * UNITS[u])


def seconds(s):
    for suf, k in (("ms", 1e-3), ("us", 1e-6), ("s", 1)):
        if s.endswith(suf):
            return float(s[:-len(suf)]) * k
    return float(s)


class Link:
    """What the connections of one direction share: a rate cap.  A
    chunk waits in a heap by when its connection releases it; once that
    time has come the link sends it after the chunks released before
    it (first come, first served, work-conserving)."""

    def __init__(self, rate):
        self.rate = rate
        self.free = 0.0                 # when the link is next idle
        self.waiting = []               # heap: (released, seq, chunk, done)
        self.seq = 0

    def add(self, released, chunk, done):
        """chunk ([ready, ...] of a pipe's queue) leaves its connection
        at done; its ready time is set once the link has sent it."""
        self.seq += 1
        heapq.heappush(self.waiting, (released, self.seq, chunk, done))

    def deadline(self):
        return self.waiting[0][0] if self.waiting else None

    def run(self, now, delay):
        """Send every chunk released by now, in release order."""
        while self.waiting and self.waiting[0][0] <= now:
            released, _, chunk, done = heapq.heappop(self.waiting)
            self.free = max(self.free, released) + len(chunk[1]) / self.rate
            chunk[0] = max(done, self.free) + delay


class Pipe:
    """One direction of one connection: src -> dst."""

    def __init__(self, relay, conn, src, dst, link):
        self.relay, self.conn, self.src, self.dst = relay, conn, src, dst
        self.link = link
        a = relay.args
        self.delay = a.rtt / 2
        self.rate = a.conn_rate
        self.window = (int(a.conn_rate * a.rtt) + a.chunk
                       if a.conn_rate else 1 << 62)
        self.chunk = a.chunk
        self.queue = collections.deque()    # [ready, bytes, offset, held]
        self.acks = collections.deque()     # (free_time, n)
        self.inflight = 0
        self.next = 0.0                     # per-connection pacing
        self.eof = False                    # src said EOF
        self.shut = False                   # dst shut down for writing
        self.blocked = False                # dst is full: wait writable
        self.opened = None                  # when a full window opened
        self.bytes = 0

    def want_read(self):
        return not self.eof and self.inflight < self.window

    def want_write(self):
        return self.blocked

    def deadline(self):
        d = []
        if self.queue and not self.blocked and self.queue[0][0] is not None:
            d.append(self.queue[0][0])
        if self.acks:
            d.append(self.acks[0][0])
        return min(d) if d else None

    def on_readable(self, now):
        """Read while the window allows.  t is when the data is taken
        to have left: now, or, when the window has just opened, the
        ideal time it opened (the data was waiting in the socket; this
        keeps the relay's own wake-up latency out of the model)."""
        t = now if self.opened is None else min(now, self.opened)
        self.opened = None
        while self.want_read():
            n = min(self.chunk, self.window - self.inflight)
            try:
                data = self.src.recv(n)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            n = len(data)
            self.bytes += n
            self.inflight += n
            start = max(t, self.next)
            end = start + (n / self.rate if self.rate else 0)
            self.next = end
            chunk = [end + self.delay, data, 0, False]
            if self.link.rate:
                chunk[0] = None         # set by the link
                self.link.add(start, chunk, end)
            self.queue.append(chunk)

    def on_writable(self, now):
        self.blocked = False
        self.pump(now)

    def pump(self, now):
        """Write every chunk whose time has come; ACKs that are due
        free their window (and, if it was full, read at once)."""
        full = not self.want_read() and not self.eof
        while self.acks and self.acks[0][0] <= now:
            t, n = self.acks.popleft()
            self.inflight -= n
            if full and self.opened is None and self.want_read():
                self.opened = t
        if self.opened is not None:
            self.on_readable(now)
        while (self.queue and self.queue[0][0] is not None
               and self.queue[0][0] <= now and not self.blocked):
            q = self.queue[0]
            try:
                k = self.dst.send(memoryview(q[1])[q[2]:])
            except BlockingIOError:
                k = 0
            except OSError:
                self.conn.close()
                return
            q[2] += k
            if q[2] < len(q[1]):
                self.blocked = q[3] = True
                break
            self.queue.popleft()
            # the ACK leaves when the data arrived: its ideal time,
            # unless the receiver held it up
            self.acks.append(((now if q[3] else q[0]) + self.delay,
                              len(q[1])))
        if self.eof and not self.queue and not self.shut:
            self.shut = True
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def done(self):
        return self.shut


class Conn:
    def __init__(self, relay, n, client, server):
        self.relay, self.n = relay, n
        self.client, self.server = client, server
        self.t0 = time.monotonic()
        self.up = Pipe(relay, self, client, server, relay.links[0])
        self.down = Pipe(relay, self, server, client, relay.links[1])
        self.closed = False
        for s in (client, server):
            s.setblocking(False)
            relay.sel.register(s, selectors.EVENT_READ, self)
        self.masks = {client: selectors.EVENT_READ,
                      server: selectors.EVENT_READ}

    def update(self):
        if self.closed:
            return
        for s, rd, wr in ((self.client, self.up, self.down),
                          (self.server, self.down, self.up)):
            m = ((selectors.EVENT_READ if rd.want_read() else 0)
                 | (selectors.EVENT_WRITE if wr.want_write() else 0))
            if m != self.masks[s]:
                if self.masks[s] and m:
                    self.relay.sel.modify(s, m, self)
                elif m:
                    self.relay.sel.register(s, m, self)
                else:
                    self.relay.sel.unregister(s)
                self.masks[s] = m

    def event(self, sock, mask, now):
        for rd, wr in ((self.up, self.down),) if sock is self.client \
                else ((self.down, self.up),):
            if mask & selectors.EVENT_READ and rd.want_read():
                rd.on_readable(now)
            if mask & selectors.EVENT_WRITE:
                wr.on_writable(now)

    def close(self):
        if self.closed:
            return
        self.closed = True
        for s in (self.client, self.server):
            if self.masks.get(s):
                self.relay.sel.unregister(s)
            s.close()
        self.relay.conns.discard(self)
        self.relay.log("conn %d closed: %d bytes up, %d bytes down, %.2f s"
                       % (self.n, self.up.bytes, self.down.bytes,
                          time.monotonic() - self.t0))


class Relay:
    def __init__(self, args):
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.links = (Link(args.link_rate), Link(args.link_rate))
        self.conns = set()
        self.nconn = 0
        host, port = args.listen.rsplit(":", 1)
        self.lsock = socket.socket(socket.AF_INET)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, int(port)))
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, None)

    def log(self, msg):
        print("relay: " + msg, file=sys.stderr, flush=True)

    def upstream(self):
        u = self.args.upstream
        if u.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(u[5:])
        else:
            host, port = u[4:].rsplit(":", 1) if u.startswith("tcp:") \
                else u.rsplit(":", 1)
            s = socket.create_connection((host, int(port)))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def accept(self):
        try:
            c, _ = self.lsock.accept()
        except BlockingIOError:
            return
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s = self.upstream()
        except OSError as e:
            self.log("upstream: %s" % e)
            c.close()
            return
        self.nconn += 1
        self.conns.add(Conn(self, self.nconn, c, s))

    def serve(self):
        while True:
            now = time.monotonic()
            for link in self.links:
                link.run(now, self.args.rtt / 2)
            ds = [d for c in self.conns for p in (c.up, c.down)
                  for d in (p.deadline(),) if d is not None]
            ds += [d for d in (link.deadline() for link in self.links)
                   if d is not None]
            timeout = max(0.0, min(ds) - now) if ds else None
            for key, mask in self.sel.select(timeout):
                now = time.monotonic()
                if key.data is None:
                    self.accept()
                elif not key.data.closed:
                    key.data.event(key.fileobj, mask, now)
            now = time.monotonic()
            for link in self.links:
                link.run(now, self.args.rtt / 2)
            for c in list(self.conns):
                for p in (c.up, c.down):
                    if not c.closed:
                        p.pump(now)
                if c.up.done() and c.down.done():
                    c.close()
                else:
                    c.update()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True,
                    help="unix:PATH or tcp:HOST:PORT")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--port-file")
    ap.add_argument("--pid-file")
    ap.add_argument("--rtt", type=seconds, default=0.0,
                    help="round trip (20ms); each direction gets half")
    ap.add_argument("--conn-rate", type=size, default=0,
                    help="bytes/s per connection and direction (32M)")
    ap.add_argument("--link-rate", type=size, default=0,
                    help="bytes/s of all connections, per direction")
    ap.add_argument("--chunk", type=size, default=64 << 10)
    args = ap.parse_args()
    r = Relay(args)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    if args.pid_file:
        with open(args.pid_file + ".tmp", "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(args.pid_file + ".tmp", args.pid_file)
    port = r.lsock.getsockname()[1]
    r.log("listening on 127.0.0.1:%d -> %s, rtt %.1f ms, %.1f MiB/s per "
          "connection, link %.1f MiB/s"
          % (port, args.upstream, args.rtt * 1e3, args.conn_rate / 2**20,
             args.link_rate / 2**20))
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write("%d\n" % port)
        os.rename(args.port_file + ".tmp", args.port_file)
    try:
        r.serve()
    finally:
        for c in list(r.conns):
            c.close()


if __name__ == "__main__":
    main()
