#!/usr/bin/env bash
# A slow link completes: 1 MiB/s between the filter and the source
# (tests/relay.py --rate), relocate-timeout=10, 8 requests of 4M (32
# MiB in flight: a request takes longer than the timeout there).  Data arrives
# steadily, so no connection is abandoned for slowness: the relocation
# completes byte-exact, a guest read of absent data succeeds (slowly),
# background requests shrink to what the link carries, and the
# abandoned count never passes its bound (relocate-connections + 8).
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 16
start_source src "$tmp/src.img"
start_relay wan "unix:$tmp/src.sock" --rate 1048576
rm -f "$tmp/dst.ctl"
start_server dst --filter="$FILTER" nbd hostname=127.0.0.1 port="$(cat "$tmp/wan.port")" \
    relocate-file="$tmp/dst.img" relocate-control="$tmp/dst.ctl" \
    relocate-start=immediate relocate-timeout=10 \
    relocate-request-size=4M relocate-workers=8
wait_for test -S "$tmp/dst.ctl" || fail "dst: no control socket"

# The most connections abandoned at once, and the request size,
# sampled every 0.2 s.
(
    while :; do
        status_field dst connections_abandoned >> "$tmp/abandoned.samples" 2>/dev/null || :
        status_field dst request_bytes >> "$tmp/request.samples" 2>/dev/null || :
        sleep 0.2
    done
) &
clients+=($!)

# A guest's read of the last 64K (absent: the copy starts at 0).
$PY - "$(uri dst)" "$tmp/src.img" <<'PYEOF' || fail "a guest read of absent data failed on the slow link"
import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
data = open(sys.argv[2], "rb").read()
off = len(data) - 65536
t = time.monotonic()
got = h.pread(65536, off)
assert got == data[off:], "wrong data"
print("guest read of absent data: %.1f s" % (time.monotonic() - t))
PYEOF

ctl wait dst --timeout 240 || fail "the relocation did not complete: $("$RELOCATECTL" status "$tmp/dst.ctl")"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "the local file differs from the source"
# Requests sized to the link: a 4M request takes longer than the
# timeout at 1 MiB/s shared by the connections; a quarter of the
# timeout carries far less (at most half of it, here).
req=$(sort -n "$tmp/request.samples" | sed -n 1p)
[ "${req:-4194304}" -le $((2 << 20)) ] || fail "background requests never below $req bytes on a 1 MiB/s link"
most=$(sort -n "$tmp/abandoned.samples" | tail -n 1)
[ "${most:-0}" -le $((4 + 8)) ] || fail "$most connections abandoned at once (bound 12)"
pass "1 MiB/s link, relocate-timeout=10: complete byte-exact, the guest's read succeeded, requests of $req bytes, at most ${most:-0} connections abandoned"
