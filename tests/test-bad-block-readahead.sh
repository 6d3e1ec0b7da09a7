#!/usr/bin/env bash
# Readahead never turns a good block's read into EIO: a sequential
# reader of the blocks before a bad one (block 80, its 4K rejected by
# the source: nbdkit's ddrescue filter) gets every one of them, though
# readahead extends its fetches over the bad block; only a read that
# covers the bad block fails.  Demand fetches only
# (relocate-background=false), then again with a slow background copy.
source "$(dirname "$0")/functions.sh"

bs=65536
size=$((16 << 20))
bad=$((0x501000))               # inside block 80
random_image "$tmp/src.img" 16
bad_range_map "$tmp/src.map" $size $bad 4096
start_source src "$tmp/src.img" --filter=ddrescue ddrescue-mapfile="$tmp/src.map"

# seq_reads URI: blocks 0-79 one by one, each byte-exact, then block 80
# fails with EIO.
seq_reads ()
{
    $PY - "$1" "$tmp/src.img" $bs $((bad / bs)) <<'PYEOF'
import errno, sys, nbd
uri, img, bs, bad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = open(img, "rb").read()
h = nbd.NBD(); h.connect_uri(uri)
for b in range(bad):
    try:
        got = h.pread(bs, b * bs)
    except nbd.Error as e:
        sys.exit("FAIL: read of block %d (good; the bad one is %d) failed: %s"
                 % (b, bad, e.string))
    if got != data[b * bs:(b + 1) * bs]:
        sys.exit("FAIL: block %d read wrong data" % b)
try:
    h.pread(bs, bad * bs)
    sys.exit("FAIL: the bad block %d read fine" % bad)
except nbd.Error as e:
    if e.errnum != errno.EIO:
        sys.exit("FAIL: the bad block failed with %d, not EIO" % e.errnum)
PYEOF
}

# (With the background copy, slow: the reads, not the copy, fetch.)
for bg in "false" "true relocate-rate=256K"; do
    rm -f "$tmp/dst.img" "$tmp/dst.img.bitmap"*
    start_dest dst src "$tmp/dst.img" relocate-start=immediate \
        relocate-background=$bg relocate-timeout=5
    seq_reads "$(uri dst)" || fail "relocate-background=$bg: a sequential read up to the bad block"
    stop_server dst
    pass "relocate-background=$bg: blocks 0-79 read in order, byte-exact; block 80 fails with EIO"
done
