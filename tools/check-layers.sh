#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Lower layers never include upper ones (DESIGN §3). Every quoted include in daemon/ and
# client/ is resolved to the directory that holds it and checked against this order.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A rank=([util]=0 [vfio]=1 [backend]=2 [stream]=3 [core]=4 [bus]=5 [main]=6 [client]=6)
declare -A where=()
for f in daemon/*/*.h; do
        dir=${f#daemon/}; dir=${dir%%/*}
        where[$(basename "$f")]=$dir
done

bad=0
for f in daemon/*/*.[ch] daemon/*.c client/*.c; do
        [ -e "$f" ] || continue
        case $f in
                daemon/*/*) layer=${f#daemon/}; layer=${layer%%/*} ;;
                daemon/*) layer=main ;;
                client/*) layer=client ;;
        esac
        while read -r header; do
                target=${where[$header]:-}
                [ -n "$target" ] || continue # proto/, config.h and system headers are open to all
                if [ "$layer" = client ] && [ "$target" != util ]; then
                        echo "$f: the client includes daemon/$target/$header (only util/ and proto/ are shared)"
                        bad=1
                elif [ "${rank[$target]}" -gt "${rank[$layer]}" ]; then
                        echo "$f: layer '$layer' includes '$header' from the higher layer '$target'"
                        bad=1
                fi
        done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f")
done
[ $bad -eq 0 ] && echo "layers: ok"
exit $bad
