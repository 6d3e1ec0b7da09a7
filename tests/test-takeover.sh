#!/usr/bin/env bash
# The guest never waits behind the background copy: a client's read or
# write of a block that a background request is still fetching takes
# the block over and fetches it itself, on the guest's own connection.
#
# The source (nbdkit eval over an image) answers small reads at once
# and holds every read over 1M, the background copy's 4M requests (set
# here: relocate-request-size=4M), until
# the test lets them go (its commands run without a sanitizer's preload,
# which nbdkit's children inherit).  A read and a write into the first
# background request's range must both complete while that request still hangs,
# that is before relocate-timeout gives it up (the filter before this
# test waited for it), and the relocation then completes byte-exact.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 32
size=$(stat -c %s "$tmp/src.img")
start_server src eval thread_model='echo parallel' get_size="echo $size" \
    pread="unset LD_PRELOAD
           if [ \$3 -gt 1048576 ]; then
               touch $tmp/bulk.\$4
               while [ ! -e $tmp/release ] && [ -d $tmp ]; do sleep 0.1; done
           fi
           dd if=$tmp/src.img skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none"
rm -f "$tmp/dst.ctl"
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-timeout=20 \
    relocate-request-size=4M
wait_for test -e "$tmp/bulk.0" || fail "no background request for offset 0 reached the source"

# A 4K read at 1M + 4K and a 4K write at 2M + 8K, both inside the
# background request for [0, 4M), which hangs.
$PY - "$(uri dst)" "$tmp/src.img" "$tmp/expected.img" <<'PYEOF' || fail "the guest's read or write failed"
import shutil, sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
src = open(sys.argv[2], "rb").read()
got = h.pread(4096, (1 << 20) + 4096)
assert got == src[(1 << 20) + 4096:(1 << 20) + 8192], "wrong data read"
h.pwrite(b"w" * 4096, (2 << 20) + 8192)
h.flush()
shutil.copyfile(sys.argv[2], sys.argv[3])
with open(sys.argv[3], "r+b") as f:
    f.seek((2 << 20) + 8192); f.write(b"w" * 4096)
PYEOF
[ -e "$tmp/release" ] && fail "the hang was released early"
abandoned=$(status_field dst connections_abandoned)
background=$(status_field dst fetched_background_bytes)
taken=$(status_field dst blocks_taken_over 2>/dev/null || echo none)
[ "$abandoned" -eq 0 ] && [ "$background" -eq 0 ] ||
    fail "the guest's read and write completed only once the background request was given up ($abandoned connections abandoned, $background background bytes fetched)"
[ "$taken" != none ] && [ "$taken" -ge 2 ] ||
    fail "blocks_taken_over is $taken, not at least 2"
echo "read and write done while the background request hung; $taken blocks taken over"

# The background request really did hang: it is given up at the timeout.
wait_for field_at_least dst connections_abandoned 1 ||
    fail "the background request was never given up: the test did not test"
touch "$tmp/release"
ctl wait dst --timeout 120 || fail "the relocation did not complete: $("$RELOCATECTL" status "$tmp/dst.ctl")"
cmp "$tmp/dst.img" "$tmp/expected.img" || fail "the local file differs from the source with the guest's write"
pass "a guest read and write inside a hanging background request took it over; the relocation completed byte-exact"
