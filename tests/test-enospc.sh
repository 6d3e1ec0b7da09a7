#!/usr/bin/env bash
# The local disk fills up: clients get ENOSPC, nothing present is lost,
# and the copy resumes once space is freed.  Needs a tmpfs mount (root).
source "$(dirname "$0")/functions.sh"

mkdir "$tmp/mnt"
if ! mount -t tmpfs -o size=24M tmpfs "$tmp/mnt" 2>/dev/null; then
    echo "SKIP: cannot mount tmpfs here"
    exit 77
fi
trap 'umount -l "$tmp/mnt" 2>/dev/null; cleanup' EXIT

random_image "$tmp/src.img" 48
cp "$tmp/src.img" "$tmp/oracle.img"
start_source src "$tmp/src.img"
start_dest dst src "$tmp/mnt/dst.img" relocate-start=immediate relocate-sync-interval=1

# The copy stops short of 48 MiB on a 24 MiB file system.
sleep 3
p1=$(status_field dst present_bytes); sleep 1.5; p2=$(status_field dst present_bytes)
[ "$p1" = "$p2" ] && [ "$p2" -lt $((48 << 20)) ] || fail "copy did not stall on a full disk ($p1 -> $p2)"
grep -q "No space left on device" "$tmp/dst.log" || fail "ENOSPC not logged"

$PY - "$(uri dst)" "$tmp/oracle.img" <<'PYEOF'
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
data = open(sys.argv[2], "rb").read()
assert h.pread(1 << 20, 0) == data[:1 << 20]        # present: still right
try:
    h.pwrite(b"z" * (1 << 20), 40 << 20)             # absent: needs space
    sys.exit("a write to a full disk succeeded")
except nbd.Error as e:
    assert e.errnum == 28, e                         # ENOSPC
    print("write on a full disk:", e.string)
PYEOF
pass "full disk: ENOSPC to the client, present data intact"

mount -o remount,size=128M "$tmp/mnt"
ctl wait dst --timeout 60 || fail "copy did not resume after space was freed"
cmp "$tmp/mnt/dst.img" "$tmp/oracle.img" || fail "final image is wrong"
pass "space freed: relocation completes byte-exact"
