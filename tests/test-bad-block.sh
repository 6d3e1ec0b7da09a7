#!/usr/bin/env bash
# One bad block at the source: every read that touches one 4K range
# fails with EIO, the same way every time (nbdkit's ddrescue filter,
# which also makes the source read-only and without block status).
#
# The failing block is reported, not retried forever, and does not tear
# down the shared connection: the rest of the relocation completes,
# client reads of the bad block get EIO quickly, reads of its
# neighbours succeed, status shows failed_blocks and failed_offsets,
# relocatectl wait exits 4 naming the offset, and the connection stays
# up.  Once the source is fixed, relocatectl retry makes it complete
# byte-exact.
#
# Names the filter must match: status fields "failed_blocks" (a number)
# and "failed_offsets" (a list of byte offsets, the first few: the
# offset of the failed block, or of the bad byte range within it); the
# command "relocatectl retry SOCKET" (control request "retry").
# The connection is judged by status's upstream_connected (sampled
# every 0.2 s), by the debug line "upstream connected" (once per
# connection)
# and, if status has a "reconnects" field, by that (0).
source "$(dirname "$0")/functions.sh"

timeout=5
bs=65536
size=$((16 << 20))
bad=$((0x501000))               # 4K bad, inside block 80 (0x500000)
badlen=4096
random_image "$tmp/src.img" 16
bad_range_map "$tmp/src.map" $size $bad $badlen
start_source src "$tmp/src.img" --filter=ddrescue ddrescue-mapfile="$tmp/src.map"

# Self-check: the source fails the bad range, and only it.
$PY - "$(uri src)" $bad <<'PYEOF'
import errno, sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1]); bad = int(sys.argv[2])
h.pread(4096, bad - 4096); h.pread(4096, bad + 4096)
for i in range(2):
    try:
        h.pread(4096, bad); sys.exit("the bad range read fine")
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
PYEOF

# The destination with debug messages (-v), to count reconnections.
rm -f "$tmp/dst.ctl"
start_server dst -v --filter="$FILTER" nbd socket="$tmp/src.sock" \
    relocate-file="$tmp/dst.img" relocate-control="$tmp/dst.ctl" \
    relocate-start=immediate relocate-timeout=$timeout
wait_for test -S "$tmp/dst.ctl" || fail "dst: no control socket"

# Sample upstream_connected every 0.2 s until the source is fixed.
(
    while :; do
        v=$(status_field dst upstream_connected 2>/dev/null) || v=unknown
        echo "$(date +%T.%N) $v" >> "$tmp/connected.samples"
        sleep 0.2
    done
) &
sampler=$!
clients+=($sampler)

# reads.py URI IMAGE BAD LIMIT: neighbours of the bad block read fine
# (within relocate-timeout + 2 s), the bad block fails with EIO within
# LIMIT seconds.
cat > "$tmp/reads.py" <<'PYEOF'
import errno, sys, time, nbd
uri, img, bad, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
bs = 65536
data = open(img, "rb").read()
h = nbd.NBD(); h.connect_uri(uri)
blk = bad // bs * bs
for off, n in [(blk - bs, bs), (blk + bs, bs), (blk - 4096, 4096),
               (blk + bs, 4096), (0, 1 << 20), ((15 << 20), 1 << 20)]:
    t = time.monotonic()
    try:
        got = h.pread(n, off)
    except nbd.Error as e:
        sys.exit("FAIL: read of %d at %d (not the bad block) failed after %.2f s: %s"
                 % (n, off, time.monotonic() - t, e.string))
    if got != data[off:off + n]:
        sys.exit("FAIL: read of %d at %d returned wrong data" % (n, off))
    took = time.monotonic() - t
    if took > 7:
        sys.exit("FAIL: read of %d at %d (not the bad block) took %.2f s" % (n, off, took))
for off, n in [(bad, 4096), (blk, bs), (bad + 1000, 10)]:
    t = time.monotonic()
    try:
        h.pread(n, off)
        sys.exit("FAIL: read of %d at %d (bad) succeeded" % (n, off))
    except nbd.Error as e:
        took = time.monotonic() - t
        if e.errnum != errno.EIO:
            sys.exit("FAIL: read of %d at %d (bad) failed with %s, not EIO" % (n, off, e.errnum))
    print("bad read of %d at %d: EIO after %.2f s" % (n, off, took))
    if took > limit:
        sys.exit("FAIL: read of %d at %d (bad) took %.2f s to fail (limit %.1f s)"
                 % (n, off, took, limit))
PYEOF

# First touch: the bad block may be retried (bounded) before it is
# failed: within relocate-timeout + 1 s (+ 1 s of margin).
$PY "$tmp/reads.py" "$(uri dst)" "$tmp/src.img" $bad $((timeout + 2)) ||
    fail "first reads around the bad block"
pass "first touch: neighbours read fine, the bad block fails with EIO"

# status --json: the rest completes, the block is reported as failed.
$PY - "$RELOCATECTL" "$tmp/dst.ctl" $size $bs $bad <<'PYEOF' || fail "status does not report the failed block"
import json, subprocess, sys, time
ctl, sock, size, bs, bad = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
deadline = time.monotonic() + 90
while True:
    s = json.loads(subprocess.run([ctl, "status", "--json", sock], check=True,
                                  capture_output=True, text=True).stdout)
    for k in ("failed_blocks", "failed_offsets"):
        if k not in s:
            sys.exit("FAIL: status has no %s field: %s" % (k, s))
    if s["present_bytes"] == size - bs and s["failed_blocks"] >= 1:
        break
    if time.monotonic() > deadline:
        sys.exit("FAIL: after 90 s: present_bytes %d (want %d), failed_blocks %d"
                 % (s["present_bytes"], size - bs, s["failed_blocks"]))
    time.sleep(0.5)
print("status:", {k: s[k] for k in ("state", "present_bytes", "failed_blocks",
                                    "failed_offsets", "upstream_connected",
                                    "last_error")})
if s["failed_blocks"] != 1:
    sys.exit("FAIL: failed_blocks is %d, want 1" % s["failed_blocks"])
if not any(o // bs == bad // bs for o in s["failed_offsets"]):
    sys.exit("FAIL: failed_offsets %s does not name block %d (offset %d)"
             % (s["failed_offsets"], bad // bs, bad // bs * bs))
PYEOF
pass "every other block present; failed_blocks 1, failed_offsets names it"

# Once failed, reads of it fail at once.
$PY "$tmp/reads.py" "$(uri dst)" "$tmp/src.img" $bad 2 ||
    fail "reads around a block already failed"
pass "failed block: reads fail with EIO within 2 s"

# relocatectl wait exits 4 and names the offset.
t0=$(date +%s)
set +e; ctl wait dst --timeout 60 2>"$tmp/wait.err"; st=$?; set -e
took=$(( $(date +%s) - t0 ))
[ $st -eq 4 ] || fail "wait exited $st after $took s, not 4: $(cat "$tmp/wait.err")"
blk=$(( bad / bs * bs ))
grep -qiE "(^|[^0-9a-fx])($blk|$bad|$(printf '0x0*%x|0x0*%x' $blk $bad))([^0-9a-f]|$)" "$tmp/wait.err" ||
    fail "wait did not name the offset ($blk or $bad): $(cat "$tmp/wait.err")"
pass "wait exits 4 after $took s: $(head -c 200 "$tmp/wait.err")"

# The connection was never torn down.
kill "$sampler" 2>/dev/null || :
! grep -q " false$" "$tmp/connected.samples" ||
    fail "upstream_connected was false in $(grep -c " false$" "$tmp/connected.samples") of $(wc -l < "$tmp/connected.samples") samples"
n=$(grep -c "upstream connected" "$tmp/dst.log" || :)
wanted=$(status_field dst connections_wanted)
[ "$n" -le "$wanted" ] || fail "a connection was reopened: $n \"upstream connected\" lines for $wanted connections"
if grep -q '"reconnects"' <<< "$($RELOCATECTL status --json "$tmp/dst.ctl")"; then
    [ "$(status_field dst reconnects)" -eq 0 ] ||
        fail "reconnects is $(status_field dst reconnects)"
fi
pass "the connection stayed up ($(wc -l < "$tmp/connected.samples") samples, $n reconnections logged)"

# Fix the source: the same image without the bad range, same socket.
stop_server src
start_source src "$tmp/src.img"
ctl reconnect dst
wait_for field_is dst upstream_connected true || fail "did not reconnect to the fixed source"
ctl retry dst || fail "relocatectl retry failed"
ctl wait dst --timeout 60 || fail "did not complete after retry"
[ "$(status_field dst failed_blocks)" -eq 0 ] || fail "failed_blocks not cleared"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "final image is wrong"
$NBDIO compare "$(uri dst)" "$tmp/src.img" || fail "export differs"
pass "after the fix and relocatectl retry: complete, byte-exact"
