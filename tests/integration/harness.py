# SPDX-License-Identifier: GPL-2.0-or-later
"""Shared helpers for the integration tests: real parts, started and stopped by PID.

Every piece here starts something real (a private dbus-daemon system bus, vfiomigd, polkitd in a
private mount namespace, a non-PID-1 ``systemd --user`` with a private journald, busctl monitors),
and every piece registers itself so that it is stopped -- by the PID this module started, never by
name -- in the test's teardown, or at interpreter exit if a test died half-way, or when meson's
timeout sends SIGTERM. Temp dirs are removed and test users deleted again (only those this run
created). The recipes follow /work/shared/reference/systemd-harness.md (measured on Debian 12).

Standard library only; /usr/bin/python3 is Debian's 3.11.
"""

import atexit
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

SKIP = 77

SOURCE_ROOT = Path(os.environ.get("SOURCE_ROOT") or Path(__file__).resolve().parents[2])
BUILD_ROOT = Path(os.environ.get("BUILD_ROOT") or SOURCE_ROOT / "build")
DAEMON = BUILD_ROOT / "daemon" / "vfiomigd"
CLI = BUILD_ROOT / "client" / "vfiomigctl"
PROTO_DIR = SOURCE_ROOT / "proto"
BUS_POLICY = SOURCE_ROOT / "policy" / "org.vfiomig1.conf"
POLKIT_POLICY = SOURCE_ROOT / "policy" / "org.vfiomig1.policy"
SERVICE_UNIT_IN = SOURCE_ROOT / "units" / "vfiomigd.service.in"

BUS_NAME = "org.vfiomig1"
MANAGER_PATH = "/org/vfiomig1"
DEVICE_PATH_PREFIX = "/org/vfiomig1/device/"
MANAGER_IFACE = "org.vfiomig1.Manager"
DEVICE_IFACE = "org.vfiomig1.Device"
SPACE_IFACE = "org.vfiomig1.AddressSpace"
SIM_DEVICE_IFACE = "org.vfiomig1.SimDevice"
SPACE_PATH_PREFIX = "/org/vfiomig1/space/"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
OM_IFACE = "org.freedesktop.DBus.ObjectManager"
POLKIT_NAME = "org.freedesktop.PolicyKit1"

E_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
E_ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
E_NO_SUCH_DEVICE = "org.vfiomig1.Error.NoSuchDevice"
E_INVALID_TRANSITION = "org.vfiomig1.Error.InvalidTransition"
E_TRANSITION_FAILED = "org.vfiomig1.Error.TransitionFailed"
E_DEVICE_IN_ERROR = "org.vfiomig1.Error.DeviceInError"
E_P2P_REQUIRED = "org.vfiomig1.Error.P2PRequired"
E_BUSY = "org.vfiomig1.Error.Busy"
E_LIMIT_EXCEEDED = "org.vfiomig1.Error.LimitExceeded"
E_NO_PRECOPY_SESSION = "org.vfiomig1.Error.NoPreCopySession"
E_NO_SUCH_ADDRESS_SPACE = "org.vfiomig1.Error.NoSuchAddressSpace"
E_MAPPING_CONFLICT = "org.vfiomig1.Error.MappingConflict"
E_NO_SUCH_MAPPING = "org.vfiomig1.Error.NoSuchMapping"
E_DMA_FAULT = "org.vfiomig1.Error.DmaFault"

TEST_USER = "vfmtest"
ADMIN_USER = "vfmadm"
ADMIN_GROUP = "vfmadmin"

# The sim's stream (daemon/backend/sim-stream.h): a 64-byte header, per 64 KiB block a 32-byte
# record header plus the data, and a 48-byte end record.
SIM_BLOCK = 64 * 1024


# ---- the saved state and the fd store (daemon/core/persist.c, daemon/core/fd-table.h) ---------------

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283

# "VFMSTATE", u64 seq, u64 length, u32 crc32c, u32 zero, then the JSON.
STATE_HEADER = struct.Struct("<8sQQII")


def state_bytes(seq, body, crc=None):
    """A state memfd's contents: the header in front of body (bytes); crc to forge a bad one."""
    return STATE_HEADER.pack(b"VFMSTATE", seq, len(body), crc32c(body) if crc is None else crc, 0) + body


def state_memfd(seq, body, crc=None):
    fd = os.memfd_create("vfm-test-state", os.MFD_CLOEXEC)
    os.write(fd, state_bytes(seq, body, crc))
    return fd


def parse_state(raw):
    """(seq, record) of a state memfd's contents; AssertionError when it is not intact."""
    magic, seq, length, crc, zero = STATE_HEADER.unpack_from(raw)
    body = raw[STATE_HEADER.size:STATE_HEADER.size + length]
    assert magic == b"VFMSTATE" and zero == 0, "not a state header"
    assert len(body) == length, "the state is shorter than its header says"
    assert crc32c(body) == crc, "the state's CRC32C does not match"
    return seq, json.loads(body)


def read_state(fd):
    return parse_state(os.pread(fd, 64 << 20, 0))


def entry_users(record):
    """{entry name: [users]} of a version 2 record: which objects share which fd store entry."""
    return {e["name"]: e["users"] for e in record.get("fds", [])}


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(os.uname().machine)
_KCMP_FILE = 0


def kcmp_files(a, b):
    """kcmp(KCMP_FILE) of two of our descriptors: 0 same open file description, else nonzero;
    None when the kernel (or a filter) does not offer it."""
    if _SYS_KCMP is None:
        return None
    r = _libc.syscall(_SYS_KCMP, os.getpid(), os.getpid(), _KCMP_FILE, a, b)
    return None if r < 0 else r


def have_kcmp():
    fd = os.memfd_create("vfm-kcmp-probe", os.MFD_CLOEXEC)
    try:
        return kcmp_files(fd, fd) == 0
    finally:
        os.close(fd)


def same_store_entry(a, b):
    """Whether systemd's fd store folds descriptors a and b into one entry (its same_fd():
    kcmp where it works, else one inode that is no device node with equal F_GETFL flags)."""
    r = kcmp_files(a, b)
    if r is not None:
        return r == 0
    sa, sb = os.fstat(a), os.fstat(b)
    if (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino):
        return False
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return False
    return fcntl.fcntl(a, fcntl.F_GETFL) == fcntl.fcntl(b, fcntl.F_GETFL)


def sim_stream_size(state_size):
    blocks = (state_size + SIM_BLOCK - 1) // SIM_BLOCK
    return 64 + blocks * 32 + state_size + 48


_T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - _T0:7.3f}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Skips (meson: exit 77) and requirements


def skip(reason):
    print(f"SKIP: {reason}", file=sys.stderr, flush=True)
    sys.exit(SKIP)


def require_root():
    if os.geteuid() != 0:
        skip("needs root (private system bus policy, polkitd, test users, cgroups)")


def find_program(name):
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")


def require_programs(*names):
    missing = [n for n in names if not find_program(n)]
    if missing:
        skip("missing program(s): " + ", ".join(missing) + " (tools/setup.sh installs them)")


def require_daemon():
    if not os.access(DAEMON, os.X_OK):
        skip(f"{DAEMON} is not built (ninja -C {BUILD_ROOT})")


def require_cli():
    if not os.access(CLI, os.X_OK):
        skip(f"{CLI} is not built (ninja -C {BUILD_ROOT})")


def require_mount_namespaces():
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        skip(f"cannot create a mount namespace (unshare --mount: {r.stderr.strip()})")


def require_cgroups():
    roots = _cgroup_layout()
    if not roots or not all(os.access(r, os.W_OK) for r in roots):
        skip("no writable cgroup hierarchy for a private systemd --user manager")


def default_config_path():
    """The configuration file vfiomigd reads when given no --config (SYSCONFDIR from config.h)."""
    try:
        m = re.search(r'#define SYSCONFDIR "([^"]*)"', (BUILD_ROOT / "config.h").read_text())
    except OSError:
        return None
    return Path(m.group(1)) / "vfiomigd" / "vfiomigd.conf" if m else None


def require_files(*paths):
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        skip("missing file(s): " + ", ".join(missing))


def main(requirements=()):
    """Checks requirements (each may exit 77), then runs the unittest module in __main__."""
    for req in requirements:
        req()
    _install_signal_handlers()
    prog = unittest.main(module="__main__", verbosity=2, exit=False, buffer=False)
    result = prog.result
    run_all_cleanups()
    if not result.wasSuccessful():
        sys.exit(1)
    if result.testsRun and len(result.skipped) == result.testsRun:
        skip("every test skipped itself")
    sys.exit(0)


# --------------------------------------------------------------------------------------------
# Cleanup registry: every started thing is stopped, also when a test fails half-way or meson
# times the test out (SIGTERM to our process group).

_live = []
_live_lock = threading.Lock()


def track(obj):
    with _live_lock:
        if obj not in _live:
            _live.append(obj)


def untrack(obj):
    with _live_lock:
        if obj in _live:
            _live.remove(obj)


def run_all_cleanups():
    while True:
        with _live_lock:
            if not _live:
                return
            obj = _live.pop()
        try:
            obj.stop()
        except BaseException as e:  # keep cleaning up
            log(f"cleanup of {obj!r} failed: {e}")


atexit.register(run_all_cleanups)


def _install_signal_handlers():
    def handler(signum, frame):
        signal.signal(signum, signal.SIG_IGN)
        # KeyboardInterrupt passes through unittest (SystemExit would be recorded as an error
        # and the run would go on); atexit then stops everything.
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


class TempDir:
    """A temp dir removed on stop(). Mode 0755 so that polkitd and the test users can reach
    sockets and files inside it."""

    def __init__(self, prefix="vfm-it-", mode=0o755, tracked=True, parent=None):
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        os.chmod(self.path, mode)
        if tracked:  # owned dirs are removed by their owner's stop(), after the owner stopped
            track(self)

    def __truediv__(self, other):
        return self.path / other

    def __str__(self):
        return str(self.path)

    def __repr__(self):
        return f"TempDir({self.path})"

    def stop(self):
        untrack(self)
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)


def pid_alive(pid):
    """True while pid exists and is not a zombie (the sandbox init reaps orphans late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = text[text.rfind(")") + 2:].split()[0]
    return state not in ("Z", "X")


def open_fds(pid):
    """{fd: what it refers to} for a process: readlink of /proc/PID/fd/* ("socket:[N]",
    "/memfd:NAME (deleted)", "anon_inode:[eventpoll]"...). Descriptors closed meanwhile are skipped."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            pass
    return out


def stop_pid(pid, timeout=10.0, sig=signal.SIGTERM):
    """Stops a process that is not our child (e.g. a --fork'ed dbus-daemon) by its PID."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.01)
    log(f"pid {pid} ignored signal {sig}, sending SIGKILL")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def stop_child(proc, timeout=10.0, sig=signal.SIGTERM):
    """Stops a subprocess.Popen child by PID; returns its exit status (negative: signal)."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} ignored signal {sig}, sending SIGKILL")
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def wait_until(predicate, timeout, interval=0.01, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def clean_env(**extra):
    """The environment for children: ours minus anything that would point them at the host's
    buses, journal or service manager."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DBUS_", "LISTEN_", "NOTIFY_SOCKET", "JOURNAL_STREAM",
                                "WATCHDOG_", "SYSTEMD_", "INVOCATION_ID"))}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C.UTF-8"
    env.update({k: str(v) for k, v in extra.items()})
    return env


# --------------------------------------------------------------------------------------------
# Users


def user_cmd(user, cmd, env=None):
    """A command line running cmd as user (uid, primary gid and supplementary groups)."""
    if user is None or user == "root":
        prefix = []
    else:
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
    envargs = ["env"] + [f"{k}={v}" for k, v in (env or {}).items()] if env else []
    return prefix + envargs + list(cmd)


def _getent(db, name):
    return subprocess.run(["getent", db, name], capture_output=True, text=True).returncode == 0


class TestUsers:
    """vfmtest (no extra groups) and vfmadm (member of vfmadmin). Creates what is missing and
    removes on stop() only what it created."""

    def __init__(self):
        self.created_users = []
        self.created_groups = []

    def __repr__(self):
        return f"TestUsers(created={self.created_users + self.created_groups})"

    def _run(self, *cmd):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")

    def start(self):
        track(self)
        if not _getent("group", ADMIN_GROUP):
            self._run("groupadd", "-r", ADMIN_GROUP)
            self.created_groups.append(ADMIN_GROUP)
        for user, groups in ((TEST_USER, []), (ADMIN_USER, [ADMIN_GROUP])):
            if _getent("passwd", user):
                continue
            cmd = ["useradd", "-M", "-r", "-U", "-s", "/usr/sbin/nologin"]
            if groups:
                cmd += ["-G", ",".join(groups)]
            self._run(*cmd, user)
            self.created_users.append(user)
        # Whoever created them, they must look as the tests expect.
        groups = subprocess.run(["id", "-nG", ADMIN_USER], capture_output=True, text=True).stdout.split()
        if ADMIN_GROUP not in groups:
            raise RuntimeError(f"existing user {ADMIN_USER} is not in group {ADMIN_GROUP}")
        groups = subprocess.run(["id", "-nG", TEST_USER], capture_output=True, text=True).stdout.split()
        if ADMIN_GROUP in groups:
            raise RuntimeError(f"existing user {TEST_USER} is in group {ADMIN_GROUP}")
        return self

    def uid(self, user):
        return int(subprocess.run(["id", "-u", user], capture_output=True, text=True, check=True).stdout)

    def stop(self):
        untrack(self)
        for user in reversed(self.created_users):
            r = subprocess.run(["userdel", user], capture_output=True, text=True)
            if r.returncode != 0:
                log(f"userdel {user}: {r.stderr.strip()}")
            if _getent("group", user):  # the -U group, if userdel left it
                subprocess.run(["groupdel", user], capture_output=True)
        for group in reversed(self.created_groups):
            r = subprocess.run(["groupdel", group], capture_output=True, text=True)
            if r.returncode != 0:
                log(f"groupdel {group}: {r.stderr.strip()}")
        self.created_users.clear()
        self.created_groups.clear()


# --------------------------------------------------------------------------------------------
# busctl: calls, properties, errors with their D-Bus names


class DBusError(Exception):
    def __init__(self, name, message, stderr=""):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.stderr = stderr


class BusctlError(Exception):
    """busctl failed without a D-Bus error reply (bad invocation, connection refused...)."""


def split_signature(sig):
    """Splits a D-Bus signature into its single complete types."""
    out, i = [], 0
    while i < len(sig):
        j = _complete_type_end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _complete_type_end(sig, i):
    c = sig[i]
    if c == "a":
        return _complete_type_end(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        depth, j = 0, i
        while j < len(sig):
            if sig[j] in "({":
                depth += 1
            elif sig[j] in ")}":
                depth -= 1
                if depth == 0:
                    if sig[j] != close:
                        raise ValueError(f"bad signature {sig!r}")
                    return j + 1
            j += 1
        raise ValueError(f"unbalanced signature {sig!r}")
    return i + 1


def busctl_args(sig, values):
    """Turns Python values into busctl's textual argument list for signature sig.
    Variants are (signature, value) pairs; dicts for a{..}; lists for arrays; tuples for structs."""
    types = split_signature(sig)
    if len(types) != len(values):
        raise ValueError(f"signature {sig!r} needs {len(types)} values, got {len(values)}")
    out = []
    for t, v in zip(types, values):
        _encode(t, v, out)
    return out


def _encode(t, v, out):
    if t == "v":
        vt, vv = v
        out.append(vt)
        _encode(vt, vv, out)
    elif t.startswith("a{"):
        kt, vt = split_signature(t[2:-1])
        out.append(str(len(v)))
        for k, val in v.items():
            _encode(kt, k, out)
            _encode(vt, val, out)
    elif t.startswith("a"):
        out.append(str(len(v)))
        for e in v:
            _encode(t[1:], e, out)
    elif t.startswith("("):
        for ft, fv in zip(split_signature(t[1:-1]), v):
            _encode(ft, fv, out)
    elif t == "b":
        out.append("true" if v else "false")
    else:
        out.append(str(v))


_ERROR_LINE = re.compile(r"Got message type=error .* error-name=(\S+) error-message=(.*)$")


class BusClient:
    """Talks to a bus address with busctl, optionally as another user."""

    def __init__(self, address, user=None, timeout=30):
        self.address = address
        self.user = user
        self.timeout = timeout

    def as_user(self, user):
        return BusClient(self.address, user, self.timeout)

    def busctl(self, *args, json_mode="short", check=True, debug=False):
        cmd = ["busctl", f"--address={self.address}", f"--timeout={self.timeout}"]
        if json_mode:
            cmd.append(f"--json={json_mode}")
        cmd += ["--"] + [str(a) for a in args]
        env = clean_env()
        if debug:
            # sd-bus logs every received message at debug level, including the error name --
            # the one place busctl shows it ("Call failed:" prints only the message).
            env["SYSTEMD_LOG_LEVEL"] = "debug"
        r = subprocess.run(user_cmd(self.user, cmd), capture_output=True, text=True, env=env,
                           timeout=self.timeout + 15)
        if check and r.returncode != 0:
            m = None
            for line in r.stderr.splitlines():
                mm = _ERROR_LINE.search(line)
                if mm:
                    m = mm
            if m:
                raise DBusError(m.group(1), m.group(2), r.stderr)
            raise BusctlError(f"{' '.join(cmd)}: rc={r.returncode}: {r.stderr.strip()}")
        return r

    def call(self, path, iface, method, sig="", *args, dest=BUS_NAME):
        """Calls a method; returns the reply's values as a list (busctl's JSON 'data')."""
        r = self.busctl("call", dest, path, iface, method, *([sig] + busctl_args(sig, args) if sig else []),
                        debug=True)
        out = r.stdout.strip()
        if not out:
            return []
        return json.loads(out)["data"]

    def call1(self, *a, **kw):
        data = self.call(*a, **kw)
        if len(data) != 1:
            raise AssertionError(f"expected one return value, got {data!r}")
        return data[0]

    def get_property(self, path, iface, name, dest=BUS_NAME):
        r = self.busctl("get-property", dest, path, iface, name, debug=True)
        return json.loads(r.stdout)["data"]

    def get_all(self, path, iface, dest=BUS_NAME):
        """{name: (signature, value)}"""
        data = self.call1(path, PROPS_IFACE, "GetAll", "s", iface, dest=dest)
        return {k: (v["type"], v["data"]) for k, v in data.items()}

    def introspect_xml(self, path, dest=BUS_NAME):
        r = self.busctl("call", dest, path, "org.freedesktop.DBus.Introspectable", "Introspect", debug=True)
        return json.loads(r.stdout)["data"][0]

    # bus driver helpers
    def name_has_owner(self, name):
        return self.call1("/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s", name,
                          dest="org.freedesktop.DBus")

    def name_owner_uid(self, name):
        owner = self.call1("/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", "s", name,
                           dest="org.freedesktop.DBus")
        return self.call1("/org/freedesktop/DBus", "org.freedesktop.DBus", "GetConnectionUnixUser", "s",
                          owner, dest="org.freedesktop.DBus")

    def name_owner_pid(self, name):
        owner = self.call1("/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", "s", name,
                           dest="org.freedesktop.DBus")
        return self.call1("/org/freedesktop/DBus", "org.freedesktop.DBus", "GetConnectionUnixProcessID",
                          "s", owner, dest="org.freedesktop.DBus")

    def wait_for_name(self, name, timeout=10.0, proc=None, what=None):
        """Waits until name is owned; fails early if proc (a Popen) exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.name_has_owner(name):
                return
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what or proc.args[0]} exited with {proc.returncode} before owning {name}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} not owned after {timeout}s")
            time.sleep(0.01)

    # vfiomigd shorthands
    def manager(self, method, sig="", *args):
        return self.call(MANAGER_PATH, MANAGER_IFACE, method, sig, *args)

    def device(self, path, method, sig="", *args):
        return self.call(path, DEVICE_IFACE, method, sig, *args)

    def dev_prop(self, path, name):
        return self.get_property(path, DEVICE_IFACE, name)

    def mgr_prop(self, name):
        return self.get_property(MANAGER_PATH, MANAGER_IFACE, name)


# --------------------------------------------------------------------------------------------
# Private system bus (systemd-harness.md §1)

_SYSTEM_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- A private system bus for vfiomigd's integration tests: the stock policy of
     /usr/share/dbus-1/system.conf without user, fork, servicehelper, syslog and activation. -->
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <pidfile>{pidfile}</pidfile>

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
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Containers1"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>

  <!-- root may monitor the bus (busctl monitor). -->
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>

  <!-- brings polkit's own policy (polkitd may own org.freedesktop.PolicyKit1) -->
  <includedir>/usr/share/dbus-1/system.d</includedir>
  <!-- the project's policy/org.vfiomig1.conf, copied here -->
  <includedir>{confdir}</includedir>
</busconfig>
"""


class PrivateBus:
    """dbus-daemon --fork with a system-bus configuration in a temp dir and the project's bus
    policy (policy/org.vfiomig1.conf). extra_policies: {filename: xml} added beside it."""

    def __init__(self, extra_policies=None, base_dir=None):
        self.extra_policies = extra_policies or {}
        self.base_dir = base_dir
        self.pid = None
        self.address = None
        self.dir = None

    def __repr__(self):
        return f"PrivateBus(pid={self.pid}, address={self.address})"

    def start(self):
        track(self)
        self.dir = TempDir("vfm-bus-", tracked=False, parent=self.base_dir)
        confdir = self.dir / "system.d"
        rundir = self.dir / "run"
        confdir.mkdir(mode=0o755)
        rundir.mkdir(mode=0o755)
        shutil.copy(BUS_POLICY, confdir / "org.vfiomig1.conf")
        for name, xml in self.extra_policies.items():
            (confdir / name).write_text(xml)
        self.socket = rundir / "system_bus_socket"
        conf = self.dir / "system.conf"
        conf.write_text(_SYSTEM_CONF.format(socket=self.socket, pidfile=rundir / "dbus.pid",
                                            confdir=confdir))
        # --print-address=1: without "=1" the optional fd argument eats the next word.
        r = subprocess.run(["dbus-daemon", f"--config-file={conf}", "--fork", "--print-address=1",
                            "--print-pid=1"], capture_output=True, text=True, timeout=30, env=clean_env(),
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"dbus-daemon failed (rc={r.returncode}): {r.stderr.strip()}")
        lines = r.stdout.split()
        self.pid = int(lines[1])
        self.address = f"unix:path={self.socket}"
        self.client = BusClient(self.address)
        log(f"private bus pid={self.pid} at {self.address}")
        return self

    def stop(self):
        untrack(self)
        if self.pid is not None:
            stop_pid(self.pid)
            self.pid = None
        if self.dir is not None:
            self.dir.stop()
            self.dir = None


# --------------------------------------------------------------------------------------------
# vfiomigd


class Daemon:
    """The real vfiomigd on a private bus, stderr (its log) captured to a file."""

    def __init__(self, bus, allow_simulated=True, config=None, log_level="debug", args=(), user=None,
                 wrapper=(), env=None, pass_fds=()):
        """wrapper: a command line the daemon runs under (e.g. systemd-socket-activate ...);
        env: extra environment variables; pass_fds: descriptors the child inherits."""
        self.bus = bus
        self.allow_simulated = allow_simulated
        self.config = config
        self.log_level = log_level
        self.args = list(args)
        self.user = user
        self.wrapper = list(wrapper)
        self.env = dict(env or {})
        self.pass_fds = tuple(pass_fds)
        self.proc = None
        self.dir = None
        self.returncode = None

    def __repr__(self):
        return f"Daemon(pid={self.proc.pid if self.proc else None})"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def command(self):
        cmd = [str(DAEMON)]
        if self.allow_simulated:
            cmd.append("--allow-simulated")
        if self.config is not None:
            path = self.dir / "vfiomigd.json"
            path.write_text(json.dumps(self.config) if not isinstance(self.config, str) else self.config)
            os.chmod(path, 0o644)
            cmd += ["--config", str(path)]
        if self.log_level:
            cmd.append(f"--log-level={self.log_level}")
        return cmd + self.args

    def start(self, timeout=10.0, wait=True):
        """Starts it and (wait=True) waits until it owns org.vfiomig1."""
        track(self)
        self.dir = TempDir("vfm-daemon-", tracked=False)
        self.log_path = self.dir / "vfiomigd.log"
        cmd = self.wrapper + self.command()
        logf = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(user_cmd(self.user, cmd), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, pass_fds=self.pass_fds,
                                         env=clean_env(DBUS_SYSTEM_BUS_ADDRESS=self.bus.address, **self.env))
        finally:
            logf.close()
        log(f"vfiomigd pid={self.proc.pid}: {' '.join(cmd)}")
        if not wait:
            return self
        try:
            self.bus.client.wait_for_name(BUS_NAME, timeout, proc=self.proc, what="vfiomigd")
        except Exception as e:
            raise RuntimeError(f"{e}\n--- vfiomigd log ---\n{self.log()}") from None
        return self

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout=10.0):
        """SIGTERM, wait; returns the exit status."""
        self.returncode = stop_child(self.proc, timeout)
        return self.returncode

    def stop(self, expect=0):
        """Stops it (SIGTERM) and checks the exit status; dumps the log on a mismatch."""
        untrack(self)
        rc = None
        if self.proc is not None:
            rc = self.terminate()
        log_text = self.log()
        started, self.proc = self.proc is not None, None
        if self.dir is not None:
            self.dir.stop()
            self.dir = None
        if not started:
            return None
        if expect is not None and rc != expect:
            raise AssertionError(f"vfiomigd exited with {rc}, expected {expect}\n--- vfiomigd log ---\n{log_text}")
        return rc


# --------------------------------------------------------------------------------------------
# busctl monitor


class Monitor:
    """busctl monitor --json=short in the background, collecting messages."""

    def __init__(self, address, names=(BUS_NAME,)):
        self.address = address
        self.names = list(names)
        self.proc = None
        self.messages = []
        self.cond = threading.Condition()

    def __repr__(self):
        return f"Monitor(pid={self.proc.pid if self.proc else None})"

    def start(self, timeout=10.0):
        track(self)
        self.proc = subprocess.Popen(["busctl", f"--address={self.address}", "monitor", "--json=short"] + self.names,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=clean_env())
        self.stderr_lines = []
        ready = threading.Event()

        def read_out():
            for line in self.proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                with self.cond:
                    self.messages.append(msg)
                    self.cond.notify_all()

        def read_err():
            for line in self.proc.stderr:
                text = line.decode(errors="replace")
                self.stderr_lines.append(text)
                if "Monitoring bus message stream" in text:
                    ready.set()

        self.threads = [threading.Thread(target=read_out, daemon=True),
                        threading.Thread(target=read_err, daemon=True)]
        for t in self.threads:
            t.start()
        if not ready.wait(timeout):
            raise RuntimeError("busctl monitor did not start: " + "".join(self.stderr_lines))
        return self

    def signals(self, member=None, interface=None, path=None):
        with self.cond:
            msgs = list(self.messages)
        return [m for m in msgs if m.get("type") == "signal"
                and (member is None or m.get("member") == member)
                and (interface is None or m.get("interface") == interface)
                and (path is None or m.get("path") == path)]

    def wait_for(self, predicate, timeout=10.0, what="a message"):
        """Waits for a collected message with predicate(msg) true; returns it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout}s; saw {len(self.messages)} messages:\n"
                                         + "\n".join(json.dumps(m) for m in self.messages[-30:]))
                self.cond.wait(left)

    def clear(self):
        with self.cond:
            self.messages.clear()

    def stop(self):
        untrack(self)
        if self.proc is not None:
            stop_child(self.proc, 5)
            for t in self.threads:
                t.join(2)
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.proc = None


def properties_changed(msg, path=None, prop=None, iface=DEVICE_IFACE):
    """True if msg is a PropertiesChanged signal (for path) changing or invalidating prop."""
    if msg.get("type") != "signal" or msg.get("member") != "PropertiesChanged" \
            or msg.get("interface") != PROPS_IFACE:
        return False
    if path is not None and msg.get("path") != path:
        return False
    data = msg.get("payload", {}).get("data", [])
    if len(data) != 3 or data[0] != iface:
        return False
    return prop is None or prop in data[1] or prop in data[2]


# --------------------------------------------------------------------------------------------
# polkitd on the private bus (systemd-harness.md §4)

TEST_RULE = """// vfiomigd integration tests: members of the vfmadmin group may do every org.vfiomig1 action.
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.vfiomig1.") == 0 && subject.isInGroup("vfmadmin")) {
        return polkit.Result.YES;
    }
});
"""


class Polkitd:
    """/usr/lib/polkit-1/polkitd, as root (it drops to polkitd itself), in a private mount
    namespace where temp dirs replace its actions and rules directories."""

    POLKITD = "/usr/lib/polkit-1/polkitd"

    def __init__(self, bus, rules=TEST_RULE, actions=(POLKIT_POLICY,)):
        self.bus = bus
        self.rules = rules
        self.actions = list(actions)
        self.proc = None
        self.dir = None

    def __repr__(self):
        return f"Polkitd(pid={self.proc.pid if self.proc else None})"

    def start(self, timeout=15.0):
        track(self)
        self.dir = TempDir("vfm-polkit-", tracked=False)
        actions = self.dir / "actions"
        share_rules = self.dir / "rules.d"
        etc_rules = self.dir / "etc-rules.d"
        for d in (actions, share_rules, etc_rules):
            d.mkdir(mode=0o755)
        for f in Path("/usr/share/polkit-1/actions").glob("*.policy"):
            shutil.copy(f, actions)
        for f in self.actions:
            shutil.copy(f, actions)
        if self.rules:
            (etc_rules / "50-vfiomig-test.rules").write_text(self.rules)
        for d in (actions, share_rules, etc_rules):
            for f in d.iterdir():
                os.chmod(f, 0o644)
        script = (f"set -e\n"
                  f"mount --bind {actions} /usr/share/polkit-1/actions\n"
                  f"mount --bind {share_rules} /usr/share/polkit-1/rules.d\n"
                  f"mount --bind {etc_rules} /etc/polkit-1/rules.d\n"
                  f"exec {self.POLKITD} --no-debug\n")
        self.log_path = self.dir / "polkitd.log"
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         env=clean_env(DBUS_SYSTEM_BUS_ADDRESS=self.bus.address))
        log(f"polkitd pid={self.proc.pid}")
        try:
            self.bus.client.wait_for_name(POLKIT_NAME, timeout, proc=self.proc, what="polkitd")
        except Exception as e:
            raise RuntimeError(f"{e}\n--- polkitd log ---\n{self.log()}") from None
        return self

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def stop(self):
        untrack(self)
        if self.proc is not None:
            stop_child(self.proc, 10)
            self.proc = None
        if self.dir is not None:
            self.dir.stop()
            self.dir = None


# --------------------------------------------------------------------------------------------
# systemd --user as a non-PID-1 service manager with a private journald (systemd-harness.md §2)

_USER_MANAGER_SCRIPT = r"""
# Runs inside: unshare --mount --propagation private sh THIS
set -e
# On a booted host /run is a tmpfs mount. Where it is not (this CI's sandbox), services with
# MountAPIVFS= implied (ProtectProc=, ProtectKernelTunables=...) would get an empty tmpfs over it,
# hiding the private bus socket: make it a mount point, as on a real host.
mountpoint -q /run || mount --bind /run /run
mount -t tmpfs tmpfs /run/systemd
mkdir /run/systemd/system                     # sd_booted() -> true
I=/run/systemd/inaccessible
mkdir $I; mkdir -m0 $I/dir; install -m0 /dev/null $I/reg
mkfifo -m0 $I/fifo; mknod -m0 $I/chr c 0 0; mknod -m0 $I/blk b 0 0
/usr/bin/python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' $I/sock
chmod 0 $I/sock
mount --bind {log} /run/log
# The private journald must neither read the host's kernel log nor write its own messages there.
mount --bind /dev/null /dev/kmsg
mkdir /run/systemd/journald.conf.d
printf "[Journal]\nStorage=volatile\n" > /run/systemd/journald.conf.d/volatile.conf
/lib/systemd/systemd-journald &
J=$!
set +e
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME={home} \
    XDG_RUNTIME_DIR={xdg} SYSTEMD_UNIT_PATH={units}: SYSTEMD_LOG_TARGET=journal \
    /lib/systemd/systemd --user &
M=$!
echo $M > {dir}/manager.pid
trap 'kill -TERM $M' TERM
wait $M
wait $M
rc=$?
kill -TERM $J
wait $J
exit $rc
"""

_CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")


def _cgroup_layout():
    """Where a private cgroup for the manager goes: hybrid (v1 name=systemd + unified) or pure v2."""
    if os.path.isdir("/sys/fs/cgroup/systemd") and os.path.exists("/sys/fs/cgroup/unified/cgroup.procs"):
        return list(_CGROUP_ROOTS)
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return ["/sys/fs/cgroup"]
    if os.path.isdir("/sys/fs/cgroup/systemd"):
        return ["/sys/fs/cgroup/systemd"]
    return []


class SystemdUserManager:
    """systemd --user, not PID 1, with its own unit dir, XDG_RUNTIME_DIR and journald."""

    SYSTEMD = "/lib/systemd/systemd"
    _counter = 0

    def __init__(self):
        self.proc = None
        self.dir = None
        self.cgroups = []

    def __repr__(self):
        return f"SystemdUserManager(pid={self.proc.pid if self.proc else None})"

    def start(self, timeout=20.0):
        track(self)
        SystemdUserManager._counter += 1
        # Under /run, not /tmp: XDG_RUNTIME_DIR holds the manager's notify socket, which services
        # with PrivateTmp=yes could not reach under /tmp (a real one is /run/user/UID).
        self.dir = TempDir("vfm-sdu-", tracked=False, parent="/run")
        self.units = self.dir / "units"
        self.xdg = self.dir / "xdg"
        self.home = self.dir / "home"
        self.logdir = self.dir / "log"
        for d in (self.units, self.home, self.logdir):
            d.mkdir(mode=0o755)
        self.xdg.mkdir(mode=0o700)
        self.cgname = f"vfm-it-{os.getpid()}-{SystemdUserManager._counter}"
        roots = _cgroup_layout()
        if not roots:
            raise RuntimeError("no usable cgroup hierarchy")
        self.cgroups = []
        for r in roots:
            p = Path(r) / self.cgname
            p.mkdir()
            self.cgroups.append(p)
        script = self.dir / "run-user-manager.sh"
        script.write_text(_USER_MANAGER_SCRIPT.format(log=self.logdir, home=self.home, xdg=self.xdg,
                                                      units=self.units, dir=self.dir))
        cg_moves = "; ".join(f"echo $$ > {p}/cgroup.procs" for p in self.cgroups)
        self.log_path = self.dir / "wrapper.log"
        with open(self.log_path, "wb") as logf:
            # The shell moves itself into the private cgroups, then execs unshare, which execs
            # the script's shell: self.proc.pid is that shell, the manager and journald its children.
            self.proc = subprocess.Popen(
                ["sh", "-c", f"{cg_moves}; exec unshare --mount --propagation private sh {script}"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=clean_env())
        log(f"systemd --user wrapper pid={self.proc.pid}, cgroup /{self.cgname}")
        try:
            wait_until(lambda: self._system_state() == "running" or self.proc.poll() is not None,
                       timeout, 0.02, "SystemState=running")
            if self.proc.poll() is not None:
                raise RuntimeError(f"user manager exited with {self.proc.returncode}")
        except Exception as e:
            raise RuntimeError(f"{e}\n--- wrapper log ---\n{self.log()}\n--- journal ---\n"
                               f"{self.journal(check=False)}") from None
        self.manager_pid = int((self.dir / "manager.pid").read_text())
        return self

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def env(self):
        return clean_env(XDG_RUNTIME_DIR=self.xdg)

    def _system_state(self):
        r = subprocess.run(["systemctl", "--user", "show", "-p", "SystemState", "--value"],
                           capture_output=True, text=True, env=self.env(), timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None

    def systemctl(self, *args, check=True, timeout=60):
        r = subprocess.run(["systemctl", "--user", "--no-pager"] + list(args), capture_output=True, text=True,
                           env=self.env(), timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"systemctl --user {' '.join(args)}: rc={r.returncode}: {r.stderr.strip()}")
        return r

    def install_unit(self, name, text):
        (self.units / name).write_text(text)
        self.systemctl("daemon-reload")

    def show(self, unit, *props):
        r = self.systemctl("show", unit, "-p", ",".join(props))
        out = {}
        for line in r.stdout.splitlines():
            k, _, v = line.partition("=")
            out[k] = v
        return out

    def unit_cgroup(self, unit):
        return f"/{self.cgname}/app.slice/{unit}"

    def journal(self, *args, check=True):
        jdir = self.logdir / "journal"
        if not jdir.exists():
            if check:
                raise RuntimeError("the private journald wrote no journal")
            return ""
        # The daemon logs UTF-8 (state arrows); undecodable bytes must not fail a test.
        r = subprocess.run(["journalctl", "-D", str(jdir), "--no-pager"] + list(args), capture_output=True,
                           encoding="utf-8", errors="replace", timeout=30, env=clean_env())
        if check and r.returncode != 0:
            raise RuntimeError(f"journalctl: {r.stderr.strip()}")
        return r.stdout

    def _cgroup_pids(self):
        pids = set()
        for cg in self.cgroups:
            for dirpath, _dirs, files in os.walk(cg):
                if "cgroup.procs" in files:
                    try:
                        pids.update(int(x) for x in Path(dirpath, "cgroup.procs").read_text().split())
                    except OSError:
                        pass
        return pids

    def stop(self):
        untrack(self)
        if self.proc is not None:
            if self.proc.poll() is None:
                r = subprocess.run(["systemctl", "--user", "exit"], capture_output=True, text=True,
                                   env=self.env(), timeout=30)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    log(f"user manager did not exit ({r.stderr.strip()}), SIGTERM to wrapper {self.proc.pid}")
                    stop_child(self.proc, 10)
            self.proc = None
        # Whatever is left in our cgroups was started by our manager: stop it by PID.
        for pid in self._cgroup_pids():
            log(f"leftover pid {pid} in /{self.cgname}, stopping it")
            stop_pid(pid, 5)
        for cg in self.cgroups:
            for dirpath, _dirs, _files in sorted(os.walk(cg), key=lambda t: -len(t[0])):
                try:
                    os.rmdir(dirpath)
                except OSError as e:
                    log(f"rmdir {dirpath}: {e}")
        self.cgroups = []
        if self.dir is not None:
            self.dir.stop()
            self.dir = None


# --------------------------------------------------------------------------------------------
# Fixtures


class DaemonTestCase(unittest.TestCase):
    """A private bus and a vfiomigd per test class (setUpClass), both stopped in tearDownClass;
    devices a test attaches are detached in its tearDown when it forgets."""

    daemon_kwargs = {}

    @classmethod
    def setUpClass(cls):
        cls.bus = PrivateBus().start()
        cls.addClassCleanup(cls.bus.stop)
        cls.daemon = Daemon(cls.bus, **cls.daemon_kwargs)
        cls.addClassCleanup(cls._stop_daemon)
        cls.daemon.start()
        cls.client = cls.bus.client

    @classmethod
    def _stop_daemon(cls):
        # The daemon must exit 0 on SIGTERM; a class cleanup error reports it (with its log).
        if cls.daemon.proc is not None:
            cls.daemon.stop(expect=0)

    def run(self, result=None):
        # When a test fails, show what the daemon logged meanwhile (its log dir goes at teardown).
        bad = (lambda: len(result.failures) + len(result.errors)) if result is not None else (lambda: 0)
        before = bad()
        out = super().run(result)
        if bad() > before:
            log(f"--- vfiomigd log (the end) after {self.id()} failed ---\n{self.daemon.log()[-6000:]}")
        return out

    def tearDown(self):
        if self.daemon.alive():
            # Leave the daemon with no devices for the next test.
            for dev_id, _addr, path in self.list_devices():
                try:
                    state = self.client.dev_prop(path, "State")
                    if state != "running":
                        self.client.device(path, "Reset")
                    self.client.manager("DetachDevice", "s", dev_id)
                except (DBusError, BusctlError) as e:
                    log(f"tearDown: could not detach {dev_id}: {e}")

    def list_devices(self):
        return [tuple(d) for d in self.client.manager("ListDevices")[0]]

    def attach(self, address, options=None):
        return self.client.call1(MANAGER_PATH, MANAGER_IFACE, "AttachDevice", "sa{sv}", address, options or {})

    def assertDBusError(self, name, fn, *args, **kwargs):
        """Calls fn, expecting a DBusError named name; returns the error."""
        try:
            value = fn(*args, **kwargs)
        except DBusError as e:
            self.assertEqual(e.name, name, f"wrong error ({e.message})")
            return e
        self.fail(f"expected {name}, call returned {value!r}")
