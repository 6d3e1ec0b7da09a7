#!/usr/bin/env bash
# Reads of absent data, at any offset and of any length, return the
# source's bytes: a read served straight from what its own fetch
# brought (without reading the local file) as much as one that meets
# present blocks, blocks another read is fetching, or readahead.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 24
start_source src "$tmp/src.img" --filter=delay rdelay=5ms
start_dest dst src "$tmp/dst.img" relocate-start=immediate \
    relocate-background=false
$NBDIO reads "$(uri dst)" "$tmp/src.img" 1 300 4 ||
    fail "a read of absent data returned other bytes than the source's"
fetched=$(status_field dst fetched_demand_bytes)
[ "$fetched" -gt $((8 << 20)) ] ||
    fail "only $fetched bytes were fetched on demand: the reads did not touch absent data"
$NBDIO compare "$(uri dst)" "$tmp/src.img" || fail "the export differs from the source"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "the local file differs from the source"
pass "300 reads of absent data from 4 connections, then the whole export, equal the source ($fetched bytes fetched on demand)"
