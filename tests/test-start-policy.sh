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
