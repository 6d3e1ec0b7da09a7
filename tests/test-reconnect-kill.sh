#!/usr/bin/env bash
# A guest whose NBD client reconnects by itself (QEMU's reconnect-delay)
# keeps doing I/O while the destination is killed with SIGKILL at random
# moments and started again with the same parameters.  Every write and
# zero the server acknowledged must read back afterwards, flushed or
# not, as with a plain `nbdkit file` server: a process crash loses no
# page cache.  No request may get an error reply.  At the end the
# relocation completes and the local file equals the client's oracle.
#
# RECONNECT_ROUNDS (default 8) and RECONNECT_SEED set the amount;
# RECONNECT_PLAIN=1 runs the same against plain `nbdkit file` (the
# control: it must pass).
source "$(dirname "$0")/functions.sh"
CLIENT="$PY $srcdir/tests/reconnect.py"
rounds=${RECONNECT_ROUNDS:-8}
seed=${RECONNECT_SEED:-$RANDOM}
plain=${RECONNECT_PLAIN:-}
echo "reconnect kill campaign: seed $seed, $rounds kills${plain:+ (plain nbdkit file)}"
RANDOM=$seed

mib=128
random_image "$tmp/src.img" $mib
start_source src "$tmp/src.img" --filter=delay rdelay=2ms
# A modest rate: the background copy is mid-way through the rounds.
params=(relocate-start=on-write relocate-rate=1M relocate-workers=2
        relocate-request-size=256K)
dest () { start_dest_or_plain dst src "$tmp/dst.img" "$plain" "${params[@]}"; }

dest
mkdir "$tmp/client"
$CLIENT run "$(uri dst)" "$tmp/src.img" "$tmp/client" --seed "$seed" \
    --handles 2 --depth 12 --rate 50 --flush-prob 0.002 --stop-file "$tmp/client/stop" \
    --reconnect-timeout 60 >"$tmp/client.log" 2>&1 &
client=$!
clients+=("$client")

for i in $(seq "$rounds"); do
    # A random moment: after a random number of acknowledged requests
    # on this connection, plus up to half a second.
    n=$(( 10 + RANDOM % 150 ))
    # One round in four: as soon as the client has reconnected, while it
    # resends and reads back.
    [ $(( RANDOM % 4 )) -ne 0 ] || n=0
    # (After a restart the client first reads back what it wrote.)
    wait_for client_busy "$tmp/client" "$i" "$n" ||
        fail "round $i: the client made no progress: $(tail -n 5 "$tmp/client.log")"
    [ "$i" -eq 1 ] ||
        echo "    acknowledged 4K blocks found lost so far: $(client_field "$tmp/client" lost_blocks)"
    sleep "0.$(( RANDOM % 5 ))"
    acked=$(client_field "$tmp/client" acked)
    [ -n "$plain" ] || present=$(status_field dst present_bytes)
    stop_server dst KILL
    echo "kill $i: after $acked acknowledged requests${present:+, $present bytes present}"
    # The client finds nothing listening for a moment.
    sleep "0.$(( RANDOM % 5 ))"
    dest
done

wait_for client_busy "$tmp/client" $((rounds + 1)) 50 ||
    fail "the client made no progress after the last restart"
echo "    acknowledged 4K blocks found lost so far: $(client_field "$tmp/client" lost_blocks)"
touch "$tmp/client/stop"
set +e; wait "$client"; st=$?; set -e
cat "$tmp/client.log"
[ $st -eq 0 ] || fail "seed $seed: the client lost acknowledged data or got errors (see above)"
pass "seed $seed: $rounds kills, every acknowledged write and zero read back, no error replies"

[ -z "$plain" ] || exit 0
ctl rate dst 0
ctl wait dst --timeout 180 || fail "did not complete"
$CLIENT verify "$(uri dst)" "$tmp/client/oracle.img" "$tmp/src.img" ||
    fail "the export differs from the oracle after completion"
stop_server dst
$CLIENT verify "$tmp/dst.img" "$tmp/client/oracle.img" "$tmp/src.img" ||
    fail "the local file differs from the oracle after completion"
pass "relocation completed; the local file equals the oracle"
