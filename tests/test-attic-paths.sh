#!/usr/bin/env bash
# A server whose directory was moved aside (the libvirt hook's attic)
# never removes a file of the relocation that replaced it at the same
# paths.  The old server completes (it used to unlink the new volatile
# bitmap by its old path) and stops (it used to unlink the new control
# socket); then a write acknowledged by the new server, not flushed,
# survives kill -9 and a restart of the new server.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 4
start_source src "$tmp/src.img"
mkdir "$tmp/vda"
# The old relocation, in standby until the new one is under way.
start_server old --filter="$FILTER" nbd socket="$tmp/src.sock" \
    relocate-file="$tmp/vda/disk.img" relocate-control="$tmp/vda/control.sock" \
    relocate-start=manual
wait_for test -S "$tmp/vda/control.sock" || fail "old: no control socket"

# The hook moves the directory aside and plans a fresh relocation there.
mkdir "$tmp/attic"
mv "$tmp/vda" "$tmp/attic/vda"
mkdir "$tmp/vda"
start_server new --filter="$FILTER" nbd socket="$tmp/src.sock" \
    relocate-file="$tmp/vda/disk.img" relocate-control="$tmp/vda/control.sock" \
    relocate-start=on-write relocate-background=false relocate-sync-interval=3600
wait_for test -S "$tmp/vda/control.sock" || fail "new: no control socket"
$PY - "$(uri new)" <<'PYEOF' || fail "write to the new server"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"n" * 65536, 1 << 20)        # acknowledged, not flushed
PYEOF
[ -s "$tmp/vda/disk.img.bitmap.volatile" ] || fail "the new relocation has no volatile bitmap"

# The old one completes and stops, at its old paths.
"$RELOCATECTL" start "$tmp/attic/vda/control.sock" >/dev/null
"$RELOCATECTL" wait --timeout 60 "$tmp/attic/vda/control.sock" >/dev/null ||
    fail "the old relocation did not complete"
[ -e "$tmp/vda/disk.img.bitmap.volatile" ] || fail "the old server removed the new volatile bitmap"
[ ! -e "$tmp/attic/vda/disk.img.bitmap.volatile" ] || fail "the old relocation kept its own volatile bitmap"
stop_server old
[ -S "$tmp/vda/control.sock" ] || fail "the old server removed the new control socket"
[ ! -e "$tmp/attic/vda/control.sock" ] || fail "the old server left its own control socket"
"$RELOCATECTL" status "$tmp/vda/control.sock" >/dev/null || fail "relocatectl cannot reach the new relocation"
pass "the old server removed its own files, and none of the new relocation's"

stop_server new KILL
rm -f "$tmp/new.sock"
start_server new --filter="$FILTER" nbd socket="$tmp/src.sock" \
    relocate-file="$tmp/vda/disk.img" relocate-control="$tmp/vda/control.sock" \
    relocate-start=on-write relocate-background=false
$PY - "$(uri new)" <<'PYEOF' || fail "the acknowledged write was lost after kill -9"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.pread(65536, 1 << 20) == b"n" * 65536
PYEOF
pass "a write acknowledged by the new server survives its kill -9"
