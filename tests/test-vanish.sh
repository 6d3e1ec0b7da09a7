#!/usr/bin/env bash
# The source vanishes silently, three times (a reboot, a NAT that forgets its
# flows: tests/relay.py freezes every connection, no FIN, no RST, and
# refuses new ones until it is back).  Each time every connection to
# it hangs with requests in flight; the filter must find them within
# relocate-timeout, let them go and connect again once the source is
# back: the relocation completes byte-exact, with no operator.
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
for reboot in 1 2 3; do
    kill -USR1 "$(cat "$tmp/wan.pid")"
    sleep 8                     # down for longer than relocate-timeout
    before=$(status_field dst present_bytes)
    kill -USR2 "$(cat "$tmp/wan.pid")"
    progress_from "$before" ||
        fail "no progress after silent reboot $reboot: $("$RELOCATECTL" status "$tmp/dst.ctl")"
    echo "reboot $reboot: $(status_field dst connections) up, $(status_field dst connections_abandoned) abandoned"
done
# The hung connections are not kept for ever: shut down, then freed.
wait_for field_is dst connections_abandoned 0 ||
    fail "$(status_field dst connections_abandoned) hung connections are still kept"
"$RELOCATECTL" rate "$tmp/dst.ctl" 0 >/dev/null
ctl wait dst --timeout 120 || fail "the relocation did not complete: $("$RELOCATECTL" status "$tmp/dst.ctl")"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "the local file differs from the source"
pass "three silent source reboots: the hung connections were shut down and freed, new ones made, the relocation completed byte-exact"
