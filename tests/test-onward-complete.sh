#!/usr/bin/env bash
# A host relocating from another relocation server (A->B->C: C's
# filter reads from B's) tells it when it is complete: one flush on
# each connection, then it closes them.  Its reads never flush, and a
# C that dies before it is complete sends none; B's reader_flushes
# counts only flushes on connections that never wrote, so a QEMU using
# B's server as its disk (it writes, then flushes) is not counted.  (The libvirt hook's keeper stops B's server
# on it; tests/unit/test_keeper.py.)
source "$(dirname "$0")/functions.sh"

random_image "$tmp/a.img" 8
start_source a "$tmp/a.img"
start_dest b a "$tmp/b.img" relocate-start=immediate
"$RELOCATECTL" wait --timeout 60 "$tmp/b.ctl" >/dev/null || fail "B did not complete"
[ "$(status_field b reader_flushes)" = 0 ] || fail "B counted flushes nobody sent"
$PY - "$(uri b)" <<'PYEOF' || fail "writer"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(h.pread(4096, 0), 0)           # a disk's user: writes, then flushes
h.flush()
h.shutdown()
PYEOF
[ "$(status_field b reader_flushes)" = 0 ] || fail "B counted a flush after a write"
pass "a client that writes and flushes is not counted"

# C relocates from B, slowly, and dies before it is complete.
start_dest c b "$tmp/c.img" relocate-start=immediate relocate-rate=1M \
    relocate-connections=2
wait_for field_at_least c present_bytes 1 || fail "C copies nothing"
stop_server c KILL
[ "$(status_field b reader_flushes)" = 0 ] ||
    fail "B counted a flush from a C that died incomplete"
pass "a next host's reads, and its death, send no flush"

# C again, over its files: it completes and says so.
rm -f "$tmp/c.sock"
start_dest c b "$tmp/c.img" relocate-start=immediate relocate-connections=2
"$RELOCATECTL" wait --timeout 60 "$tmp/c.ctl" >/dev/null || fail "C did not complete"
wait_for field_at_least b reader_flushes 1 ||
    fail "B saw no flush from C's completion: $(status_field b reader_flushes)"
cmp "$tmp/a.img" "$tmp/c.img" || fail "C's copy differs"
pass "C complete: B counted $(status_field b reader_flushes) flush(es), C byte-exact"
