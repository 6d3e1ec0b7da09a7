#!/usr/bin/env bash
# A client CACHE of almost 4 GiB (nbdkit allows it) is fetched in
# pieces: every block it marks present holds the source's data.
# (Regression: a single 4 GiB run once wrapped the 32 bit count.)
source "$(dirname "$0")/functions.sh"

start_server src pattern size=5G
start_dest dst src "$tmp/dst.img" relocate-start=immediate \
    relocate-background=false relocate-block-size=4K
$PY - "$(uri dst)" <<'PYEOF'
import struct, sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.cache(0xfffff000, 0)
for off in (0, 1 << 20, 3 << 30, 0xfffff000 - 8):
    got = h.pread(8, off)
    assert got == struct.pack(">Q", off), "offset %d: %r" % (off, got)
h.shutdown()
PYEOF
[ "$(status_field dst present_bytes)" -ge $((0xfffff000)) ] || fail "cache did not make it present"
pass "a 4 GiB cache request fetches the right data"
