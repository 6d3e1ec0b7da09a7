#!/usr/bin/env bash
# The libvirt hook's servers are supervised: nbdkit killed with -9 while
# a client writes is started again over the same files within about a
# second (pids.json names the new one), every write the client had
# acknowledged is there and the relocation completes byte-exact; the
# command line is recorded beside the relocation; release (virsh
# destroy) stops whatever runs, restarted or not; a server that keeps
# dying is given up after `restarts`, with a hook.log line.
source "$(dirname "$0")/functions.sh"
HOOK=$srcdir/scripts/nbdkit-relocate-hook

chmod 0711 "$tmp"
mkdir -p "$tmp/root" "$tmp/bin"
random_image "$tmp/a.img" 64
pa=$(free_port)
start_tcp_source a "$tmp/a.img" "$pa"
printf '#!/bin/bash\nexec %s"$@"\n' "$(nbdkit_words)" > "$tmp/bin/nbdkit"
chmod +x "$tmp/bin/nbdkit"
printf 'user = "nobody"\ngroup = "nogroup"\n' > "$tmp/qemu.conf"
cat > "$tmp/hook.conf" <<CONF
[hook]
state_root = $tmp/root
local_hosts = none
nbdkit = $tmp/bin/nbdkit
filter = $FILTER
relocatectl = $RELOCATECTL
qemu_conf = $tmp/qemu.conf
stop_grace = 3
serve = unix
rate = 2M
restarts = 2
restart_window = 600
virsh = /bin/false
CONF
export NBDKIT_RELOCATE_HOOK_CONF=$tmp/hook.conf
LOG=$tmp/root/hook.log
D=$tmp/root/6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0001/vda
nbdkit_pid () { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["nbdkit"])' "$D/pids.json"; }
not_pid () { [ "$(nbdkit_pid)" != "$1" ]; }
status_of () { "$RELOCATECTL" status --json "$D/control.sock" | $PY -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

sed "s/@NAME@/vm1/; s/@PORT1@/$pa/" "$srcdir/tests/hook/one-disk.xml" > "$tmp/vm1.xml"
"$HOOK" vm1 migrate begin - < "$tmp/vm1.xml" > "$tmp/b.xml" || fail "migrate begin"
"$HOOK" vm1 prepare begin - < "$tmp/b.xml" || fail "prepare: $(cat "$LOG")"
sock=$D/nbd.sock
$PY -c 'import json,sys; c=json.load(open(sys.argv[1]))["command"]; assert "relocate-rate=2M" in c and "-U" in c, c' \
    "$D/relocation.json" || fail "the command line is not recorded in relocation.json"
keeper=$(hook_pids "$D/pids.json" | cut -d' ' -f1)

# A client that writes (no flush) and reconnects, as QEMU would, until
# told to stop; every write it had acknowledged goes into the oracle.
cp "$tmp/a.img" "$tmp/oracle.img"
$PY - "$sock" "$tmp/oracle.img" "$tmp/stop-writing" > "$tmp/writer.out" 2>&1 <<'PYEOF' &
import os, random, sys, time, nbd
sock, oracle, stop = sys.argv[1:]
o = os.open(oracle, os.O_WRONLY)
rng = random.Random(7)
h, n, reconnects, pending = None, 0, 0, None
while not os.path.exists(stop) or pending:
    if pending is None:
        pending = (rng.randrange(0, 8 << 20, 4096), rng.randbytes(4096))
    try:
        if h is None:
            h = nbd.NBD(); h.connect_unix(sock)
        h.pwrite(pending[1], pending[0])
        os.pwrite(o, pending[1], pending[0])    # acknowledged
        pending, n = None, n + 1
    except nbd.Error:
        # Written or not: sent again, like QEMU after a reconnect.
        h, reconnects = None, reconnects + 1
        time.sleep(0.05)
print("writes", n, "reconnects", reconnects)
PYEOF
writer=$!
clients+=("$writer")
for round in 1 2; do
    sleep 1
    old=$(nbdkit_pid)
    st=$(status_of state)
    [ "$st" = relocating ] || fail "round $round: the relocation is $st, not relocating"
    kill -KILL "$old"
    wait_for not_pid "$old" || fail "round $round: nbdkit was not started again"
    wait_for "$RELOCATECTL" status "$D/control.sock" >/dev/null ||
        fail "round $round: the restarted server does not answer"
    grep -qE "relocation server exited by itself \(killed by SIGKILL\).*; started again over the same files \($round of restarts = 2 " "$LOG" ||
        fail "round $round: not logged: $(tail -n 2 "$LOG")"
done
sleep 1
touch "$tmp/stop-writing"
wait "$writer" || fail "the writer failed: $(cat "$tmp/writer.out")"
grep -q "reconnects [1-9]" "$tmp/writer.out" || fail "the writer never lost its connection: $(cat "$tmp/writer.out")"
pass "kill -9 twice: started again each time; $(cat "$tmp/writer.out")"

"$RELOCATECTL" rate "$D/control.sock" 0 >/dev/null || fail "relocatectl rate"
"$RELOCATECTL" wait --timeout 120 "$D/control.sock" >/dev/null || fail "the relocation did not complete"
$NBDIO compare "nbd+unix:///?socket=$sock" "$tmp/oracle.img" || fail "an acknowledged write is missing"
pass "complete and byte-exact with every acknowledged write"

# release (virsh destroy) stops the restarted server and its keeper.
now=$(nbdkit_pid)
"$HOOK" vm1 release end - < "$tmp/b.xml" || fail "release"
! running "$now" || fail "the restarted nbdkit $now still runs after release"
! running "$keeper" || fail "the keeper $keeper still runs after release"
pass "release stops the restarted server"

# One that keeps dying is given up after restarts = 2.
"$HOOK" vm1 prepare begin - < "$tmp/b.xml" || fail "prepare (resume): $(tail -n 3 "$LOG")"
for i in 1 2 3; do
    old=$(nbdkit_pid)
    kill -KILL "$old"
    [ "$i" -eq 3 ] && break
    wait_for not_pid "$old" || fail "kill $i: not started again"
    wait_for "$RELOCATECTL" status "$D/control.sock" >/dev/null || fail "kill $i: does not answer"
done
wait_for grep -qE "exited by itself \(killed by SIGKILL\).*; it was started again 2 times in 600 s \(restarts, restart_window\): given up" "$LOG" ||
    fail "not given up: $(tail -n 3 "$LOG")"
keeper=$(hook_pids "$D/pids.json" | cut -d' ' -f1)
wait_for stopped "$keeper" || fail "the keeper still runs after giving up"
pass "a server that keeps dying is given up after restarts"

# Its nbdkit never outlives the keeper: a keeper killed -9 takes it
# along (no server runs that nothing supervises or records).
"$HOOK" vm1 prepare begin - < "$tmp/b.xml" || fail "prepare (resume): $(tail -n 3 "$LOG")"
old=$(nbdkit_pid)
keeper=$(hook_pids "$D/pids.json" | cut -d' ' -f1)
kill -KILL "$keeper"
wait_for stopped "$old" || fail "nbdkit $old outlived its keeper"
pass "nbdkit stops with its keeper"
