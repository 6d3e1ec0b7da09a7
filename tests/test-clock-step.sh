#!/usr/bin/env bash
# A step of the wall clock never stops the copy: every wait of the
# filter is on the monotonic clock.  The shim (tests/clock-step.c)
# makes CLOCK_REALTIME read an hour late once $tmp/stepped exists; a
# wait whose deadline was computed on it would last an hour.
source "$(dirname "$0")/functions.sh"

random_image "$tmp/src.img" 16
start_source src "$tmp/src.img"
use_shim clock-step.c
shim_vars=("CLOCK_STEP_FILE=$tmp/stepped")
# A rate-limited copy waits between requests: 16 MiB at 2 MiB/s.
start_dest dst src "$tmp/dst.img" relocate-start=immediate relocate-rate=2M
wait_for field_at_least dst present_bytes 1 || fail "the copy did not start"
touch "$tmp/stepped"
before=$(status_field dst present_bytes)
ctl wait dst --timeout 120 ||
    fail "the copy stopped after the wall clock stepped (present $(status_field dst present_bytes) of 16 MiB, $before at the step)"
cmp "$tmp/dst.img" "$tmp/src.img" || fail "the local file differs from the source"
pass "the wall clock stepped an hour with $before bytes present: the copy went on and completed byte-exact"
