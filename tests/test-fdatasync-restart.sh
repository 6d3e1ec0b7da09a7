#!/usr/bin/env bash
# The recovery that a failed fdatasync asks for ("restart nbdkit")
# trusts nothing that was not durable.  Blocks fetched after the last
# good sync are in the volatile bitmap; the sync of the local file then
# fails, and Linux may have dropped their data (it marks such pages
# clean and reads the disk again later).  Modelled: nbdkit is killed,
# the never-synced range is punched out of the file, and nbdkit starts
# again on a healthy disk.  The range must be fetched again from the
# source, not read back as zeroes; what was flushed before stays.
source "$(dirname "$0")/functions.sh"

use_shim fail-fdatasync.c
random_image "$tmp/src.img" 8
start_source src "$tmp/src.img"
shim_vars=("FAIL_FDATASYNC_PATH=$tmp/dst.img" "FAIL_FDATASYNC_WHEN=$tmp/fail-now")
# No background copy and no periodic sync: only the client decides what
# is fetched and when it is made durable.
params=(relocate-start=on-write relocate-background=false
        relocate-sync-interval=3600 relocate-timeout=5)
start_dest dst src "$tmp/dst.img" "${params[@]}"

timeout 60 $PY - "$(uri dst)" "$tmp/fail-now" <<'PYEOF' || fail "client"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"w" * 65536, 0)               # starts the relocation
h.flush()                               # durable: block 0
h.pread(3 * 512 * 1024, 4 << 20)        # fetched: 4 MiB .. 5.5 MiB
open(sys.argv[2], "w").close()          # the disk fails from now on
try:
    h.flush()
    sys.exit("the flush succeeded although fdatasync fails")
except nbd.Error as e:
    print("flush failed as it should:", e.string)
PYEOF
[ "$(status_field dst failed)" = true ] || fail "status does not say failed"
pass "a flush fails with EIO once fdatasync does"

stop_server dst KILL
rm -f "$tmp/fail-now" "$tmp/dst.sock"
# What the kernel may have dropped: the blocks fetched after the last
# good sync.
fallocate --punch-hole --offset $((4 << 20)) --length $((3 * 512 * 1024)) "$tmp/dst.img"
shim_vars=()
start_dest dst src "$tmp/dst.img" "${params[@]}"

$PY - "$(uri dst)" "$tmp/src.img" <<'PYEOF' || fail "after the restart"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
src = open(sys.argv[2], "rb").read()
n = 3 * 512 * 1024
got = h.pread(n, 4 << 20)
zeroes = sum(1 for i in range(0, n, 65536) if got[i:i + 65536] == bytes(65536))
assert got == src[4 << 20:(4 << 20) + n], \
    "the never-synced range was trusted: %d of %d blocks read as zeroes" % (zeroes, n // 65536)
assert h.pread(65536, 0) == b"w" * 65536, "the flushed write was lost"
PYEOF
pass "after the restart the never-synced range is fetched again; the flushed write is there"

# The same after a crash: blocks fetched since the last sync are trusted
# at the next start (same boot) only once that start's sync succeeds.
# Fetched, not synced, nbdkit killed; the range is punched out (what a
# failed writeback leaves) and the next start's fdatasync fails: it must
# refuse to serve, and the start after it fetch the range again.
$PY - "$(uri dst)" <<'PYEOF' || fail "fetch before the crash"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pread(1 << 20, 6 << 20)               # fetched: 6 MiB .. 7 MiB, not synced
PYEOF
stop_server dst KILL
rm -f "$tmp/dst.sock"
fallocate --punch-hole --offset $((6 << 20)) --length $((1 << 20)) "$tmp/dst.img"
touch "$tmp/fail-now"
rc=0
# (as use_shim's nbdkit does: the sanitizer's preload first.)
pre=${SANITIZER_PRELOAD:-}
env LD_PRELOAD="${pre:+$pre }$tmp/shim.so" "FAIL_FDATASYNC_PATH=$tmp/dst.img" \
    "FAIL_FDATASYNC_WHEN=$tmp/fail-now" \
    nbdkit -f --log=stderr -U "$tmp/bad.sock" --filter="$FILTER" \
    nbd socket="$tmp/src.sock" relocate-file="$tmp/dst.img" \
    relocate-control="$tmp/bad.ctl" "${params[@]}" \
    </dev/null 2>"$tmp/bad.log" & bad=$!
# It must exit (its control socket may exist a moment before).
for i in $(seq 300); do
    kill -0 $bad 2>/dev/null || break
    sleep 0.1
done
if kill -0 $bad 2>/dev/null; then
    kill -KILL $bad; wait $bad || :
    fail "nbdkit still runs 30 s after the sync of the recovered blocks failed"
fi
wait $bad || rc=$?
[ $rc -ne 0 ] || fail "nbdkit exited with status 0"
grep -q "fdatasync of the [0-9]* blocks written before the last run ended failed" "$tmp/bad.log" ||
    fail "no message naming the failed sync: $(tail -n 3 "$tmp/bad.log")"
pass "a start whose sync of the recovered blocks fails refuses to serve"

rm -f "$tmp/fail-now" "$tmp/dst.sock"
start_dest dst src "$tmp/dst.img" "${params[@]}"
$PY - "$(uri dst)" "$tmp/src.img" <<'PYEOF' || fail "after the second restart"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
src = open(sys.argv[2], "rb").read()
got = h.pread(1 << 20, 6 << 20)
assert got == src[6 << 20:7 << 20], \
    "the recovered blocks were trusted although their sync failed"
assert h.pread(65536, 0) == b"w" * 65536, "the flushed write was lost"
PYEOF
pass "the start after it fetches them again"
