#!/usr/bin/env bash
# In a rate group a relocation's background copy has at most 16 MiB in
# flight, in requests of 2M at most, even with the whole budget to
# itself: a host moving many disks at once gives each that much memory
# for its data.  Its 16 workers could have 32 MiB in flight, and a
# relocation outside any group, from the same source, has (8 workers of
# 4M): the source is slow enough here to fill either window.  Both
# complete byte-exact.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 64
# Every read takes 100 ms: the workers' requests overlap.
start_source src "$tmp/src.img" --filter=delay rdelay=100ms
start_dest grouped src "$tmp/grouped.img" relocate-start=immediate \
    relocate-workers=16 \
    relocate-rate-group="$tmp/group" relocate-rate-group-limit=1G
start_dest alone src "$tmp/alone.img" relocate-start=immediate

for d in grouped alone; do
    ctl wait $d --timeout 120 ||
        fail "$d did not complete: $("$RELOCATECTL" status "$tmp/$d.ctl")"
    cmp "$tmp/$d.img" "$tmp/src.img" || fail "$d: the local file differs from the source"
done
grouped=$(status_field grouped most_in_flight_bytes)
alone=$(status_field alone most_in_flight_bytes)
[ "$alone" -gt $((16 << 20)) ] ||
    fail "outside a group only $alone bytes were ever in flight: the source does not fill the window"
[ "$grouped" -le $((16 << 20)) ] ||
    fail "in a rate group $grouped bytes were in flight at once (bound 16 MiB)"
pass "at most $grouped bytes in flight in a rate group, $alone outside one; both complete byte-exact"
