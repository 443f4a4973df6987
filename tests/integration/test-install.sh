#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# `meson install` into a DESTDIR, with meson's default prefix (/usr/local) and with --prefix=/usr:
# the installed files are exactly the expected set, the files systemd, dbus-daemon and polkitd
# read land where they read them whatever the prefix, the unit runs the binary that was
# installed, the binary and its man pages agree on where the configuration lives, the stream
# socket opens no port by being installed, and systemd-analyze verify and security (≤ 2.0)
# accept the installed units. Builds the daemon and the client twice (-Dtests=false), about a
# minute each here.
#
# Environment: SOURCE_ROOT (meson sets it; default: this checkout).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
SOURCE_ROOT=${SOURCE_ROOT:-$(cd "$here/../.." && pwd)}

for tool in meson ninja systemd-analyze; do
        if ! command -v $tool >/dev/null; then
                echo "SKIP: $tool is not installed"
                exit 77
        fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vfm-test-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

failed=0
fail() { echo "FAIL: $*"; failed=1; }
pass() { echo "ok: $*"; }

# Where the system's daemons read, as the build finds them (units/meson.build, policy/meson.build).
unitdir=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null)
unitdir=${unitdir:-/usr/lib/systemd/system}
busservicedir=$(pkg-config --variable=system_bus_services_dir dbus-1 2>/dev/null)
busservicedir=${busservicedir:-/usr/share/dbus-1/system-services}
busdatadir=$(pkg-config --variable=datadir dbus-1 2>/dev/null)
buspolicydir=${busdatadir:-/usr/share}/dbus-1/system.d
polkitdir=$(pkg-config --variable=policydir polkit-gobject-1 2>/dev/null)
polkitdir=${polkitdir:-/usr/share/polkit-1/actions}

check_prefix() {
        local prefix=$1 name=$2 sysconfdir=$3
        local build=$tmp/build-$name dest=$tmp/dest-$name
        local args=(-Dtests=false)
        [ "$prefix" = default ] || args+=(--prefix="$prefix")
        [ "$prefix" = default ] && prefix=/usr/local

        if ! meson setup "$build" "$SOURCE_ROOT" "${args[@]}" >"$tmp/setup-$name.log" 2>&1 ||
           ! ninja -C "$build" >"$tmp/build-$name.log" 2>&1 ||
           ! meson install -C "$build" --destdir "$dest" --quiet >"$tmp/install-$name.log" 2>&1; then
                cat "$tmp"/*-"$name".log
                fail "$name: configure, build or install failed"
                return
        fi

        (cd "$dest" && find . \( -type f -o -type l \) | sed 's|^\.||' | sort) >"$tmp/got-$name"
        sort >"$tmp/want-$name" <<LIST
$unitdir/vfiomigd-stream.socket
$unitdir/vfiomigd.service
$busservicedir/org.vfiomig1.service
$buspolicydir/org.vfiomig1.conf
$polkitdir/org.vfiomig1.policy
$prefix/bin/vfiomigctl
$prefix/sbin/vfiomigd
$prefix/share/dbus-1/interfaces/org.vfiomig1.AddressSpace.xml
$prefix/share/dbus-1/interfaces/org.vfiomig1.Device.xml
$prefix/share/dbus-1/interfaces/org.vfiomig1.Manager.xml
$prefix/share/dbus-1/interfaces/org.vfiomig1.Migration.xml
$prefix/share/dbus-1/interfaces/org.vfiomig1.SimDevice.xml
$prefix/share/bash-completion/completions/vfiomigctl
$prefix/share/doc/vfiomigd/vfiomigd.conf.example
$prefix/share/man/man1/vfiomigctl.1
$prefix/share/man/man5/org.vfiomig1.5
$prefix/share/man/man5/vfiomigd.conf.5
$prefix/share/man/man8/vfiomigd.8
LIST
        if diff -u "$tmp/want-$name" "$tmp/got-$name"; then
                pass "$name: the installed files are the expected $(wc -l <"$tmp/got-$name")"
        else
                fail "$name: the installed files differ from the expected set (- expected, + installed)"
        fi

        local unit=$dest$unitdir/vfiomigd.service socket=$dest$unitdir/vfiomigd-stream.socket
        if grep -qx "ExecStart=$prefix/sbin/vfiomigd" "$unit"; then
                pass "$name: the unit runs $prefix/sbin/vfiomigd"
        else
                fail "$name: the unit's ExecStart= is not $prefix/sbin/vfiomigd: $(grep ^ExecStart= "$unit")"
        fi
        if grep -q '^\[Install\]' "$socket"; then
                fail "$name: vfiomigd-stream.socket has an [Install] section: enabling packages would open TCP 7179"
        else
                pass "$name: the stream socket has no [Install] section"
        fi

        local conf=$sysconfdir/vfiomigd/vfiomigd.conf
        if "$dest$prefix/sbin/vfiomigd" --help | grep -qF "(default: $conf)"; then
                pass "$name: the daemon reads $conf"
        else
                fail "$name: the daemon's default configuration is not $conf: $("$dest$prefix/sbin/vfiomigd" --help | grep -e --config)"
        fi
        for page in man5/vfiomigd.conf.5 man8/vfiomigd.8; do
                if grep -qF "$conf" "$dest$prefix/share/man/$page" &&
                   ! grep -E '/etc/(pki/)?vfiomigd' "$dest$prefix/share/man/$page" | grep -qvF "$sysconfdir/"; then
                        pass "$name: ${page#*/} names $conf"
                else
                        fail "$name: ${page#*/} does not name $conf, or names another configuration directory"
                fi
        done
        if grep -qE '^\.TH [^ ]+ [0-9] "[0-9]{4}-[0-9]{2}-[0-9]{2}" "vfiomigd [0-9.]+"' "$dest$prefix/share/man/man8/vfiomigd.8"; then
                pass "$name: the man pages carry a date and the version"
        else
                fail "$name: vfiomigd(8) has no date or version: $(grep '^\.TH' "$dest$prefix/share/man/man8/vfiomigd.8")"
        fi

        # The installed units as systemd sees them, with the installed man pages for Documentation=.
        local out rc
        out=$(MANPATH=$dest$prefix/share/man systemd-analyze verify \
                      --man="$(command -v man >/dev/null && echo yes || echo no)" \
                      "$(sed_exec "$unit" "$dest$prefix/sbin/vfiomigd")" "$socket" 2>&1)
        rc=$?
        if [ $rc -eq 0 ] && [ -z "$out" ]; then
                pass "$name: systemd-analyze verify: clean"
        else
                printf '%s\n' "$out"
                fail "$name: systemd-analyze verify complained (rc=$rc)"
        fi
        out=$(systemd-analyze security --offline=yes --root="$dest" --threshold=20 vfiomigd.service 2>&1)
        rc=$?
        if [ $rc -eq 0 ]; then
                pass "$name: systemd-analyze security: $(printf '%s\n' "$out" | grep -o 'Overall exposure level.*')"
        else
                printf '%s\n' "$out" | tail -3
                fail "$name: systemd-analyze security: exposure above 2.0 (rc=$rc)"
        fi
}

# The unit under its own name in a directory of its own, running the binary installed in the
# DESTDIR (systemd-analyze verify checks that ExecStart= is executable).
sed_exec() {
        local dir=$tmp/verify-$RANDOM
        mkdir -p "$dir"
        sed -E "s|^ExecStart=[^ ]*|ExecStart=$2|" "$1" >"$dir/vfiomigd.service"
        echo "$dir/vfiomigd.service"
}

check_prefix default default /usr/local/etc
check_prefix /usr usr /etc
exit $failed
