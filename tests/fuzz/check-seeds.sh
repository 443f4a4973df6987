#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The checked-in seeds that fuzz-seeds writes must be what it writes now: a seed the codec no
# longer produces (an old protocol version, a changed option encoding) starts a target blind.
# Usage: check-seeds.sh FUZZ-SEEDS CORPUS-DIR
set -euo pipefail

seeds=$1 corpus=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$seeds" "$tmp"
stale=0
while IFS= read -r -d '' f; do
        rel=${f#"$tmp"/}
        if ! cmp -s "$f" "$corpus/$rel"; then
                echo "stale or missing seed: tests/fuzz/corpus/$rel"
                stale=1
        fi
done < <(find "$tmp" -type f -print0)
if [ $stale -ne 0 ]; then
        echo "regenerate them: build-fuzz/tests/fuzz/fuzz-seeds tests/fuzz/corpus"
        exit 1
fi
echo "every seed fuzz-seeds writes is checked in as written"
