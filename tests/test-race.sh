#!/usr/bin/env bash
# Acceptance 3: with a slow source (rdelay=200ms), writes to blocks
# whose fetch is in flight, on demand or in the background, are never
# lost.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 32
cp "$tmp/src.img" "$tmp/oracle.img"
start_source src "$tmp/src.img" --filter=delay rdelay=200ms

# On-demand fetches only: a reader fetches a block, a writer writes
# into it while the fetch is on the wire.
start_dest dst src "$tmp/dst.img" relocate-start=immediate \
    relocate-background=false
$NBDIO race "$(uri dst)" "$tmp/oracle.img" 7 40
$NBDIO compare "$(uri dst)" "$tmp/oracle.img" || fail "a write racing a demand fetch was lost"
pass "writes racing on-demand fetches survive"
stop_server dst

# Background fetches of one block each, eight in flight: random writes
# land on blocks being fetched.
rm -f "$tmp/dst.img" "$tmp/dst.img.bitmap"
cp "$tmp/src.img" "$tmp/oracle.img"
start_dest dst src "$tmp/dst.img" relocate-start=immediate \
    relocate-request-size=64K relocate-workers=8
$NBDIO writes "$(uri dst)" "$tmp/oracle.img" 3 300 2
[ "$(status_field dst state)" = relocating ] || fail "writes did not overlap the copy"
ctl wait dst --timeout 120 || fail "relocation did not complete"
cmp "$tmp/dst.img" "$tmp/oracle.img" || fail "a write racing a background fetch was lost"
pass "writes racing background fetches survive"
