#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The one test command: installs what is missing, builds, and runs every test suite, then the
# unit suite again under AddressSanitizer and UndefinedBehaviorSanitizer, and the fuzz targets briefly. Run it from a fresh
# clone on Debian 12 as root (or with sudo for the package step). Exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "$0")/.."
top=$PWD

tools/setup.sh

configure() {
        local dir=$1; shift
        if [ -d "$dir/meson-private" ]; then
                meson configure "$dir" "$@" >/dev/null
        else
                meson setup "$dir" "$@"
        fi
}

configure build
ninja -C build
configure build-asan -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build-asan
# The libFuzzer targets need clang; a short run keeps them from rotting.
CC=clang configure build-fuzz -Dfuzz=true -Db_lundef=false
ninja -C build-fuzz tests/fuzz/fuzz-stream

status=0
meson test -C build --print-errorlogs --num-processes 2 || status=1
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 \
                --wrapper "$top/tools/sanitizer-wrapper.sh" || status=1
meson test -C build-fuzz --suite fuzz --print-errorlogs || status=1

# One closing line for the whole run, counted from meson's own logs (with a --wrapper, meson
# names the log after the wrapper: take the newest log of each build directory).
python3 - "$top/build/meson-logs" "$top/build-asan/meson-logs" "$top/build-fuzz/meson-logs" <<'PY'
import json, pathlib, sys
passed = failed = skipped = 0
for directory in sys.argv[1:]:
    logs = sorted(pathlib.Path(directory).glob("testlog*.json"), key=lambda p: p.stat().st_mtime)
    if not logs:
        failed += 1
        print(f"tests: no test log in {directory}")
        continue
    with open(logs[-1]) as f:
        for line in f:
            result = json.loads(line)["result"]
            if result in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif result == "SKIP":
                skipped += 1
            else:
                failed += 1
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
PY
exit $status
