#!/usr/bin/env bash
# The source's block sizes are honoured everywhere, standby pass-through
# included.  A source with a minimum block size of 4K that rejects
# anything unaligned (blocksize-policy, error policy): the filter's
# clients may still read and write at any alignment the filter
# advertises, in standby (pass-through) and while relocating; requests
# to the source are aligned to its minimum and split at its maximum;
# the relocation completes byte-exact; what the filter advertises is
# sane (minimum a power of 2 <= 4096, maximum <= 64 MiB, which nbdkit
# 1.32 accepts).  Then a source with a 64K maximum and a 512 minimum.
#
# The filter may advertise any minimum up to 4096 (it can serve any
# alignment from its local file, so 1 is fine as long as what it sends
# upstream is aligned); the reads and writes below are at odd offsets
# and sizes when it advertises 1, and otherwise at multiples of what it
# advertises that are not multiples of the source's minimum.
source "$(dirname "$0")/functions.sh"

# 16 MiB + 12 KiB: the last relocate block (64K) is partial.
size=$(( (16 << 20) + 3 * 4096 ))
head -c $size /dev/urandom > "$tmp/src.img"
cp "$tmp/src.img" "$tmp/oracle.img"
start_source src "$tmp/src.img" --filter=blocksize-policy \
    blocksize-minimum=4096 blocksize-error-policy=error

# The source really refuses unaligned requests (self-check of the test).
$PY - "$(uri src)" <<'PYEOF'
import errno, sys, nbd
h = nbd.NBD()
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
h.connect_uri(sys.argv[1])
assert h.get_block_size(nbd.SIZE_MINIMUM) == 4096
try:
    h.pread(512, 4096 + 512)
    sys.exit("the source accepted an unaligned read")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
PYEOF
: > "$tmp/src.log"              # from now on, any rejection is the filter's

start_dest dst src "$tmp/dst.img" relocate-start=manual relocate-timeout=5

# no_rejections: nothing the filter sent was refused by the source, nor
# by the nbd plugin's libnbd (which refuses unaligned requests itself).
no_rejections ()
{
    ! grep -q "rejected" "$tmp/src.log" ||
        fail "the source rejected requests: $(grep -m3 rejected "$tmp/src.log")"
    ! grep -q "unaligned\|Invalid argument" "$tmp/dst.log" ||
        fail "requests refused on the way to the source: $(grep -m3 "unaligned\|Invalid argument" "$tmp/dst.log")"
}

# io.py URI ORACLE PHASE: PHASE "standby" reads only; "relocating"
# reads and writes (applied to ORACLE).  Every request must succeed
# within 3 s (relocate-timeout is 5: a request that is refused and
# retried until the timeout does not pass).
cat > "$tmp/io.py" <<'PYEOF'
import errno, sys, time, random, nbd

uri, oracle, phase = sys.argv[1], sys.argv[2], sys.argv[3]
src_min = int(sys.argv[4])
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
mn, pf, mx = (h.get_block_size(k) for k in
              (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM))
print("advertised: minimum %d, preferred %d, maximum %d" % (mn, pf, mx))
pow2 = lambda x: x > 0 and x & (x - 1) == 0
problems = []
if not (pow2(mn) and mn <= 4096):
    problems.append("minimum %d is not a power of 2 <= 4096" % mn)
if not (pow2(pf) and max(mn, 512) <= pf <= 32 << 20):
    problems.append("preferred %d is not a power of 2 in [max(min, 512), 32M]" % pf)
if not (max(pf, 65536) <= mx <= 64 << 20 and mx % mn == 0):
    problems.append("maximum %d is not a multiple of the minimum in "
                    "[max(preferred, 64K), 64 MiB]" % mx)

g = max(mn, 1)
def shape(off, n):
    """Round to what the filter advertises; keep inside the export."""
    off = off // g * g
    n = max(g, (n + g - 1) // g * g)
    if off + n > size:
        off = max(0, size - n) // g * g
        n = size - off
    return off, n

def timed(what, fn):
    t = time.monotonic()
    try:
        r = fn()
    except nbd.Error as e:
        sys.exit("FAIL: %s failed after %.2f s: %s" % (what, time.monotonic() - t, e.string))
    took = time.monotonic() - t
    if took > 3:
        sys.exit("FAIL: %s took %.2f s" % (what, took))
    return r

def rd(off, n):         # split at the advertised maximum
    return b"".join(h.pread(min(mx, n - i), off + i) for i in range(0, n, mx))

def wr(buf, off):
    for i in range(0, len(buf), mx):
        h.pwrite(buf[i:i + mx], off + i)

odd = [(4096 + 512, 512), (513, 512), (1, 1), (65535, 2), (100001, 70001),
       (5 * 4096 + 100, 300000), ((8 << 20) - 256, 512), (size - 700, 700),
       (size - 1, 1), ((16 << 20) - 3, 4096 + 6), (12345, 1 << 20)]
with open(oracle, "r+b") as f:
    def expect(off, n):
        f.seek(off)
        return f.read(n)
    if phase == "relocating":
        rng = random.Random(7)
        for off, n in odd[:6] + [((12 << 20) + 7, 65536), (size - 5000, 5000)]:
            off, n = shape(off + 64, n)         # partly absent blocks
            buf = bytes([rng.randrange(256)]) * n
            timed("write of %d at %d" % (n, off), lambda: wr(buf, off))
            f.seek(off); f.write(buf)
        f.flush()
    for off, n in odd:
        off, n = shape(off, n)
        got = timed("%s read of %d at %d" % (phase, n, off), lambda: rd(off, n))
        if got != expect(off, n):
            sys.exit("FAIL: %s read of %d at %d returned wrong data" % (phase, n, off))
    if phase == "standby":
        # The whole export in chunks of 1 MiB + g: all but the first unaligned.
        step, off = (1 << 20) + g, 0
        while off < size:
            n = min(step, size - off)
            got = timed("read of %d at %d" % (n, off), lambda: rd(off, n))
            if got != expect(off, n):
                sys.exit("FAIL: read of %d at %d returned wrong data" % (n, off))
            off += n
if problems:
    sys.exit("FAIL: advertised block sizes: " + "; ".join(problems))
print("%s: %d-aligned reads%s correct" % (phase, g, " and writes" if phase != "standby" else ""))
PYEOF

[ "$(status_field dst state)" = standby ] || fail "not in standby"
$PY "$tmp/io.py" "$(uri dst)" "$tmp/oracle.img" standby 4096 ||
    fail "standby pass-through through a 4K-minimum source"
[ "$(status_field dst state)" = standby ] || fail "left standby"
pass "standby: unaligned reads pass through a 4K-minimum source"

ctl start dst
$PY "$tmp/io.py" "$(uri dst)" "$tmp/oracle.img" relocating 4096 ||
    fail "unaligned reads and writes while relocating"
pass "relocating: unaligned reads and writes"
ctl wait dst --timeout 60 || fail "did not complete against a 4K-minimum source"
cmp "$tmp/dst.img" "$tmp/oracle.img" || fail "local file differs from the oracle"
$NBDIO compare "$(uri dst)" "$tmp/oracle.img" || fail "export differs from the oracle"
no_rejections
pass "relocation complete byte-exact; the source rejected nothing"

# ---- A source with a 64K maximum and a 512 minimum ----
stop_server dst; stop_server src; servers=()
cp "$tmp/src.img" "$tmp/oracle2.img"
start_source src "$tmp/src.img" --filter=blocksize-policy \
    blocksize-minimum=512 blocksize-maximum=64K blocksize-error-policy=error
start_dest dst src "$tmp/dst2.img" relocate-start=manual relocate-timeout=5
$PY "$tmp/io.py" "$(uri dst)" "$tmp/oracle2.img" standby 512 ||
    fail "standby pass-through through a 64K-maximum source"
ctl start dst
$PY "$tmp/io.py" "$(uri dst)" "$tmp/oracle2.img" relocating 512 ||
    fail "reads and writes while relocating from a 64K-maximum source"
ctl wait dst --timeout 60 || fail "did not complete against a 64K-maximum source"
cmp "$tmp/dst2.img" "$tmp/oracle2.img" || fail "local file differs from the oracle"
no_rejections
pass "64K-maximum, 512-minimum source: pass-through and relocation"
