#!/usr/bin/env bash
# A client's flush writes the bitmap only when the client needs it.
#
# Blocks fetched from the source need no durable bit: after a power
# cut they are fetched again.  So a flush after reads alone syncs the
# local file and leaves the bitmap alone (checked in the log of
# tests/powercut-shim.c).  But once a client writes into a block, its
# bit must be durable when the flush returns, whether the write made
# the block present or the block was fetched earlier and its bit not
# yet written: else a power cut brings the source's data back.  The
# power cut here keeps nothing that was not synced (powercut.py
# drop-all), and no periodic sync helps (relocate-sync-interval=3600).
source "$(dirname "$0")/functions.sh"
PC="$PY $srcdir/tests/powercut.py"
use_powercut_shim

random_image "$tmp/src.img" 4
start_source src "$tmp/src.img"
params=(relocate-start=immediate relocate-background=false
        relocate-sync-interval=3600)
disk=$tmp/disk
mkdir "$disk"
cp -a "$disk" "$tmp/snap"
(cd "$disk" && stat -c '%i %n' .) > "$tmp/manifest"
shim_vars=("POWERCUT_DIR=$disk" "POWERCUT_LOG=$tmp/pc.log"
           "POWERCUT_BOOT_ID=00000000-0000-4000-8000-000000000001")
start_dest dst src "$disk/dst.img" "${params[@]}"

# completed syncs of file $1 in the log so far
syncs ()
{
    awk -v ino="$(stat -c %i "$1")" \
        '$2 == "sync" && $3 == ino { n++ } END { print n + 0 }' "$tmp/pc.log"
}

# 1. Reads fetch blocks 3 and 10; the flush after them syncs the local
# file only.
b0=$(syncs "$disk/dst.img.bitmap") l0=$(syncs "$disk/dst.img")
$PY - "$(uri dst)" <<'EOF' || fail "reads and flush failed"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for blk in (3, 10):
    h.pread(65536, blk * 65536)
h.flush()
h.shutdown()
EOF
[ "$(status_field dst present_bytes)" -eq $((2 * 65536)) ] ||
    fail "the reads did not fetch 2 blocks: $(status_field dst present_bytes)"
[ "$(syncs "$disk/dst.img")" -gt "$l0" ] ||
    fail "the flush after reads did not sync the local file"
[ "$(syncs "$disk/dst.img.bitmap")" -eq "$b0" ] ||
    fail "the flush after reads alone synced the bitmap"

# 2. A write into block 3 (fetched, its bit not durable), a flush, then
# a power cut that keeps nothing unsynced.  (A write into an absent
# block makes the flush write the bitmap anyway: not tested here.)
cp "$tmp/src.img" "$tmp/oracle.img"
$PY - "$(uri dst)" "$tmp/oracle.img" <<'EOF' || fail "writes failed"
import os, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
with open(sys.argv[2], "r+b") as oracle:
    off, data = 3 * 65536 + 8192, os.urandom(4096)
    h.pwrite(data, off)
    oracle.seek(off)
    oracle.write(data)
h.flush()
h.shutdown()
EOF
stop_server dst KILL
$PC build "$tmp/snap" "$tmp/manifest" "$tmp/pc.log" "$disk" "$tmp/built" \
    drop-all || fail "cannot build the disk after the power cut"
shim_vars=("POWERCUT_BOOT_ID=00000000-0000-4000-8000-000000000002")
start_dest chk src "$tmp/built/dst.img" "${params[@]}"
$PY "$srcdir/tests/nbdio.py" compare "$(uri chk)" "$tmp/oracle.img" ||
    fail "a flushed write was lost in the power cut"
stop_server chk
pass "a flush after reads left the bitmap alone; flushed writes survived a power cut"
