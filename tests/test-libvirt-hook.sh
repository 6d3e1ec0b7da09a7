#!/usr/bin/env bash
# The libvirt hook, called exactly as libvirt calls it (domain XML on
# stdin; migrate begin, then prepare begin with the XML it printed):
# NBD disks are rewritten to a local relocation server (serve = unix
# here; test-libvirt-hook-life covers serve = tcp) that serves the
# source's data, other disks are left alone, hostile names do not break
# it, and release stops the servers.
source "$(dirname "$0")/functions.sh"
HOOK=$srcdir/scripts/nbdkit-relocate-hook
SAMPLES=$srcdir/tests/hook


random_image "$tmp/d1.img" 16
random_image "$tmp/d2.img" 8
p1=$(free_port); start_tcp_source s1 "$tmp/d1.img" "$p1"
p2=$(free_port); start_tcp_source s2 "$tmp/d2.img" "$p2"

mkdir -p "$tmp/root" "$tmp/bin"
# QEMU's user as Debian's libvirt runs it, but one that exists here:
# nobody:nogroup stands for libvirt-qemu:kvm.  The test directory must
# be traversable for it, as /var/lib is.
chmod 0711 "$tmp"
printf '# qemu.conf\n#user = "root"\nuser = "nobody"   # as libvirt-qemu\ngroup = "nogroup"\n' > "$tmp/qemu.conf"
printf '#!/bin/bash\nexec %s"$@"\n' "$(nbdkit_words)" > "$tmp/bin/nbdkit"
chmod +x "$tmp/bin/nbdkit"
cat > "$tmp/hook.conf" <<CONF
[hook]
state_root = $tmp/root
local_hosts = none
nbdkit = $tmp/bin/nbdkit
filter = $FILTER
relocatectl = $RELOCATECTL
qemu_conf = $tmp/qemu.conf
serve = unix
CONF
export NBDKIT_RELOCATE_HOOK_CONF=$tmp/hook.conf

# check_rewritten OUT.xml DEV SOURCE_IMAGE: DEV now points at a unix
# socket under the state root, and that socket serves the source.
check_rewritten ()
{
    local sock
    sock=$($PY - "$1" "$2" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
for d in root.iter("disk"):
    if d.find("target").get("dev") == sys.argv[2]:
        hosts = d.find("source").findall("host")
        assert len(hosts) == 1 and hosts[0].get("transport") == "unix", ET.tostring(d)
        print(hosts[0].get("socket"))
PYEOF
)
    [[ "$sock" == "$tmp/root/"* ]] || fail "$2 not rewritten under the state root: '$sock'"
    $NBDIO compare "nbd+unix:///?socket=$sock" "$3" || fail "$2 does not serve its source"
}

# hook.conf.example names every key the hook knows, with its default.
$PY - "$srcdir/scripts" "$srcdir/scripts/hook.conf.example" <<'PYEOF' || fail "hook.conf.example and the hook's defaults differ"
import configparser, sys
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
from relocate_hook.config import DEFAULTS
cp = configparser.ConfigParser(interpolation=None)
cp.read(sys.argv[2])
example = dict(cp["hook"])
assert example == DEFAULTS, (set(example.items()) ^ set(DEFAULTS.items()))
PYEOF
pass "hook.conf.example lists every key with the hook's default"

# One disk, a plain name.
sed "s/@NAME@/db-01/; s/@PORT1@/$p1/" "$SAMPLES/one-disk.xml" > "$tmp/one.xml"
"$HOOK" db-01 migrate begin - < "$tmp/one.xml" > "$tmp/one.out" || fail "hook failed"
"$HOOK" db-01 prepare begin - < "$tmp/one.out" || fail "prepare begin failed"
check_rewritten "$tmp/one.out" vda "$tmp/d1.img"
pass "one NBD disk rewritten and served"

# QEMU's user (qemu.conf: nobody:nogroup) may open the socket, and
# nothing else: the directories are root's, 0710 and QEMU's group's
# (no other user even passes), the control socket and the image root's
# alone (libvirt's dynamic_ownership chowns images).
d1=$(dirname "$(ls "$tmp"/root/*/vda/nbd.sock)")
[ "$(stat -c %U:%G:%a "$d1/nbd.sock")" = nobody:nogroup:660 ] ||
    fail "socket: $(stat -c %U:%G:%a "$d1/nbd.sock")"
for d in "$tmp/root" "$(dirname "$d1")" "$d1"; do
    [ "$(stat -c %U:%G:%a "$d")" = root:nogroup:710 ] || fail "$d: $(stat -c %U:%G:%a "$d")"
done
setpriv --reuid=65533 --regid=65533 --clear-groups test -x "$tmp" ||
    fail "uid 65533 cannot pass through $tmp: the next check would prove nothing"
! setpriv --reuid=65533 --regid=65533 --clear-groups test -x "$tmp/root" ||
    fail "another user (uid 65533) passes through the state root"
[ "$(stat -c %U:%a "$d1/disk.img")" = root:600 ] || fail "disk.img: $(stat -c %U:%a "$d1/disk.img")"
# QEMU's user runs copies of the tools: the checkout may be mode 0700.
mkdir -m 0755 "$tmp/pub"
cp "$srcdir/tests/nbdio.py" "$RELOCATECTL" "$tmp/pub/"
cp "$tmp/d1.img" "$tmp/pub/d1.img" && chmod 0644 "$tmp/pub/"*
setpriv --reuid=nobody --regid=nogroup --clear-groups \
    $PY "$tmp/pub/nbdio.py" compare "nbd+unix:///?socket=$d1/nbd.sock" "$tmp/pub/d1.img" ||
    fail "QEMU's user cannot read through the socket"
chmod 0755 "$tmp/pub/relocatectl"
setpriv --reuid=nobody --regid=nogroup --clear-groups "$tmp/pub/relocatectl" --help >/dev/null ||
    fail "QEMU's user cannot run relocatectl at all: the next check would prove nothing"
! setpriv --reuid=nobody --regid=nogroup --clear-groups \
    "$tmp/pub/relocatectl" status "$d1/control.sock" >/dev/null 2>&1 ||
    fail "QEMU's user can use the control socket"
pass "the socket is QEMU's user's (qemu.conf), the rest root's"

# Two NBD disks, a file disk and an HTTP cdrom.
sed "s/@PORT1@/$p1/; s/@PORT2@/$p2/" "$SAMPLES/two-disks.xml" > "$tmp/two.xml"
"$HOOK" web-01 migrate begin - < "$tmp/two.xml" > "$tmp/two.out" || fail "hook failed"
"$HOOK" web-01 prepare begin - < "$tmp/two.out" || fail "prepare begin failed"
check_rewritten "$tmp/two.out" vda "$tmp/d1.img"
check_rewritten "$tmp/two.out" vdb "$tmp/d2.img"
$PY - "$tmp/two.xml" "$tmp/two.out" <<'PYEOF' || fail "other disks were changed"
import sys, xml.etree.ElementTree as ET
a, b = (ET.parse(p).getroot() for p in sys.argv[1:3])
da = {d.find("target").get("dev"): ET.tostring(d) for d in a.iter("disk")}
db = {d.find("target").get("dev"): ET.tostring(d) for d in b.iter("disk")}
assert da["vdc"] == db["vdc"] and da["sda"] == db["sda"]
PYEOF
grep -q "disk vdc: left alone (not a network disk)" "$tmp/root/hook.log" || fail "file disk not logged"
grep -q "disk sda: left alone (not NBD)" "$tmp/root/hook.log" || fail "http disk not logged"
pass "two NBD disks rewritten; file and HTTP disks untouched and logged"

# A hostile domain name, and a hostile target dev.
evil='evil $(touch '"$tmp"'/pwned) `id` "q'"'"'uote & <x>'
$PY - "$SAMPLES/one-disk.xml" "$evil" "$p1" > "$tmp/evil.xml" <<'PYEOF'
import sys
from xml.sax.saxutils import escape
t = open(sys.argv[1]).read().replace("@NAME@", escape(sys.argv[2]))
t = t.replace("@PORT1@", sys.argv[3]).replace("6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0001", "6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0003")
print(t.replace("<target dev='vda'", "<target dev='vda'") + "")
PYEOF
"$HOOK" "$evil" migrate begin - < "$tmp/evil.xml" > "$tmp/evil.out" || fail "hook failed on a hostile name"
"$HOOK" "$evil" prepare begin - < "$tmp/evil.out" || fail "prepare begin failed on a hostile name"
check_rewritten "$tmp/evil.out" vda "$tmp/d1.img"
[ ! -e "$tmp/pwned" ] || fail "the domain name was evaluated by a shell"
sed "s/dev='vda'/dev='vd\$(touch $(echo "$tmp" | sed 's/\//\\\//g')\/pwned2)'/" "$tmp/evil.xml" > "$tmp/evil2.xml"
"$HOOK" "$evil" migrate begin - < "$tmp/evil2.xml" > "$tmp/evil2.out" || fail "hook failed on a hostile dev"
"$HOOK" "$evil" prepare begin - < "$tmp/evil2.out" || fail "prepare begin failed on a hostile dev"
cmp -s <($PY -c 'import sys,xml.etree.ElementTree as E; print(E.tostring(E.parse(sys.argv[1]).getroot()))' "$tmp/evil2.xml") \
       <($PY -c 'import sys,xml.etree.ElementTree as E; print(E.tostring(E.parse(sys.argv[1]).getroot()))' "$tmp/evil2.out") ||
    fail "a disk with a hostile target dev was changed"
[ ! -e "$tmp/pwned" ] && [ ! -e "$tmp/pwned2" ] || fail "a value was evaluated by a shell"
pass "hostile domain name and target dev: no shell evaluation"

# prepare prints nothing; a definition that does not name the server
# of a relocation that serves is not its to judge.
out=$("$HOOK" db-01 prepare begin - < "$tmp/one.xml") || fail "prepare failed"
[ -z "$out" ] || fail "prepare printed XML"

# release stops the servers it started, and only them.
pids=$(cat "$tmp"/root/*/*/nbdkit.pid)
[ "$(echo "$pids" | wc -w)" -eq 4 ] || fail "expected 4 servers, found: $pids"
for dom in db-01 web-01 "$evil"; do
    case $dom in db-01) x=one.xml ;; web-01) x=two.xml ;; *) x=evil.xml ;; esac
    "$HOOK" "$dom" release end - < "$tmp/$x" || fail "release failed for $dom"
done
for pid in $pids; do
    ! kill -0 "$pid" 2>/dev/null || fail "server $pid still runs after release"
done
kill -0 "$(cat "$tmp/s1.pid")" || fail "release stopped a source"
pass "release stops every relocation server"
