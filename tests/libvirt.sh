# Sourced by the tests that run real libvirtd's (test-libvirt-migrate.sh,
# test-libvirt-fleet.sh): skips without root, libvirt, QEMU or mount
# namespaces; sources functions.sh; then gives
#   setup_host NAME HOST_UUID and wait_daemon NAME: a libvirtd of its
#     own per host (see test-libvirt-migrate.sh for what is private),
#     the hook from this tree installed in it, its relocation servers
#     on SERVE_PORTS (4) ports, standby_timeout = STANDBY (6);
#     HOOK_CONF_EXTRA lines are added to every host's hook.conf;
#   uri_of NAME, domain_xml, hmp (on disk number DISK, 0),
#     guest_writes, status_of_ctl, pid_in, kill_pid, free_range and
#     elapsed;
#   the cluster's certificates in $tmp/pki, nbdkit for the hook in
#     $tmp/bin, and an EXIT trap that stops every daemon, QEMU and
#     relocation server these hosts started.
set -u
skip () { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root (mount namespaces, two libvirtd's)"
for c in libvirtd virsh qemu-system-x86_64; do
    command -v "$c" >/dev/null 2>&1 ||
        skip "libvirt not installed (apt-get install libvirt-daemon-system qemu-system-x86 to run it)"
done
id libvirt-qemu >/dev/null 2>&1 && getent group kvm >/dev/null ||
    skip "no libvirt-qemu user or kvm group (Debian's libvirt-daemon-system creates them)"
command -v unshare >/dev/null && unshare -m --propagation private true 2>/dev/null ||
    skip "cannot make a mount namespace here (unshare -m)"

source "$(dirname "$0")/functions.sh"
HOOK=$srcdir/scripts/nbdkit-relocate-hook
START=$(date +%s)
elapsed () { echo "$(( $(date +%s) - START ))s"; }

# free_range [N]: the first of N (4) ports free now; the ranges are
# distinct and small.  Below the kernel's ephemeral ports: a range is
# held for the whole test, and a client's connection must not take a
# port of it meanwhile (a migration then failed with "Address already
# in use").
free_range ()
{
    $PY - "${1:-4}" <<'EOF'
import socket, random, sys
n = int(sys.argv[1])
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    low = int(f.read().split()[0])
for _ in range(200):
    p = random.randrange(10000, max(10001, low - n))
    try:
        ss = []
        for q in range(p, p + n):
            s = socket.socket(); s.bind(("127.0.0.1", q)); ss.append(s)
        print(p); break
    except OSError:
        pass
EOF
}

# kill_pid PID MARKER: TERM, then KILL after 10 s.
kill_pid ()
{
    local pid=$1 marker=$2 i
    running "$pid" "$marker" || return 0
    kill -TERM "$pid" 2>/dev/null || :
    for i in $(seq 100); do running "$pid" || return 0; sleep 0.1; done
    running "$pid" "$marker" && kill -KILL "$pid" 2>/dev/null || :
    for i in $(seq 50); do running "$pid" || return 0; sleep 0.1; done
}

chmod 0711 "$tmp"               # QEMU (libvirt-qemu) passes through to sockets
daemons=()                      # host names whose libvirtd started

lv_cleanup ()
{
    local h pid ns p f t0
    for h in "${daemons[@]}"; do
        t0=$(date +%s.%N)
        pid=$(cat "$tmp/$h/libvirtd.pid" 2>/dev/null) || continue
        if running "$pid" libvirtd; then
            for d in $(timeout 20 virsh -c "$(uri_of "$h")" list --name 2>/dev/null); do
                timeout 30 virsh -c "$(uri_of "$h")" destroy "$d" >/dev/null 2>&1 || :
            done
        fi
        # QEMU by its pid file, then every relocation server the hook
        # started (its own attic included), then the daemon.
        for f in "$tmp/$h"/run/libvirt/qemu/*.pid; do
            [ "${f##*/}" != driver.pid ] && [ -s "$f" ] && kill_pid "$(cat "$f")" qemu-system
        done
        while read -r f; do
            for p in $($PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("nbdkit") or "", d.get("keeper") or "")' "$f" 2>/dev/null); do
                kill_pid "$p" "$(dirname "$f")"
            done
        done < <(find "$tmp/$h/state" -name pids.json 2>/dev/null)
        kill_pid "$pid" libvirtd
        # Whatever else still runs in that mount namespace was started
        # by this test (the namespace is its own): it goes too, so that
        # the private mounts go with the namespace.
        ns=$(cat "$tmp/$h/ns" 2>/dev/null) || continue
        for p in $($PY -c '
import os, sys
for p in os.listdir("/proc"):
    try:
        if p.isdigit() and os.readlink("/proc/%s/ns/mnt" % p) == sys.argv[1]:
            print(p)
    except OSError:
        pass' "$ns"); do
            echo "warning: $h: pid $p still in the namespace: $(tr '\0' ' ' < "/proc/$p/cmdline")" >&2
            kill -KILL "$p" 2>/dev/null || :
        done
        echo "cleanup: $h stopped in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-4) s"
    done
}
trap 'st=$?; lv_cleanup; set +e; (exit $st); cleanup' EXIT
trap 'exit 143' INT TERM

# nbdkit for the hook (with a sanitizer build its runtime is preloaded,
# and its options kept: libvirt runs hooks with a clean environment).
mkdir -p "$tmp/bin"
{ echo '#!/bin/sh'
  if [ -n "${SANITIZER_PRELOAD:-}" ]; then
      printf 'exec env LD_PRELOAD=%q ASAN_OPTIONS=%q UBSAN_OPTIONS=%q TSAN_OPTIONS=%q nbdkit "$@"\n' \
          "$SANITIZER_PRELOAD" "${ASAN_OPTIONS:-}" "${UBSAN_OPTIONS:-}" "${TSAN_OPTIONS:-}"
  else
      echo 'exec nbdkit "$@"'
  fi; } > "$tmp/bin/nbdkit"
chmod 0755 "$tmp/bin/nbdkit"

# ---- the cluster's certificates (libvirt's /etc/pki/qemu) ----
# One CA; QEMU (libvirt-qemu:kvm) reads the keys, no other user does.
make_ca "$tmp/ca" "relocate test CA"
make_certs "$tmp/ca" "$tmp/pki"
chgrp -R kvm "$tmp/pki" && chmod 0750 "$tmp/pki" && chmod 0640 "$tmp/pki"/*-key.pem

# ---- hosts ----
uri_of () { echo "qemu+tcp://127.0.0.1:$(cat "$tmp/$1/port")/system"; }

setup_host ()   # NAME HOST_UUID
{
    local n=$1 huuid=$2 h=$tmp/$1 port mig serve
    serve=$(free_range "${SERVE_PORTS:-4}")
    mkdir -p "$h"/{run,lib,cache,log,state}
    chmod 0755 "$h" "$h"/{run,lib,cache,log}
    port=$(free_port); echo "$port" > "$h/port"
    mig=$(free_range); echo "$mig" > "$h/migport"
    # A fresh /etc/libvirt: Debian's libvirtd.conf and qemu.conf set
    # nothing (every line a comment), so these two files with only the
    # lines below are Debian's defaults, whatever this machine's own
    # configuration says; no domain, network or pool is defined.
    mkdir -p "$h/etc/hooks/qemu.d"
    # Installed as make install does it: the entry point names this
    # tree's package and a private hook.conf (which names this tree's
    # relocatectl).
    sed -e "s|^HOOK_LIB = .*|HOOK_LIB = \"$srcdir/scripts\"|" \
        -e "s|^HOOK_CONF = .*|HOOK_CONF = \"$h/hook.conf\"|" \
        "$HOOK" > "$h/etc/hooks/qemu.d/nbdkit-relocate"
    chmod 0755 "$h/etc/hooks/qemu.d/nbdkit-relocate"
    grep -q "\"$h/hook.conf\"" "$h/etc/hooks/qemu.d/nbdkit-relocate" ||
        fail "the hook's configuration path could not be set"
    { echo "[hook]"
      echo "state_root = $h/state"
      echo "nbdkit = $tmp/bin/nbdkit"
      echo "filter = $FILTER"
      echo "relocatectl = $RELOCATECTL"
      echo "standby_timeout = ${STANDBY:-6}"
      echo "stop_grace = 5"
      echo "serve_name = relocate-host${n,,}"
      echo "listen = 127.0.0.1"
      echo "ports = $serve-$((serve + ${SERVE_PORTS:-4} - 1))"
      echo "onward_grace = 3"
      echo "libvirt_uri = qemu+tcp://127.0.0.1:$port/system"
      [ -z "${HOOK_CONF_EXTRA:-}" ] || printf '%s\n' "$HOOK_CONF_EXTRA"; } > "$h/hook.conf"
    cat > "$h/etc/libvirtd.conf" <<EOF
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "$port"
auth_tcp = "none"
host_uuid = "$huuid"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
    # Debian's qemu.conf defaults (QEMU as libvirt-qemu:kvm,
    # dynamic_ownership), plus: QEMU's output to a file (no virtlogd),
    # no cgroups (both daemons would name their domain's cgroup alike),
    # and a migration port range of this host's own (migration_address
    # may not be 127.0.0.1: virsh migrate --listen-address says it).
    # security_driver = "none": no AppArmor or SELinux profile written
    # outside the namespace (libvirt's DAC driver, which runs QEMU as
    # libvirt-qemu and chowns its images, stays).
    cat > "$h/etc/qemu.conf" <<EOF
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
default_tls_x509_cert_dir = "$tmp/pki"
nbd_tls = 1
migration_port_min = $mig
migration_port_max = $((mig + 3))
EOF
    { cat /etc/hosts; echo "127.0.0.1 relocate-oldhost relocate-hosta relocate-hostb relocate-hostc"; } > "$h/hosts"
    unshare -m --propagation private sh -c '
        h=$1
        mount --bind "$h/run" /run &&
        mkdir -p /run/libvirt &&
        mount --bind "$h/etc" /etc/libvirt &&
        mount --bind "$h/lib" /var/lib/libvirt &&
        mount --bind "$h/cache" /var/cache/libvirt &&
        mount --bind "$h/log" /var/log/libvirt &&
        mount --bind "$h/hosts" /etc/hosts &&
        readlink /proc/self/ns/mnt > "$h/ns" &&
        exec libvirtd --listen -p /run/libvirtd.pid' sh "$h" \
        >>"$h/libvirtd.out" 2>&1 </dev/null &
    echo $! > "$h/libvirtd.pid"
    disown
    daemons+=("$n")
}
wait_daemon ()  # NAME
{
    local i
    for i in $(seq 240); do
        virsh -c "$(uri_of "$1")" version >/dev/null 2>&1 && return 0
        running "$(cat "$tmp/$1/libvirtd.pid")" ||
            fail "libvirtd $1 exited: $(tail -n 20 "$tmp/$1/libvirtd.out" "$tmp/$1/log/libvirtd.log" 2>/dev/null)"
        sleep 0.5
    done
    fail "libvirtd $1 does not answer on $(uri_of "$1")"
}

status_of_ctl () { "$RELOCATECTL" status --json "$1" | $PY -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"; }
pid_in () { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["nbdkit"])' "$1/pids.json"; }

# domain_xml NAME UUID [PORTS TLS]: a disk for each of PORTS (vda,
# vdb, ...; default $psrc), the old host's export on that port,
# tls='no' unless TLS is given ('': qemu.conf's nbd_tls, which is 1 on
# every host here).
domain_xml ()
{
    local tls=${4-" tls='no'"} port disks="" i=0
    for port in ${3:-$psrc}; do
        disks+="    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd'$tls>
        <host name='relocate-oldhost' port='$port'/>
      </source>
      <target dev='vd${DISK_LETTERS:i:1}' bus='virtio'/>
    </disk>
"
        i=$((i + 1))
    done
    cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <uuid>$2</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><bios rebootTimeout='-1'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
$disks    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}
DISK_LETTERS=abcdefghijklmnop

# hmp HOST COMMAND: a qemu-io command on the guest's virtio disk
# number ${DISK:-0} (0 is vda, which libvirt names virtio-disk0; the
# virtio-blk-pci proxy has no BlockBackend; its virtio-backend child
# does).  qemu-io prints to QEMU's stdout, the domain's log here: the
# new lines there must say it was done, and no pattern mismatch.
hmp ()
{
    local out qlog=$tmp/$1/log/qemu/$DOM.log n i new
    n=$(wc -l < "$qlog")
    out=$(timeout 60 virsh -c "$(uri_of "$1")" qemu-monitor-command "$DOM" --hmp \
          "qemu-io -d virtio-disk${DISK:-0}/virtio-backend \"$2\"" 2>&1) || fail "$1: qemu-io '$2': $out"
    [ -z "$out" ] || fail "$1: qemu-io '$2': $out"
    for i in $(seq 100); do
        new=$(tail -n +$((n + 1)) "$qlog")
        case $new in *"wrote "*|*"read "*) break ;; esac
        sleep 0.1
    done
    case $new in
        *"wrote "*|*"read "*) ! grep -qi "fail\|error\|mismatch" <<<"$new" ||
                                  fail "$1: qemu-io '$2': $new" ;;
        *) fail "$1: qemu-io '$2': no result in $qlog: $new" ;;
    esac
}
# guest_writes HOST "PATTERN OFFSET COUNT"...: the guest writes there,
# and expected.img follows.
guest_writes ()
{
    local h=$1 w p o c; shift
    for w in "$@"; do
        read -r p o c <<<"$w"
        hmp "$h" "write -P $p $o $c"
    done
    $PY - "${EXPECTED:-$tmp/expected.img}" "$@" <<'EOF'
import sys
def n(s):
    m = {"k": 1024, "M": 1024 * 1024}
    return int(s[:-1]) * m[s[-1]] if s[-1] in m else int(s)
with open(sys.argv[1], "r+b") as f:
    for w in sys.argv[2:]:
        pat, off, cnt = w.split()
        f.seek(n(off)); f.write(bytes([int(pat, 16)]) * n(cnt))
EOF
}
