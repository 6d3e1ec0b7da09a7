#!/usr/bin/env bash
# Acceptance 1: in on-write mode nothing is stored or fetched before the
# first write; after it the relocation runs and ends byte-exact, and the
# client sees the source's bytes throughout.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 256
src_sum=$(sha "$tmp/src.img")
start_source src "$tmp/src.img" --filter=delay rdelay=5ms
start_dest dst src "$tmp/dst.img"

# Standby: reads pass through; nothing is stored.
[ "$(status_field dst state)" = standby ] || fail "not in standby at start"
$NBDIO read "$(uri dst)" "$tmp/read1.img"
[ "$(sha "$tmp/read1.img")" = "$src_sum" ] || fail "standby read differs from source"
[ "$(du -k "$tmp/dst.img" | cut -f1)" -eq 0 ] || fail "standby stored data"
cmp -s "$tmp/dst.img" <(head -c $((256*1024*1024)) /dev/zero) ||
    fail "standby changed the local file"
[ "$(status_field dst present_bytes)" -eq 0 ] || fail "standby marked blocks present"
[ "$(status_field dst fetched_background_bytes)" -eq 0 ] || fail "standby copied"
sleep 1
[ "$(status_field dst state)" = standby ] || fail "reads started the relocation"
pass "standby: reads pass through, nothing stored"

# The first write (the source's own bytes, so the image stays equal to
# the source) starts the relocation.
first=$(head -c 4096 "$tmp/src.img" | od -An -tx1 -v | tr -d ' \n')
$NBDIO pwrite "$(uri dst)" 0 "$first"
[ "$(status_field dst state)" != standby ] || fail "write did not start relocation"

# While it runs, the client still sees the source's bytes.
$NBDIO compare "$(uri dst)" "$tmp/src.img" || fail "client saw wrong bytes during relocation"
ctl wait dst --timeout 120 || fail "relocation did not complete"
[ "$(status_field dst state)" = complete ] || fail "state is not complete"
[ "$(sha "$tmp/dst.img")" = "$src_sum" ] || fail "local file differs from source"
[ "$(status_field dst present_bytes)" -eq $((256*1024*1024)) ] || fail "present_bytes != size"
pass "relocation of 256 MiB is byte-exact"

# relocate-standby-timeout: a server in standby whose client never
# comes (a migration that failed before QEMU started) stops by itself;
# one with a client, or one that has started, stays.
# (Started here rather than by start_dest, to see its exit status.)
rm -f "$tmp/idle.sock"
"${NBDKIT[@]}" -f --log=stderr -U "$tmp/idle.sock" -P "$tmp/idle.pid" \
    --filter="$FILTER" nbd socket="$tmp/src.sock" relocate-file="$tmp/idle.img" \
    relocate-standby-timeout=2 2>"$tmp/idle.log" </dev/null &
pid=$!
servers+=(idle)
wait_for nbdinfo --can connect "$(uri idle)" || fail "idle server did not start"
$PY - "$(uri idle)" <<'PYEOF'
import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
time.sleep(4)                       # connected: the timeout must not fire
h.pread(4096, 0)
h.shutdown()
PYEOF
kill -0 "$pid" 2>/dev/null || fail "standby timeout fired with a client connected"
for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$pid" 2>/dev/null || fail "no exit within 15 s of the last client leaving in standby"
st=0; wait "$pid" || st=$?
rm -f "$tmp/idle.pid"
[ "$st" -eq 0 ] || fail "nbdkit exited with status $st on the standby timeout"
grep -q "no client in standby for 2 s" "$tmp/idle.log" || fail "standby timeout not logged"
[ "$(du -k "$tmp/idle.img" | cut -f1)" -eq 0 ] || fail "standby stored data"
pass "relocate-standby-timeout: stays with a client, stops without one"

start_dest busy src "$tmp/busy.img" relocate-standby-timeout=1 relocate-rate=1M
$NBDIO pwrite "$(uri busy)" 0 "$first"
sleep 3
[ "$(status_field busy state)" = relocating ] || fail "a started relocation stopped on the standby timeout"
pass "relocate-standby-timeout never fires once started"
