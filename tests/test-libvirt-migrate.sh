#!/usr/bin/env bash
# Real live migrations between three real libvirtd's on this machine,
# with the hook from this tree and Debian's default QEMU user
# (libvirt-qemu:kvm).  Each daemon runs in a mount namespace of its own
# (unshare -m --propagation private) with private bind mounts over /run,
# /etc/libvirt (the hook installed in hooks/qemu.d), /var/lib/libvirt,
# /var/cache/libvirt, /var/log/libvirt and /etc/hosts ("relocate-oldhost"
# is 127.0.0.1, the old host's NBD export: a plain nbdkit file;
# "relocate-hosta", "relocate-hostb" and "relocate-hostc" are
# 127.0.0.1 too, the names under which each host serves its
# relocations: serve = tcp, the default, with ports of its own); the
# hook's configuration and state root are private directories too.
# Nothing is installed or changed in the machine's own /etc/libvirt.
# Every host has the cluster's certificates (made here with certtool)
# as its default_tls_x509_cert_dir, and nbd_tls = 1: the relocation
# servers require TLS and client certificates (the hook's default),
# and the disks of sections 1-5 say tls='no' for the plain old host.
#
# No guest OS: TCG, and a disk with nothing bootable, so the guest sits
# in the firmware; its I/O is HMP qemu-io on the virtio drive.
#
#  1. a migration that fails after migrate begin but before QEMU starts
#     (a domain of the same name with another UUID is defined on B):
#     the hook planned a relocation and started nothing;
#  1b. a migration that fails after QEMU started on B (its migration
#     port is taken): the server stops with that QEMU;
#  2. the guest writes at A, then a third migration (--persistent)
#     succeeds: a fresh relocation (the first attempt's state moved
#     aside), QEMU on B runs as libvirt-qemu and reads through B's
#     relocation server what the guest wrote at A after the failed
#     attempt; writes on B; the relocation completes;
#  2b. onward: B -> A (A relocates from B's server, which keeps serving
#     after the domain left B and stops once A is complete), the guest
#     writes at A, then A -> B again (a fresh relocation from A's
#     server); destroy stops the server; B's raw file is byte-exact with
#     every write the guest made on A, B, A and B, and the old host's
#     image was not written after the guest left it;
#  3. the persistent definition B kept names the old host: starting it
#     is refused with a message that says what to do;
#  4. an offline migration (--offline --persistent) starts nothing;
#  6. TLS: a domain whose old host requires TLS and client certificates
#     moves A -> B -> C with virsh migrate --live --tls; each host
#     relocates over TLS from the one before, byte-exact on C; B's
#     server and the old host refuse a plain client, one without a
#     certificate and one of another CA; uid 65534 reads the disk
#     neither through B's server nor through its files;
#  5. (last) a guest OS through B's server, killed -9 twice.
#
# Skipped (exit 77) when libvirt/QEMU are not installed, when not root,
# or when mount namespaces cannot be made.

source "$(dirname "$0")/libvirt.sh"

DOM=relocate-mig
UUID=3d1e5a90-0c7b-4f4e-8d0a-7e1a0c5f1201

# ---- the old host's export ----
random_image "$tmp/src.img" 16
# Nothing bootable: the firmware must not find a boot sector.
dd if=/dev/zero of="$tmp/src.img" bs=512 count=1 conv=notrunc status=none
psrc=$(free_port)
start_tcp_source src "$tmp/src.img" "$psrc"

# Refusals: another CA's client certificate, and a client with none.
make_ca "$tmp/ca2" "another CA"
make_certs "$tmp/ca2" "$tmp/pki2"
mkdir "$tmp/nocert" "$tmp/foreign"
cp "$tmp/pki/ca-cert.pem" "$tmp/nocert/"
cp "$tmp/pki/ca-cert.pem" "$tmp/pki2"/client-*.pem "$tmp/foreign/"

# ---- three hosts ----
STANDBY=6
setup_host A 9a0c0a0a-0000-4000-8000-00000000000a
setup_host B 9a0c0b0b-0000-4000-8000-00000000000b
setup_host C 9a0c0c0c-0000-4000-8000-00000000000c
wait_daemon A
wait_daemon B
wait_daemon C
UA=$(uri_of A) UB=$(uri_of B) UC=$(uri_of C)
pass "three libvirtd's: $UA, $UB and $UC ($(elapsed))"

vA () { timeout 120 virsh -c "$UA" "$@"; }
vB () { timeout 120 virsh -c "$UB" "$@"; }
LOGB=$tmp/B/state/hook.log LOGA=$tmp/A/state/hook.log
DB=$tmp/B/state/$UUID/vda DA=$tmp/A/state/$UUID/vda

# ---- the domain on A, its disk the old host's export ----
domain_xml "$DOM" "$UUID" > "$tmp/dom.xml"
vA create "$tmp/dom.xml" >/dev/null || fail "virsh create on A: $(tail -n 20 "$tmp/A/log/qemu/$DOM.log" 2>/dev/null)"

hmp A "write -P 0x11 2M 64k"
cmp -s <(head -c $((2*1024*1024 + 65536)) "$tmp/src.img" | tail -c 65536) \
       <(head -c 65536 /dev/zero | tr '\0' '\021') ||
    fail "a write at A did not reach the old host's image"
pass "domain on A (TCG, as libvirt-qemu), guest write at A reaches the old host ($(elapsed))"

# ---- 1. a migration that fails after migrate begin, before QEMU ----
# A domain of the same name with another UUID on B: libvirt refuses the
# incoming domain after the hook ran.
domain_xml "$DOM" 3d1e5a90-0c7b-4f4e-8d0a-7e1a0c5f12ff > "$tmp/blocker.xml"
vB define "$tmp/blocker.xml" >/dev/null || fail "define the blocker on B"
t0=$(date +%s)
if vA migrate --live "$DOM" "$UB" --listen-address 127.0.0.1 --migrateuri "tcp://127.0.0.1:$(cat "$tmp/B/migport")" \
       > "$tmp/mig1.out" 2>&1; then
    fail "the migration succeeded in spite of the blocker"
fi
grep -q "already exists" "$tmp/mig1.out" || fail "the first migration failed otherwise: $(cat "$tmp/mig1.out")"
[ "$(vA domstate "$DOM" 2>/dev/null)" = running ] || fail "the domain does not run on A after the failed migration"
grep -q "domain '$DOM' disk vda: relocating nbd://relocate-oldhost:$psrc/" "$LOGB" ||
    fail "the hook did not plan a relocation on B: $(cat "$LOGB" 2>/dev/null)"
[ -s "$DB/relocation.json" ] || fail "no relocation planned on B"
[ ! -e "$DB/pids.json" ] || fail "the failed attempt started a server on B: $(cat "$DB/pids.json")"
vB undefine "$DOM" >/dev/null || fail "undefine the blocker"
pass "failed migration before QEMU: the hook planned a relocation and started nothing ($(elapsed))"

# ---- 1b. a migration that fails after QEMU started on B ----
# The migration port is taken: B's QEMU starts (and opens its disk
# through the relocation server), then cannot listen, and is stopped:
# libvirt's stopped/release hooks stop the server at once.
busy=$(free_port)
$PY -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1)
time.sleep(600)' "$busy" &
clients+=($!)
wait_for $PY -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])))' "$busy" ||
    fail "no listener on the busy port"
t0=$(date +%s)
if vA migrate --live "$DOM" "$UB" --listen-address 127.0.0.1 --migrateuri "tcp://127.0.0.1:$busy" \
       > "$tmp/mig1b.out" 2>&1; then
    fail "the migration succeeded on a busy port"
fi
t1=$(date +%s)
[ "$(vA domstate "$DOM" 2>/dev/null)" = running ] || fail "the domain does not run on A after the second failed migration"
[ -s "$DB/pids.json" ] || fail "the hook started no relocation server for the second attempt: $(cat "$tmp/mig1b.out")"
p1b=$(pid_in "$DB")
for i in $(seq 100); do running "$p1b" "$DB" || break; sleep 0.1; done
running "$p1b" "$DB" && fail "the server of the attempt whose QEMU failed still runs: $(cat "$tmp/mig1b.out")"
grep -q "domain '$DOM' disk vda: server stopped in standby: the guest never wrote here" "$LOGB" ||
    fail "no stop line for the attempt whose QEMU failed: $(tail -n 3 "$LOGB"; cat "$tmp/mig1b.out")"
pass "failed migration after QEMU started on B ($(head -c 100 "$tmp/mig1b.out" | tr '\n' ' ')...): the server stopped with it, $((t1 - t0)) s ($(elapsed))"

# ---- 2. the guest writes at A, then a migration that succeeds ----
hmp A "write -P 0x22 2M 64k"
hmp A "write -P 0x23 7M 4k"
t0=$(date +%s)
vA migrate --live --persistent "$DOM" "$UB" \
    --listen-address 127.0.0.1 --migrateuri "tcp://127.0.0.1:$(cat "$tmp/B/migport")" > "$tmp/mig2.out" 2>&1 ||
    fail "migration A -> B: $(cat "$tmp/mig2.out"; tail -n 20 "$tmp/B/log/qemu/$DOM.log" "$tmp/B/log/libvirtd.log" 2>/dev/null)"
t1=$(date +%s)
[ "$(vB domstate "$DOM")" = running ] || fail "not running on B"
vA domstate "$DOM" >/dev/null 2>&1 && fail "the domain is still on A"
cp "$tmp/src.img" "$tmp/expected.img"     # the disk as the guest left A
vB dumpxml "$DOM" > "$tmp/b.xml"
PB=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$DB/relocation.json")
grep -q "<host name=.relocate-hostb. port=.$PB./>" "$tmp/b.xml" ||
    fail "QEMU on B does not use B's relocation server: $(grep -A4 '<disk' "$tmp/b.xml")"
qpid=$(cat "$tmp/B/run/libvirt/qemu/$DOM.pid")
[ "$(ps -o user= -p "$qpid")" = libvirt-qemu ] ||
    fail "QEMU on B runs as $(ps -o user= -p "$qpid"), not libvirt-qemu"
ls "$tmp/B/state/$UUID/attic/"*-vda >/dev/null 2>&1 ||
    fail "the failed attempt's state was not moved aside"
grep -q "the previous state was moved to" "$LOGB" || fail "no log line for the moved state"
[ "$("$RELOCATECTL" status --json "$DB/control.sock" | $PY -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = standby ] ||
    fail "the relocation left standby before the guest wrote on B"
pass "live migration A -> B in $((t1 - t0)) s; QEMU on B (libvirt-qemu) uses relocate-hostb:$PB; the failed attempts' state is in the attic"

# What the guest wrote at A after the failed attempt, read on B.
hmp B "read -P 0x22 2M 64k"
hmp B "read -P 0x23 7M 4k"
# Guest writes on B start the relocation.
guest_writes B "0x5a 1M 64k" "0xa5 5M 4k" "0x33 1536 3k" "0x77 16320k 64k"
hmp B "read -P 0x5a 1M 64k"
"$RELOCATECTL" wait --timeout 120 "$DB/control.sock" ||
    fail "the relocation did not complete: $("$RELOCATECTL" status "$DB/control.sock" 2>&1)"
pass "guest reads at B what it wrote at A; writes at B; the relocation completed ($(elapsed))"

# ---- 2b. onward: B -> A, then A -> B again ----
# migrate FROM TO: a live migration between the two daemons.
migrate ()      # FROM TO [OPTIONS...]
{
    timeout 120 virsh -c "$(uri_of "$1")" migrate --live "${@:3}" "$DOM" "$(uri_of "$2")" \
        --listen-address 127.0.0.1 --migrateuri "tcp://127.0.0.1:$(cat "$tmp/$2/migport")" \
        > "$tmp/mig-$1$2.out" 2>&1 ||
        fail "migration $1 -> $2: $(cat "$tmp/mig-$1$2.out"; tail -n 20 "$tmp/$2/log/qemu/$DOM.log" 2>/dev/null)"
    [ "$(timeout 60 virsh -c "$(uri_of "$2")" domstate "$DOM")" = running ] || fail "not running on $2"
}
# gone_within SECONDS PID DIR: the server stops by itself in time.
gone_within ()
{
    local i
    for i in $(seq $(($1 * 10))); do running "$2" "$3" || return 0; sleep 0.1; done
    return 1
}
pb1=$(pid_in "$DB")
migrate B A
PA=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$DA/relocation.json")
vA dumpxml "$DOM" > "$tmp/a.xml" || fail "dumpxml on A after B -> A"
grep -q "<host name=.relocate-hosta. port=.$PA./>" "$tmp/a.xml" ||
    fail "QEMU on A does not use A's relocation server (port $PA in $DA/relocation.json): $(grep -A4 '<disk' "$tmp/a.xml"); $DA: $(ls -la "$DA" 2>&1); A's hook.log: $(tail -n 15 "$LOGA" 2>&1)"
grep -q "domain '$DOM' disk vda: relocating nbds://relocate-hostb:$PB/ to $DA/disk.img" "$LOGA" ||
    fail "A does not relocate from B's server: $(cat "$LOGA" 2>/dev/null)"
grep -q "domain '$DOM' disk vda: the domain left this host and [0-9]* client(s) still read from its server" "$LOGB" ||
    fail "B did not hand its server over: $(tail -n 3 "$LOGB")"
running "$pb1" "$DB" || fail "B's server stopped while A relocates from it"
hmp A "read -P 0x5a 1M 64k"
hmp A "read -P 0x77 16320k 64k"
guest_writes A "0x61 3M 64k" "0x62 9M 4k" "0x63 1M 4k"
"$RELOCATECTL" wait --timeout 120 "$DA/control.sock" ||
    fail "the relocation to A did not complete: $("$RELOCATECTL" status "$DA/control.sock" 2>&1)"
gone_within 60 "$pb1" "$DB" || fail "B's server still runs after A's relocation completed"
grep -q "domain '$DOM' disk vda: the next host said its relocation from this server is complete (a flush), and has gone: server stopped" "$LOGB" ||
    fail "no stop line on B: $(tail -n 3 "$LOGB")"
pass "B -> A: A relocated from B's server, which served it after the domain left B and then stopped ($(elapsed))"

pa1=$(pid_in "$DA")
migrate A B
[ "$(ls -d "$tmp/B/state/$UUID/attic/"*-vda* | wc -l)" -ge 3 ] ||
    fail "B's earlier stay was not moved aside: $(ls "$tmp/B/state/$UUID/attic/")"
grep -q "domain '$DOM' disk vda: relocating nbds://relocate-hosta:$PA/ to $DB/disk.img" "$LOGB" ||
    fail "B does not relocate from A's server: $(tail -n 3 "$LOGB")"
hmp B "read -P 0x61 3M 64k"
hmp B "read -P 0x63 1M 4k"
guest_writes B "0x71 4M 64k" "0x72 11M 4k"
"$RELOCATECTL" wait --timeout 120 "$DB/control.sock" ||
    fail "the relocation back to B did not complete: $("$RELOCATECTL" status "$DB/control.sock" 2>&1)"
gone_within 60 "$pa1" "$DA" || fail "A's server still runs after B's relocation completed"
pass "A -> B again: a fresh relocation from A's server; A's server stopped once B was complete ($(elapsed))"

pnb=$(pid_in "$DB")
vB destroy "$DOM" >/dev/null || fail "destroy on B"
for i in $(seq 200); do running "$pnb" "$DB" || break; sleep 0.1; done
running "$pnb" "$DB" && fail "the relocation server still runs after destroy"
cmp "$DB/disk.img" "$tmp/expected.img" || fail "the relocated file differs from the disk as the guest left it"
$PY - "$tmp/src.img" "$tmp/expected.img" <<'EOF' || fail "the old host's image changed after the migration"
import sys
# The old host's image is the disk as the guest left A: B's writes are
# only in the relocated file.
a, b = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
for off, cnt in ((1 << 20, 65536), (5 << 20, 4096), (1536, 3072), (16320 << 10, 65536)):
    assert a[off:off + cnt] != b[off:off + cnt]
EOF
n=$(grep -c "domain '$DOM' disk vda: server stopped; the relocation was complete" "$LOGB")
[ "$n" -eq 1 ] || fail "$n 'relocation was complete' lines in hook.log: $(cat "$LOGB")"
[ "$(stat -c %U "$DB/disk.img")" = root ] || fail "disk.img owned by $(stat -c %U "$DB/disk.img")"
pass "destroy stopped the server; B's raw file is byte-exact after A -> B -> A -> B; the old host's image has none of the later writes ($(elapsed))"

# ---- 3. the persistent definition names the old host: refused ----
vB dumpxml --inactive "$DOM" > "$tmp/b-inactive.xml" || fail "no persistent definition on B"
grep -q "relocate-oldhost" "$tmp/b-inactive.xml" || fail "B's persistent definition: $(grep -A4 '<disk' "$tmp/b-inactive.xml")"
if vB start "$DOM" > "$tmp/start.out" 2>&1; then
    vB destroy "$DOM" >/dev/null 2>&1
    fail "the persistent domain started on B with its disk on the old host"
fi
grep -q "start refused" "$tmp/start.out" && grep -q "$DB/disk.img" "$tmp/start.out" ||
    fail "the refusal does not say what to do: $(cat "$tmp/start.out")"
grep -q "disk vda: start refused" "$LOGB" || fail "no log line for the refusal"
vB undefine "$DOM" >/dev/null || fail "undefine on B"
pass "start of the persistent definition (old host's disk) refused: $(grep -o 'start refused.*' "$tmp/start.out" | head -c 160)..."

# ---- 4. an offline migration leaves nothing running ----
OFF=relocate-off
UUID2=3d1e5a90-0c7b-4f4e-8d0a-7e1a0c5f1202
domain_xml "$OFF" "$UUID2" > "$tmp/off.xml"
vA define "$tmp/off.xml" >/dev/null || fail "define $OFF on A"
t0=$(date +%s)
vA migrate --offline --persistent "$OFF" "$UB" > "$tmp/mig3.out" 2>&1 ||
    fail "offline migration: $(cat "$tmp/mig3.out")"
vB dumpxml --inactive "$OFF" >/dev/null || fail "no definition of $OFF on B"
D2=$tmp/B/state/$UUID2/vda
[ ! -e "$D2/pids.json" ] || fail "the offline migration started a server on B: $(cat "$D2/pids.json")"
vB undefine "$OFF" >/dev/null || fail "undefine $OFF on B"
vA undefine "$OFF" >/dev/null 2>&1 || :
pass "offline migration: the hook started nothing"

# ---- 6. TLS: A -> B -> C with --tls, from an old host that requires it ----
# The old host's export requires TLS and a client certificate; the
# domain's disk has no tls attribute (qemu.conf's nbd_tls = 1 says
# TLS).  Each host relocates over TLS from the one before, and serves
# its QEMU and the next host only with the cluster's certificates.
TDOM=relocate-tls TUUID=3d1e5a90-0c7b-4f4e-8d0a-7e1a0c5f1206
TB=$tmp/B/state/$TUUID/vda TC=$tmp/C/state/$TUUID/vda
random_image "$tmp/tsrc.img" 16
dd if=/dev/zero of="$tmp/tsrc.img" bs=512 count=1 conv=notrunc status=none
ptls=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$ptls" -P "$tmp/tsrc.pid" --tls=require \
    --tls-certificates="$tmp/pki" --tls-verify-peer file "$tmp/tsrc.img" \
    2>>"$tmp/tsrc.log" </dev/null &
disown
servers+=(tsrc)
tls_uri () { echo "nbds://localhost:$1/?tls-certificates=$2"; }
wait_for nbdinfo --can connect "nbds://localhost:$ptls/?tls-certificates=$tmp/pki" ||
    fail "the TLS old host does not serve"
domain_xml "$TDOM" "$TUUID" "$ptls" "" > "$tmp/tls.xml"
vA create "$tmp/tls.xml" >/dev/null || fail "virsh create $TDOM on A: $(tail -n 20 "$tmp/A/log/qemu/$TDOM.log" 2>/dev/null)"
DOM=$TDOM hmp A "write -P 0x41 3M 64k"
cp "$tmp/tsrc.img" "$tmp/texpected.img"
export EXPECTED=$tmp/texpected.img
DOM=$TDOM migrate A B --tls
grep -q "domain '$TDOM' disk vda: relocating nbds://relocate-oldhost:$ptls/ to $TB/disk.img" "$LOGB" ||
    fail "B does not relocate from the old host over TLS: $(grep "$TDOM" "$LOGB")"
PBT=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$TB/relocation.json")
vB dumpxml "$TDOM" > "$tmp/bt.xml" || fail "dumpxml of $TDOM on B"
grep -q "<source protocol=.nbd. tls=.yes.[ >]" "$tmp/bt.xml" ||
    fail "B's XML does not say tls='yes': $(grep -A3 '<source' "$tmp/bt.xml")"
DOM=$TDOM hmp B "read -P 0x41 3M 64k"
DOM=$TDOM guest_writes B "0x42 1M 64k" "0x43 6M 4k"
pass "A -> B with --tls from an old host that requires TLS (nbd_tls = 1): B relocates over TLS, its QEMU connects with TLS ($(elapsed))"

# Who may connect: B's server and the old host alike.
for port in "$PBT" "$ptls"; do
    nbdinfo --can connect "$(tls_uri "$port" "$tmp/pki")" ||
        fail "port $port refuses the cluster's certificate (the checks below would prove nothing)"
    ! nbdinfo --can connect "nbd://localhost:$port/" 2>/dev/null ||
        fail "port $port serves a plain client"
    ! nbdinfo --can connect "$(tls_uri "$port" "$tmp/nocert")" 2>/dev/null ||
        fail "port $port serves a client without a certificate"
    ! nbdinfo --can connect "$(tls_uri "$port" "$tmp/foreign")" 2>/dev/null ||
        fail "port $port serves a client whose certificate another CA signed"
done
case $(status_of_ctl "$TB/control.sock" state) in
    relocating|complete) ;;
    *) fail "B's relocation did not start with the guest's writes: $(status_of_ctl "$TB/control.sock" state)" ;;
esac
pass "B's server and the old host refuse a plain client, one without a certificate, one of another CA"

# An unprivileged local user: not through the server, not through the files.
nobody () { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
nobody test -x "$tmp" || fail "uid 65534 cannot pass through $tmp: the checks below would prove nothing"
! nobody nbdinfo --can connect "nbd://localhost:$PBT/" 2>/dev/null || fail "uid 65534 connects plainly to B's server"
! nobody nbdinfo --can connect "$(tls_uri "$PBT" "$tmp/pki")" 2>/dev/null || fail "uid 65534 connects to B's server with the cluster's key"
for f in "$TB/disk.img" "$TB/disk.img.bitmap" "$tmp/pki/client-key.pem"; do
    ! nobody cat "$f" >/dev/null 2>&1 || fail "uid 65534 reads $f"
done
for f in "$TB/disk.img" "$TB/disk.img.bitmap" "$TB/disk.img.bitmap.volatile"; do
    # (The volatile bitmap goes when the relocation completes.)
    [ -e "$f" ] || [ "$f" = "$TB/disk.img.bitmap.volatile" ] || fail "no $f"
    [ ! -e "$f" ] || [ "$(stat -c %a "$f")" = 600 ] || fail "$f has mode $(stat -c %a "$f")"
done
pass "uid 65534 reads and writes the disk neither through B's server nor through the files (0600, in 0710 directories)"

pbt=$(pid_in "$TB")
DOM=$TDOM migrate B C --tls
grep -q "domain '$TDOM' disk vda: relocating nbds://relocate-hostb:$PBT/ to $TC/disk.img" "$tmp/C/state/hook.log" ||
    fail "C does not relocate from B over TLS: $(grep "$TDOM" "$tmp/C/state/hook.log" 2>/dev/null)"
DOM=$TDOM hmp C "read -P 0x42 1M 64k"
DOM=$TDOM guest_writes C "0x44 2M 64k" "0x45 9M 4k"
"$RELOCATECTL" wait --timeout 120 "$TC/control.sock" ||
    fail "the relocation to C did not complete: $("$RELOCATECTL" status "$TC/control.sock" 2>&1)"
gone_within 60 "$pbt" "$TB" || fail "B's server still runs after C's relocation completed"
pct=$(pid_in "$TC")
timeout 60 virsh -c "$UC" destroy "$TDOM" >/dev/null || fail "destroy on C"
for i in $(seq 200); do running "$pct" "$TC" || break; sleep 0.1; done
cmp "$TC/disk.img" "$tmp/texpected.img" || fail "C's file differs from the disk as the guest left it"
unset EXPECTED
pass "B -> C with --tls: C relocated from B's server over TLS; B's server stopped once C was complete; C's file is byte-exact ($(elapsed))"

# ---- 5. a guest OS writing through B's server, killed -9 twice ----
# The guest (tests/guest/init) writes, syncs and reads back one block a
# round, and prints every error it sees.  Its disk pauses the guest on
# an I/O error (the hook's error_policy/rerror_policy 'stop'), and the
# keeper, having started B's server again, resumes it: the guest never
# sees an error, and every block it reads back is the one it wrote.
GDOM=relocate-guest GUUID=3d1e5a90-0c7b-4f4e-8d0a-7e1a0c5f1205
G=$tmp/guest DG=$tmp/B/state/$GUUID/vda
mkdir -p "$G" && chmod 0755 "$G"
if ! "$srcdir/tests/guest/make-guest" "$G" 2>"$tmp/make-guest.err"; then
    echo "skip: no guest kernel: $(cat "$tmp/make-guest.err")"
else
    domain_xml "$GDOM" "$GUUID" |
        sed -e "s|<memory unit='MiB'>64</memory>|<memory unit='MiB'>192</memory>|" \
            -e "s|<bios rebootTimeout='-1'/>|<kernel>$G/vmlinuz</kernel><initrd>$G/initrd.img</initrd><cmdline>console=ttyS0 quiet panic=-1</cmdline>|" \
            -e "s|<memballoon model='none'/>|&<serial type='file'><source path='$G/console.log' append='on'><seclabel model='dac' relabel='no'/></source><target port='0'/></serial>|" \
        > "$tmp/guest.xml"
    # Both hosts' QEMU append to the console file: not relabelled, QEMU's
    # user may write it.
    : > "$G/console.log" && chmod 0666 "$G/console.log"
    console () { cat "$G/console.log" 2>/dev/null | tr -d '\r'; }
    rounds () { console | sed -n 's/^GUEST: round //p' | tail -n 1; }
    # progress N: the guest gets N rounds further (within 120 s).
    progress ()
    {
        local from i now
        from=$(rounds); from=${from:-0}
        for i in $(seq 1200); do
            now=$(rounds)
            [ "${now:-0}" -ge $((from + $1)) ] && return 0
            sleep 0.1
        done
        fail "the guest made no progress from round $from: $(console | tail -n 3); $(vB domstate --reason "$GDOM" 2>&1)"
    }
    # A slow background copy: the kills hit a relocation in progress.
    echo "rate = 256K" >> "$tmp/B/hook.conf"
    vA create "$tmp/guest.xml" >/dev/null || fail "virsh create $GDOM on A: $(tail -n 20 "$tmp/A/log/qemu/$GDOM.log" 2>/dev/null)"
    progress 20
    DOM=$GDOM migrate A B
    progress 20
    [ "$("$RELOCATECTL" status --json "$DG/control.sock" | $PY -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = relocating ] ||
        fail "the guest's relocation on B is not in progress"
    for k in 1 2; do
        old=$(pid_in "$DG")
        kill -KILL "$old"
        for i in $(seq 300); do [ "$(pid_in "$DG")" != "$old" ] && break; sleep 0.1; done
        [ "$(pid_in "$DG")" != "$old" ] || fail "kill $k: B's server was not started again"
        progress 40
    done
    ! console | grep -E "GUEST: error|I/O error" || fail "the guest saw an error"
    grep -q "domain '$GDOM' disk vda: the guest was paused by an I/O error while the server was down: resumed" "$LOGB" ||
        fail "no resume in hook.log: $(grep "$GDOM" "$LOGB" | tail -n 3)"
    "$RELOCATECTL" rate "$DG/control.sock" 0 >/dev/null || fail "relocatectl rate (guest)"
    "$RELOCATECTL" wait --timeout 120 "$DG/control.sock" >/dev/null ||
        fail "the guest's relocation did not complete"
    pg=$(pid_in "$DG")
    vB destroy "$GDOM" >/dev/null || fail "destroy $GDOM on B"
    last=$(rounds)
    for i in $(seq 200); do running "$pg" "$DG" || break; sleep 0.1; done
    running "$pg" "$DG" && fail "B's restarted server still runs after destroy"
    # B's file: the old host's image but for the guest's 64 blocks at
    # 4 MiB, each its slot's latest round (padded with zeroes).
    $PY - "$tmp/src.img" "$DG/disk.img" "$last" <<'EOF' || fail "B's file is not the disk as the guest left it"
import sys
src, got, last = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read(), int(sys.argv[3])
lo, hi = 1024 * 4096, 1088 * 4096
assert len(src) == len(got), "sizes differ"
assert src[:lo] == got[:lo] and src[hi:] == got[hi:], "a block the guest did not write differs"
for slot in range(64):
    blk = got[lo + slot * 4096:lo + (slot + 1) * 4096]
    n = int(blk[6:14])
    assert blk == ("round %08d\n" % n).encode().ljust(4096, b"\0"), "slot %d: %r" % (slot, blk[:20])
    assert n % 64 == slot and n > last - 64, "slot %d holds round %d (last printed %d)" % (slot, n, last)
EOF
    pass "a guest OS writing on B: its server killed -9 twice, $(grep -c "$GDOM.*resumed" "$LOGB") pause(s) resumed by the keeper, $last rounds with no error and every block read back as written; the relocation completed byte-exact; destroy stopped the server ($(elapsed))"
fi

pass "all in $(elapsed)"
