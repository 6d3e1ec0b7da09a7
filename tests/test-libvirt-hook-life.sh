#!/usr/bin/env bash
# The libvirt hook over a domain's life, called as libvirt calls it:
# only safe start modes; a fresh relocation for every migration in
# (A->B, back to A, a failed attempt, A->B again ends byte-exact on B);
# one log line per disk per stop; a start that would roll back a
# relocated disk is refused; a hung source and a server no QEMU came
# to leave no process behind; image ownership without dynamic_ownership.
source "$(dirname "$0")/functions.sh"
HOOK=$srcdir/scripts/nbdkit-relocate-hook
SAMPLES=$srcdir/tests/hook

free_port () { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

chmod 0711 "$tmp"
mkdir -p "$tmp/root" "$tmp/bin"
random_image "$tmp/a.img" 8
pa=$(free_port)
rm -f "$tmp/a.pid"
nbdkit -f -i 127.0.0.1 -p "$pa" -P "$tmp/a.pid" file "$tmp/a.img" 2>>"$tmp/a.log" </dev/null &
disown
wait_for test -s "$tmp/a.pid" || fail "source did not start"
servers+=(a)
A="nbd://127.0.0.1:$pa/disk1"

printf '#!/bin/sh\nexec %s "$@"\n' "${NBDKIT[*]}" > "$tmp/bin/nbdkit"
chmod +x "$tmp/bin/nbdkit"
printf 'user = "nobody"\ngroup = "nogroup"\n' > "$tmp/qemu.conf"
conf () {   # conf FILE [KEY = VALUE lines]: a hook.conf
    local f=$1; shift
    { echo "[hook]"
      echo "state_root = $tmp/root"
      echo "local_hosts = none"
      echo "nbdkit = $tmp/bin/nbdkit"
      echo "filter = $FILTER"
      echo "relocatectl = $RELOCATECTL"
      echo "qemu_conf = $tmp/qemu.conf"
      echo "stop_grace = 3"
      printf '%s\n' "$@"; } > "$f"
}
conf "$tmp/hook.conf"
export NBDKIT_RELOCATE_HOOK_CONF=$tmp/hook.conf
LOG=$tmp/root/hook.log
UUID=6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0001
D=$tmp/root/$UUID/vda

sed "s/@NAME@/vm1/; s/@PORT1@/$pa/" "$SAMPLES/one-disk.xml" > "$tmp/vm1.xml"
hook () { "$HOOK" vm1 "$@" - < "$tmp/vm1.xml"; }
sock_of () { $PY -c 'import sys,xml.etree.ElementTree as E; print(E.parse(sys.argv[1]).getroot().find(".//source/host").get("socket") or "")' "$1"; }
# running PID: alive and not a zombie (a keeper whose parent, the hook,
# has exited is reaped by init, which in a container may never do it).
running () { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]; }
nbdkit_pid () { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["nbdkit"])' "$1/pids.json"; }

# ---- only start modes safe during a live migration ----
for bad in "start = immediate" "extra_args = relocate-start=immediate"; do
    conf "$tmp/bad.conf" "$bad"
    NBDKIT_RELOCATE_HOOK_CONF=$tmp/bad.conf hook migrate begin > "$tmp/out.xml" ||
        fail "hook failed with '$bad'"
    [ -z "$(sock_of "$tmp/out.xml")" ] || fail "'$bad': the disk was rewritten"
    [ ! -e "$D" ] || fail "'$bad': a relocation was started"
done
grep -q "disk vda: not relocated: start = immediate is refused: only on-write or manual are safe during a live migration" "$LOG" ||
    fail "no clear log line for start = immediate"
grep -q "disk vda: not relocated: extra_args may not set relocate-start" "$LOG" ||
    fail "no log line for relocate-start in extra_args"
pass "start = immediate (also through extra_args) refused, logged, nothing started"

# ---- A -> B: the guest writes here, the copy completes ----
cp "$tmp/a.img" "$tmp/guest.img"            # what the guest's disk holds
hook migrate begin > "$tmp/out.xml" || fail "migrate begin failed"
S=$(sock_of "$tmp/out.xml")
[ "$S" = "$D/nbd.sock" ] || fail "not rewritten: '$S'"
$NBDIO writes "nbd+unix:///?socket=$S" "$tmp/guest.img" 1 50 || fail "guest writes on B"
"$RELOCATECTL" wait --timeout 60 "$D/control.sock" || fail "relocation did not complete"
pid1=$(nbdkit_pid "$D")
hook stopped end || fail "stopped end"
hook release end || fail "release end"
! kill -0 "$pid1" 2>/dev/null || fail "server still runs after the stop"
cmp "$D/disk.img" "$tmp/guest.img" || fail "the relocated file differs"
[ "$(grep -c "domain 'vm1' disk vda: server stopped" "$LOG")" -eq 1 ] ||
    fail "not one log line for one stop: $(grep "disk vda: server" "$LOG")"
grep -q "disk vda: server stopped; the relocation was complete" "$LOG" || fail "stop line wrong"
pass "A->B: relocated byte-exact; stopped end + release end log one true line"

# ---- the definition still names A: a start here would roll back ----
if hook prepare begin 2>/dev/null; then fail "a start that rolls back was allowed"; fi
grep -q "disk vda: start refused: the guest wrote to this disk here, and its definition would read $A again" "$LOG" ||
    fail "no refusal line"
pass "a start on the old definition after the relocation is refused, saying what to do"

# ---- back to A: the guest runs there and writes on ----
cp "$tmp/guest.img" "$tmp/a.img"
$NBDIO writes "$A" "$tmp/guest.img" 2 50 || fail "guest writes on A"

# ---- a failed attempt A -> B (no QEMU ever comes, no stop event) ----
hook migrate begin > "$tmp/out.xml" || fail "migrate begin (failed attempt)"
pid2=$(nbdkit_pid "$D")
[ -n "$(ls "$tmp/root/$UUID/attic")" ] || fail "the first stay was not moved aside"
$NBDIO compare "nbd+unix:///?socket=$D/nbd.sock" "$tmp/guest.img" ||
    fail "the failed attempt serves stale data"
hook prepare begin 2>/dev/null || fail "a standby relocation blocked a start"
$NBDIO writes "$A" "$tmp/guest.img" 3 50 || fail "guest writes on A"

# ---- A -> B again ----
hook migrate begin > "$tmp/out.xml" || fail "migrate begin (second)"
! kill -0 "$pid2" 2>/dev/null || fail "the failed attempt's server still runs"
[ "$(ls "$tmp/root/$UUID/attic" | wc -l)" -eq 2 ] || fail "attic: $(ls "$tmp/root/$UUID/attic")"
grep -q "disk vda: relocating $A to $D/disk.img .*; the previous state was moved to $tmp/root/$UUID/attic/" "$LOG" ||
    fail "the move aside is not logged"
$NBDIO compare "nbd+unix:///?socket=$D/nbd.sock" "$tmp/guest.img" || fail "B serves stale data"
$NBDIO writes "nbd+unix:///?socket=$D/nbd.sock" "$tmp/guest.img" 4 50 || fail "guest writes on B"
"$RELOCATECTL" wait --timeout 60 "$D/control.sock" || fail "relocation did not complete"
hook release end || fail "release end"
cmp "$D/disk.img" "$tmp/guest.img" || fail "A->B->A->B: the file on B differs"
pass "A->B->A, a failed attempt, A->B: fresh relocations, byte-exact on B"

# ---- a source that accepts and never answers ----
hung=$(free_port)
$PY -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
cs = []
while True:
    c, _ = s.accept(); cs.append(c)
' "$hung" &
clients+=($!)
sed "s/@NAME@/vm2/; s/@PORT1@/$hung/; s/-2d7d1c1e0001/-2d7d1c1e0002/" "$SAMPLES/one-disk.xml" > "$tmp/vm2.xml"
conf "$tmp/hung.conf" "start_timeout = 4"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/hung.conf "$HOOK" vm2 migrate begin - < "$tmp/vm2.xml" > "$tmp/out2.xml" ||
    fail "hook failed on a hung source"
[ -z "$(sock_of "$tmp/out2.xml")" ] || fail "rewritten to a server that never served"
D2=$tmp/root/6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0002/vda
p=$(nbdkit_pid "$D2")
! kill -0 "$p" 2>/dev/null || fail "nbdkit $p outlives the failed start"
grep -q "domain 'vm2' disk vda: relocation server did not start; left alone" "$LOG" || fail "not logged"
pass "a hung source: nbdkit itself is killed by pid, the disk left alone"

# ---- no QEMU ever comes: the server stops by itself ----
conf "$tmp/standby.conf" "standby_timeout = 3"
sed "s/@NAME@/vm3/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0003/" "$SAMPLES/one-disk.xml" > "$tmp/vm3.xml"
D3=$tmp/root/6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0003/vda
NBDKIT_RELOCATE_HOOK_CONF=$tmp/standby.conf "$HOOK" vm3 migrate begin - < "$tmp/vm3.xml" > /dev/null ||
    fail "migrate begin (vm3)"
p=$(nbdkit_pid "$D3")
# A connected client (QEMU) keeps it.
$PY -c 'import nbd, sys, time; h = nbd.NBD(); h.connect_uri(sys.argv[1]); time.sleep(9)' \
    "nbd+unix:///?socket=$D3/nbd.sock" &
c=$!
sleep 8
kill -0 "$p" || fail "a server with a client was stopped"
wait "$c" || :
wait_for bash -c "! kill -0 $p 2>/dev/null" || fail "the idle standby server still runs"
# (The keeper logs once nbdkit has gone: wait for the line.)
wait_for grep -q "domain 'vm3' disk vda: no client came in 3 s of standby" "$LOG" ||
    fail "not logged: $(grep vm3 "$LOG")"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/standby.conf "$HOOK" vm3 release end - < "$tmp/vm3.xml"
[ "$(grep -c "domain 'vm3' disk vda:" "$LOG")" -eq 2 ] || fail "vm3: $(grep "vm3" "$LOG")"
pass "a standby server with no client stops after standby_timeout; with a client it stays"

# ---- a filter with relocate-standby-timeout gets it ----
cat > "$tmp/bin/nbdkit-st" <<EOF
#!/bin/bash
# Stands for a filter that has relocate-standby-timeout: advertises it,
# records it, and passes the rest on.
args=()
for a in "\$@"; do
    case \$a in relocate-standby-timeout=*) echo "\$a" >> "$tmp/st-args" ;; *) args+=("\$a") ;; esac
done
if [[ " \$* " == *" --help "* ]]; then
    ${NBDKIT[*]} "\${args[@]}"; echo "relocate-standby-timeout=SECONDS"; exit 0
fi
exec ${NBDKIT[*]} "\${args[@]}"
EOF
chmod +x "$tmp/bin/nbdkit-st"
conf "$tmp/st.conf" "nbdkit = $tmp/bin/nbdkit-st" "standby_timeout = 7"
sed "s/@NAME@/vm4/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0004/" "$SAMPLES/one-disk.xml" > "$tmp/vm4.xml"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/st.conf "$HOOK" vm4 migrate begin - < "$tmp/vm4.xml" > /dev/null ||
    fail "migrate begin (vm4)"
grep -qx "relocate-standby-timeout=7" "$tmp/st-args" || fail "not passed: $(cat "$tmp/st-args" 2>&1)"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/st.conf "$HOOK" vm4 release end - < "$tmp/vm4.xml"
pass "relocate-standby-timeout is passed when the filter has it"

# ---- dynamic_ownership = 0: the image is QEMU's user's ----
printf 'user = "nobody"\ngroup = "nogroup"\ndynamic_ownership = 0\n' > "$tmp/qemu.conf"
sed "s/@NAME@/vm5/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0005/" "$SAMPLES/one-disk.xml" > "$tmp/vm5.xml"
"$HOOK" vm5 migrate begin - < "$tmp/vm5.xml" > /dev/null || fail "migrate begin (vm5)"
D5=$tmp/root/6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0005/vda
[ "$(stat -c %U:%G:%a "$D5/disk.img")" = nobody:nogroup:660 ] ||
    fail "disk.img: $(stat -c %U:%G:%a "$D5/disk.img")"
"$HOOK" vm5 release end - < "$tmp/vm5.xml"
printf 'user = "no-such-user"\n' > "$tmp/qemu.conf"
sed "s/-2d7d1c1e0005/-2d7d1c1e0006/" "$tmp/vm5.xml" > "$tmp/vm6.xml"
"$HOOK" vm6 migrate begin - < "$tmp/vm6.xml" > "$tmp/out6.xml" || fail "migrate begin (vm6)"
[ -z "$(sock_of "$tmp/out6.xml")" ] || fail "rewritten although QEMU's user is unknown"
grep -q "not relocated: QEMU's user 'no-such-user' (from $tmp/qemu.conf) does not exist" "$LOG" ||
    fail "unknown user not logged"
pass "dynamic_ownership = 0: the image is QEMU's user's; an unknown user is refused"

# Nothing of ours still runs.
for f in "$tmp"/root/*/vda/pids.json "$tmp"/root/*/attic/*/pids.json; do
    for p in $($PY -c 'import json,sys; print(*json.load(open(sys.argv[1])).values())' "$f"); do
        ! running "$p" || fail "$p ($f) still runs"
    done
done
pass "no relocation server or keeper is left"
