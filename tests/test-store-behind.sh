#!/usr/bin/env bash
# A guest's read of absent data does not wait for the local disk: it
# is answered once its fetch arrives, and the fetched blocks are
# written behind it (busy meanwhile).  Held by a shim, the local disk
# writes nothing: reads are still answered, byte-exact, and nothing is
# present yet; past 16 MiB waiting to be written, readers wait.  Once
# the disk writes again the blocks become present; SIGTERM writes the
# waiting blocks before nbdkit exits, and kill -9 loses only blocks
# that are fetched again.
source "$(dirname "$0")/functions.sh"

MiB=$((1 << 20))
use_shim hold-store.c
random_image "$tmp/src.img" 72
start_source src "$tmp/src.img"
# The shim compares the path the kernel gives for the file.
shim_vars=("HOLD_STORE_PATH=$(realpath "$tmp")/dst.img" "HOLD_STORE_WHILE=$tmp/hold")
touch "$tmp/hold"
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-background=false

# reads OFFSET LEN STRIDE COUNT: COUNT reads of LEN bytes, STRIDE apart
# from OFFSET on (apart: no readahead), each compared with the source;
# how many are done so far in $tmp/done.
cat > "$tmp/reads.py" <<'PYEOF'
import os, sys, nbd
uri, src, off, ln, stride, cnt = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
done = sys.argv[7]
h = nbd.NBD(); h.connect_uri(uri)
with open(src, "rb") as f:
    for i in range(cnt):
        f.seek(off + i * stride)
        if h.pread(ln, off + i * stride) != f.read(ln):
            sys.exit("the read at %d differs from the source" % (off + i * stride))
        with open(done + ".tmp", "w") as d:
            d.write("%d\n" % (i + 1))
        os.rename(done + ".tmp", done)
PYEOF
reads () { $PY "$tmp/reads.py" "$(uri dst)" "$tmp/src.img" "$@" "$tmp/done"; }
# reads_now ...: reads, failing if they are not answered within 20 s.
reads_now () { timeout 20 $PY "$tmp/reads.py" "$(uri dst)" "$tmp/src.img" "$@" "$tmp/done"; }

# Four 4K reads of four blocks, and one of 1M, answered while the local
# disk writes nothing.
reads_now $MiB 4096 $((128 << 10)) 4 &&
    reads_now $((4 * MiB)) $MiB $MiB 1 ||
    fail "a guest's read of absent data waited for the local disk"
[ "$(status_field dst present_bytes)" = 0 ] ||
    fail "blocks are present although the local disk wrote nothing"
pass "reads of absent data answered byte-exact while the local disk is held"

# Past 16 MiB waiting, a reader waits for the disk: 1.25 MiB wait
# already, so 14 of 24 reads of 1M are answered and the 15th waits.
rm -f "$tmp/done"
reads $((8 * MiB)) $MiB $((2 * MiB)) 24 &
reader=$!
clients+=($reader)
done_is () { [ "$(cat "$tmp/done" 2>/dev/null)" = "$1" ]; }
wait_for done_is 14 ||
    fail "$(cat "$tmp/done" 2>/dev/null || echo no) reads answered with the disk held, not 14"
sleep 2
[ "$(cat "$tmp/done")" = 14 ] && running $reader ||
    fail "$(cat "$tmp/done") reads answered with 16 MiB waiting to be written, not 14"
pass "with 16 MiB waiting to be written, the next reader waits for the disk"

rm "$tmp/hold"
wait $reader || fail "the held reader's reads failed"
read_so_far=$((4 * (64 << 10) + 25 * MiB))
wait_for field_is dst present_bytes $read_so_far ||
    fail "present_bytes is $(status_field dst present_bytes), not the $read_so_far bytes read"
pass "once the disk writes, every block read is present"

# SIGTERM with blocks waiting to be written: they are written (and the
# bitmap synced) before nbdkit exits.
touch "$tmp/hold"
reads_now $((60 * MiB)) $MiB $((2 * MiB)) 2 ||
    fail "reads with the disk held again failed"
pid=$(cat "$tmp/dst.pid")
kill -TERM "$pid"
sleep 1
running "$pid" || fail "nbdkit exited with blocks still waiting to be written"
rm "$tmp/hold"
stop_server dst
start_dest dst src "$tmp/dst.img" relocate-background=false
[ "$(status_field dst present_bytes)" = $((read_so_far + 2 * MiB)) ] ||
    fail "after SIGTERM, $(status_field dst present_bytes) bytes are present, not $((read_so_far + 2 * MiB))"
pass "SIGTERM wrote the waiting blocks before exiting"

# kill -9 with blocks waiting: they are absent after the restart and
# read again from the source.
touch "$tmp/hold"
reads_now $((64 * MiB)) $MiB $((2 * MiB)) 2 ||
    fail "reads with the disk held again failed"
stop_server dst KILL
rm "$tmp/hold"
start_dest dst src "$tmp/dst.img" relocate-background=false
[ "$(status_field dst present_bytes)" = $((read_so_far + 2 * MiB)) ] ||
    fail "after kill -9, $(status_field dst present_bytes) bytes are present, not $((read_so_far + 2 * MiB)) (the blocks never written absent)"
nbdcopy "$(uri dst)" null: || fail "reading the whole export failed"
ctl wait dst --timeout 60 || fail "the relocation did not complete: $(ctl status dst)"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "the local file differs from the source"
pass "after kill -9 the blocks never written were fetched again; byte-exact"
