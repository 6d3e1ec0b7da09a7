#!/usr/bin/env bash
# Power cuts: unlike kill -9, which keeps the page cache, a power cut
# loses every write that was not synced.  The destination runs under an
# LD_PRELOAD shim (tests/powercut-shim.c) that logs every write,
# fallocate, ftruncate, sync, creation, rename and unlink of its files;
# at a random moment it is killed, and tests/powercut.py builds from a
# copy of the files taken before the round and the log what a disk
# might hold: everything before the last completed sync of each file,
# later changes kept or dropped at random and torn at 4 KiB.  The
# filter restarts on that (believing the machine rebooted), every
# flushed write must be there, every other byte the source's or some
# write's, and in the end the relocation completes with the right image.
# POWERCUT_ROUNDS (default 6) and POWERCUT_SEED set the amount.
source "$(dirname "$0")/functions.sh"
TORTURE="$PY $srcdir/tests/torture.py"
PC="$PY $srcdir/tests/powercut.py"
rounds=${POWERCUT_ROUNDS:-6}
seed=${POWERCUT_SEED:-$RANDOM}
echo "power-cut test: seed $seed, $rounds rounds"
RANDOM=$seed
use_powercut_shim
# A boot id per run, never the same twice: every restart follows a reboot.
boot_id () { printf '%08x-%04x-4000-8000-%012x' "$seed" "$1" "$2"; }

size=$((24 << 20))
head -c $size /dev/urandom > "$tmp/src.img"
cp "$tmp/src.img" "$tmp/oracle.img"
start_source src "$tmp/src.img" --filter=delay rdelay=2ms
params=(relocate-start=immediate relocate-rate=1M relocate-request-size=256K
        relocate-workers=4 relocate-sync-interval=1)
disk=$tmp/disk
mkdir "$disk"

for i in $(seq "$rounds"); do
    # The state before the round, and which inode each name had.
    rm -rf "$tmp/snap" "$tmp/built" "$tmp/pc.log" "$tmp/pc.log.data"
    cp -a --sparse=always "$disk" "$tmp/snap"
    (cd "$disk" && stat -c '%i %n' . * 2>/dev/null) > "$tmp/manifest" || :

    shim_vars=("POWERCUT_DIR=$disk" "POWERCUT_LOG=$tmp/pc.log"
               "POWERCUT_BOOT_ID=$(boot_id 1 "$i")")
    start_dest dst src "$disk/dst.img" "${params[@]}"
    wseed=$((seed * 100 + i))
    : > "$tmp/wlog.$i"             # the cut may come before the writer starts
    $TORTURE writer "$(uri dst)" "$tmp/oracle.img" "$wseed" "$tmp/wlog.$i" 0.04 &
    writer=$!
    # A random moment; the first cut comes early, when the files have
    # just been created and perhaps nothing has been synced yet.
    if [ "$i" -eq 1 ]; then
        sleep "0.$(( RANDOM % 3 ))$(( RANDOM % 10 ))"
    else
        sleep "$(( RANDOM % 18 / 10 )).$(( RANDOM % 10 ))"
    fi
    present=$(status_field dst present_bytes)
    stop_server dst KILL                            # the power cut
    kill "$writer" 2>/dev/null || :
    wait "$writer" 2>/dev/null || :
    echo "round $i: cut with $present of $size bytes present"
    $TORTURE settle "$tmp/oracle.img" "$tmp/wlog.$i" "$wseed"
    $PC build "$tmp/snap" "$tmp/manifest" "$tmp/pc.log" "$disk" "$tmp/built" \
        "$((seed * 100 + i))" || fail "round $i: cannot build the disk state"
    rm -rf "$disk"
    mv "$tmp/built" "$disk"

    # Restart on a throwaway copy and read everything: the next round
    # restarts on $disk itself, still in the middle of the relocation.
    rm -rf "$tmp/check"
    cp -a --sparse=always "$disk" "$tmp/check"
    shim_vars=("POWERCUT_BOOT_ID=$(boot_id 2 "$i")")
    start_dest chk src "$tmp/check/dst.img" "${params[@]}"
    # Known bytes as torture.py verify checks them, and the others.
    $PC adopt "$(uri chk)" "$tmp/oracle.img" "$tmp/wlog.$i" "$wseed" ||
        fail "round $i (seed $seed): wrong data after the power cut"
    stop_server chk
done

shim_vars=("POWERCUT_BOOT_ID=$(boot_id 3 0)")
start_dest dst src "$disk/dst.img" "${params[@]}"
$TORTURE verify "$(uri dst)" "$tmp/oracle.img" || fail "a flushed write was lost"
ctl rate dst 0
ctl wait dst --timeout 120 || fail "did not complete"
$TORTURE verify "$(uri dst)" "$tmp/oracle.img" || fail "final image wrong"
stop_server dst
cmp "$disk/dst.img" "$tmp/oracle.img" || fail "the local file is not the oracle"
$PY -c 'import sys; sys.exit(0 if all(open(sys.argv[1], "rb").read()) else 1)' \
    "$tmp/oracle.img.mask" || fail "the oracle still has unknown bytes"
pass "power-cut test seed $seed: $rounds cuts, flushed writes kept, image right"
