#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Checks what vfiomigd installs besides its binaries: the systemd unit (sandbox exposure and
# syntax), the D-Bus policy and activation file, the polkit actions, and the man pages (they
# render cleanly, and org.vfiomig1(5) names every member of the D-Bus interfaces).
#
# Environment: SOURCE_ROOT, BUILD_ROOT (meson sets both; defaults: this checkout and ./build).
# Exit: 0 all passed, 1 a check failed, 77 a tool needed for a check is missing.

set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
SOURCE_ROOT=${SOURCE_ROOT:-$(cd "$here/../.." && pwd)}
BUILD_ROOT=${BUILD_ROOT:-$SOURCE_ROOT/build}

# The exposure the unit must stay under, on systemd-analyze's 0-100 scale (25 = 2.5).
EXPOSURE_THRESHOLD=20
# The polkit actions the daemon checks today; used until the daemon's sources reference them.
EXPECTED_ACTIONS="org.vfiomig1.manage-devices org.vfiomig1.set-state"

if ! command -v systemd-analyze >/dev/null; then
        echo "SKIP: systemd-analyze is not installed (package systemd)"
        exit 77
fi
if ! command -v python3 >/dev/null; then
        echo "SKIP: python3 is not installed (needed to read the XML files)"
        exit 77
fi

unit_in=$BUILD_ROOT/units/vfiomigd.service
if [ ! -f "$unit_in" ]; then
        echo "FAIL: $unit_in does not exist (configure with meson first)"
        exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vfm-test-units.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

failed=0
skipped=0
fail() { echo "FAIL: $*"; failed=1; }
skip() { echo "SKIP: $*"; skipped=1; }
pass() { echo "ok: $*"; }

# The man pages in a MANPATH tree, so that `systemd-analyze verify` can resolve the unit's
# Documentation= references against the pages we ship rather than the host's.
for page in "$BUILD_ROOT"/man/*.[1-8]; do
        [ -e "$page" ] || continue
        section=${page##*.}
        mkdir -p "$tmp/man/man$section"
        cp "$page" "$tmp/man/man$section/"
done

# ---- the unit ----

# An unsubstituted @var@ means configure_file lost a variable.
if grep -nE '@[A-Za-z_]+@' "$unit_in"; then
        fail "unsubstituted @...@ in $unit_in"
fi
if ! grep -qE '^ExecStart=/.*/vfiomigd$' "$unit_in"; then
        fail "ExecStart= of $unit_in does not run an absolute vfiomigd path"
fi

# systemd-analyze refuses a unit whose ExecStart= is not executable; the daemon is not
# installed here, so check a copy (same file name, hence same unit name) that runs true(1).
true_bin=$(command -v true)
case $true_bin in /*) ;; *) true_bin=/bin/true ;; esac
mkdir -p "$tmp/unit"
sed -E "s|^ExecStart=[^ ]*|ExecStart=$true_bin|" "$unit_in" >"$tmp/unit/vfiomigd.service"

security_out=$(systemd-analyze security --offline=yes --threshold=$EXPOSURE_THRESHOLD \
                       "$tmp/unit/vfiomigd.service" 2>&1)
rc=$?
exposure=$(printf '%s\n' "$security_out" | grep 'Overall exposure level' || true)
if [ $rc -ne 0 ] || [ -z "$exposure" ]; then
        printf '%s\n' "$security_out"
        fail "systemd-analyze security: exposure above $EXPOSURE_THRESHOLD/100 (rc=$rc)"
else
        pass "systemd-analyze security: ${exposure#*: } (threshold 2.0)"
fi

verify_args=()
if ! command -v man >/dev/null; then
        verify_args+=(--man=no)
        echo "note: man(1) is missing; systemd-analyze verify does not check Documentation="
fi
verify_out=$(MANPATH=$tmp/man systemd-analyze verify "${verify_args[@]}" "$tmp/unit/vfiomigd.service" 2>&1)
rc=$?
if [ $rc -ne 0 ] || [ -n "$verify_out" ]; then
        printf '%s\n' "$verify_out"
        fail "systemd-analyze verify complained (rc=$rc)"
else
        pass "systemd-analyze verify: clean"
fi

# ---- bus activation file vs unit ----

activation=$SOURCE_ROOT/units/org.vfiomig1.service
for line in '^\[D-BUS Service\]$' '^Name=org\.vfiomig1$' '^User=root$' '^SystemdService=vfiomigd\.service$'; do
        grep -qE "$line" "$activation" || fail "$activation lacks a line matching $line"
done
grep -q '^BusName=org\.vfiomig1$' "$unit_in" || fail "the unit lacks BusName=org.vfiomig1"
grep -q '^Alias=dbus-org\.vfiomig1\.service$' "$unit_in" || fail "the unit lacks Alias=dbus-org.vfiomig1.service"

# ---- XML: well-formed, and what it declares ----

bus_policy=$SOURCE_ROOT/policy/org.vfiomig1.conf
polkit_policy=$SOURCE_ROOT/policy/org.vfiomig1.policy

if command -v xmllint >/dev/null; then
        if xmllint --noout "$bus_policy" "$polkit_policy"; then
                pass "xmllint: bus and polkit policies are well-formed"
        else
                fail "xmllint rejected a policy file"
        fi
fi

# What the bus policy grants, and the polkit action set, checked with python (which also
# catches malformed XML when xmllint is absent).
python3 - "$bus_policy" "$polkit_policy" "$SOURCE_ROOT" "$EXPECTED_ACTIONS" <<'EOF' || failed=1
import pathlib, re, sys
import xml.etree.ElementTree as ET

bus_policy, polkit_policy, source_root, expected = sys.argv[1:5]
ok = True

def fail(msg):
    global ok
    print("FAIL: " + msg)
    ok = False

NAME = "org.vfiomig1"
try:
    bus = ET.parse(bus_policy).getroot()
except ET.ParseError as e:
    fail(f"{bus_policy}: {e}")
    sys.exit(1)

# Only root may own the name; the default context denies sending, then allows the listed
# interfaces, and never Properties.Set.
for policy in bus.iter("policy"):
    for allow in policy.iter("allow"):
        if allow.get("own") is not None and policy.get("user") != "root":
            fail(f"bus policy lets {policy.attrib} own {allow.get('own')}")
default = [p for p in bus.iter("policy") if p.get("context") == "default"]
if len(default) != 1:
    fail("bus policy needs exactly one <policy context=\"default\">")
else:
    rules = list(default[0])
    if not any(r.tag == "deny" and r.get("send_destination") == NAME and len(r.attrib) == 1 for r in rules):
        fail("the default policy does not deny sending to org.vfiomig1 first")
    allowed = {(r.get("send_interface"), r.get("send_member")) for r in rules
               if r.tag == "allow" and r.get("send_destination") == NAME}
    want = {("org.freedesktop.DBus.Introspectable", None), ("org.freedesktop.DBus.Peer", None),
            ("org.freedesktop.DBus.Properties", "Get"), ("org.freedesktop.DBus.Properties", "GetAll"),
            ("org.freedesktop.DBus.ObjectManager", "GetManagedObjects"),
            ("org.vfiomig1.Manager", None), ("org.vfiomig1.Device", None),
            ("org.vfiomig1.AddressSpace", None), ("org.vfiomig1.SimDevice", None),
            ("org.vfiomig1.Migration", None)}
    if allowed != want:
        fail(f"the default policy allows {sorted(allowed, key=str)}, expected {sorted(want, key=str)}")
    if any(i is None for i, _ in allowed):
        fail("an allow rule without send_interface opens every interface")
if ok:
    print("ok: bus policy: root owns the name, everyone else gets reads and the four interfaces")

try:
    pk = ET.parse(polkit_policy).getroot()
except ET.ParseError as e:
    fail(f"{polkit_policy}: {e}")
    sys.exit(1)
declared = {a.get("id") for a in pk.iter("action")}

# The actions the daemon uses: VFIOMIG_ACTION_* macros (resolved through proto/vfiomig1.h) or
# literal action ids in its sources.
header = pathlib.Path(source_root, "proto", "vfiomig1.h").read_text()
macros = dict(re.findall(r'#define\s+(VFIOMIG_ACTION_\w+)\s+"([^"]+)"', header))
used = set()
for src in pathlib.Path(source_root, "daemon").rglob("*.[ch]"):
    text = src.read_text(errors="replace")
    used |= {macros[m] for m in re.findall(r"\bVFIOMIG_ACTION_\w+\b", text) if m in macros}
    used |= set(re.findall(r'"(org\.vfiomig1\.[a-z][a-z-]*)"', text)) & set(macros.values())
if not used:
    print("note: the daemon's sources reference no polkit action yet; checking the expected set")
    used = set(expected.split())
if declared != used:
    fail(f"{polkit_policy} declares {sorted(declared)}, the daemon uses {sorted(used)}")
for a in pk.iter("action"):
    d = a.find("defaults")
    got = {k: (d.findtext(k) if d is not None else None) for k in ("allow_any", "allow_inactive", "allow_active")}
    if got != {"allow_any": "auth_admin", "allow_inactive": "auth_admin", "allow_active": "auth_admin_keep"}:
        fail(f"action {a.get('id')} has defaults {got}")
if ok:
    print(f"ok: polkit policy declares exactly {sorted(declared)}")
sys.exit(0 if ok else 1)
EOF

# dbus-daemon must accept the policy file as it would at boot.
if command -v dbus-daemon >/dev/null; then
        mkdir -p "$tmp/dbus/system.d"
        cp "$bus_policy" "$tmp/dbus/system.d/"
        cat >"$tmp/dbus/system.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path=$tmp/dbus/socket</listen>
  <policy context="default"><allow user="*"/></policy>
  <includedir>$tmp/dbus/system.d</includedir>
</busconfig>
EOF
        if pid=$(dbus-daemon --config-file="$tmp/dbus/system.conf" --fork --print-pid=1 2>"$tmp/dbus/err"); then
                kill "$pid" 2>/dev/null
                if grep -q . "$tmp/dbus/err"; then
                        cat "$tmp/dbus/err"
                        fail "dbus-daemon warned about the bus policy"
                else
                        pass "dbus-daemon loads the bus policy"
                fi
        else
                cat "$tmp/dbus/err"
                fail "dbus-daemon refused the bus policy"
        fi
else
        skip "dbus-daemon is not installed: the bus policy was not loaded by a bus"
fi

# ---- man pages ----

python3 - "$SOURCE_ROOT" <<'EOF' || failed=1
import pathlib, re, sys
import xml.etree.ElementTree as ET

root = pathlib.Path(sys.argv[1])
page_path = root / "man" / "org.vfiomig1.5"
# Read the roff source as text: "\-" is how a hyphen is written in it.
page = page_path.read_text().replace("\\-", "-")

def present(word):
    return re.search(r"(?<![A-Za-z0-9_.-])" + re.escape(word) + r"(?![A-Za-z0-9_-])", page) is not None

missing = []
for xml in sorted((root / "proto").glob("*.xml")):
    for iface in ET.parse(xml).getroot().iter("interface"):
        names = [("interface", iface.get("name"))]
        for kind in ("method", "signal", "property"):
            for member in iface.iter(kind):
                names.append((kind, member.get("name")))
                for arg in member.iter("arg"):
                    if arg.get("name"):
                        names.append((f"argument of {member.get('name')}", arg.get("name")))
        missing += [(xml.name, kind, n) for kind, n in names if not present(n)]

# The names proto/vfiomig1.h fixes for the bus: errors, states, flags, backends, features,
# options, actions.
header = (root / "proto" / "vfiomig1.h").read_text()
strings = set(re.findall(r'#define\s+VFIOMIG_ERROR_\w+\s+VFIOMIG_ERROR_PREFIX\s+"(\w+)"', header))
strings |= set(re.findall(r'#define\s+VFIOMIG_(?:BACKEND|FEATURE|OPTION|ACTION)_\w+\s+"([^"]+)"', header))
for block in ("VFIOMIG_STATE_NAMES", "VFIOMIG_MIGRATION_FLAG_NAMES"):
    m = re.search(r"#define\s+" + block + r"\b(.*?)\}", header, re.S)
    strings |= set(re.findall(r'"([^"]+)"', m.group(1))) if m else set()
m = re.search(r"#define\s+VFIOMIG_SIM_OPTIONS\b(.*?)\}\s*$", header, re.S | re.M)
if m:
    strings |= set(re.findall(r'\{\s*"([^"]+)"\s*,', m.group(1)))
missing += [("vfiomig1.h", "name", s) for s in sorted(strings) if not present(s)]

if missing:
    for f, kind, n in missing:
        print(f"FAIL: {page_path.name} does not mention {kind} {n!r} ({f})")
    sys.exit(1)
print(f"ok: {page_path.name} names every member of proto/*.xml and every name in proto/vfiomig1.h")
EOF

if command -v groff >/dev/null; then
        for page in "$BUILD_ROOT"/man/*.[1-8]; do
                [ -e "$page" ] || continue
                if grep -n '@[A-Z_]*@' "$page"; then
                        fail "${page##*/} keeps a placeholder meson did not fill"
                fi
                warnings=$(groff -man -ww -z "$page" 2>&1)
                if [ $? -ne 0 ] || [ -n "$warnings" ]; then
                        printf '%s\n' "$warnings"
                        fail "groff warns about ${page##*/}"
                else
                        pass "groff: ${page##*/} renders without warnings"
                fi
        done
else
        skip "groff is not installed: man pages were not rendered"
fi

if [ $failed -ne 0 ]; then
        exit 1
fi
if [ $skipped -ne 0 ]; then
        exit 77
fi
exit 0
