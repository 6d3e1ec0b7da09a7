#!/usr/bin/env bash
# A partition: the source stops answering but its connection stays open
# (kill -STOP on the source nbdkit; kill -CONT heals it).
#
# 1. With the source hung, every client request completes (success or
#    EIO) within relocate-timeout + 1 s (asserted with 2 s of margin for
#    a loaded machine): present blocks are served, writes of present
#    blocks succeed, absent reads fail with EIO, and a read or write
#    that meets a block claimed by a hung fetch does not wait beyond the
#    timeout.  relocatectl answers within 2 s.  After the heal the
#    relocation completes byte-exact with no operator action.
# 2. The source hung again mid-copy: SIGTERM stops the filter within
#    2 s (asserted < 5 s), and a restart over the same files serves the
#    present blocks although the source does not answer.
# 3. Start-up against a "source" that accepts connections but never
#    speaks: nbdkit fails to start within a bounded time, or, if it
#    starts, SIGTERM stops it; it never hangs.
source "$(dirname "$0")/functions.sh"

timeout=3
limit=$(( timeout + 3 ))        # timeout + 1 s, plus 2 s of margin
mib=32

# A STOPped source must be continued before cleanup stops it.
cont_source () { [ -s "$tmp/src.pid" ] && kill -CONT "$(cat "$tmp/src.pid")" 2>/dev/null || :; }
# (set +e: the subshell's non-zero exit must not end the trap early.)
trap 'st=$?; set +e; cont_source; (exit $st); cleanup' EXIT

random_image "$tmp/src.img" $mib
cp "$tmp/src.img" "$tmp/oracle.img"
start_source src "$tmp/src.img" --filter=delay rdelay=2ms
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-rate=256K \
    relocate-timeout=$timeout
srcpid=$(cat "$tmp/src.pid")

# The guest reads its first 4 MiB: present from now on.
present=$((4 << 20))
$NBDIO compare "$(uri dst)" "$tmp/src.img" $present
pass "first $present bytes read (present)"

kill -STOP "$srcpid"
echo "source (pid $srcpid) stopped at $(date +%T)"

# ---- 1a. Client I/O against a hung source ----
$PY - "$(uri dst)" "$tmp/src.img" "$tmp/oracle.img" "$tmp/failed-writes" \
    $limit $present "${PARTITION_SEED:-$RANDOM}" <<'PYEOF'
import errno, json, os, random, sys, threading, time
import nbd

uri, src, oracle, failed_out = sys.argv[1:5]
limit, present, seed = float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
print("seed", seed)
rng = random.Random(seed)
data = open(src, "rb").read()
size = len(data)
bs = 65536
nblocks = size // bs

def blocks(off, n):
    return set(range(off // bs, (off + n - 1) // bs + 1))

# A chosen absent block A: three connections meet it at once (a read
# that starts its fetch, a read of the same block, a write of the next
# block), then a present read from a fourth connection.
A = rng.randrange(present // bs + 8, nblocks - 8)
wp = rng.sample(range(present // bs), 6)                    # present
wa = [A + 1] + rng.sample([b for b in range(present // bs, nblocks)
                           if b not in (A, A + 1)], 5)      # absent
written = set(wp) | set(wa)

def write_op(b, whole):
    if whole:
        off, n = b * bs, bs
    else:
        n = 4096
        off = b * bs + rng.randrange(bs - n + 1)
    return ("write", off, os.urandom(n), b in wp)

def free_range(lo, hi, n):
    while True:
        off = rng.randrange(lo, hi - n + 1)
        if not blocks(off, n) & written:
            return off

first = [("read", A * bs + 3 * 512, 4096, False),
         ("read", A * bs, 65536, False),
         write_op(A + 1, True),
         ("read", free_range(0, present, 65536), 65536, True)]
ops = [write_op(b, rng.random() < 0.5) for b in wp + wa[1:]]
for _ in range(6):                      # reads of present blocks
    n = rng.choice([4096, 65536])
    ops.append(("read", free_range(0, present, n), n, True))
for _ in range(12):                     # reads over the whole disk
    n = rng.choice([4096, 65536])
    off = free_range(0, size, n)
    ops.append(("read", off, n, off + n <= present))
rng.shuffle(ops)
nworkers = 4
plans = [[first[i]] + ops[i::nworkers] for i in range(nworkers)]

with open(oracle, "r+b") as f:          # every write will be applied
    for p in plans:
        for op in p:
            if op[0] == "write":
                f.seek(op[1]); f.write(op[2])

results = []            # (kind, off, n, must, ok, errnum, seconds)
current = [None] * nworkers             # (op, start time)
lock = threading.Lock()
problems = []

def worker(i):
    h = nbd.NBD()
    h.connect_uri(uri)
    if i in (1, 2):
        time.sleep(0.5)         # after worker 0's fetch is in flight
    elif i == 3:
        time.sleep(1.0)
    for op in plans[i]:
        kind, off = op[0], op[1]
        n = op[2] if kind == "read" else len(op[2])
        must = op[3]
        current[i] = (op, time.monotonic())
        ok, errnum = True, None
        try:
            if kind == "read":
                got = h.pread(n, off)
            else:
                h.pwrite(op[2], off)
        except nbd.Error as e:
            ok, errnum = False, e.errnum
        took = time.monotonic() - current[i][1]
        current[i] = None
        with lock:
            results.append((kind, off, n, must, ok, errnum, took))
            if ok and kind == "read" and got != data[off:off + n]:
                problems.append("read of %d at %d returned wrong data" % (n, off))

threads = [threading.Thread(target=worker, args=(i,), daemon=True)
           for i in range(nworkers)]
t0 = time.monotonic()
for t in threads:
    t.start()
while any(t.is_alive() for t in threads):
    time.sleep(0.1)
    for i, c in enumerate(current):
        if c and time.monotonic() - c[1] > limit:
            op = c[0]
            n = op[2] if op[0] == "read" else len(op[2])
            print("FAIL: %s of %d bytes at offset %d (block %d, %s) has not "
                  "completed after %.1f s (limit %.0f s); %d requests done"
                  % (op[0], n, op[1], op[1] // bs,
                     "present" if op[3] else "maybe absent",
                     time.monotonic() - c[1], limit, len(results)),
                  flush=True)
            os._exit(1)

failed_writes = []
for kind, off, n, must, ok, errnum, took in sorted(results, key=lambda r: r[1]):
    print("%-5s %6d at %9d: %-3s %5.2f s" % (kind, n, off,
          "ok" if ok else "EIO" if errnum == errno.EIO else "E%s" % errnum, took))
    if took > limit:
        problems.append("%s at %d took %.1f s (limit %.0f s)" % (kind, off, took, limit))
    if not ok and errnum != errno.EIO:
        problems.append("%s at %d failed with errno %s, not EIO" % (kind, off, errnum))
    if not ok and must:
        problems.append("%s of %d at %d (present blocks) failed" % (kind, n, off))
    if not ok and kind == "write":
        failed_writes.append(off)
writes = {op[1]: op[2].hex() for p in plans for op in p if op[0] == "write"}
json.dump([[off, writes[off]] for off in failed_writes], open(failed_out, "w"))
print("%d requests in %.1f s, slowest %.2f s (limit %.0f s); %d absent reads "
      "failed, %d writes failed"
      % (len(results), time.monotonic() - t0, max(r[6] for r in results), limit,
         sum(1 for r in results if r[0] == "read" and not r[4]), len(failed_writes)))
if problems:
    sys.exit("FAIL: " + "; ".join(problems))
os._exit(0)
PYEOF
pass "source hung: every request completed within $limit s; present reads and writes succeeded"

# ---- 1b. relocatectl answers ----
for cmd in status "status --json" pause resume; do
    # shellcheck disable=SC2086
    timeout 2 "$RELOCATECTL" $cmd "$tmp/dst.ctl" >/dev/null ||
        fail "relocatectl $cmd did not answer within 2 s with the source hung"
done
pass "relocatectl answers within 2 s with the source hung"

# ---- 1c. The heal: the relocation completes without operator action ----
kill -CONT "$srcpid"
echo "source continued at $(date +%T)"
# No operator action: the filter reconnects by itself (at once, since
# abandoned connections then get their answers; a sanitizer build on a
# loaded machine may need a few seconds).
wait_for field_is dst upstream_connected true || fail "no reconnection after the heal"
echo "reconnected at $(date +%T)"
ctl rate dst 0
# Writes that failed with EIO may or may not have happened: write the
# same data again (the oracle has it already).
timeout 60 $PY - "$(uri dst)" "$tmp/failed-writes" <<'PYEOF'
import json, sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for off, hexdata in json.load(open(sys.argv[2])):
    t = time.monotonic()
    h.pwrite(bytes.fromhex(hexdata), off)
    print("rewrote %d bytes at %d in %.2f s" % (len(hexdata) // 2, off, time.monotonic() - t))
h.flush()
PYEOF
ctl wait dst --timeout 120 || fail "did not complete after the heal"
cmp "$tmp/dst.img" "$tmp/oracle.img" || fail "final image differs from the oracle"
$NBDIO compare "$(uri dst)" "$tmp/oracle.img" || fail "export differs from the oracle"
pass "after the heal the relocation completed byte-exact"

# ---- 2. SIGTERM with the source hung, and a restart ----
stop_server dst
servers=(src)
rm -f "$tmp/dst.img" "$tmp/dst.img.bitmap" "$tmp/dst.img.bitmap.volatile"
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-rate=256K \
    relocate-timeout=$timeout
$NBDIO compare "$(uri dst)" "$tmp/src.img" $((1 << 20))
kill -STOP "$srcpid"
# A read of absent blocks is in flight when SIGTERM arrives.
$PY -c '
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
try: h.pread(65536, (32 << 20) - 65536)
except nbd.Error as e: print("in-flight read:", e.string)
' "$(uri dst)" >"$tmp/inflight.log" 2>&1 &
clients+=($!)
sleep 1
dpid=$(cat "$tmp/dst.pid")
took=$(stop_within "$dpid" 10) ||
    fail "SIGTERM with the source hung: nbdkit still running after $took s"
rm -f "$tmp/dst.pid"
awk -v t="$took" 'BEGIN { exit !(t < 5) }' ||
    fail "SIGTERM with the source hung: nbdkit took $took s to exit (limit 5 s)"
pass "SIGTERM with the source hung: exited in $took s"

# Restart over the same files, source still hung: serves present blocks.
rm -f "$tmp/dst.sock" "$tmp/dst.ctl"
"${NBDKIT[@]}" -f --log=stderr -U "$tmp/dst.sock" -P "$tmp/dst.pid" \
    --filter="$FILTER" nbd socket="$tmp/src.sock" relocate-file="$tmp/dst.img" \
    relocate-control="$tmp/dst.ctl" relocate-timeout=$timeout \
    2>>"$tmp/dst.log" </dev/null &
dpid=$!
servers+=(dst)
t0=$(date +%s.%N)
served=
while :; do
    if timeout 2 $NBDIO compare "$(uri dst)" "$tmp/src.img" $((1 << 20)) 2>/dev/null; then
        served=1; break
    fi
    kill -0 "$dpid" 2>/dev/null || fail "restart with the source hung: nbdkit exited"
    awk -v t="$(since $t0)" -v l=$(( timeout + 5 )) 'BEGIN { exit !(t < l) }' || break
    sleep 0.2
done
took=$(since $t0)
[ -n "$served" ] ||
    fail "restart with the source hung: present blocks not served after $took s"
pass "restart with the source hung: present blocks served after $took s"
took=$(stop_within "$dpid" 10) || fail "restarted nbdkit ignored SIGTERM for $took s"
awk -v t="$took" 'BEGIN { exit !(t < 5) }' || fail "restarted nbdkit took $took s to exit on SIGTERM"
rm -f "$tmp/dst.pid"
pass "restarted nbdkit exited on SIGTERM in $took s"
kill -CONT "$srcpid"

# ---- 3. Start-up against a source that never completes the handshake ----
$PY - "$tmp/mute.sock" <<'PYEOF' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(16)
held = []
while True:
    c, _ = s.accept()
    held.append(c)              # never a byte
PYEOF
clients+=($!)
wait_for test -S "$tmp/mute.sock" || fail "mute listener did not start"
t0=$(date +%s.%N)
"${NBDKIT[@]}" -f --log=stderr -U "$tmp/new.sock" -P "$tmp/new.pid" \
    --filter="$FILTER" nbd socket="$tmp/mute.sock" relocate-file="$tmp/new.img" \
    relocate-control="$tmp/new.ctl" relocate-timeout=2 \
    2>>"$tmp/new.log" </dev/null &
npid=$!
for i in $(seq $(( (2 + 3) * 10 ))); do kill -0 "$npid" 2>/dev/null || break; sleep 0.1; done
took=$(since $t0)
if kill -0 "$npid" 2>/dev/null; then
    state="not serving"
    timeout 2 nbdinfo --size "$(uri new)" >/dev/null 2>&1 && state=serving
    took2=$(stop_within "$npid" 5) ||
        fail "start-up against a mute source: still $state after $took s, and ignored SIGTERM for $took2 s"
    pass "start-up against a mute source: $state after $took s; SIGTERM stopped it in $took2 s"
else
    st=0; wait "$npid" || st=$?
    [ "$st" -ne 0 ] || fail "start-up against a mute source: nbdkit exited 0"
    pass "start-up against a mute source: nbdkit failed after $took s (exit $st): $(grep -m1 relocate "$tmp/new.log" || :)"
fi
