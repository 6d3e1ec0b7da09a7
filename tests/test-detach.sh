#!/usr/bin/env bash
# Acceptance 5: once relocatectl wait returns the source can go: an
# open client, a new client and a restarted nbdkit over the same files
# all serve the disk with the source gone.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 32
start_source src "$tmp/src.img" --filter=delay rdelay=5ms
start_dest dst src "$tmp/dst.img" relocate-start=immediate

# A client connected during the relocation, kept open across it.
mkfifo "$tmp/cmd"
$PY - "$(uri dst)" "$tmp/src.img" "$tmp/cmd" <<'PYEOF' &
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
open(sys.argv[3]).read()              # wait until the source is gone
data = open(sys.argv[2], "rb").read()
for off in range(0, len(data), 1 << 20):
    assert h.pread(1 << 20, off) == data[off:off + (1 << 20)], off
h.pwrite(b"x" * 4096, 0); h.flush()
h.shutdown()
PYEOF
client=$!

ctl wait dst --timeout 120 || fail "relocation did not complete"
[ "$(status_field dst upstream_connected)" = false ] || fail "still connected upstream"
stop_server src
echo go > "$tmp/cmd"
wait $client || fail "the open client failed after the source was stopped"
pass "open client keeps working after detach"

printf 'x%.0s' $(seq 4096) > "$tmp/x"
head -c 4096 "$tmp/x" > "$tmp/expect.img"
tail -c +4097 "$tmp/src.img" >> "$tmp/expect.img"
$NBDIO compare "$(uri dst)" "$tmp/expect.img" || fail "new client read wrong data"
pass "new client reads the whole disk with the source gone"

# A complete relocation is idle: its threads wake a few times in 3 s
# at most (the control socket's and SIGTERM's once a second), not 20
# times a second each (the filter before this check: ~100).
switches ()
{
    cat /proc/"$(cat "$tmp/dst.pid")"/task/*/status |
        awk '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print n }'
}
s0=$(switches); sleep 3; s1=$(switches)
[ $((s1 - s0)) -le 20 ] || fail "a complete relocation's threads woke $((s1 - s0)) times in 3 s"
pass "a complete relocation is idle ($((s1 - s0)) wake-ups in 3 s)"

stop_server dst
start_dest dst src "$tmp/dst.img"
[ "$(status_field dst state)" = complete ] || fail "restart is not complete"
$NBDIO compare "$(uri dst)" "$tmp/expect.img" || fail "restarted server read wrong data"
! grep -q "cannot connect\|connect: " "$tmp/dst.log" ||
    fail "restarted complete relocation tried to contact the source"
pass "restarted nbdkit serves the complete image without the source"
