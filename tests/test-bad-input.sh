#!/usr/bin/env bash
# Acceptance 6: bad input fails at start-up with one clear line naming
# the parameter or file, and changes no file.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 4
start_source src "$tmp/src.img"

# A finished relocation of src, to take a bitmap from.
mkdir "$tmp/a"
start_dest good src "$tmp/a/disk.img" relocate-start=immediate
ctl wait good --timeout 60 || fail "setup relocation did not complete"
stop_server good

# A second source with another export and size.
random_image "$tmp/other.img" 8
start_source other "$tmp/other.img"

# expect_refusal MESSAGE PARAMS...: nbdkit must exit non-zero, print
# MESSAGE, and leave every file under $tmp/a as it was.
expect_refusal ()
{
    local msg=$1; shift
    local before after out
    before=$(cd "$tmp/a" && find . -exec ls -ld --time-style=+%s.%N {} + | sort; \
             find . -type f -exec sha256sum {} + | sort)
    rm -f "$tmp/bad.sock"
    if out=$(timeout 60 "${NBDKIT[@]}" -f -U "$tmp/bad.sock" --filter="$FILTER" "$@" 2>&1); then
        fail "nbdkit started with: $*"
    fi
    grep -qF -- "$msg" <<<"$out" || fail "expected '$msg', got: $out"
    after=$(cd "$tmp/a" && find . -exec ls -ld --time-style=+%s.%N {} + | sort; \
            find . -type f -exec sha256sum {} + | sort)
    [ "$before" = "$after" ] || fail "files changed by: $*"
    pass "refused: $(grep -F -- "$msg" <<<"$out" | head -n1)"
}

src=socket=$tmp/src.sock
expect_refusal "relocate-file parameter is required" nbd "$src"
expect_refusal "relocate-block-size=100000: must be a power of 2" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-block-size=100000
expect_refusal "relocate-block-size=2K: must be a power of 2 between 4K and 32M" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-block-size=2K
expect_refusal "relocate-start=later: must be immediate, on-write or manual" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-start=later
expect_refusal "relocate-request-size=64M: must be between 4096 and 33554432 bytes" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-request-size=64M
expect_refusal "relocate-workers=0: must be between 1 and 64" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-workers=0
expect_refusal "relocate-pace=1: must be 0 (off) or a factor between 1.1 and 100" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-pace=1
expect_refusal "relocate-pace=fast: must be 0 (off) or a factor" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-pace=fast
expect_refusal "relocate-wrokers: unknown parameter" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-wrokers=4

# A bitmap from another relocation (another source).
cp "$tmp/src.img" "$tmp/a/copy.img"
expect_refusal "belongs to a relocation from" \
    nbd socket="$tmp/other.sock" relocate-file="$tmp/a/copy.img" \
    relocate-bitmap="$tmp/a/disk.img.bitmap"
# A bitmap for an image of another size.
head -c $((8*1024*1024)) /dev/urandom > "$tmp/a/big.img"
expect_refusal "is for an image of 4194304 bytes" \
    nbd "$src" relocate-file="$tmp/a/big.img" relocate-bitmap="$tmp/a/disk.img.bitmap"
# A bitmap with another block size than asked for.
expect_refusal "has block size 65536, but relocate-block-size=1048576 was given" \
    nbd "$src" relocate-file="$tmp/a/disk.img" relocate-block-size=1M

# Truncated and corrupt bitmaps.
head -c 4100 "$tmp/a/disk.img.bitmap" > "$tmp/a/trunc.bitmap"
expect_refusal "trunc.bitmap: truncated" \
    nbd "$src" relocate-file="$tmp/a/disk.img" relocate-bitmap="$tmp/a/trunc.bitmap"
head -c 100 "$tmp/a/disk.img.bitmap" > "$tmp/a/short.bitmap"
expect_refusal "short.bitmap: truncated" \
    nbd "$src" relocate-file="$tmp/a/disk.img" relocate-bitmap="$tmp/a/short.bitmap"
cp "$tmp/a/disk.img.bitmap" "$tmp/a/corrupt.bitmap"
printf '\377' | dd of="$tmp/a/corrupt.bitmap" bs=1 seek=20 conv=notrunc status=none
expect_refusal "corrupt.bitmap: header checksum mismatch (corrupt)" \
    nbd "$src" relocate-file="$tmp/a/disk.img" relocate-bitmap="$tmp/a/corrupt.bitmap"
expect_refusal "not a relocate bitmap" \
    nbd "$src" relocate-file="$tmp/a/disk.img" relocate-bitmap="$tmp/src.img"

# A bitmap whose local file is gone.
expect_refusal "relocate-file $tmp/a/gone.img is missing, but its bitmap" \
    nbd "$src" relocate-file="$tmp/a/gone.img" relocate-bitmap="$tmp/a/disk.img.bitmap"

# An existing disk without a bitmap: never overwritten.
expect_refusal "exists and is not empty, but has no bitmap" \
    nbd "$src" relocate-file="$tmp/a/copy.img"

# A resumed relocation whose source now has another size.
start_dest standby src "$tmp/a/standby.img" relocate-start=manual
stop_server standby
stop_server src
start_source src "$tmp/other.img"          # 8 MiB, at the same socket
expect_refusal "the source has size 8388608, but $tmp/a/standby.img.bitmap holds 4194304 bytes" \
    nbd "$src" relocate-file="$tmp/a/standby.img"

# An unusable control socket path: refused before any file is created.
expect_refusal "relocate-control $tmp/a/nodir/ctl.sock: directory $tmp/a/nodir is not writable" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-control="$tmp/a/nodir/ctl.sock"
expect_refusal "relocate-control $tmp/a/disk.img: exists and is not a socket" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-control="$tmp/a/disk.img"

# A rate group: both parameters or neither; its file must open.
expect_refusal "relocate-rate-group-limit is required with relocate-rate-group" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-rate-group="$tmp/group"
expect_refusal "relocate-rate-group is required with relocate-rate-group-limit" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-rate-group-limit=10M
expect_refusal "relocate-rate-group: $tmp/a/disk.img: not empty and not a rate group file" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-rate-group="$tmp/a/disk.img" \
    relocate-rate-group-limit=10M
expect_refusal "relocate-rate-group: $tmp/a/nodir/group:" \
    nbd "$src" relocate-file="$tmp/a/new.img" relocate-rate-group="$tmp/a/nodir/group" \
    relocate-rate-group-limit=10M

# An unwritable directory: missing, and (as an unprivileged user) read-only.
expect_refusal "is not writable" \
    nbd "$src" relocate-file="$tmp/a/nodir/disk.img"
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
    mkdir -m 0555 "$tmp/a/ro"
    chmod 0755 "$tmp" "$tmp/a"
    chmod 0666 "$tmp/src.sock"
    # The checkout (and so $FILTER) may be in a directory that only its
    # owner can enter (mode 0700 in CI): nobody loads a copy.
    cp "$FILTER" "$tmp/nbdkit-relocate-filter.so"
    chmod 0755 "$tmp/nbdkit-relocate-filter.so"
    before=$(ls -la "$tmp/a/ro")
    if out=$(timeout 60 setpriv --reuid=65534 --regid=65534 --clear-groups \
             "${NBDKIT[@]}" -f -U - --filter="$tmp/nbdkit-relocate-filter.so" nbd "$src" \
             relocate-file="$tmp/a/ro/disk.img" --run true 2>&1); then
        fail "nbdkit started in a read-only directory"
    fi
    grep -qF "is not writable" <<<"$out" || fail "read-only dir: got: $out"
    [ "$before" = "$(ls -la "$tmp/a/ro")" ] || fail "read-only dir changed"
    pass "refused: read-only directory for an unprivileged user"
fi
