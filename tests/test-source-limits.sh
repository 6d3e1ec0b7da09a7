#!/usr/bin/env bash
# A source that advertises a maximum request size (and refuses larger
# requests) is read in pieces it accepts; a source without block status
# is copied whole, its zero blocks stored as holes (zero detection).
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 16
start_source src "$tmp/src.img" --filter=blocksize-policy \
    blocksize-maximum=64K blocksize-error-policy=error
start_dest dst src "$tmp/dst.img" relocate-start=immediate
$NBDIO compare "$(uri dst)" "$tmp/src.img" || fail "demand reads through a 64K source"
ctl wait dst --timeout 60 || fail "did not complete against a 64K-maximum source"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "local file differs"
! grep -q "Invalid argument" "$tmp/dst.log" || fail "a request above the maximum was sent"
pass "source maximum of 64K respected (4M background requests split)"
stop_server dst; stop_server src; servers=()

# No block status: half the image is zeroes, copied but stored as holes.
head -c $((8 << 20)) /dev/urandom > "$tmp/half.img"
head -c $((8 << 20)) /dev/zero >> "$tmp/half.img"
start_source src "$tmp/half.img" --filter=noextents
start_dest dst src "$tmp/dst2.img" relocate-start=immediate
ctl wait dst --timeout 60 || fail "did not complete without block status"
cmp "$tmp/dst2.img" "$tmp/half.img" || fail "local file differs"
[ "$(status_field dst skipped_zero_bytes)" -eq 0 ] || fail "skipped without block status?"
du=$(du -B1 "$tmp/dst2.img" | cut -f1)
[ "$du" -le $(( (8 << 20) + (1 << 20) )) ] || fail "zero blocks were not stored as holes: $du bytes"
pass "without block status: zeroes copied and stored as holes ($du bytes on disk)"
