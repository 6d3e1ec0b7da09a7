#!/usr/bin/env bash
# make install puts the whole libvirt hook in place (the entry point in
# hookdir, every module of relocate_hook in the package directory, the
# entry point told where both it and hook.conf are), the installed hook
# works on its own (it relocates a disk and its keeper runs from the
# installed package, leaving no bytecode there), and make uninstall
# removes all of it but the operator's hook.conf.
source "$(dirname "$0")/functions.sh"

inst=$tmp/inst
# Everything under $inst: the directories configure chose are not touched.
dirs=(prefix="$inst" hookdir="$inst/hooks" hookconfdir="$inst/conf"
      filterdir="$inst/filters")
mk () { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -C "$srcdir" -s "$@" "${dirs[@]}"; }
mk install > "$tmp/install.log" 2>&1 || fail "make install: $(tail "$tmp/install.log")"

hook=$inst/hooks/nbdkit-relocate
pkg=$inst/share/nbdkit-relocate/relocate_hook
[ -x "$hook" ] || fail "no executable entry point in hookdir"
[ ! -e "$inst/hooks/nbdkit-relocate-hook" ] || fail "the uninstalled name is left in hookdir"
grep -qx "HOOK_LIB = \"$inst/share/nbdkit-relocate\"" "$hook" || fail "HOOK_LIB not set: $(grep HOOK_LIB "$hook")"
grep -qx "HOOK_CONF = \"$inst/conf/hook.conf\"" "$hook" || fail "HOOK_CONF not set"
diff <(cd "$srcdir/scripts/relocate_hook" && ls ./*.py) <(cd "$pkg" && ls ./*.py) ||
    fail "the installed package is not every module of scripts/relocate_hook"
grep -q "\"relocatectl\": \"$inst/bin/relocatectl\"" "$pkg/config.py" ||
    fail "the installed hook does not name relocatectl by its full path"
# hook.conf, from the example, names relocatectl by its full path too:
# libvirt runs hooks with PATH=/bin:/usr/bin.
diff <(sed "s|^relocatectl = relocatectl\$|relocatectl = $inst/bin/relocatectl|" \
           "$srcdir/scripts/hook.conf.example") "$inst/conf/hook.conf" ||
    fail "hook.conf is not the example with relocatectl's full path"
cmp -s "$inst/conf/hook.conf" "$inst/conf/hook.conf.example" || fail "hook.conf is not the installed example"
pass "make install: entry point, every module, hook.conf"

# The installed hook, with an installed hook.conf pointed at this test.
random_image "$tmp/d1.img" 4
p1=$(free_port); start_tcp_source s1 "$tmp/d1.img" "$p1"
printf 'user = "nobody"\ngroup = "nogroup"\n' > "$tmp/qemu.conf"
printf '#!/bin/bash\nexec %s"$@"\n' "$(nbdkit_words)" > "$tmp/nbdkit"
chmod +x "$tmp/nbdkit"
chmod 0711 "$tmp"
cat >> "$inst/conf/hook.conf" <<CONF
state_root = $tmp/root
local_hosts = none
nbdkit = $tmp/nbdkit
filter = $FILTER
qemu_conf = $tmp/qemu.conf
serve = unix
CONF
sed "s/@NAME@/vm1/; s/@PORT1@/$p1/" "$srcdir/tests/hook/one-disk.xml" > "$tmp/vm1.xml"
# No PYTHONPATH, from another directory, with the PATH libvirt gives
# hooks: only what was installed.
cd /
env -u PYTHONPATH PATH=/bin:/usr/bin "$hook" vm1 migrate begin - < "$tmp/vm1.xml" > "$tmp/out.xml" || fail "migrate begin"
env -u PYTHONPATH PATH=/bin:/usr/bin "$hook" vm1 prepare begin - < "$tmp/out.xml" || fail "prepare begin: $(cat "$tmp/root/hook.log")"
sock=$(ls "$tmp"/root/*/vda/nbd.sock)
$NBDIO compare "nbd+unix:///?socket=$sock" "$tmp/d1.img" || fail "the installed hook's server does not serve the source"
keeper=$(hook_pids "$(dirname "$sock")/pids.json" | cut -d' ' -f1)
grep -q -- "-m relocate_hook.keeper" <<< "$(tr '\0' ' ' < "/proc/$keeper/cmdline")" || fail "no keeper: $keeper"
[ "$(readlink "/proc/$keeper/cwd")" = / ] || fail "the keeper's directory is $(readlink "/proc/$keeper/cwd")"
"$hook" vm1 release end - < "$tmp/out.xml" || fail "release end"
[ -z "$(find "$inst" -name __pycache__)" ] || fail "bytecode written into the installed package"
pass "the installed hook relocates a disk, its keeper runs from the installed package"

mk uninstall > "$tmp/uninstall.log" 2>&1 || fail "make uninstall: $(tail "$tmp/uninstall.log")"
left=$(cd "$inst" && find . -type f | sort)
[ "$left" = ./conf/hook.conf ] || fail "make uninstall left: $left"
[ ! -e "$inst/share/nbdkit-relocate" ] || fail "make uninstall left the package directory"
pass "make uninstall removes all of it but hook.conf"
