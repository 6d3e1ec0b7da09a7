#!/usr/bin/env bash
# Hole skipping: a sparse source ends byte-exact and sparse, and only
# its data crosses the link (block status ahead of the copy).
source "$(dirname "$0")/functions.sh"

size=$((1024 * 1024 * 1024))
truncate -s $size "$tmp/src.img"
# 24 extents of 1 MiB of data, scattered, one unaligned.
for i in $(seq 0 23); do
    off=$(( (i * 41 + 7) % 1000 ))
    head -c 1048576 /dev/urandom |
        dd of="$tmp/src.img" bs=1M seek="$off" conv=notrunc status=none
done
printf 'odd' | dd of="$tmp/src.img" bs=1 seek=$((500 * 1048576 + 12345)) conv=notrunc status=none
data=$(( $(du -B1 "$tmp/src.img" | cut -f1) ))

start_source src "$tmp/src.img" --filter=delay rdelay=5ms
start_dest dst src "$tmp/dst.img" relocate-start=immediate
ctl wait dst --timeout 120 || fail "relocation did not complete"

cmp "$tmp/dst.img" "$tmp/src.img" || fail "local file differs from source"
fetched=$(( $(status_field dst fetched_background_bytes) + $(status_field dst fetched_demand_bytes) ))
skipped=$(status_field dst skipped_zero_bytes)
local_du=$(du -B1 "$tmp/dst.img" | cut -f1)
echo "data $data, fetched $fetched, skipped $skipped, local $local_du bytes on disk"
# Data is fetched in whole 64K blocks: allow one block per extent edge.
[ "$fetched" -le $((data + 50 * 65536)) ] || fail "fetched $fetched bytes for $data of data"
[ "$skipped" -ge $((size - data - 50 * 65536)) ] || fail "only $skipped bytes skipped as zero"
[ "$local_du" -le $((data + 50 * 65536)) ] || fail "local file is not sparse: $local_du bytes"
pass "sparse source: fetched $fetched for $data bytes of data, local file sparse"
