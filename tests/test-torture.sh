#!/usr/bin/env bash
# Torture: seeded random reads, unaligned writes, zeroes, trims,
# flushes and caches from three connections at once, during a
# background copy over a slow, rate-limited source; every read and the
# final image are checked against an oracle.
# TORTURE_SEEDS (default "1 2 3") and TORTURE_OPS (default 300) set the
# amount; scripts/torture runs many more.  A failure prints its seed.
source "$(dirname "$0")/functions.sh"
TORTURE="$PY $srcdir/tests/torture.py"

for seed in ${TORTURE_SEEDS:-1 2 3}; do
    rm -f "$tmp"/*.img "$tmp"/*.bitmap "$tmp"/*.mask
    head -c $((16 << 20)) /dev/urandom > "$tmp/src.img"
    truncate -s $((24 << 20)) "$tmp/src.img"          # and a hole
    cp --sparse=always "$tmp/src.img" "$tmp/oracle.img"
    start_source src "$tmp/src.img" --filter=delay --filter=rate rdelay=3ms rate=200M
    start_dest dst src "$tmp/dst.img" relocate-start=immediate \
        relocate-request-size=256K relocate-rate=8M relocate-sync-interval=1
    $TORTURE run "$(uri dst)" "$tmp/oracle.img" "$seed" "${TORTURE_OPS:-300}" 3 ||
        fail "seed $seed: workload saw wrong data"
    ctl rate dst 0
    ctl wait dst --timeout 120 || fail "seed $seed: did not complete"
    $TORTURE verify "$(uri dst)" "$tmp/oracle.img" || fail "seed $seed: served bytes wrong"
    stop_server dst
    # The local file alone, as a plain raw image, is right too.
    start_server raw file "$tmp/dst.img"
    $TORTURE verify "$(uri raw)" "$tmp/oracle.img" || fail "seed $seed: local file wrong"
    stop_server raw
    stop_server src
    servers=()
    pass "torture seed $seed"
done
