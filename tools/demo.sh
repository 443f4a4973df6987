#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The Step 2 demo: vfiomigd driving simulated devices through the VFIO migration state machine,
# operated with vfiomigctl over D-Bus. On a fresh Debian 12 machine it installs what is missing
# (tools/setup.sh, which uses sudo when not run as root), builds, starts a private D-Bus system
# bus with the project's bus policy plus vfiomigd with two simulated devices, walks them through a
# migration-shaped sequence, and stops everything it started again. Nothing is installed into the
# system and the host's own system bus is never touched.
#
# Run as root, or as a normal user: then the bus, the daemon and the client all run as you
# (vfiomigd lets its own user make changes without asking polkit).
#
# Exit status: 0 when every step behaved as shown.
set -euo pipefail

cd "$(dirname "$0")/.."
TOP=$PWD
BUILD=${BUILD:-$TOP/build}

bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
say() { printf '%s\n' "$*"; }

# --------------------------------------------------------------------------------------------
# Phase 1: packages and build.

{
        bold "== vfiomigd demo =="
        say
        bold "[1/4] Packages"
        tools/setup.sh
        say
        bold "[2/4] Build"
        if [ ! -d "$BUILD/meson-private" ]; then
                meson setup "$BUILD" >/dev/null
        fi
        ninja -C "$BUILD" >/dev/null
        say "built $BUILD/daemon/vfiomigd and $BUILD/client/vfiomigctl"
        say

}

# --------------------------------------------------------------------------------------------
# Phase 2: a private bus, the daemon, the walk-through.

DAEMON=$BUILD/daemon/vfiomigd
CLI=$BUILD/client/vfiomigctl
for f in "$DAEMON" "$CLI"; do
        [ -x "$f" ] || { say "demo: $f is missing; did the build fail?" >&2; exit 1; }
done
command -v dbus-daemon >/dev/null || { say "demo: dbus-daemon is missing (tools/setup.sh installs it)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vfiomig-demo.XXXXXX")
BUS_PID=
DAEMON_PID=

# Waits until a process that is not our child (the forked dbus-daemon) is gone; a zombie counts
# as gone, since init may reap it late.
wait_gone() {
        local pid=$1 i state
        for i in $(seq 100); do
                [ -r "/proc/$pid/stat" ] || return 0
                state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 0
                [ "$state" = Z ] && return 0
                sleep 0.05
        done
        return 1
}

cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
                kill -TERM "$DAEMON_PID" 2>/dev/null || true
                wait "$DAEMON_PID" 2>/dev/null || true
        fi
        if [ -n "$BUS_PID" ]; then
                kill -TERM "$BUS_PID" 2>/dev/null || true
                wait_gone "$BUS_PID" || kill -KILL "$BUS_PID" 2>/dev/null || true
        fi
        if [ $rc -ne 0 ] && [ -s "$WORK/vfiomigd.log" ]; then
                say "--- the last lines vfiomigd logged ($WORK/vfiomigd.log) ---" >&2
                tail -n 20 "$WORK/vfiomigd.log" >&2
        fi
        rm -rf "$WORK"
        exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bold "[3/4] A private system bus and vfiomigd"

# The bus: the stock system-bus policy (everyone may connect, nobody may own names or call
# methods unless a policy file allows it), plus the project's policy/org.vfiomig1.conf.
mkdir -p "$WORK/system.d"
cp policy/org.vfiomig1.conf "$WORK/system.d/"
cat >"$WORK/system.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path=$WORK/system_bus_socket</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <includedir>$WORK/system.d</includedir>
</busconfig>
EOF
# --print-address=1: the optional fd argument would otherwise eat the next word.
{ read -r ADDRESS; read -r BUS_PID; } < <(dbus-daemon --config-file="$WORK/system.conf" --fork \
        --print-address=1 --print-pid=1)
ADDRESS=unix:path=$WORK/system_bus_socket
say "bus:    $ADDRESS (dbus-daemon pid $BUS_PID)"

# The daemon: simulated devices allowed, two of them attached from its configuration file.
cat >"$WORK/vfiomigd.conf" <<'EOF'
{
  "allow-simulated": true,
  "devices": [
    { "address": "sim:src", "options": { "state-size": 4194304, "precopy-size": 1048576 } },
    { "address": "sim:dst", "options": { "state-size": 4194304, "precopy-size": 1048576 } }
  ]
}
EOF
DBUS_SYSTEM_BUS_ADDRESS=$ADDRESS "$DAEMON" --config="$WORK/vfiomigd.conf" --log-target=stderr \
        >"$WORK/vfiomigd.log" 2>&1 &
DAEMON_PID=$!
for i in $(seq 200); do
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
                say "demo: vfiomigd exited during start-up:" >&2
                cat "$WORK/vfiomigd.log" >&2
                DAEMON_PID=
                exit 1
        fi
        "$CLI" --address="$ADDRESS" -q status 2>/dev/null && break
        sleep 0.05
done
"$CLI" --address="$ADDRESS" -q status
say "daemon: $DAEMON --config=$WORK/vfiomigd.conf (pid $DAEMON_PID)"
say "        (running as $(id -un); no polkit on this bus, so only root and the daemon's own user may change things)"
say

bold "[4/4] A migration, step by step"
say "Every command below is vfiomigctl --address=$ADDRESS ..."
say

step() {
        say
        bold "# $*"
}
# Runs vfiomigctl and shows it; the demo fails if the command does.
ctl() {
        say "\$ vfiomigctl $*"
        "$CLI" --address="$ADDRESS" "$@"
}
# Runs a vfiomigctl command that vfiomigd must refuse, and shows the refusal.
refused() {
        local rc=0
        say "\$ vfiomigctl $*"
        "$CLI" --address="$ADDRESS" "$@" 2>&1 || rc=$?
        if [ $rc -ne 1 ]; then
                say "demo: expected vfiomigd to refuse this (exit status 1), got exit status $rc" >&2
                exit 1
        fi
        say "(refused, exit status $rc)"
}
# Checks a device's state without showing the check.
expect_state() {
        local got
        got=$("$CLI" --address="$ADDRESS" --json=short status "$1" | sed -n 's/.*"state":"\([^"]*\)".*/\1/p')
        if [ "$got" != "$2" ]; then
                say "demo: $1 is in state '$got', expected '$2'" >&2
                exit 1
        fi
}

step "The daemon and the two simulated devices from its configuration file"
ctl status

step "The source device: its migration capabilities and the size of its state"
ctl status sim_src

step "Pre-copy: the guest keeps running while the device offers its state"
ctl set-state sim_src pre-copy
ctl precopy-info sim_src
expect_state sim_src pre-copy

step "Switch-over: the device stops; what is left to send is the stop-copy size"
ctl set-state sim_src stop-copy
ctl status sim_src | grep -E '^(State|StopCopySize):'
expect_state sim_src stop-copy

step "An invalid request: a stopped device cannot go back to pre-copy. Nothing changes."
refused set-state sim_src pre-copy
expect_state sim_src stop-copy

step "The destination device: stop, then resuming, ready to load the state"
ctl set-state sim_dst stop
ctl set-state sim_dst resuming
expect_state sim_dst resuming

step "No data reaches it in this demo, and the device validates what it loaded: leaving RESUMING is refused"
refused set-state sim_dst running
expect_state sim_dst resuming
ctl reset sim_dst
expect_state sim_dst running

step "The source goes back to running (as after a cancelled migration)"
ctl set-state sim_src stop
ctl set-state sim_src running
expect_state sim_src running

step "A group of devices moves together, in P2P-safe order (all quiesced before any stops)"
ctl set-states stop sim_src sim_dst
ctl set-states running sim_src sim_dst

step "A device without P2P support cannot be part of a group move, unless forced"
ctl attach sim:legacy --option flags=stop-copy --option state-size=1M --option precopy-size=0
refused set-states stop sim_src sim_legacy
expect_state sim_src running
ctl set-states stop sim_src sim_legacy --force-without-p2p
ctl set-states running sim_src sim_legacy --force-without-p2p
ctl detach sim_legacy

step "Where everything ended"
ctl list

say
bold "Stopping vfiomigd (SIGTERM) and the private bus"
kill -TERM "$DAEMON_PID"
rc=0
wait "$DAEMON_PID" || rc=$?
DAEMON_PID=
if [ $rc -ne 0 ]; then
        say "demo: vfiomigd exited with status $rc" >&2
        exit 1
fi
say "vfiomigd exited cleanly (status 0)."
bold "Demo complete."
