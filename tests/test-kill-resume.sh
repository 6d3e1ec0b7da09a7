#!/usr/bin/env bash
# Acceptance 4: kill -9 of the destination in the middle of the copy;
# a restart with the same files resumes with every block that was
# present at the kill (nothing fetched again), ends byte-exact, and
# keeps every acknowledged write.
source "$(dirname "$0")/functions.sh"

size_mib=128
size=$((size_mib * 1024 * 1024))
random_image "$tmp/src.img" $size_mib
cp "$tmp/src.img" "$tmp/oracle.img"
start_source src "$tmp/src.img" --filter=delay rdelay=5ms
start_dest dst src "$tmp/dst.img" relocate-start=immediate \
    relocate-rate=8M relocate-sync-interval=1

# Wait for the copy to be half-way, then write and flush.
wait_for field_at_least dst present_bytes $((size / 2)) ||
    fail "copy did not reach half-way"
# Slow the copy down (it goes on) so that it is still mid-way at the
# kill however long the writes take on a loaded machine.
ctl rate dst 4M
$NBDIO writes "$(uri dst)" "$tmp/oracle.img" 11 200 2   # flushes at the end
# Pause the copy, so that the counters read now are those at the kill.
ctl pause dst
sleep 0.5
fetched_before=$(( $(status_field dst fetched_background_bytes) + $(status_field dst fetched_demand_bytes) ))
present_before=$(status_field dst present_bytes)
stop_server dst KILL
[ "$(sha "$tmp/dst.img")" != "$(sha "$tmp/oracle.img")" ] ||
    fail "copy had already finished: the kill proved nothing"
# What the bitmap file says is present (64K blocks after a 4K header).
persisted=$($PY -c '
import sys
bits = open(sys.argv[1], "rb").read()[4096:]
print(sum(bin(b).count("1") for b in bits) * 65536)' "$tmp/dst.img.bitmap")
[ "$persisted" -gt $((size / 4)) ] || fail "only $persisted bytes were persisted"
pass "killed with -9 in the middle of the copy, $persisted bytes persisted"

start_dest dst src "$tmp/dst.img" relocate-sync-interval=1 relocate-rate=4M
[ "$(status_field dst state)" = relocating ] || fail "restart did not carry on"
# Every block present in memory at the kill had reached the local file,
# and the volatile bitmap says so: nothing of it is fetched again.
present_after=$(status_field dst present_bytes)
[ "$present_after" -ge "$present_before" ] ||
    fail "restart has $present_after bytes present, $present_before were at the kill"
pass "restart kept all $present_before bytes present at the kill ($persisted durable)"
$NBDIO compare "$(uri dst)" "$tmp/oracle.img" || fail "flushed writes lost after kill -9"
ctl rate dst 0
ctl wait dst --timeout 120 || fail "relocation did not complete"
# The counters carry on across the restart: what this run fetched is
# the difference.  Every block absent at the restart is fetched once.
fetched=$(( $(status_field dst fetched_background_bytes) + $(status_field dst fetched_demand_bytes) - fetched_before ))
[ "$fetched" -le $((size - present_before)) ] ||
    fail "restart fetched $fetched bytes, more than the $((size - present_before)) absent"
cmp "$tmp/dst.img" "$tmp/oracle.img" || fail "final image is wrong"
pass "resumed: fetched $fetched of $size bytes after restart; final image right"
