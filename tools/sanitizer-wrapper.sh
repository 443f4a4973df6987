#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Runs one test under ASan/UBSan and fails it on any sanitizer report. Criterion runs every
# test in a worker process and counts a worker that dies in its exit path (where LeakSanitizer
# reports) as passing with only a warning, so the report itself must fail the test.
set -uo pipefail

log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" >"$log" 2>&1
rc=$?
cat "$log"
if grep -qE "ERROR: (AddressSanitizer|LeakSanitizer)|SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)|runtime error:" "$log"; then
        echo "sanitizer-wrapper: the sanitizers reported errors above" >&2
        exit 1
fi
exit $rc
