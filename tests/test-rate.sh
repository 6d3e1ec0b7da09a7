#!/usr/bin/env bash
# The rate cap: a copy of a known size at a known rate takes at least
# the time it must; lifting the cap at run time lets it finish.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 32
start_source src "$tmp/src.img"
start=$(date +%s.%N)
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-rate=8M \
    relocate-request-size=1M
ctl wait dst --timeout 120 || fail "relocation did not complete"
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
# 32 MiB at 8 MiB/s: the first 1M request goes at once, the rest paced.
echo "32 MiB at 8 MiB/s took $elapsed s"
[ "$(echo "$elapsed >= 3.8" | bc)" = 1 ] || fail "the cap was not respected ($elapsed s)"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "local file differs"
pass "rate cap respected: $elapsed s for 32 MiB at 8 MiB/s"

# A crawling cap, lifted at run time.
stop_server dst
rm -f "$tmp/dst.img" "$tmp/dst.img.bitmap"
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-rate=64K
sleep 1
[ "$(status_field dst state)" = relocating ] || fail "finished under a 64K cap"
ctl rate dst 0
ctl wait dst --timeout 60 || fail "did not finish after the cap was lifted"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "local file differs"
pass "rate cap lifted at run time"
