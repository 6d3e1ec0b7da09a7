#!/usr/bin/env bash
# The source is killed mid-copy: present reads and writes go on without
# error, absent reads fail within relocate-timeout, the state says so;
# the source returns and the relocation completes byte-exact.  Then
# SIGTERM mid-copy: nbdkit exits with the bitmap durable and resumes.
source "$(dirname "$0")/functions.sh"

mib=64
random_image "$tmp/src.img" $mib
cp "$tmp/src.img" "$tmp/oracle.img"
start_source src "$tmp/src.img" --filter=delay rdelay=5ms
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-rate=4M \
    relocate-timeout=2
# The guest reads its first 8 MiB; the copy crawls behind.
$NBDIO compare "$(uri dst)" "$tmp/src.img" $((8 << 20))
stop_server src KILL
wait_for field_is dst upstream_connected false || fail "loss of the source not seen"
[ -n "$(status_field dst last_error)" ] || fail "no last_error after the source died"

$PY - "$(uri dst)" "$tmp/oracle.img" $mib <<'PYEOF'
import sys, time, nbd
uri, oracle, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = nbd.NBD(); h.connect_uri(uri)
data = open(oracle, "rb").read()
# Present blocks: everything compare read (fetched on demand).
for off in range(0, 8 << 20, 1 << 20):
    assert h.pread(1 << 20, off) == data[off:off + (1 << 20)], off
# Writes: to present blocks (any alignment) and whole absent blocks.
writes = [(4096 + 7, b"p" * 5000), ((mib - 4) << 20, b"a" * 65536 * 2)]
with open(oracle, "r+b") as f:
    for off, buf in writes:
        h.pwrite(buf, off)
        f.seek(off); f.write(buf)
h.flush()
print("present reads and writes: no errors")
PYEOF
pass "with the source dead: present reads and writes succeed"

# The relocation went on while the source was up, so what is absent now
# lies beyond the copy's progress: the last MiB but for what we wrote.
$PY - "$(uri dst)" $mib <<'PYEOF'
import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
t = time.time()
try:
    h.pread(4096, (int(sys.argv[2]) << 20) - 8192)
    sys.exit("an absent read succeeded with the source dead")
except nbd.Error as e:
    took = time.time() - t
    assert e.errnum is None or e.errnum == 5, e      # EIO
    assert took < 2 + 5, "absent read took %.1f s with timeout 2" % took
    print("absent read failed after %.1f s: %s" % (took, e.string))
PYEOF
pass "absent read fails with EIO within the timeout"

start_source src "$tmp/src.img"
wait_for field_is dst upstream_connected true || fail "did not reconnect"
ctl rate dst 0
ctl wait dst --timeout 120 || fail "did not complete after the source returned"
cmp "$tmp/dst.img" "$tmp/oracle.img" || fail "final image is wrong"
pass "source back: relocation completes byte-exact"

# SIGTERM mid-copy.
stop_server dst
rm -f "$tmp/dst.img" "$tmp/dst.img.bitmap"
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-rate=8M
wait_for field_at_least dst present_bytes $((16 << 20)) || fail "copy did not start"
pid=$(cat "$tmp/dst.pid")
present=$(status_field dst present_bytes)
fetched_before=$(status_field dst fetched_background_bytes)
stop_within "$pid" 10 >/dev/null || fail "nbdkit did not exit within 10 s of SIGTERM"
rm -f "$tmp/dst.pid"
durable=$($PY -c '
import sys
bits = open(sys.argv[1], "rb").read()[4096:]
print(sum(bin(b).count("1") for b in bits) * 65536)' "$tmp/dst.img.bitmap")
[ "$durable" -ge "$present" ] || fail "SIGTERM left $durable of $present bytes durable"
pass "SIGTERM: exited within 10 s, $durable bytes durable (>= $present reported)"
start_dest dst src "$tmp/dst.img"
ctl wait dst --timeout 120 || fail "did not complete after SIGTERM"
fetched=$(( $(status_field dst fetched_background_bytes) - fetched_before ))
[ "$fetched" -le $(( (mib << 20) - present )) ] || fail "refetched after SIGTERM: $fetched"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "final image is wrong after SIGTERM"
pass "resumed after SIGTERM without refetching"

# The source comes back with another size: refused, and the relocation
# is marked failed (relocatectl wait exits 4) while present data is served.
stop_server dst
rm -f "$tmp/dst.img" "$tmp/dst.img.bitmap"
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-rate=4M
$NBDIO compare "$(uri dst)" "$tmp/src.img" $((1 << 20))
stop_server src KILL
head -c $((8 << 20)) /dev/urandom > "$tmp/small.img"
start_source src "$tmp/small.img"
wait_for field_is dst failed true || fail "a source of another size was not refused"
grep -q "refusing it" "$tmp/dst.log" || fail "refusal not logged"
set +e; ctl wait dst --timeout 10 2>"$tmp/err"; st=$?; set -e
[ $st -eq 4 ] || fail "wait on a failed relocation exited $st, not 4"
grep -q "source size changed" "$tmp/err" || fail "wait did not say why: $(cat "$tmp/err")"
$NBDIO compare "$(uri dst)" "$tmp/src.img" $((1 << 20)) || fail "present data lost"
pass "a source of another size is refused; wait exits 4; present data served"
