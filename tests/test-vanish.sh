#!/usr/bin/env bash
# The source vanishes silently, four times (a NAT that forgets its
# flows: tests/relay.py freezes every connection for ever, no FIN, no
# RST, and refuses new ones until it is back).  Each time the
# connections with requests in flight hang; the filter must give them
# up within relocate-timeout and connect again once the source is back,
# and the hung ones, which nothing ever answers, must not stop it
# opening new ones (the filter before this test opened none once 8 hung):
# the relocation completes byte-exact, with no operator, and the hung
# connections kept never pass relocate-connections + 8.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 32
start_source src "$tmp/src.img"
start_relay wan "unix:$tmp/src.sock"
rm -f "$tmp/dst.ctl"
# A slow copy (1 MiB/s): requests are in flight whenever it vanishes.
start_server dst --filter="$FILTER" nbd hostname=127.0.0.1 port="$(cat "$tmp/wan.port")" \
    relocate-file="$tmp/dst.img" relocate-control="$tmp/dst.ctl" \
    relocate-start=immediate relocate-timeout=3 relocate-rate=1M
wait_for test -S "$tmp/dst.ctl" || fail "dst: no control socket"
wait_for field_at_least dst present_bytes 1 || fail "the copy did not start"

# progress_from BYTES: present_bytes passes BYTES + 1 MiB within 60 s.
progress_from ()
{
    local i
    for i in $(seq 600); do
        field_at_least dst present_bytes $(($1 + (1 << 20))) && return 0
        sleep 0.1
    done
    return 1
}
for reboot in 1 2 3 4; do
    kill -USR1 "$(cat "$tmp/wan.pid")"
    sleep 8                     # down for longer than relocate-timeout
    before=$(status_field dst present_bytes)
    kill -USR2 "$(cat "$tmp/wan.pid")"
    progress_from "$before" ||
        fail "no progress after silent reboot $reboot: $("$RELOCATECTL" status "$tmp/dst.ctl")"
    echo "reboot $reboot: $(status_field dst connections) up, $(status_field dst connections_abandoned) abandoned"
done
n=$(status_field dst connections_abandoned)
[ "$n" -le 8 ] || fail "$n hung connections kept (4 up; at most 4 + 8 in all)"

# A fifth vanishing, and the operator resets the connections: every
# hung one goes within relocate-timeout (a healthy one first tries to
# disconnect cleanly, which the frozen relay never ends; the filter
# before this test reset only those still counted up, and kept the
# abandoned ones).
established () { ss -tnH state established "( dport = :$(cat "$tmp/wan.port") )" | awk '{ print $3 }' | sort; }
kill -USR1 "$(cat "$tmp/wan.pid")"
wait_for field_at_least dst connections_abandoned 1 ||
    fail "nothing abandoned: $("$RELOCATECTL" status "$tmp/dst.ctl")"
sleep 4                         # all of them overdue by now
hung=$(established)
[ -n "$hung" ] || fail "no connection to the relay is open"
ctl reconnect dst >/dev/null
for i in $(seq 50); do          # relocate-timeout (3 s) and 2 s more
    left=$(comm -12 <(echo "$hung") <(established))
    [ -z "$left" ] && break
    sleep 0.1
done
[ -z "$left" ] ||
    fail "after relocatectl reconnect $(echo "$left" | wc -l) of $(echo "$hung" | wc -l) hung connections are still open: $left"
kill -USR2 "$(cat "$tmp/wan.pid")"
"$RELOCATECTL" rate "$tmp/dst.ctl" 0 >/dev/null
ctl wait dst --timeout 120 || fail "the relocation did not complete: $("$RELOCATECTL" status "$tmp/dst.ctl")"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "the local file differs from the source"
pass "four silent source vanishings: new connections each time, $n hung ones kept; relocatectl reconnect closed all $(echo "$hung" | wc -l) hung ones; the relocation completed byte-exact"
