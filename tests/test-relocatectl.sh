#!/usr/bin/env bash
# Every relocatectl subcommand, its error paths, the progress bar under
# a pseudo-terminal, and the control socket's own rules.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 64
start_source src "$tmp/src.img" --filter=delay rdelay=2ms
start_dest dst src "$tmp/dst.img" relocate-start=manual relocate-rate=4M

# status, human and JSON.
wait_for field_is dst connections 4 || fail "4 connections did not come up"
out=$(ctl status dst)
for f in "state:      standby" "present:    0 B of 64.0 MiB (0.0%)" \
         "throughput:" "rate cap:   4.0 MiB/s" "upstream:   4 of 4 connections up"; do
    grep -qF "$f" <<<"$out" || fail "status lacks '$f': $out"
done
for k in state size present_bytes fetched_demand_bytes fetched_background_bytes \
         skipped_zero_bytes current_bytes_per_second average_bytes_per_second \
         eta_seconds paused rate upstream_connected last_error failed \
         connections connections_wanted failed_blocks failed_offsets; do
    status_field dst "$k" >/dev/null || fail "status --json lacks $k"
done
pass "status and status --json"

# start: writes are refused in manual standby, accepted after start.
! $NBDIO pwrite "$(uri dst)" 0 00 2>/dev/null || fail "write accepted in manual standby"
ctl start dst || fail "start failed"
[ "$(status_field dst state)" = relocating ] || fail "start did not start"
ctl start dst || fail "a second start is not harmless"
$NBDIO pwrite "$(uri dst)" 0 00 || fail "write refused after start"
pass "start"

# pause: no progress, wait times out with status 3.
ctl pause dst
[ "$(status_field dst paused)" = true ] || fail "not paused"
sleep 0.5
p1=$(status_field dst present_bytes); sleep 1.5; p2=$(status_field dst present_bytes)
[ "$p1" = "$p2" ] || fail "copy went on while paused ($p1 -> $p2)"
set +e; ctl wait dst --timeout 1 2>"$tmp/err"; st=$?; set -e
[ $st -eq 3 ] || fail "wait --timeout while paused returned $st, not 3"
grep -q "timed out" "$tmp/err" || fail "no timeout message"
pass "pause; wait --timeout exits 3"

# rate: measured progress follows the cap (generous bounds).
ctl rate dst 1M
ctl resume dst
sleep 1
p1=$(status_field dst present_bytes); sleep 3; p2=$(status_field dst present_bytes)
slow=$(( (p2 - p1) / 3 ))
ctl rate dst 8M
sleep 1
p1=$(status_field dst present_bytes); sleep 1; p2=$(status_field dst present_bytes)
fast=$(( p2 - p1 ))
echo "progress at 1M cap: $slow B/s; at 8M cap: $fast B/s"
[ "$slow" -le $((3 * 1024 * 1024)) ] || fail "1M cap not applied: $slow B/s"
[ "$fast" -ge $((3 * slow)) ] || fail "raising the cap did not speed the copy: $slow -> $fast B/s"
pass "rate changes the copy rate"

# reconnect: the connection is reopened and the copy goes on.
[ "$(status_field dst state)" = relocating ] || fail "finished too early to test reconnect"
ctl reconnect dst || fail "reconnect failed"
wait_for field_is dst upstream_connected true || fail "did not reconnect"
ctl rate dst 0
script -qec "$RELOCATECTL wait --progress $tmp/dst.ctl" /dev/null > "$tmp/progress" ||
    fail "wait --progress failed"
grep -q '\[##############################\] 100.0%' "$tmp/progress" ||
    fail "no progress bar: $(cat -v "$tmp/progress")"
[ "$(status_field dst state)" = complete ] || fail "wait returned before completion"
cmp <(tail -c +2 "$tmp/dst.img") <(tail -c +2 "$tmp/src.img") || fail "data differs"
pass "reconnect; wait --progress draws a bar under a terminal and exits 0"

# Idle connections cannot lock operators out: 300 of them, and status
# still answers at once.
$PY - "$tmp/dst.ctl" <<'PYEOF' &
import socket, sys, time
socks = []
for i in range(300):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    socks.append(s)
time.sleep(5)
PYEOF
idle=$!
sleep 2
timeout 2 "$RELOCATECTL" status "$tmp/dst.ctl" >/dev/null ||
    fail "status did not answer within 2 s with 300 idle control clients"
wait $idle
pass "300 idle control connections: status still answers"

# Error paths.
expect_status ()
{
    local want=$1 msg=$2 st; shift 2
    set +e; "$RELOCATECTL" "$@" >"$tmp/out" 2>"$tmp/err"; st=$?; set -e
    [ "$st" -eq "$want" ] || fail "relocatectl $*: exit $st, not $want"
    grep -qF -- "$msg" "$tmp/err" || fail "relocatectl $*: no '$msg' in: $(cat "$tmp/err")"
    [ "$(wc -l < "$tmp/err")" -eq 1 ] || fail "relocatectl $*: not one line: $(cat "$tmp/err")"
}
expect_status 1 "cannot connect: No such file or directory" status "$tmp/nosuch.ctl"
$PY -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$tmp/dead.ctl"
expect_status 1 "cannot connect: Connection refused" status "$tmp/dead.ctl"
expect_status 2 "unknown command or wrong arguments: frobnicate" frobnicate "$tmp/dst.ctl"
expect_status 2 "usage" status
expect_status 2 "unknown command or wrong arguments: rate" rate "$tmp/dst.ctl"
expect_status 1 "usage: rate SIZE" rate "$tmp/dst.ctl" lots
expect_status 2 "Unknown option --bogus" status --bogus "$tmp/dst.ctl"
pass "error paths: one line each, documented exit status"

# The socket: mode, malformed and over-long lines, several clients.
[ "$(stat -c %a "$tmp/dst.ctl")" = 600 ] || fail "socket mode is not 0600"
$PY - "$tmp/dst.ctl" <<'PYEOF'
import json, socket, sys
def conn():
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); return s
many = [conn() for _ in range(5)]          # several clients at once
for s in many:
    s.sendall(b"status\n")
for s in many:
    assert json.loads(s.makefile().readline())["state"] == "complete"
s = conn()
s.sendall(b"bogus\n\x01\n")
f = s.makefile()
r = json.loads(f.readline()); assert r["ok"] is False and "unknown command" in r["error"], r
r = json.loads(f.readline()); assert r["ok"] is False and "control character" in r["error"], r
s = conn()
s.sendall(b"x" * 1000)
r = json.loads(s.makefile().readline()); assert "too long" in r["error"], r
assert s.recv(10) == b""                  # and the connection is closed
PYEOF
pass "control socket: mode 0600, malformed and long lines refused, many clients"
stop_server dst
start_dest dst2 src "$tmp/dst2.img" relocate-control-mode=0660
[ "$(stat -c %a "$tmp/dst2.ctl")" = 660 ] || fail "relocate-control-mode not applied"
pass "relocate-control-mode"
