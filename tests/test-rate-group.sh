#!/usr/bin/env bash
# Relocations that share relocate-rate-group=FILE share its budget: the
# shares are divided again as relocations start, crash (kill -9), stop
# (SIGSTOP) and come back, and complete; a guest's on-demand fetches
# on one relocation come out of every other's share, never the other
# way round; the background copy never goes over the budget; and every
# relocation completes byte-exact.
source "$(dirname "$0")/functions.sh"

limit=$((2 << 20))              # 2 MiB/s for the group
group=(relocate-rate-group="$tmp/group" relocate-rate-group-limit=$limit)
# dst2 has twice dst1's data, so that it is still copying when dst1
# completes, however slow the machine is; dst1 copies for at least 30 s
# (at most 1 MiB/s while dst2 copies).
for i in 1 2 3; do
    random_image "$tmp/src$i.img" $((i == 2 ? 96 : 48))
    start_source "src$i" "$tmp/src$i.img"
done

# share_is NAME BYTES: NAME's share of the budget becomes BYTES (+-1).
share_is ()
{
    local i s
    for i in $(seq 100); do
        s=$(status_field "$1" group_share)
        [ $((s - $2)) -le 1 ] && [ $(($2 - s)) -le 1 ] && return 0
        sleep 0.1
    done
    echo "$1's share is $s, not $2" >&2
    return 1
}

start_dest dst1 src1 "$tmp/dst1.img" relocate-start=immediate "${group[@]}"
share_is dst1 $limit || fail "alone, dst1 does not have the whole budget"
start_dest dst2 src2 "$tmp/dst2.img" relocate-start=immediate "${group[@]}"
share_is dst1 $((limit / 2)) && share_is dst2 $((limit / 2)) ||
    fail "two relocations do not share the budget"

# Requests of a sixteenth of a second of the share at most (a power
# of two of blocks, at least one): 64K of 1 MiB/s.
for d in dst1 dst2; do
    req=$(status_field $d request_bytes)
    [ "$req" -le $((limit / 2 / 16)) ] ||
        fail "$d sends requests of $req bytes with a share of $((limit / 2)) bytes/s"
done
# Within the budget: present bytes of both, over 6 s, at most the
# budget's worth plus, for each, one request (the first of a burst goes
# at once) and what it may have had in flight at the start (a quarter
# of a second of its share).
p0=$(( $(status_field dst1 present_bytes) + $(status_field dst2 present_bytes) ))
t0=$(date +%s.%N)
sleep 6
p1=$(( $(status_field dst1 present_bytes) + $(status_field dst2 present_bytes) ))
most=$(awk -v t="$(since "$t0")" -v l=$limit -v r="$req" 'BEGIN { printf "%d", l * t + 2 * (r + l / 2 / 4) }')
[ $((p1 - p0)) -le "$most" ] ||
    fail "the group copied $((p1 - p0)) bytes in $(since "$t0") s: over its budget ($most)"
echo "two relocations copied $((p1 - p0)) bytes in $(since "$t0") s (budget $limit bytes/s, requests of $req bytes)"

start_dest dst3 src3 "$tmp/dst3.img" relocate-start=immediate "${group[@]}"
share_is dst1 $((limit / 3)) || fail "a third relocation did not get a share"
kill -9 "$(cat "$tmp/dst3.pid")"
share_is dst1 $((limit / 2)) || fail "a relocation killed -9 did not give its share back"
kill -STOP "$(cat "$tmp/dst2.pid")"
share_is dst1 $limit || fail "a stopped relocation kept its share"
kill -CONT "$(cat "$tmp/dst2.pid")"
share_is dst1 $((limit / 2)) || fail "a relocation that came back did not get its share again"
pass "the shares follow relocations that start, crash, stop and come back"

# A guest reads dst2's absent data at about 3 MB/s for 4 s: that
# comes out of dst1's share (dst2's own copy is capped the same).
$PY - "$(uri dst2)" <<'PYEOF' &
import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
off, end = 8 << 20, time.monotonic() + 4
while time.monotonic() < end:
    h.pread(65536, off); off += 65536; time.sleep(0.02)
PYEOF
reader=$!
clients+=($reader)
low=$limit
while kill -0 $reader 2>/dev/null; do
    s=$(status_field dst1 group_share)
    [ "$s" -lt "$low" ] && low=$s
    sleep 0.2
done
wait $reader || fail "the guest's reads on dst2 failed"
[ "$low" -le $((limit / 4)) ] ||
    fail "while dst2's guest fetched, dst1's share went down only to $low"
echo "while dst2's guest fetched, dst1's share went down to $low"

# While any guest in the group fetches, however little, the copies
# together take at most three quarters of the budget: on a link filled
# to the budget their replies would queue ahead of the guest's fetches.
# A guest reads 64K of dst2's absent data every 0.2 s (320K/s: without
# this, dst1's share would stay above (limit - 400K) / 2), from its end
# backwards, so that dst2's copy, which goes on after a guest's fetch,
# never gets there first.
quiet=$((limit * 3 / 4 / 2))
for i in $(seq 100); do           # the first guest's fetches forgotten
    [ "$(status_field dst1 group_share)" -gt "$quiet" ] &&
        [ "$(status_field dst1 group_guest_fetching)" = false ] && break
    sleep 0.1
done
$PY - "$(uri dst2)" <<'PYEOF' &
import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for i in range(15):
    h.pread(65536, (95 - i) << 20); time.sleep(0.2)
PYEOF
reader=$!
clients+=($reader)
low=$limit fetching=0
while kill -0 $reader 2>/dev/null; do
    s=$(status_field dst1 group_share)
    [ "$s" -lt "$low" ] && low=$s
    [ "$(status_field dst1 group_guest_fetching)" = true ] && fetching=$((fetching + 1))
    sleep 0.2
done
wait $reader || fail "the guest's reads on dst2 failed"
[ "$(status_field dst1 state)" = relocating ] ||
    fail "dst1 is $(status_field dst1 state): the test needs it copying"
[ "$fetching" -gt 0 ] || fail "dst1 never saw dst2's guest fetching"
[ "$low" -le "$quiet" ] ||
    fail "while dst2's guest fetched a little, dst1's share went down only to $low, not to $quiet"
for i in $(seq 50); do
    [ "$(status_field dst1 group_guest_fetching)" = false ] && break
    sleep 0.1
done
[ "$(status_field dst1 group_guest_fetching)" = false ] ||
    fail "dst1 still sees a guest fetching 5 s after the last fetch"
echo "while dst2's guest fetched 320K/s, dst1's share went down to $low (three quarters: $quiet)"

# Completion gives the share back. dst2 pauses meanwhile (as it does
# not copy, its share is what it would have: half of the budget while
# dst1 copies, all of it once dst1 is done); a guest then reads the
# rest of dst2 to keep the test short.
"$RELOCATECTL" pause "$tmp/dst2.ctl" >/dev/null
"$RELOCATECTL" wait --timeout 120 "$tmp/dst1.ctl" ||
    fail "dst1 did not complete: $("$RELOCATECTL" status "$tmp/dst1.ctl")"
share_is dst2 $limit || fail "dst1 completed and kept its share"
"$RELOCATECTL" resume "$tmp/dst2.ctl" >/dev/null
nbdcopy "$(uri dst2)" null: || fail "reading dst2 failed"
"$RELOCATECTL" wait --timeout 120 "$tmp/dst2.ctl" ||
    fail "dst2 did not complete: $("$RELOCATECTL" status "$tmp/dst2.ctl")"
cmp "$tmp/dst1.img" "$tmp/src1.img" && cmp "$tmp/dst2.img" "$tmp/src2.img" ||
    fail "a local file differs from its source"
pass "a guest's fetches came out of the others' shares; completion gave the share back; both byte-exact"
