#!/usr/bin/env bash
# The source's host goes silent twice: its packets are dropped both
# ways (a host that lost power, a firewall that forgot the flow), so
# the filter's connections get no FIN, no RST, not even an ACK, and
# then the source is restarted ("rebooted") while nothing gets through.
# TCP keepalive and the user timeout on each socket must end every
# connection to the silent peer within about relocate-timeout (the
# filter before this test kept them open for ever), and the relocation
# must complete, byte-exact, once the source is back, with no operator.
#
# The drop is made with iptables in a private network namespace (this
# script runs itself again under unshare -n): no rule touches the host.
if [ -z "${RELOCATE_NETNS:-}" ]; then
    skip () { echo "SKIP: $*"; exit 77; }
    [ "$(id -u)" -eq 0 ] || skip "needs root (a network namespace, iptables)"
    command -v iptables >/dev/null && command -v ss >/dev/null ||
        skip "needs iptables and ss (apt-get install iptables iproute2)"
    unshare -n true 2>/dev/null || skip "cannot make a network namespace here (unshare -n)"
    exec env RELOCATE_NETNS=1 unshare -n -- bash "$0" "$@"
fi
source "$(dirname "$0")/functions.sh"
ip link set lo up
iptables -L INPUT -n >/dev/null 2>&1 || fail "iptables does not work in the network namespace"

timeout=3
port=$(free_port)
random_image "$tmp/src.img" 32
start_tcp_source src0 "$tmp/src.img" "$port"
rm -f "$tmp/dst.ctl"
# A slow copy (1 MiB/s): requests are in flight whenever it goes silent.
start_server dst --filter="$FILTER" nbd hostname=127.0.0.1 port="$port" \
    relocate-file="$tmp/dst.img" relocate-control="$tmp/dst.ctl" \
    relocate-start=immediate relocate-timeout=$timeout relocate-rate=1M
wait_for test -S "$tmp/dst.ctl" || fail "dst: no control socket"
wait_for field_at_least dst present_bytes 1 || fail "the copy did not start"

# The filter's connections to the source that TCP still counts open.
open_conns () { ss -tnH state established "( dport = :$port )" | wc -l; }
drop () { iptables "$1" INPUT -p tcp --dport "$port" -j DROP &&
          iptables "$1" INPUT -p tcp --sport "$port" -j DROP; }

for reboot in 1 2; do
    n=$(open_conns)
    [ "$n" -ge 1 ] || fail "reboot $reboot: no connection to the source is open"
    drop -I
    start=$(date +%s.%N)
    # Keepalive probes after timeout/2 of silence, 3 of them, and the
    # user timeout: all gone within timeout + 2 s; 4 x timeout allowed.
    for i in $(seq $((40 * timeout))); do
        [ "$(open_conns)" -eq 0 ] && break
        sleep 0.1
    done
    left=$(open_conns)
    [ "$left" -eq 0 ] ||
        fail "reboot $reboot: $left of $n connections to the silent source still open after $(since "$start") s: $("$RELOCATECTL" status "$tmp/dst.ctl")"
    echo "reboot $reboot: $n connections to the silent source ended after $(since "$start") s"
    # The source restarts while nothing gets through (its resets are
    # dropped too), then the path heals.
    kill -9 "$(cat "$tmp/src$((reboot - 1)).pid")"
    sleep 1
    before=$(status_field dst present_bytes)
    drop -D
    start_tcp_source "src$reboot" "$tmp/src.img" "$port"
    for i in $(seq 600); do
        field_at_least dst present_bytes $((before + (1 << 20))) && break
        sleep 0.1
    done
    field_at_least dst present_bytes $((before + (1 << 20))) ||
        fail "no progress after silent reboot $reboot: $("$RELOCATECTL" status "$tmp/dst.ctl")"
done
"$RELOCATECTL" rate "$tmp/dst.ctl" 0 >/dev/null
ctl wait dst --timeout 120 || fail "the relocation did not complete: $("$RELOCATECTL" status "$tmp/dst.ctl")"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "the local file differs from the source"
pass "two silent source reboots: every connection to the silent peer ended by itself, the relocation completed byte-exact"
