#!/usr/bin/env bash
# SIGTERM while one connection has many replies queued: 64 reads of
# 64K that the filter answers at once (holes of a sparse source, whose
# extents it has learnt) from a client that does not read the replies
# yet, so that nbdkit's threads wait to send them when the stop comes.
# nbdkit must exit with status 0, no request may get an error reply,
# and nothing may abort.  (nbdkit 1.32.4/1.32.5 abort in raw_send_socket
# when one thread's reply fails to send and another sends next: with
# the client's socket shut down, as the stop did before, that happened
# on every round.)
source "$(dirname "$0")/functions.sh"
rounds=${INFLIGHT_ROUNDS:-5}

# 256 MiB with 4K of data at the start of every MiB.
truncate -s 256M "$tmp/src.img"
$PY -c '
import os, sys
with open(sys.argv[1], "r+b") as f:
    for mib in range(256):
        f.seek(mib << 20); f.write(os.urandom(4096))' "$tmp/src.img"
start_source src "$tmp/src.img" --filter=delay rdelay=300ms

for i in $(seq "$rounds"); do
    rm -f "$tmp/dst.img" "$tmp/dst.img.bitmap" "$tmp/dst.img.bitmap.volatile" \
          "$tmp/dst.sock" "$tmp/dst.ctl" "$tmp/dst.log"
    "${NBDKIT[@]}" -f --log=stderr -U "$tmp/dst.sock" -P "$tmp/dst.pid" \
        --filter="$FILTER" nbd socket="$tmp/src.sock" relocate-file="$tmp/dst.img" \
        relocate-control="$tmp/dst.ctl" relocate-start=immediate relocate-rate=1 \
        2>"$tmp/dst.log" </dev/null &
    dpid=$!
    wait_for nbdinfo --can connect "$(uri dst)" || fail "round $i: nbdkit does not serve"
    # 64 reads of 64K in the holes; SIGTERM 0.1 s later (the replies
    # wait in nbdkit); then read them.
    $PY - "$tmp/dst.sock" "$dpid" > "$tmp/client.out" 2>&1 <<'PYEOF' &
import os, signal, sys, time
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
bufs = [nbd.Buffer(65536) for _ in range(64)]
cookies = [h.aio_pread(b, ((k * 37 % 256) << 20) + (8 + k % 8) * 65536)
           for k, b in enumerate(bufs)]
time.sleep(0.1)
os.kill(int(sys.argv[2]), signal.SIGTERM)
ok = replies = 0
try:
    while h.aio_in_flight() > 0:
        h.poll(-1)
except nbd.Error:
    pass
for c in cookies:
    try:
        if h.aio_command_completed(c):
            ok += 1
    except nbd.Error as e:
        # The connection closed before a reply: libnbd retires the
        # command with ENOTCONN.  Anything else came from the server.
        if e.errno != "ENOTCONN":
            replies += 1
            print("error reply:", e.string)
print("completed", ok, "error replies", replies)
sys.exit(1 if replies else 0)
PYEOF
    cpid=$!
    st=0; wait "$dpid" || st=$?
    cst=0; wait "$cpid" || cst=$?
    ! grep -q "Assertion" "$tmp/dst.log" || fail "round $i: nbdkit aborted: $(grep Assertion "$tmp/dst.log")"
    [ "$st" -eq 0 ] || fail "round $i: nbdkit exited with status $st: $(tail -n 3 "$tmp/dst.log")"
    [ "$cst" -eq 0 ] || fail "round $i: the client saw error replies: $(cat "$tmp/client.out")"
    echo "round $i: exit 0; $(tail -n 1 "$tmp/client.out")"
done
pass "SIGTERM with 64 reads in flight, $rounds rounds: clean exits, no error reply"
