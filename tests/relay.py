#!/usr/bin/python3
"""A TCP relay for the tests: the WAN between the filter and the source.

    relay.py --upstream unix:PATH | tcp:HOST:PORT --port-file FILE
             [--rate BYTES_PER_S]

Listens on 127.0.0.1 (a free port, written to --port-file once it
listens) and relays each connection to the upstream, one thread per
direction.  --rate caps the bytes the upstream sends, all connections
together (0: no cap), in 16K chunks: a slow link that carries data
steadily.

Signals make the faults a WAN makes, silently:

  SIGUSR1  the source vanishes (a reboot, a NAT that forgets its
           flows): every connection is frozen for ever, both ways,
           without a FIN or a RST (its sockets stay open, nothing is
           read or relayed again); new connections are refused
           (accepted and closed at once) until
  SIGUSR2  the source is back: new connections are relayed again (the
           frozen ones stay frozen: the source forgot them).

Logs each connection and each signal to stderr.
"""

import argparse
import os
import signal
import socket
import sys
import threading
import time

CHUNK = 16 * 1024


class Link:
    """The downstream direction's shared rate: each chunk waits for its
    slot."""

    def __init__(self, rate):
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def take(self, n):
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            self.next_free = max(self.next_free, now) + n / self.rate
            end = self.next_free
        time.sleep(max(0.0, end - time.monotonic()))


class Relay:
    def __init__(self, upstream, rate):
        self.upstream = upstream
        self.link = Link(rate)
        self.down = False
        self.generation = 0          # bumped when the source vanishes
        self.n = 0

    def connect_upstream(self):
        kind, _, where = self.upstream.partition(":")
        if kind == "unix":
            s = socket.socket(socket.AF_UNIX)
            s.connect(where)
        else:
            host, _, port = where.rpartition(":")
            s = socket.create_connection((host, int(port)))
        return s

    def pump(self, src, dst, gen, paced):
        """Copy src to dst until EOF, or for ever frozen once the
        source has vanished since generation gen."""
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            if gen != self.generation:
                threading.Event().wait()     # frozen: never a FIN or RST
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if paced:
                self.link.take(len(data))
            if gen != self.generation:
                threading.Event().wait()
            try:
                dst.sendall(data)
            except OSError:
                return

    def serve(self, listener):
        while True:
            c, _ = listener.accept()
            self.n += 1
            if self.down:
                log("conn %d refused: the source is down" % self.n)
                c.close()
                continue
            try:
                u = self.connect_upstream()
            except OSError as e:
                log("conn %d: upstream: %s" % (self.n, e))
                c.close()
                continue
            log("conn %d relayed" % self.n)
            gen = self.generation
            for a, b, paced in ((c, u, False), (u, c, True)):
                threading.Thread(target=self.pump, args=(a, b, gen, paced),
                                 daemon=True).start()


def log(msg):
    print("relay: %s" % msg, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--rate", type=float, default=0)
    a = ap.parse_args()
    relay = Relay(a.upstream, a.rate)

    def vanish(signum, frame):
        relay.down = True
        relay.generation += 1
        log("the source vanished: every connection frozen")

    def back(signum, frame):
        relay.down = False
        log("the source is back")

    signal.signal(signal.SIGUSR1, vanish)
    signal.signal(signal.SIGUSR2, back)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % listener.getsockname()[1])
    os.rename(tmp, a.port_file)
    relay.serve(listener)


if __name__ == "__main__":
    main()
