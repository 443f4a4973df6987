#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The main-job demo: a live migration of a group of two devices from one vfiomigd to another,
# their state streamed over TCP while the source devices keep running (pre-copy), then stopped
# and the rest sent (stop-copy), as two hosts would do it.
#
# On a fresh Debian 12 machine it installs what is missing (tools/setup.sh, which uses sudo when
# not run as root), builds, and starts two "hosts", each a private D-Bus system bus with the
# project's bus policy and a vfiomigd with simulated devices of its own:
#
#   as root      two network namespaces joined by a veth pair, source 10.77.0.1/24 and
#                destination 10.77.0.2/24, each daemon in its own namespace;
#   otherwise    both daemons on this host, streaming over loopback.
#
# The source has sim:gpu0 (48 MiB of state, rewriting 2 MiB/s of it while it runs: pre-copy has
# to send those again) and sim:nic0 (16 MiB); the destination has devices of the same names and
# sizes but different content (another seed). vfiomigctl prepares the destination (incoming),
# migrates the group from the source (migrate: a progress bar when standard error is a
# terminal, progress lines otherwise), and the demo shows both jobs, the bytes, the downtime,
# and the StateDigest of every device on both sides: equal digests mean the state arrived
# exactly. The stream runs TLS 1.3 with mutual authentication: the demo makes a throwaway CA
# (tools/make-test-pki.sh, certtool) and a certificate for each host, each daemon lets only the
# other host in (allowed-peers), and the jobs' Transport property and the daemons' logs show it.
# Nothing is installed into the system, the host's own buses are never touched, and
# every process, namespace and temporary directory it created is removed again, on failure too.
# Real VFIO devices are not needed and not used.
#
# Environment: BUILD (build directory, default ./build); VFIOMIG_DEMO_NETNS=0 (loopback even as
# root); VFIOMIG_DEMO_BANDWIDTH (the migration's bandwidth limit in MiB/s, default 32 so that the
# progress can be watched; 0: none); VFIOMIG_DEMO_TIMEOUT (seconds the migration may take before
# it is cancelled, default 120).
#
# Exit status: 0 when the migration completed and every digest matched; 1 otherwise.
set -euo pipefail

cd "$(dirname "$0")/.."
TOP=$PWD
BUILD=${BUILD:-$TOP/build}
TIMEOUT=${VFIOMIG_DEMO_TIMEOUT:-120}
# A link of this many MiB/s: without a limit the first pass over 64 MiB is over in a blink.
BANDWIDTH_MIB=${VFIOMIG_DEMO_BANDWIDTH:-32}

bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
say() { printf '%s\n' "$*"; }
die() { say "demo: $*" >&2; exit 1; }

# --------------------------------------------------------------------------------------------
# Phase 1: packages and build.

bold "== vfiomigd demo: a live migration between two daemons =="
say
bold "[1/5] Packages"
tools/setup.sh
say
bold "[2/5] Build"
if [ ! -d "$BUILD/meson-private" ]; then
        meson setup "$BUILD" >/dev/null
fi
ninja -C "$BUILD" >/dev/null
say "built $BUILD/daemon/vfiomigd and $BUILD/client/vfiomigctl"
say

DAEMON=$BUILD/daemon/vfiomigd
CLI=$BUILD/client/vfiomigctl
for f in "$DAEMON" "$CLI"; do
        [ -x "$f" ] || die "$f is missing; did the build fail?"
done
for tool in dbus-daemon busctl python3; do
        command -v "$tool" >/dev/null || die "$tool is missing (tools/setup.sh installs it)"
done
# vfiomigctl migrate shows the progress; without it (an older build) the demo makes the D-Bus
# calls itself.
HAVE_MIGRATE=0
# (The help goes to a variable first: with pipefail, grep -q closing the pipe early would fail
# the whole test.)
help=$("$CLI" --help 2>/dev/null || true)
if grep -q '^  migrate ' <<<"$help"; then
        HAVE_MIGRATE=1
fi

# --------------------------------------------------------------------------------------------
# Everything the demo starts is recorded here, and cleanup() stops it: daemons by PID (our
# children), the forked dbus-daemons by PID, the network namespaces by name (the veth pair lives
# and dies inside them), then the temporary directory.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vfiomig-demo.XXXXXX")
DAEMON_PIDS=()
BUS_PIDS=()
NAMESPACES=()

# Waits until a process that is not our child (a forked dbus-daemon) is gone; a zombie counts as
# gone, since init may reap it late.
wait_gone() {
        local pid=$1 state
        for _ in $(seq 100); do
                [ -r "/proc/$pid/stat" ] || return 0
                state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 0
                [ "$state" = Z ] && return 0
                sleep 0.05
        done
        return 1
}

cleanup() {
        local rc=$? pid ns log
        trap - EXIT INT TERM
        for pid in "${DAEMON_PIDS[@]}"; do
                if kill -0 "$pid" 2>/dev/null; then
                        kill -TERM "$pid" 2>/dev/null || true
                        wait "$pid" 2>/dev/null || true
                fi
        done
        for pid in "${BUS_PIDS[@]}"; do
                kill -TERM "$pid" 2>/dev/null || true
                wait_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
        done
        for ns in "${NAMESPACES[@]}"; do
                ip netns delete "$ns" 2>/dev/null || say "demo: could not delete network namespace $ns" >&2
        done
        if [ $rc -ne 0 ]; then
                for log in "$WORK"/*/vfiomigd.log; do
                        [ -s "$log" ] || continue
                        say "--- the last lines the $(basename "$(dirname "$log")") vfiomigd logged ---" >&2
                        tail -n 15 "$log" >&2
                done
        fi
        rm -rf "$WORK"
        exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------------------------------------
# Phase 2: two hosts.

bold "[3/5] Two hosts"
NETNS=0
if [ "$(id -u)" -eq 0 ] && [ "${VFIOMIG_DEMO_NETNS:-1}" != 0 ]; then
        command -v ip >/dev/null || die "ip is missing (iproute2; tools/setup.sh installs it)"
        NETNS=1
fi

# Two namespaces joined by a veth pair created straight inside them: nothing appears in the
# host's own namespace, and deleting the namespaces deletes the pair.
setup_namespaces() {
        local src=vfmdemo-src-$$ dst=vfmdemo-dst-$$
        ip netns add "$src" || return 1
        NAMESPACES+=("$src")
        ip netns add "$dst" || return 1
        NAMESPACES+=("$dst")
        ip link add veth-src netns "$src" type veth peer name veth-dst netns "$dst" || return 1
        ip -n "$src" addr add 10.77.0.1/24 dev veth-src || return 1
        ip -n "$dst" addr add 10.77.0.2/24 dev veth-dst || return 1
        ip -n "$src" link set lo up && ip -n "$src" link set veth-src up || return 1
        ip -n "$dst" link set lo up && ip -n "$dst" link set veth-dst up || return 1
        SRC_NS=$src
        DST_NS=$dst
}

if [ $NETNS = 1 ]; then
        if setup_namespaces; then
                SRC_EXEC=(ip netns exec "$SRC_NS")
                DST_EXEC=(ip netns exec "$DST_NS")
                SRC_LISTEN=10.77.0.1:7179
                DST_LISTEN=10.77.0.2:7179
                say "source:      network namespace $SRC_NS, veth-src 10.77.0.1/24"
                say "destination: network namespace $DST_NS, veth-dst 10.77.0.2/24"
                say "             (a veth pair joins them; the daemons see only their own namespace's network)"
        else
                say "demo: cannot create network namespaces here (see above); using loopback instead" >&2
                NETNS=0
        fi
fi
if [ $NETNS = 0 ]; then
        SRC_EXEC=()
        DST_EXEC=()
        # Port 0: the kernel picks a free one, and PrepareIncoming says which.
        SRC_LISTEN=127.0.0.1:0
        DST_LISTEN=127.0.0.1:0
        say "source and destination: both on this host, streaming over loopback"
        [ "$(id -u)" -eq 0 ] || say "(as root, the demo puts them in two network namespaces joined by a veth pair)"
fi

# A private system bus in DIR: the stock system-bus policy (everyone may connect, nobody may own
# names or call methods unless a policy file allows it) plus the project's
# policy/org.vfiomig1.conf, which lets only root own org.vfiomig1; as another user, a policy file
# of the demo's lets that user do what root may. Sets BUS_ADDRESS.
start_bus() {
        local dir=$1 address pid
        mkdir -p "$dir/system.d"
        cp policy/org.vfiomig1.conf "$dir/system.d/"
        if [ "$(id -u)" -ne 0 ]; then
                cat >"$dir/system.d/demo-user.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="$(id -un)">
    <allow own="org.vfiomig1"/>
    <allow send_destination="org.vfiomig1"/>
    <allow receive_sender="org.vfiomig1"/>
  </policy>
</busconfig>
EOF
        fi
        cat >"$dir/system.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path=$dir/system_bus_socket</listen>
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
  <includedir>$dir/system.d</includedir>
</busconfig>
EOF
        # --print-address=1: the optional fd argument would otherwise eat the next word.
        { read -r address; read -r pid; } < <(dbus-daemon --config-file="$dir/system.conf" --fork \
                --print-address=1 --print-pid=1)
        BUS_PIDS+=("$pid")
        BUS_ADDRESS=unix:path=$dir/system_bus_socket
}

# vfiomigd on the bus at ADDRESS with the configuration CONF, inside the namespace of the command
# prefix that follows (none: this host's); waits until it answers.
start_daemon() {
        local dir=$1 address=$2 listen=$3 pid
        shift 3
        DBUS_SYSTEM_BUS_ADDRESS=$address "$@" "$DAEMON" --config="$dir/vfiomigd.conf" --stream-listen="$listen" \
                --log-target=stderr >"$dir/vfiomigd.log" 2>&1 &
        pid=$!
        DAEMON_PIDS+=("$pid")
        for _ in $(seq 200); do
                kill -0 "$pid" 2>/dev/null || die "vfiomigd ($dir) exited during start-up: $(cat "$dir/vfiomigd.log")"
                "$CLI" --address="$address" -q status 2>/dev/null && return 0
                sleep 0.05
        done
        die "vfiomigd ($dir) did not come up on its bus within 10 s"
}

# The devices of each side: a group of two. gpu0 rewrites 2 MiB/s of its state while it runs;
# the destination's have the same sizes but another seed, so their content differs until the
# migration brings the source's.
device_config() {
        local seed_gpu=$1 seed_nic=$2 me=$3 peer=$4
        cat <<EOF
{
  "allow-simulated": true,
  "tls": { "x509-dir": "$WORK/pki/$me", "allowed-peers": [ "CN=$peer,*" ] },
  "devices": [
    { "address": "sim:gpu0",
      "options": { "state-size": 50331648, "precopy-size": 50331648, "dirty-rate": 2097152, "seed": $seed_gpu } },
    { "address": "sim:nic0",
      "options": { "state-size": 16777216, "precopy-size": 16777216, "seed": $seed_nic } }
  ]
}
EOF
}

# A throwaway CA, and a certificate for each host that names its addresses; in
# /etc/pki/vfiomigd/ (ca-cert.pem, server-cert.pem, server-key.pem) no configuration is needed.
tools/make-test-pki.sh --ca-name "vfiomigd demo CA" --ip 10.77.0.1 --ip 10.77.0.2 --ip 127.0.0.1 \
        "$WORK/pki" source destination || die "cannot make the demo's certificates"
say "TLS: a throwaway CA in $WORK/pki, a certificate and key for each host (tools/make-test-pki.sh)"
mkdir "$WORK/source" "$WORK/destination"
device_config 1 2 source destination >"$WORK/source/vfiomigd.conf"
device_config 1001 1002 destination source >"$WORK/destination/vfiomigd.conf"
say
bold "[4/5] A private system bus and vfiomigd on each host"
start_bus "$WORK/source"
SRC=$BUS_ADDRESS
start_bus "$WORK/destination"
DST=$BUS_ADDRESS
start_daemon "$WORK/source" "$SRC" "$SRC_LISTEN" "${SRC_EXEC[@]}"
start_daemon "$WORK/destination" "$DST" "$DST_LISTEN" "${DST_EXEC[@]}"
say "source:      bus $SRC"
say "             vfiomigd --config=$WORK/source/vfiomigd.conf (pid ${DAEMON_PIDS[0]})"
say "destination: bus $DST"
say "             vfiomigd --config=$WORK/destination/vfiomigd.conf --stream-listen=$DST_LISTEN (pid ${DAEMON_PIDS[1]})"
say "(running as $(id -un); no polkit on these buses, so only root and the daemons' own user may change things)"
say

# --------------------------------------------------------------------------------------------
# Phase 3: the migration.

bold "[5/5] The migration"
step() {
        say
        bold "# $*"
}
# vfiomigctl on one side, shown: "src ARGS" or "dst ARGS".
ctl() {
        local side=$1 address
        shift
        if [ "$side" = src ]; then address=$SRC; else address=$DST; fi
        say "$side\$ vfiomigctl $*" >&2
        "$CLI" --address="$address" "$@"
}
DEVICES=(sim_gpu0 sim_nic0)
device_path() { printf '/org/vfiomig1/device/%s' "$1"; }
prop() { # ADDRESS OBJECT INTERFACE NAME: the value, without its type
        busctl --address="$1" get-property org.vfiomig1 "$2" "$3" "$4" | cut -d' ' -f2- | tr -d '"'
}
digest() { printf '0x%016x' "$(prop "$1" "$(device_path "$2")" org.vfiomig1.SimDevice StateDigest)"; }
show_digests() {
        local d s t
        printf '  %-10s %-20s %-20s\n' DEVICE SOURCE DESTINATION
        for d in "${DEVICES[@]}"; do
                s=$(digest "$SRC" "$d")
                t=$(digest "$DST" "$d")
                printf '  %-10s %-20s %-20s %s\n' "$d" "$s" "$t" "$([ "$s" = "$t" ] && echo equal || echo different)"
        done
}

step "The devices on each side"
ctl src list
ctl dst list
say "StateDigest (org.vfiomig1.SimDevice) of each: the content differs (another seed on the destination)"
show_digests

# Progress lines from the job's properties, twice a second, until it ends; cancels it after
# $TIMEOUT s. For when no progress bar is drawn (no terminal, or no vfiomigctl migrate).
follow_job() {
        local address=$1 job=$2 deadline=$((SECONDS + TIMEOUT)) line phase
        while :; do
                line=$(busctl --address="$address" --json=short call org.vfiomig1 "$job" \
                        org.freedesktop.DBus.Properties GetAll s org.vfiomig1.Migration | python3 -c '
import json, sys
p = {k: v["data"] for k, v in json.load(sys.stdin)["data"][0].items()}
mib = lambda n: f"{n / 1048576:.1f} MiB"
done, total = p["BytesTransferred"], p["BytesExpected"]
of = f" of {mib(total)} ({min(100, 100 * done // total)}%)" if total else ""
phase, rate = p["Phase"], mib(p["Rate"])
print(phase, f"{phase:<10} {mib(done)}{of}, {rate}/s")')
                phase=${line%% *}
                say "  ${line#* }"
                case $phase in completed | failed | cancelled) break ;; esac
                if [ $SECONDS -ge $deadline ]; then
                        say "demo: the migration did not end within ${TIMEOUT}s: cancelling it" >&2
                        busctl --address="$address" call org.vfiomig1 "$job" org.vfiomig1.Migration Cancel || true
                        deadline=$((SECONDS + 30))
                fi
                sleep 0.5
        done
}

step "Destination: prepare to receive the group (the devices go to resuming and wait)"
paths=()
for d in "${DEVICES[@]}"; do paths+=("$(device_path "$d")"); done
if [ $HAVE_MIGRATE = 1 ]; then
        # What it prints for the operator (the command to run on the source) comes after its result.
        # The token goes to a file only its owner can read, never onto a command line (which
        # every local user can read in /proc); an operator copies the file to the source host.
        TOKEN_FILE=$WORK/job.token
        say "dst\$ vfiomigctl incoming ${DEVICES[*]} --token-file=$TOKEN_FILE"
        out=$("$CLI" --address="$DST" incoming "${DEVICES[@]}" --token-file="$TOKEN_FILE" 2>"$WORK/incoming.hints") ||
                { cat "$WORK/incoming.hints" >&2; die "vfiomigctl incoming failed"; }
        say "$out"
        cat "$WORK/incoming.hints"
        DST_JOB=$(sed -n 's/^Prepared incoming migration [0-9]* (\(.*\))$/\1/p' <<<"$out")
        TOKEN=$([ -s "$TOKEN_FILE" ] && echo "in $TOKEN_FILE")
        TO=$(sed -n 's/^Addresses: \([^ ]*\).*/\1/p' <<<"$out")
else
        say "dst\$ busctl call org.vfiomig1 /org/vfiomig1 org.vfiomig1.Manager PrepareIncoming aoa{sv} ..."
        read -r DST_JOB TOKEN TO < <(busctl --address="$DST" --json=short call org.vfiomig1 /org/vfiomig1 \
                org.vfiomig1.Manager PrepareIncoming 'aoa{sv}' ${#paths[@]} "${paths[@]}" 0 | python3 -c '
import json, sys
job, token, addresses = json.load(sys.stdin)["data"]
print(job, token, addresses[0])')
        say "job $DST_JOB, token $TOKEN, address $TO"
fi
if [ -z "$DST_JOB" ] || [ -z "$TOKEN" ] || [ -z "$TO" ]; then
        die "could not read the job, token and address PrepareIncoming returned"
fi

step "Source: migrate the group to $TO with pre-copy; the devices keep running until switchover"
if [ "$BANDWIDTH_MIB" != 0 ]; then
        say "(at most $BANDWIDTH_MIB MiB/s, so that the progress can be watched)"
fi
if [ $HAVE_MIGRATE = 1 ]; then
        MIGRATE_OPTS=(--to="$TO" --token-file="$TOKEN_FILE" --bandwidth="${BANDWIDTH_MIB}M/s")
else
        MIGRATE_OPTS=(--to="$TO" --token="$TOKEN" --bandwidth="${BANDWIDTH_MIB}M/s")
fi
rc=0
if [ $HAVE_MIGRATE = 1 ] && [ -t 2 ]; then
        # vfiomigctl draws the progress bar on the terminal (standard error). After $TIMEOUT s
        # it gets what Ctrl-C sends: it cancels the job and waits for its end.
        say "src\$ vfiomigctl migrate ${DEVICES[*]} ${MIGRATE_OPTS[*]}" >&2
        out=$(timeout --foreground -s INT "$TIMEOUT" "$CLI" --address="$SRC" migrate "${DEVICES[@]}" \
                "${MIGRATE_OPTS[@]}") || rc=$?
        [ $rc -ne 124 ] || say "demo: the migration did not end within ${TIMEOUT}s: it was cancelled" >&2
        say "$out"
        SRC_JOB=$(sed -n 's/^Migration \([0-9]*\) .*/\1/p' <<<"$out")
        SRC_JOB=${SRC_JOB:+/org/vfiomig1/migration/_$SRC_JOB}
elif [ $HAVE_MIGRATE = 1 ]; then
        SRC_JOB=$(ctl src migrate "${DEVICES[@]}" "${MIGRATE_OPTS[@]}" --no-wait) # the job's number
        SRC_JOB=${SRC_JOB:+/org/vfiomig1/migration/_$SRC_JOB}
        follow_job "$SRC" "$SRC_JOB"
        ctl src wait "$SRC_JOB" || rc=$?
else
        say "src\$ busctl call org.vfiomig1 /org/vfiomig1 org.vfiomig1.Manager StartMigration aossa{sv} ..."
        SRC_JOB=$(busctl --address="$SRC" call org.vfiomig1 /org/vfiomig1 org.vfiomig1.Manager StartMigration \
                'aossa{sv}' ${#paths[@]} "${paths[@]}" "$TO" "$TOKEN" 1 bandwidth-limit t $((BANDWIDTH_MIB << 20)) |
                cut -d' ' -f2 | tr -d '"')
        follow_job "$SRC" "$SRC_JOB"
        [ "$(prop "$SRC" "$SRC_JOB" org.vfiomig1.Migration Phase)" = completed ] || rc=1
fi
[ $rc -eq 0 ] || die "the migration did not complete (status $rc)"
[ -n "$SRC_JOB" ] || die "could not tell the source's job from what vfiomigctl printed"

step "Both jobs, as each daemon reports them"
show_job() { # SIDE JOB PROPERTY...
        local side=$1 job=$2 address
        shift 2
        if [ $HAVE_MIGRATE = 1 ]; then
                ctl "$side" job "$job" | grep -E "^($(IFS='|'; echo "$*")):"
                return
        fi
        if [ "$side" = src ]; then address=$SRC; else address=$DST; fi
        say "$side\$ busctl get-property org.vfiomig1 $job org.vfiomig1.Migration ..."
        for name in "$@"; do
                say "$name: $(prop "$address" "$job" org.vfiomig1.Migration "$name")"
        done
}
show_job src "$SRC_JOB" Id Direction Phase Peer Devices Channels Precopy BytesTransferred Downtime ErrorName Error
say "Transport: $(prop "$SRC" "$SRC_JOB" org.vfiomig1.Migration Transport)"
say
show_job dst "$DST_JOB" Id Direction Phase Devices BytesTransferred Downtime ErrorName Error
say "Transport: $(prop "$DST" "$DST_JOB" org.vfiomig1.Migration Transport)"
transport=$(prop "$SRC" "$SRC_JOB" org.vfiomig1.Migration Transport)
case $transport in tls-*) ;; *) die "the migration ran $transport, not TLS" ;; esac

step "What protected the stream, in the daemons' logs"
grep -h -E "run TLS 1.3|TLS to |channels? up " "$WORK/source/vfiomigd.log" | sed 's/^/  source:      /'
grep -h -E "run TLS 1.3|channels? up " "$WORK/destination/vfiomigd.log" | sed 's/^/  destination: /'
src_phase=$(prop "$SRC" "$SRC_JOB" org.vfiomig1.Migration Phase)
dst_phase=$(prop "$DST" "$DST_JOB" org.vfiomig1.Migration Phase)
if [ "$src_phase" != completed ] || [ "$dst_phase" != completed ]; then
        die "the jobs ended $src_phase (source) and $dst_phase (destination)"
fi
bytes=$(prop "$SRC" "$SRC_JOB" org.vfiomig1.Migration BytesTransferred)
downtime=$(prop "$SRC" "$SRC_JOB" org.vfiomig1.Migration Downtime)
say
if [ "$downtime" = 0 ]; then
        downtime="less than a millisecond (or not measured)"
else
        downtime="$downtime ms"
fi
say "Moved $((bytes / 1048576)) MiB ($bytes bytes); the devices were stopped for $downtime."

step "The state arrived exactly: every device's StateDigest on the destination equals the source's"
show_digests
for d in "${DEVICES[@]}"; do
        [ "$(digest "$SRC" "$d")" = "$(digest "$DST" "$d")" ] || die "$d: the digests differ: the state did not arrive intact"
done

step "The source devices are stopped; the destination's hold the state and run when told"
ctl src list
ctl dst set-states running "${DEVICES[@]}"
ctl dst list

say
bold "Stopping both vfiomigd (SIGTERM), the buses$([ $NETNS = 1 ] && echo ", the network namespaces")"
status=0
for pid in "${DAEMON_PIDS[@]}"; do
        kill -TERM "$pid"
        wait "$pid" || status=$?
done
DAEMON_PIDS=()
[ $status -eq 0 ] || die "a vfiomigd exited with status $status"
say "both vfiomigd exited cleanly (status 0)."
bold "Demo complete."
