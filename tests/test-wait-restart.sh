#!/usr/bin/env bash
# relocatectl wait rides out a restart of the destination: stopped
# with SIGTERM (the control socket goes away) and with kill -9 (a stale
# socket file refuses connections), restarted a couple of seconds later
# with the same parameters.  wait, with and without --progress, says so
# on stderr, keeps waiting and exits 0 once the relocation completes.
source "$(dirname "$0")/functions.sh"

waiters=()
# Do not leave a waiter behind when the test fails.
fail () { kill "${waiters[@]}" 2>/dev/null || :; echo "FAIL: $*" >&2; exit 1; }

random_image "$tmp/src.img" 32
start_source src "$tmp/src.img"
params=(relocate-start=immediate relocate-rate=1M relocate-sync-interval=1)
start_dest dst src "$tmp/dst.img" "${params[@]}"

"$RELOCATECTL" wait --timeout 120 "$tmp/dst.ctl" >/dev/null 2>"$tmp/wait.err" &
plain=$!
script -qec "$RELOCATECTL wait --progress --timeout 120 $tmp/dst.ctl" /dev/null \
    >"$tmp/progress" &
progress=$!
waiters=("$plain" "$progress")
sleep 1

# still_waiting WHAT: neither waiter has exited.
still_waiting ()
{
    local pid st
    for pid in "${waiters[@]}"; do
        kill -0 "$pid" 2>/dev/null && continue
        st=0; wait "$pid" || st=$?
        fail "wait exited with status $st $1: $(cat "$tmp/wait.err"; cat -v "$tmp/progress")"
    done
}

# back_lines N: the plain waiter has said N times that the socket is back.
back_lines () { [ "$(grep -c 'answering again' "$tmp/wait.err")" -eq "$1" ]; }

round=0
for sig in TERM KILL; do
    round=$((round + 1))
    [ "$(status_field dst state)" = relocating ] || fail "finished too early"
    stop_server dst "$sig"
    sleep 2
    still_waiting "while the server was stopped with SIG$sig"
    start_dest dst src "$tmp/dst.img" "${params[@]}"
    wait_for back_lines $round ||
        fail "wait did not see the server back: $(cat "$tmp/wait.err")"
    still_waiting "after the restart with SIG$sig"
    pass "wait kept waiting across a SIG$sig restart"
done

ctl rate dst 0
for pid in "${waiters[@]}"; do
    st=0; wait "$pid" || st=$?
    [ $st -eq 0 ] || fail "wait exited with status $st, not 0: $(cat "$tmp/wait.err")"
done
waiters=()
[ "$(status_field dst state)" = complete ] || fail "wait returned before completion"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "data differs"
# One line when the socket stops answering, one when it is back.
cat "$tmp/wait.err"
[ "$(grep -c 'not answering (.*); waiting for it to come back' "$tmp/wait.err")" -eq 2 ] &&
    [ "$(grep -c 'answering again' "$tmp/wait.err")" -eq 2 ] &&
    [ "$(wc -l < "$tmp/wait.err")" -eq 4 ] ||
    fail "unexpected stderr: $(cat "$tmp/wait.err")"
[ "$(grep -c 'not answering' "$tmp/progress")" -eq 2 ] &&
    grep -q '\[##############################\] 100.0%' "$tmp/progress" ||
    fail "wait --progress output: $(cat -v "$tmp/progress")"
pass "wait and wait --progress exit 0 at completion; stderr shows the restarts"

# A socket that is not there (yet): wait waits for it until --timeout;
# status still fails at once.
set +e; "$RELOCATECTL" wait --timeout 1 "$tmp/nosuch.ctl" 2>"$tmp/err"; st=$?; set -e
[ $st -eq 3 ] || fail "wait on a missing socket returned $st, not 3"
grep -q "nosuch.ctl: not answering (cannot connect: No such file or directory)" "$tmp/err" &&
    grep -q "timed out after 1 s" "$tmp/err" || fail "wait on a missing socket: $(cat "$tmp/err")"
set +e; "$RELOCATECTL" status "$tmp/nosuch.ctl" 2>/dev/null; st=$?; set -e
[ $st -eq 1 ] || fail "status on a missing socket returned $st, not 1"
pass "wait on a missing socket times out with status 3; status exits 1"
