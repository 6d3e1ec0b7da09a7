#!/usr/bin/env bash
# Out of memory for a fetch is the filter's own trouble, not a bad
# block at the source: the read fails, nothing is marked failed, and
# once memory is back the same read succeeds without relocatectl
# retry.  The shim fails every new large buffer: a read's data is in
# one, its reply's (upstream.c).  A first read of 1M leaves a buffer of
# a few megabytes in the filter's pool, none of the 32M the next read
# needs.
source "$(dirname "$0")/functions.sh"

if [ -n "${SANITIZER_PRELOAD:-}" ]; then
    echo "SKIP: under AddressSanitizer the buffers are malloc'd, not mapped"
    exit 77
fi
use_shim no-memory.c
random_image "$tmp/src.img" 64
start_source src "$tmp/src.img"
shim_vars=("NO_MEMORY_WHEN=$tmp/no-memory" "MALLOC_MMAP_THRESHOLD_=1073741824")
start_dest dst src "$tmp/dst.img" relocate-start=immediate \
    relocate-background=false relocate-timeout=5

$PY - "$(uri dst)" "$tmp/src.img" <<'PYEOF' || fail "the first read failed"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
src = open(sys.argv[2], "rb").read()
assert h.pread(1 << 20, 0) == src[:1 << 20]
PYEOF

touch "$tmp/no-memory"
$PY - "$(uri dst)" <<'PYEOF' || fail "a read succeeded without memory for it"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
try:
    h.pread(32 << 20, 32 << 20)
    sys.exit("the read succeeded")
except nbd.Error as e:
    print("the read failed: %s" % e.string)
PYEOF
grep -q "no memory for a read of 33554432 bytes" "$tmp/dst.log" ||
    fail "the log does not say that the reply's buffer found no memory"
! grep -q "marked failed" "$tmp/dst.log" ||
    fail "out of memory marked a block failed: $(grep "marked failed" "$tmp/dst.log" | head -1)"

rm "$tmp/no-memory"
$PY - "$(uri dst)" "$tmp/src.img" <<'PYEOF' || fail "the read failed once memory was back"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
src = open(sys.argv[2], "rb").read()
assert h.pread(32 << 20, 32 << 20) == src[32 << 20:]
PYEOF
[ "$(status_field dst failed_blocks)" = 0 ] ||
    fail "blocks marked failed: $(status_field dst failed_blocks)"
pass "out of memory failed the read and marked nothing failed; with memory back the read succeeded"
