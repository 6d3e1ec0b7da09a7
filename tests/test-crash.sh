#!/usr/bin/env bash
# Crash campaign: kill -9 the destination at random moments (during
# fetches, writes, flushes and near completion), restart, carry on.
# Every flushed write survives, the final image equals the oracle, and
# each restart refetches no more than was in flight.
# CRASH_ITERATIONS (default 6) and CRASH_SEED set the amount.
source "$(dirname "$0")/functions.sh"
TORTURE="$PY $srcdir/tests/torture.py"
iterations=${CRASH_ITERATIONS:-6}
seed=${CRASH_SEED:-$RANDOM}
echo "crash campaign: seed $seed, $iterations kills"
RANDOM=$seed

size=$((32 << 20)) rate=$((4 << 20)) req=$((256 << 10)) workers=4
head -c $size /dev/urandom > "$tmp/src.img"
cp "$tmp/src.img" "$tmp/oracle.img"
start_source src "$tmp/src.img" --filter=delay rdelay=3ms
params=(relocate-start=immediate relocate-rate=$rate relocate-request-size=$req
        relocate-workers=$workers relocate-sync-interval=1)

for i in $(seq "$iterations"); do
    start_dest dst src "$tmp/dst.img" "${params[@]}"
    $TORTURE writer "$(uri dst)" "$tmp/oracle.img" "$((seed + i))" "$tmp/log.$i" &
    writer=$!
    # A random moment; the last kill comes near completion.
    if [ "$i" -eq "$iterations" ]; then
        wait_for field_at_least dst present_bytes $((size * 9 / 10)) || :
    else
        sleep "$(( RANDOM % 20 / 10 )).$(( RANDOM % 10 ))"
    fi
    fetched=$(( $(status_field dst fetched_background_bytes) + $(status_field dst fetched_demand_bytes) ))
    stop_server dst KILL
    kill "$writer" 2>/dev/null || :
    wait "$writer" 2>/dev/null || :
    $TORTURE settle "$tmp/oracle.img" "$tmp/log.$i" "$((seed + i))"
    echo "kill $i: fetched $fetched bytes so far"
done

start_dest dst src "$tmp/dst.img" "${params[@]}"
$TORTURE verify "$(uri dst)" "$tmp/oracle.img" || fail "a flushed write was lost"
ctl rate dst 0
ctl wait dst --timeout 120 || fail "did not complete"
# The counters carry on across restarts: this is the whole campaign's.
fetched_total=$(( $(status_field dst fetched_background_bytes) + $(status_field dst fetched_demand_bytes) ))
$TORTURE verify "$(uri dst)" "$tmp/oracle.img" || fail "final image wrong"
# Each kill may lose only what was in flight: every block that reached
# the local file is in the volatile bitmap, and the restart keeps it.
bound=$(( size + iterations * (2 * workers * req + (4 << 20)) ))
echo "fetched $fetched_total bytes over $iterations kills for a $size byte image (bound $bound)"
[ "$fetched_total" -le "$bound" ] || fail "refetched too much: $fetched_total > $bound"
pass "crash campaign seed $seed: $iterations kills, flushed writes kept, image right"
