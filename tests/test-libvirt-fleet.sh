#!/usr/bin/env bash
# A virtual cluster moves at once, through the hook, under one budget:
# four domains (c1 with four disks, c2, c3 and c4 with one each: seven
# disks, each its own export on the old host) run on A; all four
# migrate to B at the same time (virsh migrate --live, in parallel).
# Every host's hook.conf says rate_group = 8M, so B's seven relocations
# share one budget of 8 MiB/s (relocate-rate-group in B's state root).
#
# The seven background copies are paused before the guests' first
# writes start them, then resumed together: each relocation must then
# see all seven of the group copying, with a share of at most an equal
# seventh of the budget (less while guests fetch on demand).  The
# guests read at B what they wrote at A and write at B; every
# relocation completes, and after destroy each disk's raw file on B is
# byte-exact with the guest's disk, and the old host's images are as
# the guests left A.
#
# Skipped (exit 77) as test-libvirt-migrate.sh is.

source "$(dirname "$0")/libvirt.sh"

LIMIT=$((8 * 1024 * 1024))
N=7
DOMS=(c1 c2 c3 c4)
declare -A UUIDS=([c1]=5c1a0000-0000-4000-8000-0000000000c1 [c2]=5c1a0000-0000-4000-8000-0000000000c2
                  [c3]=5c1a0000-0000-4000-8000-0000000000c3 [c4]=5c1a0000-0000-4000-8000-0000000000c4)
declare -A PORTS=()             # domain -> the old host's ports of its disks
DISKS=()                        # "DOMAIN INDEX IMAGE" for each of the seven

# ---- the old host: one export per disk ----
for i in $(seq $N); do
    random_image "$tmp/s$i.img" 16
    # Nothing bootable: the firmware must not find a boot sector.
    dd if=/dev/zero of="$tmp/s$i.img" bs=512 count=1 conv=notrunc status=none
    p=$(free_port)
    start_tcp_source "s$i" "$tmp/s$i.img" "$p"
    case $i in 1|2|3|4) d=c1 ;; 5) d=c2 ;; 6) d=c3 ;; 7) d=c4 ;; esac
    DISKS+=("$d $(wc -w <<< "${PORTS[$d]:-}") s$i")
    PORTS[$d]="${PORTS[$d]:-} $p"
done

# ---- two hosts, one budget on each ----
SERVE_PORTS=10
HOOK_CONF_EXTRA="rate_group = 8M"
STANDBY=30                      # four QEMUs start at once, under TCG
setup_host A 9a0c0a0a-0000-4000-8000-0000000000fa
setup_host B 9a0c0b0b-0000-4000-8000-0000000000fb
wait_daemon A
wait_daemon B
UA=$(uri_of A) UB=$(uri_of B)
pass "two libvirtd's, rate_group = 8M: $UA and $UB ($(elapsed))"

# dir_of DOMAIN INDEX: the relocation's directory of that disk on B.
dir_of () { echo "$tmp/B/state/${UUIDS[$1]}/vd${DISK_LETTERS:$2:1}"; }

for d in "${DOMS[@]}"; do
    domain_xml "$d" "${UUIDS[$d]}" "${PORTS[$d]}" > "$tmp/$d.xml"
    timeout 120 virsh -c "$UA" create "$tmp/$d.xml" >/dev/null ||
        fail "virsh create $d on A: $(tail -n 20 "$tmp/A/log/qemu/$d.log" 2>/dev/null)"
done
for w in "${DISKS[@]}"; do
    read -r d k s <<< "$w"
    DOM=$d DISK=$k hmp A "write -P 0x1$k 2M 64k"
done
pass "four domains on A, seven disks; the guests wrote at A ($(elapsed))"

# ---- all four migrate at once ----
mig=$(cat "$tmp/B/migport")
pids=() k=0
for d in "${DOMS[@]}"; do
    timeout 180 virsh -c "$UA" migrate --live "$d" "$UB" --listen-address 127.0.0.1 \
        --migrateuri "tcp://127.0.0.1:$((mig + k))" > "$tmp/mig-$d.out" 2>&1 &
    pids+=($!) k=$((k + 1))
done
k=0
for d in "${DOMS[@]}"; do
    wait "${pids[$k]}" || fail "migration of $d: $(cat "$tmp/mig-$d.out"; tail -n 20 "$tmp/B/log/qemu/$d.log" 2>/dev/null)"
    [ "$(timeout 60 virsh -c "$UB" domstate "$d")" = running ] || fail "$d is not running on B"
    k=$((k + 1))
done
# The disks as the guests left A: what the old host must keep (a$i),
# and what the guests' disks must be once they wrote at B (e$i).
for i in $(seq $N); do cp "$tmp/s$i.img" "$tmp/a$i.img"; cp "$tmp/s$i.img" "$tmp/e$i.img"; done
for w in "${DISKS[@]}"; do
    read -r d k s <<< "$w"
    D=$(dir_of "$d" "$k")
    [ "$(status_of_ctl "$D/control.sock" state)" = standby ] ||
        fail "$d vd${DISK_LETTERS:$k:1}: not in standby after the migration"
    grep -qa -- "relocate-rate-group=$tmp/B/state/rate-group" "/proc/$(pid_in "$D")/cmdline" ||
        fail "$d vd${DISK_LETTERS:$k:1}: its server is not in the host's rate group: $(tr '\0' ' ' < "/proc/$(pid_in "$D")/cmdline")"
done
pass "four live migrations A -> B at once; seven relocation servers on B, in standby, one rate group ($(elapsed))"

# ---- the seven copies together ----
for w in "${DISKS[@]}"; do
    read -r d k s <<< "$w"
    "$RELOCATECTL" pause "$(dir_of "$d" "$k")/control.sock" || fail "pause $d $k"
done
# What each guest wrote at A, read at B; then a write at B starts its
# relocation.
for w in "${DISKS[@]}"; do
    read -r d k s <<< "$w"
    DOM=$d DISK=$k hmp B "read -P 0x1$k 2M 64k"
    DOM=$d DISK=$k EXPECTED=$tmp/e${s#s}.img guest_writes B "0x5$k 1M 64k" "0x6$k 9M 4k"
done
for w in "${DISKS[@]}"; do
    read -r d k s <<< "$w"
    [ "$(status_of_ctl "$(dir_of "$d" "$k")/control.sock" state)" = relocating ] ||
        fail "$d $k: the guest's write did not start the relocation"
done
for w in "${DISKS[@]}"; do
    read -r d k s <<< "$w"
    "$RELOCATECTL" resume "$(dir_of "$d" "$k")/control.sock" || fail "resume $d $k"
done

# Each relocation sees the seven copying, and takes at most a seventh.
declare -A seen=()
for t in $(seq 200); do
    for w in "${DISKS[@]}"; do
        read -r d k s <<< "$w"
        [ -n "${seen[$s]:-}" ] && continue
        st=$("$RELOCATECTL" status --json "$(dir_of "$d" "$k")/control.sock") || continue
        read -r copying share state <<< "$($PY -c '
import json, sys
j = json.load(sys.stdin)
print(j["group_copying"], j["group_share"], j["state"])' <<< "$st")"
        [ "$state" = relocating ] ||
            fail "$d $k: $state before all seven were seen copying: $st"
        if [ "$copying" -eq $N ]; then
            [ "$share" -le $((LIMIT / N)) ] ||
                fail "$d $k: a share of $share B/s with $N copying, over a seventh of $LIMIT"
            seen[$s]=$share
        fi
    done
    [ "${#seen[@]}" -eq $N ] && break
    sleep 0.1
done
[ "${#seen[@]}" -eq $N ] ||
    fail "only ${!seen[*]} saw all seven copying"
pass "the seven copies run together, each with a share of at most $((LIMIT / N)) B/s: ${seen[*]} ($(elapsed))"

for w in "${DISKS[@]}"; do
    read -r d k s <<< "$w"
    D=$(dir_of "$d" "$k")
    "$RELOCATECTL" wait --timeout 300 "$D/control.sock" ||
        fail "$d $k did not complete: $("$RELOCATECTL" status "$D/control.sock" 2>&1)"
    [ "$(status_of_ctl "$D/control.sock" group_share)" -eq 0 ] ||
        fail "$d $k: completed, yet holds a share of the budget"
done
pass "all seven relocations completed, and hold no share of the budget ($(elapsed))"

# ---- byte-exact ----
srvpids=()
for w in "${DISKS[@]}"; do
    read -r d k s <<< "$w"
    srvpids+=("$(pid_in "$(dir_of "$d" "$k")")")
done
for d in "${DOMS[@]}"; do
    timeout 120 virsh -c "$UB" destroy "$d" >/dev/null || fail "destroy $d on B"
done
for p in "${srvpids[@]}"; do
    for i in $(seq 200); do running "$p" || break; sleep 0.1; done
    running "$p" && fail "a relocation server ($p) still runs after destroy"
done
for w in "${DISKS[@]}"; do
    read -r d k s <<< "$w"
    cmp "$(dir_of "$d" "$k")/disk.img" "$tmp/e${s#s}.img" ||
        fail "$d vd${DISK_LETTERS:$k:1}: the relocated file differs from the guest's disk"
    cmp "$tmp/$s.img" "$tmp/a${s#s}.img" ||
        fail "$d vd${DISK_LETTERS:$k:1}: the old host's image changed after the guest left A"
done
pass "destroy stopped the seven servers; every disk on B is byte-exact, and the old host's images are as the guests left A ($(elapsed))"
