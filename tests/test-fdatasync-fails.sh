#!/usr/bin/env bash
# The local file's fdatasync fails just as the relocation starts (the
# first write): the write gets EIO at once, status answers and says
# why, a reconnect to the source does not wipe that failure, and
# SIGTERM stops nbdkit.  (It used to hang every request, the control
# socket and SIGTERM: the start held a lock that recording the failure
# took again.)
source "$(dirname "$0")/functions.sh"

use_shim fail-fdatasync.c
random_image "$tmp/src.img" 8
start_source src "$tmp/src.img"
# The shim goes into the destination only.
shim_vars=("FAIL_FDATASYNC_PATH=$tmp/dst.img" "FAIL_FDATASYNC_WHEN=$tmp/fail-now")
start_dest dst src "$tmp/dst.img" relocate-start=on-write relocate-timeout=3
touch "$tmp/fail-now"

timeout 20 $PY - "$(uri dst)" <<'PYEOF' || fail "the first write did not fail at once with EIO"
import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
t = time.time()
try:
    h.pwrite(b"x" * 4096, 0)
    sys.exit("the write succeeded although fdatasync fails")
except nbd.Error as e:
    took = time.time() - t
    print("write failed after %.1f s: %s" % (took, e.string))
    assert e.errnum is None or e.errnum == 5, e          # EIO
    assert took < 10, took
PYEOF
pass "the first write fails with EIO when the start cannot be made durable"

timeout 2 "$RELOCATECTL" status --json "$tmp/dst.ctl" > "$tmp/status" ||
    fail "status did not answer within 2 s"
[ "$(status_field dst failed)" = true ] || fail "status does not say failed: $(cat "$tmp/status")"
grep -q fdatasync <<< "$(status_field dst failure)" || fail "failure does not name fdatasync"
pass "status answers at once: $(status_field dst failure)"

ctl reconnect dst
wait_for field_is dst upstream_connected true || fail "did not reconnect"
sleep 1
[ "$(status_field dst failed)" = true ] || fail "a reconnect to the source wiped the local failure"
set +e; ctl wait dst --timeout 10 2>"$tmp/err"; st=$?; set -e
[ "$st" -eq 4 ] || fail "wait exited $st, not 4"
pass "the failure stays across a reconnect; wait exits 4: $(cat "$tmp/err")"

pid=$(cat "$tmp/dst.pid")
took=$(stop_within "$pid" 5) || fail "nbdkit did not exit within 5 s of SIGTERM"
rm -f "$tmp/dst.pid"
pass "SIGTERM stops it (in $took s)"
