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
