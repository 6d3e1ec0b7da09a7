#!/usr/bin/env bash
# Acceptance 2: random writes (unaligned included) from two connections
# during the relocation end up in the local file; the source is never
# written.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 64
src_sum=$(sha "$tmp/src.img")
cp "$tmp/src.img" "$tmp/oracle.img"
start_source src "$tmp/src.img" --filter=delay rdelay=5ms
# A rate cap keeps the copy running while the writes happen.
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-rate=4M

$NBDIO writes "$(uri dst)" "$tmp/oracle.img" 1 400 2
[ "$(status_field dst state)" = relocating ] || fail "writes did not overlap the copy"
$NBDIO compare "$(uri dst)" "$tmp/oracle.img" || fail "served bytes differ from oracle during copy"
ctl rate dst 0
ctl wait dst --timeout 120 || fail "relocation did not complete"

cmp "$tmp/dst.img" "$tmp/oracle.img" || fail "local file differs from source-with-writes"
[ "$(sha "$tmp/src.img")" = "$src_sum" ] || fail "the source was written"
[ "$(status_field dst written_bytes)" -gt 0 ] || fail "no writes counted"
pass "writes from two connections during relocation are all in the local file"
