#!/usr/bin/env bash
# The libvirt hook over a domain's life, called as libvirt calls it
# (an incoming migration: migrate begin, then prepare begin with the
# XML it printed): only safe start modes; a fresh relocation for every
# migration in (A->B, back to A, a failed attempt, A->B again ends
# byte-exact on B); one log line per disk per stop; a start that would
# roll back a relocated disk is refused; a hung source and a server no
# QEMU came to leave no process behind; image ownership without
# dynamic_ownership.  Then with serve = tcp: onward moves A->B->C (B's
# server serves C's relocation after the domain left B, and stops once
# C is done), a stale copy is never started, and an offline migration
# starts nothing.
source "$(dirname "$0")/functions.sh"
HOOK=$srcdir/scripts/nbdkit-relocate-hook
SAMPLES=$srcdir/tests/hook


chmod 0711 "$tmp"
mkdir -p "$tmp/root" "$tmp/bin"
random_image "$tmp/a.img" 8
pa=$(free_port)
start_tcp_source a "$tmp/a.img" "$pa"
A="nbd://127.0.0.1:$pa/disk1"

printf '#!/bin/bash\nexec %s"$@"\n' "$(nbdkit_words)" > "$tmp/bin/nbdkit"
chmod +x "$tmp/bin/nbdkit"
printf 'user = "nobody"\ngroup = "nogroup"\n' > "$tmp/qemu.conf"
# The cluster's certificates (libvirt's /etc/pki/qemu): serve = tcp
# requires TLS with client certificates.
make_ca "$tmp/ca" "relocate test CA"
make_certs "$tmp/ca" "$tmp/pki"
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
      echo "serve = unix"
      echo "tls_dir = $tmp/pki"
      printf '%s\n' "$@"; } > "$f"
}
conf "$tmp/hook.conf"
export NBDKIT_RELOCATE_HOOK_CONF=$tmp/hook.conf
LOG=$tmp/root/hook.log
UUID=6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0001
D=$tmp/root/$UUID/vda

sed "s/@NAME@/vm1/; s/@PORT1@/$pa/" "$SAMPLES/one-disk.xml" > "$tmp/vm1.xml"
hook () { "$HOOK" vm1 "$@" - < "$tmp/vm1.xml"; }
# migrate_in DOMAIN IN.xml OUT.xml: an incoming migration's two hooks.
migrate_in ()
{
    "$HOOK" "$1" migrate begin - < "$2" > "$3" || return 1
    "$HOOK" "$1" prepare begin - < "$3"
}
sock_of () { $PY -c 'import sys,xml.etree.ElementTree as E; print(E.parse(sys.argv[1]).getroot().find(".//source/host").get("socket") or "")' "$1"; }
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

# ---- serve = tcp needs a name the other hosts resolve ----
fqdn=$($PY -c 'import socket; print(socket.getfqdn())')
conf "$tmp/auto.conf" "serve = tcp" "serve_name = auto"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/auto.conf hook migrate begin > "$tmp/out.xml" ||
    fail "hook failed with serve_name = auto"
case $fqdn in
    localhost*|127.*|::1)
        ! grep -q "name='$fqdn'" "$tmp/out.xml" || fail "the disk was pointed at $fqdn"
        grep -q "disk vda: not relocated: serve_name = auto gives '$fqdn', which names every host" "$LOG" ||
            fail "no refusal line for serve_name = auto giving $fqdn"
        what="refused: this host's FQDN is $fqdn" ;;
    *)
        grep -q "name='$fqdn'" "$tmp/out.xml" || fail "the disk does not name $fqdn: $(cat "$tmp/out.xml")"
        rm -rf "$tmp/root/$UUID"
        what="uses this host's FQDN, $fqdn" ;;
esac
[ ! -e "$D/pids.json" ] || fail "migrate begin started a server"
pass "serve = tcp with serve_name = auto: $what"

# ---- A -> B: the guest writes here, the copy completes ----
cp "$tmp/a.img" "$tmp/guest.img"            # what the guest's disk holds
migrate_in vm1 "$tmp/vm1.xml" "$tmp/out.xml" || fail "migrate begin + prepare failed"
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

# ---- a failed attempt A -> B (it fails before QEMU: no prepare, no
# stop event) ----
hook migrate begin > "$tmp/out.xml" || fail "migrate begin (failed attempt)"
[ -n "$(ls "$tmp/root/$UUID/attic")" ] || fail "the first stay was not moved aside"
[ ! -e "$D/pids.json" ] || fail "migrate begin started a server before QEMU came"
hook prepare begin 2>/dev/null || fail "a planned relocation blocked a start at A's definition"
$NBDIO writes "$A" "$tmp/guest.img" 3 50 || fail "guest writes on A"

# ---- A -> B again ----
migrate_in vm1 "$tmp/vm1.xml" "$tmp/out.xml" || fail "migrate begin + prepare (second)"
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
export NBDKIT_RELOCATE_HOOK_CONF=$tmp/hung.conf
if migrate_in vm2 "$tmp/vm2.xml" "$tmp/out2.xml"; then
    fail "the domain was let start on a server that never served"
fi
export NBDKIT_RELOCATE_HOOK_CONF=$tmp/hook.conf
D2=$tmp/root/6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0002/vda
p=$(nbdkit_pid "$D2")
! kill -0 "$p" 2>/dev/null || fail "nbdkit $p outlives the failed start"
grep -q "domain 'vm2' disk vda: start refused: its relocation server (from nbd://127.0.0.1:$hung/disk1) did not serve (start_timeout = 4 s): " "$LOG" ||
    fail "not logged: $(grep vm2 "$LOG")"
pass "a hung source: the start (the migration) is refused, nbdkit itself killed by pid"

# ---- a TLS source whose certificate does not verify: refused ----
# Its server certificate comes from another CA: the relocation never
# starts (nothing falls back to the clear), and hook.log says why in
# the line of the refusal.
make_ca "$tmp/ca2" "another CA"
make_certs "$tmp/ca2" "$tmp/pki2"
pbad=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$pbad" -P "$tmp/bad.pid" --tls=require \
    --tls-certificates="$tmp/pki2" file "$tmp/a.img" 2>>"$tmp/bad.log" </dev/null &
disown
servers+=(bad)
wait_for nbdinfo --can connect "nbds://localhost:$pbad/?tls-certificates=$tmp/pki2" || fail "the other CA's source does not serve"
sed "s/@NAME@/vm12/; s/@PORT1@/$pbad/; s/-2d7d1c1e0001/-2d7d1c1e0012/; s/<source protocol='nbd' name='disk1'>/<source protocol='nbd' name='disk1' tls='yes'>/" \
    "$SAMPLES/one-disk.xml" > "$tmp/vm12.xml"
conf "$tmp/bad.conf" "start_timeout = 20" "restarts = 1"
if NBDKIT_RELOCATE_HOOK_CONF=$tmp/bad.conf migrate_in vm12 "$tmp/vm12.xml" "$tmp/out12.xml"; then
    fail "the domain was let start on a source whose certificate does not verify"
fi
grep -q "domain 'vm12' disk vda: start refused: its relocation server (from nbds://127.0.0.1:$pbad/disk1) did not serve (start_timeout = 20 s): .*Error in the certificate verification.*cannot reach the source (hostname=127.0.0.1 port=$pbad export=disk1)" "$LOG" ||
    fail "the refusal does not say why: $(grep vm12 "$LOG")"
pass "a TLS source whose certificate another CA signed: the start is refused, in one line saying why"

# ---- no QEMU ever comes: the server stops by itself ----
conf "$tmp/standby.conf" "standby_timeout = 3"
sed "s/@NAME@/vm3/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0003/" "$SAMPLES/one-disk.xml" > "$tmp/vm3.xml"
D3=$tmp/root/6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0003/vda
NBDKIT_RELOCATE_HOOK_CONF=$tmp/standby.conf migrate_in vm3 "$tmp/vm3.xml" "$tmp/out3.xml" ||
    fail "migrate begin + prepare (vm3)"
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
[ "$(grep -c "domain 'vm3' disk vda:" "$LOG")" -eq 3 ] || fail "vm3: $(grep "vm3" "$LOG")"
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
    $(nbdkit_words)"\${args[@]}"; echo "relocate-standby-timeout=SECONDS"; exit 0
fi
exec $(nbdkit_words)"\${args[@]}"
EOF
chmod +x "$tmp/bin/nbdkit-st"
conf "$tmp/st.conf" "nbdkit = $tmp/bin/nbdkit-st" "standby_timeout = 7"
sed "s/@NAME@/vm4/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0004/" "$SAMPLES/one-disk.xml" > "$tmp/vm4.xml"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/st.conf migrate_in vm4 "$tmp/vm4.xml" "$tmp/out4.xml" ||
    fail "migrate begin + prepare (vm4)"
grep -qx "relocate-standby-timeout=7" "$tmp/st-args" || fail "not passed: $(cat "$tmp/st-args" 2>&1)"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/st.conf "$HOOK" vm4 release end - < "$tmp/vm4.xml"
pass "relocate-standby-timeout is passed when the filter has it"

# ---- dynamic_ownership = 0: the image is QEMU's user's ----
printf 'user = "nobody"\ngroup = "nogroup"\ndynamic_ownership = 0\n' > "$tmp/qemu.conf"
sed "s/@NAME@/vm5/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0005/" "$SAMPLES/one-disk.xml" > "$tmp/vm5.xml"
migrate_in vm5 "$tmp/vm5.xml" "$tmp/out5.xml" || fail "migrate begin + prepare (vm5)"
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

# ---- serve = tcp: onward moves A -> B -> C ----
# Two more hosts, B and C, each with a state root and a serve_name of
# its own (both names are this machine: localhost and 127.0.0.1; the
# sample's source, A, is 127.0.0.1 too, which is C's own name: C's
# XML will name B).
printf 'user = "nobody"\ngroup = "nogroup"\n' > "$tmp/qemu.conf"
pr=$($PY -c 'import random; print(random.randrange(20000, 60000, 100))')
tconf () {  # tconf FILE ROOT SERVE_NAME PORT0 [KEY = VALUE lines]
    local f=$1 r=$2 n=$3 p0=$4; shift 4
    conf "$f" "state_root = $r" "serve = tcp" "serve_name = $n" \
        "listen = 127.0.0.1" "ports = $p0-$((p0 + 19))" \
        "onward_grace = 2" "onward_window = ${WINDOW:-3}" \
        "qemu_log_dir = $r" "$@"
}
# qemu_exit DOMAIN ROOT REASON: the line libvirt writes to the domain's
# QEMU log when QEMU stops (migrated: it left this host by migration).
qemu_exit () { echo "2024-01-01 00:00:00.000+0000: shutting down, reason=$3" >> "$2/$1.log"; }
tconf "$tmp/b.conf" "$tmp/rootB" localhost "$pr"
tconf "$tmp/c.conf" "$tmp/rootC" 127.0.0.1 $((pr + 50))
# vm7: B waits an hour for an incomplete C; C's copy is slow enough to
# be killed.
WINDOW=3600 tconf "$tmp/b7.conf" "$tmp/rootB" localhost "$pr"
tconf "$tmp/c7.conf" "$tmp/rootC" 127.0.0.1 $((pr + 50)) "rate = 512K"
# tls_uri HOST:PORT: the NBD URI of a relocation server there, as QEMU
# and the next host reach it (TLS, the cluster's client certificate).
tls_uri () { echo "nbds://$1/disk1?tls-certificates=$tmp/pki"; }
host_of () { $PY -c 'import sys,xml.etree.ElementTree as E; h=E.parse(sys.argv[1]).getroot().find(".//source/host"); print("%s:%s" % (h.get("name"), h.get("port")))' "$1"; }
sed "s/@NAME@/vm7/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0007/" "$SAMPLES/one-disk.xml" > "$tmp/vm7.xml"
U7=6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0007
DB=$tmp/rootB/$U7/vda DC=$tmp/rootC/$U7/vda
cp "$tmp/a.img" "$tmp/guest7.img"

# An offline migration into B: planned, nothing started.
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b7.conf "$HOOK" vm7 migrate begin - < "$tmp/vm7.xml" > "$tmp/b7.xml" ||
    fail "migrate begin (offline, B)"
[ ! -e "$DB/pids.json" ] && [ -s "$DB/relocation.json" ] ||
    fail "an offline migration started a server (or planned nothing)"
pass "an offline migration (no prepare) starts nothing"

# A -> B, live: the XML names B's server by name and port.
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b7.conf migrate_in vm7 "$tmp/vm7.xml" "$tmp/b7.xml" ||
    fail "A -> B (serve = tcp)"
hb=$(host_of "$tmp/b7.xml")
[[ $hb == localhost:* ]] || fail "B's XML names $hb"
# No outsider starts the relocation: while B's server is in standby
# (the guest still runs at A), a write without the cluster's
# certificate, plain or over TLS, cannot even connect.
mkdir -p "$tmp/nocert" && cp "$tmp/pki/ca-cert.pem" "$tmp/nocert/"
cp "$tmp/a.img" "$tmp/outsider.img"
for u in "nbd://$hb/disk1" "nbds://$hb/disk1?tls-certificates=$tmp/nocert"; do
    ! $NBDIO writes "$u" "$tmp/outsider.img" 1 1 2>/dev/null || fail "an outsider wrote through $u"
done
[ "$("$RELOCATECTL" status --json "$DB/control.sock" | $PY -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = standby ] ||
    fail "an outsider's write started the relocation"
pass "in standby, an outsider without the cluster's certificate cannot write: the relocation stays in standby"
$NBDIO writes "$(tls_uri $hb)" "$tmp/guest7.img" 7 40 || fail "guest writes on B"
# B -> C, live, before B's relocation is complete: C relocates from B.
NBDKIT_RELOCATE_HOOK_CONF=$tmp/c7.conf migrate_in vm7 "$tmp/b7.xml" "$tmp/c7.xml" ||
    fail "B -> C"
hc=$(host_of "$tmp/c7.xml")
[[ $hc == 127.0.0.1:* ]] || fail "C's XML names $hc"
grep -q "domain 'vm7' disk vda: relocating nbds://$hb/disk1 to $DC/disk.img" "$tmp/rootC/hook.log" ||
    fail "C does not relocate from B: $(cat "$tmp/rootC/hook.log")"
pb=$(nbdkit_pid "$DB")
# The domain leaves B: B's server keeps serving C's relocation.
qemu_exit vm7 "$tmp/rootB" migrated
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b7.conf "$HOOK" vm7 stopped end - < "$tmp/b7.xml" || fail "stopped end (B)"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b7.conf "$HOOK" vm7 release end - < "$tmp/b7.xml" || fail "release end (B)"
running "$pb" || fail "B's server stopped while C still relocates from it"
grep -q "domain 'vm7' disk vda: the domain left this host and [0-9]* client(s) still read from its server" "$tmp/rootB/hook.log" ||
    fail "no hand-over line: $(cat "$tmp/rootB/hook.log")"
$NBDIO writes "$(tls_uri $hc)" "$tmp/guest7.img" 8 40 || fail "guest writes on C"
[ "$("$RELOCATECTL" status --json "$DC/control.sock" | $PY -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = relocating ] ||
    fail "C's relocation is not in progress"
# C crashes (its nbdkit and keeper at once) and is down for longer
# than onward_grace (2 s) and than B's keeper looks twice: B keeps
# serving (onward_window is an hour), C resumes from B.
kill -KILL $(hook_pids "$DC/pids.json")
sleep 4
running "$pb" || fail "B's server stopped while C was down, incomplete"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/c7.conf "$HOOK" vm7 prepare begin - < "$tmp/c7.xml" ||
    fail "C's restart was refused: $(tail -n 2 "$tmp/rootC/hook.log")"
"$RELOCATECTL" rate "$DC/control.sock" 0 >/dev/null || fail "relocatectl rate (C)"
"$RELOCATECTL" wait --timeout 60 "$DC/control.sock" || fail "C's relocation did not complete"
# C is complete, said so and closed its connections: B's server stops
# by itself, long before onward_window.
wait_for bash -c "! kill -0 $pb 2>/dev/null" || fail "B's server still runs after C completed"
wait_for grep -q "domain 'vm7' disk vda: the next host said its relocation from this server is complete (a flush), and has gone: server stopped" "$tmp/rootB/hook.log" ||
    fail "no stop line on B: $(tail -n 3 "$tmp/rootB/hook.log")"
$NBDIO compare "$(tls_uri $hc)" "$tmp/guest7.img" || fail "C serves other data than the guest wrote"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/c.conf "$HOOK" vm7 release end - < "$tmp/c7.xml" || fail "release end (C)"
cmp "$DC/disk.img" "$tmp/guest7.img" || fail "A->B->C: the file on C differs"
pass "A -> B -> C with serve = tcp: B serves C's relocation after the domain left, across C's crash and restart, and stops once C says it is complete; byte-exact on C"

# B's copy is stale now: a start of the domain on B's XML is refused.
if NBDKIT_RELOCATE_HOOK_CONF=$tmp/b.conf "$HOOK" vm7 prepare begin - < "$tmp/b7.xml" 2>/dev/null; then
    fail "a stale copy was started on B"
fi
grep -q "domain 'vm7' disk vda: start refused: the domain moved on from this host" "$tmp/rootB/hook.log" ||
    fail "no refusal line on B: $(tail -n 2 "$tmp/rootB/hook.log")"
[ ! -e "$DB/pids.json" ] || ! running "$(nbdkit_pid "$DB")" || fail "a server runs on B's stale copy"
# C's XML names C's own server: a restart there resumes the relocation.
NBDKIT_RELOCATE_HOOK_CONF=$tmp/c.conf "$HOOK" vm7 prepare begin - < "$tmp/c7.xml" ||
    fail "a start on C's definition was refused"
$NBDIO compare "$(tls_uri $hc)" "$tmp/guest7.img" || fail "the restarted server on C serves other data"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/c.conf "$HOOK" vm7 release end - < "$tmp/c7.xml" || fail "release end (C, again)"
pass "B's stale copy is refused; C's definition restarts C's server over its files"

# ---- a stray client at virsh destroy ----
# Not the next host (the domain did not migrate): it neither keeps the
# server serving nor makes this copy stale.
sed "s/@NAME@/vm9/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0009/" "$SAMPLES/one-disk.xml" > "$tmp/vm9.xml"
D9=$tmp/rootB/6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0009/vda
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b.conf migrate_in vm9 "$tmp/vm9.xml" "$tmp/b9.xml" || fail "A -> B (vm9)"
cp "$tmp/a.img" "$tmp/guest9.img"
$NBDIO writes "$(tls_uri $(host_of "$tmp/b9.xml"))" "$tmp/guest9.img" 11 5 || fail "guest writes on B (vm9)"
p9=$(nbdkit_pid "$D9")
$PY - "$(host_of "$tmp/b9.xml")" "$tmp/stray.ready" <<'PYEOF' &
import socket, sys, time
host, port = sys.argv[1].split(":")
s = socket.create_connection((host, int(port)))
open(sys.argv[2], "w").close()
time.sleep(60)
PYEOF
stray=$!
clients+=("$stray")
wait_for test -e "$tmp/stray.ready" || fail "the stray client did not connect"
qemu_exit vm9 "$tmp/rootB" destroyed
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b.conf "$HOOK" vm9 release end - < "$tmp/b9.xml" || fail "release end (vm9)"
! running "$p9" || fail "a stray client kept the server serving after destroy"
[ ! -e "$D9/moved-on" ] || fail "a stray client made the hook write moved-on"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b.conf "$HOOK" vm9 prepare begin - < "$tmp/b9.xml" ||
    fail "the next start was refused: $(grep vm9 "$tmp/rootB/hook.log" | tail -n 1)"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b.conf "$HOOK" vm9 release end - < "$tmp/b9.xml" || fail "release end (vm9, again)"
kill "$stray" 2>/dev/null || :
pass "a stray client at destroy: the server stops, the next start is not refused"

# ---- A -> B -> C -> B, back before C has anything of its own ----
# B's first stay is incomplete (a slow background copy), C never
# leaves standby; when the domain comes back to B, B's first server is
# still C's source: it must keep serving from the attic until B's new
# relocation (from C) is complete, then C's server stops, then it.
tconf "$tmp/b8.conf" "$tmp/rootB" localhost "$pr" "rate = 64K"   # the first stay
sed "s/@NAME@/vm8/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0008/" "$SAMPLES/one-disk.xml" > "$tmp/vm8.xml"
U8=6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0008
DB8=$tmp/rootB/$U8/vda DC8=$tmp/rootC/$U8/vda
cp "$tmp/a.img" "$tmp/guest8.img"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b8.conf migrate_in vm8 "$tmp/vm8.xml" "$tmp/b8.xml" || fail "A -> B (vm8)"
$NBDIO writes "$(tls_uri $(host_of "$tmp/b8.xml"))" "$tmp/guest8.img" 9 20 || fail "guest writes on B (vm8)"
[ "$("$RELOCATECTL" status --json "$DB8/control.sock" | $PY -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = relocating ] ||
    fail "B's first relocation is not in progress"
pb8=$(nbdkit_pid "$DB8")
NBDKIT_RELOCATE_HOOK_CONF=$tmp/c.conf migrate_in vm8 "$tmp/b8.xml" "$tmp/c8.xml" || fail "B -> C (vm8)"
pc8=$(nbdkit_pid "$DC8")
qemu_exit vm8 "$tmp/rootB" migrated
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b8.conf "$HOOK" vm8 release end - < "$tmp/b8.xml" || fail "release end (B, vm8)"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b.conf migrate_in vm8 "$tmp/c8.xml" "$tmp/b8b.xml" || fail "C -> B (vm8)"
qemu_exit vm8 "$tmp/rootC" migrated
NBDKIT_RELOCATE_HOOK_CONF=$tmp/c.conf "$HOOK" vm8 release end - < "$tmp/c8.xml" || fail "release end (C, vm8)"
running "$pb8" || fail "B's first server was stopped while C still read from it"
grep -q "domain 'vm8' disk vda: relocating nbds://$(host_of "$tmp/c8.xml")/disk1 to $DB8/disk.img .*its server still serves the host the domain moved on to" "$tmp/rootB/hook.log" ||
    fail "no log line for the server kept in the attic: $(grep vm8 "$tmp/rootB/hook.log" | tail -n 2)"
hb8=$(host_of "$tmp/b8b.xml")
$NBDIO compare "$(tls_uri $hb8)" "$tmp/guest8.img" || fail "B's new relocation serves other data than the guest wrote"
$NBDIO writes "$(tls_uri $hb8)" "$tmp/guest8.img" 10 20 || fail "guest writes on B again (vm8)"
"$RELOCATECTL" wait --timeout 60 "$DB8/control.sock" || fail "B's new relocation did not complete"
wait_for bash -c "! kill -0 $pc8 2>/dev/null" || fail "C's server still runs after B completed"
wait_for bash -c "! kill -0 $pb8 2>/dev/null" || fail "B's first server still runs after C's stopped"
qemu_exit vm8 "$tmp/rootB" destroyed
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b.conf "$HOOK" vm8 release end - < "$tmp/b8b.xml" || fail "release end (B, vm8, again)"
cmp "$DB8/disk.img" "$tmp/guest8.img" || fail "A->B->C->B: the file on B differs"
pass "A -> B -> C -> B with B's first copy incomplete: its server kept serving from the attic, byte-exact on B, every server stopped after"

# ---- serve = tcp: TLS with client certificates, or insecure = yes ----
# B's server (vm7's, vm9's above) refused clients without the cluster's
# certificate; vm10 with insecure = yes: tls='no', a plain client
# reads, and hook.log warns at the start.
sed "s/@NAME@/vm10/; s/@PORT1@/$pa/; s/-2d7d1c1e0001/-2d7d1c1e0010/" "$SAMPLES/one-disk.xml" > "$tmp/vm10.xml"
tconf "$tmp/b10.conf" "$tmp/rootB" localhost "$pr" "insecure = yes"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b10.conf migrate_in vm10 "$tmp/vm10.xml" "$tmp/b10.xml" || fail "A -> B (vm10, insecure)"
grep -q "<source protocol=\"nbd\" name=\"disk1\" tls=\"no\">" "$tmp/b10.xml" ||
    fail "insecure: the XML does not say tls='no': $(grep '<source' "$tmp/b10.xml")"
grep -q "domain 'vm10' disk vda: WARNING: its server has no TLS and no authentication (planned with insecure = yes, or by a version without TLS): whoever reaches 127.0.0.1:[0-9]* reads and writes the guest's disk" "$tmp/rootB/hook.log" ||
    fail "no warning for insecure = yes: $(grep vm10 "$tmp/rootB/hook.log")"
$NBDIO compare "nbd://$(host_of "$tmp/b10.xml")/disk1" "$tmp/a.img" || fail "insecure: a plain client cannot read"
NBDKIT_RELOCATE_HOOK_CONF=$tmp/b10.conf "$HOOK" vm10 release end - < "$tmp/b10.xml" || fail "release end (vm10)"
grep -q "tls=\"yes\"" "$tmp/b7.xml" || fail "B's XML (TLS) does not say tls='yes'"
pass "serve = tcp: tls='yes' and client certificates; insecure = yes: tls='no' and a warning"

# Nothing of ours still runs.
for f in "$tmp"/root*/*/vda/pids.json "$tmp"/root*/*/attic/*/pids.json; do
    for p in $(hook_pids "$f"); do
        wait_for stopped "$p" || fail "$p ($f) still runs"
    done
done
pass "no relocation server or keeper is left"
