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

configure build -Dwerror=true
ninja -C build
configure build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build-asan
# The libFuzzer targets need clang; the fuzz build instruments everything it compiles (see
# tests/fuzz/meson.build), and a short run of each target keeps them from rotting.
CC=clang configure build-fuzz -Dwerror=true -Dfuzz=true -Db_lundef=false
ninja -C build-fuzz

status=0
meson test -C build --print-errorlogs --num-processes 2 || status=1
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 \
                --wrapper "$top/tools/sanitizer-wrapper.sh" || status=1
meson test -C build-fuzz --suite fuzz --print-errorlogs || status=1
# How far each fuzz target saw in its short run: libFuzzer's last status line (edges, features)
# and its execution count (-print_final_stats=1), from meson's log of that run.
python3 - "$top/build-fuzz/meson-logs/testlog.json" <<'PY' || true
import json, re, sys
for line in open(sys.argv[1]):
    test = json.loads(line)
    out = (test.get("stdout") or "") + (test.get("stderr") or "")
    if "INFO: Seed:" not in out:
        continue  # not a libFuzzer run (the seed check)
    done = re.findall(r"#\d+\s+DONE\s+cov: (\d+) ft: (\d+)", out)
    execs = re.findall(r"stat::number_of_executed_units: (\d+)", out)
    if done and execs:
        print(f"fuzz: {test['name']}: cov {done[-1][0]} ft {done[-1][1]} execs {execs[-1]} "
              f"in {test['duration']:.0f} s ({test['result']})")
    else:
        print(f"fuzz: {test['name']}: no final stats ({test['result']})")
PY

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
