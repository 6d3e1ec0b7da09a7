#!/usr/bin/env bash
# Pacing: while the copy's writes make the guest's flushes slow, the
# copy is capped; when the guest stops flushing, the cap goes.
#
# The disk is tests/slow-flush.c: a flush that follows one of the
# copy's writes (made with O_DIRECT) takes 20 ms more; during a hold,
# only the first flush does.  A client writes 4K and flushes in a loop.
source "$(dirname "$0")/functions.sh"
use_shim slow-flush.c
# Without O_DIRECT the filter stores fetched data like the guest's.
dd if=/dev/zero of="$tmp/probe" bs=4096 count=1 oflag=direct 2>/dev/null || {
    echo "SKIP: no O_DIRECT in $tmp"; exit 77; }

random_image "$tmp/src.img" 512
cp "$tmp/src.img" "$tmp/oracle.img"
# 20 MB/s: the copy would take 27 s without a cap.
start_source src "$tmp/src.img" --filter=rate rate=160M
shim_vars=("SLOW_FLUSH_MS=20")
params=(relocate-start=immediate relocate-request-size=256K)

# flush_loop STOPFILE: 4K writes into the first 16 MiB, each followed
# by a flush, until STOPFILE exists; the oracle gets the same writes.
flush_loop ()
{
    $PY - "$(uri dst)" "$tmp/oracle.img" "$1" <<'PYEOF'
import os, random, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
rng = random.Random(7)
n = 0
with open(sys.argv[2], "r+b") as oracle:
    while not os.path.exists(sys.argv[3]):
        off = rng.randrange(16 * 256) * 4096
        data = rng.randbytes(4096)
        h.pwrite(data, off)
        h.flush()
        oracle.seek(off)
        oracle.write(data)
        n += 1
h.shutdown()
print("%d writes and flushes" % n)
PYEOF
}

# 1. The guest flushes while the copy runs: pacing caps the copy.
start_dest dst src "$tmp/dst.img" "${params[@]}"
flush_loop "$tmp/stop1" > "$tmp/loop1.out" &
loop=$!
clients+=("$loop")
wait_for field_at_least dst pace_cap 1 ||
    fail "no pacing cap while the copy slowed every flush: $(ctl status dst)"
ratio=$(status_field dst pace_ratio)
[ "$(echo "$ratio > 1.5" | bc)" = 1 ] ||
    fail "capped, yet the flush ratio shown is $ratio"
grep -q '^pacing: ' <<< "$(ctl status dst)" || fail "relocatectl status shows no pacing"
[ "$(status_field dst state)" = relocating ] || fail "completed before pacing acted"
pass "capped at $(status_field dst pace_cap) bytes/s, flushes $ratio x slower copying"

# The cap holds the copy: once it is at most 8 MiB/s (raised at most
# by a tenth or 1 MiB/s a second: 8+9+10+11), 4 s copy less than 52
# MiB.  Uncapped, the source gives 19 MiB/s.
cap_at_most () { [ "$(status_field dst pace_cap)" -le "$1" ]; }
wait_for cap_at_most $((8 << 20)) ||
    fail "the cap did not come down to 8 MiB/s: $(status_field dst pace_cap)"
b0=$(status_field dst fetched_background_bytes)
sleep 4
moved=$(( $(status_field dst fetched_background_bytes) - b0 ))
[ "$moved" -lt $((52 << 20)) ] || fail "the copy ignored the cap: $moved bytes in 4 s"
[ "$(status_field dst state)" = relocating ] || fail "completed under the cap"
pass "under the cap the copy moved $moved bytes in 4 s"

# 2. The guest stops flushing: the cap goes, and the copy completes.
touch "$tmp/stop1"
wait "$loop" || fail "the flush loop failed"
cat "$tmp/loop1.out"
wait_for field_is dst pace_cap 0 || fail "the cap stayed after the guest stopped flushing"
pass "cap lifted once the guest stopped flushing"
ctl wait dst --timeout 120 || fail "did not complete"
stop_server dst
cmp "$tmp/dst.img" "$tmp/oracle.img" || fail "local file differs from source + writes"
pass "complete and byte-exact"

# 3. relocate-pace=0: the same disk and guest, never a cap.
rm -f "$tmp/dst.img" "$tmp/dst.img.bitmap"
cp "$tmp/src.img" "$tmp/oracle.img"
stop_server src
start_source src "$tmp/src.img" --filter=rate rate=160M
start_dest dst src "$tmp/dst.img" "${params[@]}" relocate-pace=0
flush_loop "$tmp/stop2" > "$tmp/loop2.out" &
loop=$!
clients+=("$loop")
for i in $(seq 8); do
    [ "$(status_field dst pace_cap)" = 0 ] || fail "capped with relocate-pace=0"
    sleep 0.5
done
touch "$tmp/stop2"
wait "$loop" || fail "the flush loop failed"
ctl wait dst --timeout 120 || fail "did not complete"
stop_server dst
cmp "$tmp/dst.img" "$tmp/oracle.img" || fail "local file differs from source + writes"
pass "relocate-pace=0: no cap, byte-exact"
