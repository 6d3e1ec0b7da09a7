#!/usr/bin/env bash
# Only who holds the keys reads or writes the disk (standalone filter,
# over TCP on 127.0.0.1, certificates made here with certtool):
#
#  1. X.509 both ways: the source requires TLS and client certificates
#     (--tls-verify-peer), the filter's nbd plugin connects with
#     tls=require, and the filter's own server requires TLS and client
#     certificates too; the relocation completes byte-exact, and a
#     client with the cluster's certificate reads it;
#  2. both servers refuse a plain client, a client with no certificate
#     and a client whose certificate comes from another CA;
#  3. a source whose certificate does not verify, and a source that
#     offers no TLS, are refused at start with a line naming the
#     source, and no file is made: nothing falls back to the clear;
#  4. TLS-PSK to the source (tls-psk, tls-username): byte-exact; a
#     wrong key is refused;
#  5. the files the filter makes are 0600 even under umask 022, and an
#     unprivileged user (uid 65534) can read neither them nor, without
#     a certificate, the server.
source "$(dirname "$0")/functions.sh"
command -v certtool >/dev/null || fail "certtool missing (apt-get install gnutls-bin)"

make_ca "$tmp/ca" "relocate test CA"
make_certs "$tmp/ca" "$tmp/pki"
make_ca "$tmp/ca2" "another CA"
make_certs "$tmp/ca2" "$tmp/pki2"
# A client that trusts the servers' CA and has no certificate, and one
# whose certificate another CA signed.
mkdir "$tmp/nocert" "$tmp/foreign"
cp "$tmp/pki/ca-cert.pem" "$tmp/nocert/"
cp "$tmp/pki/ca-cert.pem" "$tmp/pki2"/client-*.pem "$tmp/foreign/"

# start_tcp NAME PORT ARGS...: nbdkit on 127.0.0.1:PORT (pid file, log
# and stop on exit as start_server's).
start_tcp ()
{
    local name=$1 port=$2; shift 2
    rm -f "$tmp/$name.pid"
    (umask 022; exec "${NBDKIT[@]}" -f --log=stderr -i 127.0.0.1 -p "$port" \
        -P "$tmp/$name.pid" "$@" 2>>"$tmp/$name.log" </dev/null) &
    disown
    wait_for test -s "$tmp/$name.pid" || fail "$name did not start: $(tail -n 5 "$tmp/$name.log")"
    servers+=("$name")
}
tls_uri () { echo "nbds://localhost:$1/?tls-certificates=$2"; }
refuses ()      # PORT WHAT: plain, no certificate, another CA's: refused
{
    nbdinfo --can connect "$(tls_uri "$1" "$tmp/pki")" ||
        fail "$2: a client with the cluster's certificate is refused"
    ! nbdinfo --can connect "nbd://localhost:$1/" 2>/dev/null ||
        fail "$2 serves a plain client"
    ! nbdinfo --can connect "$(tls_uri "$1" "$tmp/nocert")" 2>/dev/null ||
        fail "$2 serves a client without a certificate"
    ! nbdinfo --can connect "$(tls_uri "$1" "$tmp/foreign")" 2>/dev/null ||
        fail "$2 serves a client whose certificate another CA signed"
}

# ---- 1. X.509 both ways ----
random_image "$tmp/src.img" 32
psrc=$(free_port)
start_tcp src "$psrc" --tls=require --tls-certificates="$tmp/pki" \
    --tls-verify-peer file "$tmp/src.img"
wait_for nbdinfo --can connect "$(tls_uri "$psrc" "$tmp/pki")" || fail "the source does not serve"
mkdir -m 0755 "$tmp/dst"
pdst=$(free_port)
start_tcp dst "$pdst" --tls=require --tls-certificates="$tmp/pki" \
    --tls-verify-peer --filter="$FILTER" nbd hostname=localhost port="$psrc" \
    tls=require tls-certificates="$tmp/pki" relocate-file="$tmp/dst/disk.img" \
    relocate-control="$tmp/dst.ctl" relocate-start=immediate
wait_for test -S "$tmp/dst.ctl" || fail "dst: no control socket"
ctl wait dst --timeout 120 || fail "the relocation over TLS did not complete"
cmp "$tmp/dst/disk.img" "$tmp/src.img" || fail "the relocated file differs from the source"
nbdcopy "$(tls_uri "$pdst" "$tmp/pki")" "$tmp/read.img" || fail "cannot read through the filter with TLS"
cmp "$tmp/read.img" "$tmp/src.img" || fail "the disk read through the filter differs"
pass "X.509 to the source and to the filter's clients: relocated byte-exact"

# ---- 2. refusals ----
refuses "$psrc" "the source"
refuses "$pdst" "the filter's server"
pass "both servers refuse a plain client, one without a certificate, one of another CA"

# ---- 3. a source that does not verify, or offers no TLS: refused ----
# expect_refusal WHAT ARGS...: nbdkit exits at start, its messages name
# the source, and no file is made.
expect_refusal ()
{
    local what=$1 out; shift
    rm -rf "$tmp/bad" "$tmp/bad.sock"; mkdir "$tmp/bad"
    if out=$(timeout 60 "${NBDKIT[@]}" -f -U "$tmp/bad.sock" --filter="$FILTER" nbd \
                 "$@" relocate-file="$tmp/bad/disk.img" 2>&1); then
        fail "$what: nbdkit started"
    fi
    grep -q "cannot reach the source (hostname=localhost port=" <<<"$out" ||
        fail "$what: no line naming the source: $out"
    [ -z "$(ls "$tmp/bad")" ] || fail "$what: files made: $(ls "$tmp/bad")"
    echo "$what: $(grep -v 'no connection in this thread' <<<"$out" | tr '\n' ' ')"
}
expect_refusal "a source whose certificate another CA signed" \
    hostname=localhost port="$psrc" tls=require tls-certificates="$tmp/pki2"
plain=$(free_port)
start_tcp plain "$plain" file "$tmp/src.img"
wait_for nbdinfo --can connect "nbd://localhost:$plain/" || fail "the plain source does not serve"
expect_refusal "a source without TLS" \
    hostname=localhost port="$plain" tls=require tls-certificates="$tmp/pki"
pass "a source that does not verify or offers no TLS is refused, naming it"

# ---- 4. TLS-PSK ----
printf 'relocate:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$tmp/keys.psk"
printf 'relocate:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$tmp/wrong.psk"
chmod 0600 "$tmp"/*.psk
ppsk=$(free_port)
start_tcp psk "$ppsk" --tls=require --tls-psk="$tmp/keys.psk" file "$tmp/src.img"
wait_for nbdinfo --can connect "nbds://relocate@localhost:$ppsk/?tls-psk-file=$tmp/keys.psk" ||
    fail "the PSK source does not serve"
start_server pskdst --filter="$FILTER" nbd hostname=localhost port="$ppsk" \
    tls=require tls-psk="$tmp/keys.psk" tls-username=relocate \
    relocate-file="$tmp/psk.img" relocate-control="$tmp/pskdst.ctl" relocate-start=immediate
ctl wait pskdst --timeout 120 || fail "the relocation over TLS-PSK did not complete"
cmp "$tmp/psk.img" "$tmp/src.img" || fail "the file relocated over TLS-PSK differs"
expect_refusal "a wrong PSK" hostname=localhost port="$ppsk" tls=require \
    tls-psk="$tmp/wrong.psk" tls-username=relocate
pass "TLS-PSK: relocated byte-exact; a wrong key is refused"

# ---- 5. files 0600, and an unprivileged user ----
# A relocation that has started and is held (relocate-rate) keeps all
# three files.
mkdir -m 0755 "$tmp/held"
pheld=$(free_port)
start_tcp held "$pheld" --tls=require --tls-certificates="$tmp/pki" \
    --tls-verify-peer --filter="$FILTER" nbd hostname=localhost port="$psrc" \
    tls=require tls-certificates="$tmp/pki" relocate-file="$tmp/held/disk.img" \
    relocate-control="$tmp/held.ctl" relocate-start=immediate relocate-rate=64K
wait_for test -S "$tmp/held.ctl" || fail "held: no control socket"
for f in disk.img disk.img.bitmap disk.img.bitmap.volatile; do
    [ -e "$tmp/held/$f" ] || fail "no $f"
    mode=$(stat -c %a "$tmp/held/$f")
    [ "$mode" = 600 ] || fail "$f has mode $mode, made under umask 022"
done
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
    chmod 0755 "$tmp"
    nobody () { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
    nobody test -x "$tmp/held" || fail "the test's directory is closed to uid 65534 (the test proves nothing)"
    for f in disk.img disk.img.bitmap disk.img.bitmap.volatile; do
        ! nobody cat "$tmp/held/$f" >/dev/null 2>&1 || fail "uid 65534 reads $f"
        ! nobody sh -c ': >> "$1"' sh "$tmp/held/$f" 2>/dev/null || fail "uid 65534 writes $f"
    done
    ! nobody nbdinfo --can connect "nbd://localhost:$pdst/" 2>/dev/null ||
        fail "uid 65534 connects to the filter's server"
    ! nobody nbdcopy "nbds://localhost:$pdst/?tls-certificates=$tmp/nocert" "$tmp/nobody.img" 2>/dev/null ||
        fail "uid 65534 reads the disk through the server"
    chmod 0700 "$tmp"
    pass "files 0600 under umask 022; uid 65534 reads neither them nor the server"
else
    pass "files 0600 under umask 022 (not root: the uid 65534 part is skipped)"
fi
