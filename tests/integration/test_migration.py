#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Device-state streaming between two real vfiomigd, each on its own private system bus.

The daemons listen for migrations on 127.0.0.1:0 (--stream-listen); PrepareIncoming returns the
port the kernel chose. Simulated devices carry self-checking streams, and SimDevice.StateDigest
proves every byte arrived: destination devices are attached with a different seed than their
source, so equal digests after a migration mean the state travelled. What is covered:

* Transfers: sizes from 1 byte to 64 MiB, every flag set (stop-copy; +p2p; +pre-copy), 1, 2, 4 and
  8 channels, io_uring and blocking I/O, a group of three devices in one job, per-device blobs,
  run=true, a bandwidth limit, the Migration object's properties, signals and ListMigrations.
* Pre-copy with a dirtying device: manual switchover (the job waits in precopy while data keeps
  flowing, until Switchover()) and automatic switchover.
* Cancel in setup, precopy and stop-copy, from either side; a peer killed (SIGKILL) mid-stream.
* A hostile source speaking the wire protocol (proto/stream-protocol.md) over a raw socket: wrong
  token, bad HELLO checksum, incompatible device, a DATA payload with a bad CRC, a repeated
  sequence number, an oversize length, and floods of packets ahead of the frontier (in and out of
  the reassembly window) with the daemon's memory measured around them.
* Refusals that change nothing (bad tokens, peers, options, busy or unknown devices, limits).
* vfiomigctl incoming / migrate / jobs / job / cancel / blob with --json.
* The stream socket passed by the service manager (systemd-socket-activate, and LISTEN_FDS by
  hand with FileDescriptorName=stream).

Known daemon bugs keep their checks and are marked expected failures (their reasons say what is
wrong); VFM_SHOW_KNOWN_BUGS=1 runs them as ordinary tests. An expected failure that starts to pass
fails the run ("unexpected success"): remove its marker then.

Standard library only. Everything started here is stopped by PID (harness.py).
"""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire  # noqa: E402
import harness as h  # noqa: E402
import stream_wire  # noqa: E402
from harness import MANAGER_IFACE, MANAGER_PATH  # noqa: E402

MIGRATION_IFACE = "org.vfiomig1.Migration"
DEVICE_IFACE = h.DEVICE_IFACE
SIM_IFACE = h.SIM_DEVICE_IFACE

E = "org.vfiomig1.Error."
E_INVALID_ARGS = h.E_INVALID_ARGS
E_BUSY = E + "Busy"
E_NO_SUCH_DEVICE = E + "NoSuchDevice"
E_NOT_MIGRATABLE = E + "NotMigratable"
E_LIMIT_EXCEEDED = E + "LimitExceeded"
E_P2P_REQUIRED = E + "P2PRequired"
E_PEER_UNREACHABLE = E + "PeerUnreachable"
E_PEER_REJECTED = E + "PeerRejected"
E_PEER_VIOLATION = E + "PeerViolation"
E_PEER_ABORTED = E + "PeerAborted"
E_PEER_LOST = E + "PeerLost"
E_CANCELLED = E + "Cancelled"

FINAL = ("completed", "failed", "cancelled")
KiB, MiB = 1 << 10, 1 << 20

SC, P2P, PRE = "stop-copy", "p2p", "pre-copy"
FLAG_BITS = {SC: 1, P2P: 2, PRE: 4}  # VFIO_MIGRATION_*

# Options of StartMigration / PrepareIncoming and their D-Bus types (proto/vfiomig1.h).
OPTION_TYPES = {"channels": "u", "precopy": "b", "bandwidth-limit": "t", "switchover": "s",
                "downtime-limit": "t", "io-uring": "b", "run": "b", "reassembly-budget": "t",
                "stall-timeout": "t", "setup-timeout": "t", "force-without-p2p": "b"}
SIM_OPTION_TYPES = {"state-size": "t", "precopy-size": "t", "dirty-rate": "t", "flags": "as", "seed": "t",
                    "mtty-quirks": "b", "fail-arcs": "as", "error-arcs": "as", "reinit": "t", "precopy-v2": "b"}


def variants(options, types):
    out = {}
    for k, v in options.items():
        out[k] = v if isinstance(v, tuple) else (types[k], v)
    return out


def unwrap(v):
    return v[1] if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) else v


# --------------------------------------------------------------------------------------------
# CRC32C (Castagnoli, reflected polynomial 0x82F63B78, ~0 in and out), our own.

# The wire protocol (proto/stream-protocol.md), for the hostile client: stream_wire.py.
from stream_wire import (ABORT, ABORT_PROTOCOL, BLOB, COMPLETE, DATA, END, HEADER, HELLO_DEVICE,  # noqa: E402,F401
                         HELLO_FIXED, INITIAL_DONE, INITIAL_LOADED, JOB_DEVICE, REFUSALS, SWITCHOVER, WELCOME,
                         address_tuple, crc32c, hello, packet, parse_header, parse_welcome, recv_exact)


class RawSource(stream_wire.RawSource):
    """One channel of a hostile source, closed by the harness if a test forgets."""

    def __init__(self, address, timeout=10.0):
        super().__init__(address, timeout, track=h.track, untrack=h.untrack)


# --------------------------------------------------------------------------------------------
# One side: a private bus, a vfiomigd listening on 127.0.0.1:0, fast calls over dbus_wire.


class SignalWatcher:
    """A bus connection of its own collecting every signal the daemon sends."""

    def __init__(self, address):
        self.conn = dbus_wire.WireConnection(address)
        self.conn.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                       ("type='signal',sender='org.vfiomig1'",))
        self.conn.sock.settimeout(None)
        self.signals = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        h.track(self)

    def __repr__(self):
        return "SignalWatcher()"

    def _run(self):
        while True:
            try:
                msg = self.conn.receive()
            except (OSError, ConnectionError, ValueError, struct.error):
                return
            if msg.type != dbus_wire.SIGNAL:
                continue
            f = msg.fields
            entry = (f.get(dbus_wire.F_PATH), f.get(dbus_wire.F_INTERFACE), f.get(dbus_wire.F_MEMBER), msg.body)
            with self.cond:
                self.signals.append(entry)
                self.cond.notify_all()

    def find(self, path=None, interface=None, member=None):
        with self.cond:
            return [s for s in self.signals if (path is None or s[0] == path)
                    and (interface is None or s[1] == interface) and (member is None or s[2] == member)]

    def wait(self, path, interface, member, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [s for s in self.signals if s[0] == path and s[1] == interface and s[2] == member]
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {interface}.{member} from {path} within {timeout}s")
                self.cond.wait(left)

    def stop(self):
        h.untrack(self)
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(5)
        self.conn.close()


class Side:
    """A private bus with a vfiomigd on it."""

    def __init__(self, name, extra_args=(), listen="127.0.0.1:0", wrapper=None, config=None):
        """config: a vfiomigd.conf(5) object (e.g. its "tls"); wrapper: a command line the daemon
        runs under (e.g. ip netns exec NS)."""
        self.name = name
        self.extra_args = list(extra_args)
        self.listen = listen
        self.config = config
        self.wrapper = list(wrapper or ())
        self.bus = None
        self.daemon = None
        self.conn = None
        self.watcher = None
        self.counter = 0

    def __repr__(self):
        return f"Side({self.name})"

    def start(self):
        h.track(self)
        self.bus = h.PrivateBus().start()
        self.start_daemon()
        return self

    def daemon_args(self):
        return ([f"--stream-listen={self.listen}"] if self.listen else []) + self.extra_args

    def start_daemon(self):
        self.daemon = h.Daemon(self.bus, args=self.daemon_args(), config=self.config, wrapper=self.wrapper).start()
        self.connect()

    def connect(self):
        self.conn = dbus_wire.WireConnection(self.bus.address, timeout=30)
        self.watcher = SignalWatcher(self.bus.address)

    def disconnect(self):
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def kill9(self):
        """SIGKILL the daemon; returns its log."""
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(10)
        text = self.daemon.log()
        self.daemon.stop(expect=None)
        self.daemon = None
        self.disconnect()
        return text

    def restart_daemon(self):
        """A fresh daemon on the same bus (after a test killed or crashed the old one)."""
        self.disconnect()
        if self.daemon is not None:
            alive = self.daemon.alive()
            rc = self.daemon.stop(expect=None)
            if not alive or rc != 0:
                h.log(f"{self.name}: vfiomigd {'had exited' if not alive else 'exited on SIGTERM'} with {rc}")
        self.start_daemon()

    def stop(self):
        """Stops the daemon (it must exit 0 on SIGTERM) and the bus."""
        h.untrack(self)
        self.disconnect()
        rc, log_text = None, ""
        if self.daemon is not None:
            if self.daemon.proc is not None:
                log_text = self.daemon.log()
                rc = self.daemon.stop(expect=None)
            self.daemon = None
        if self.bus is not None:
            self.bus.stop()
            self.bus = None
        if rc not in (None, 0):
            raise AssertionError(f"{self.name}: vfiomigd exited with {rc} on SIGTERM\n--- its log (the end) ---\n"
                                 f"{log_text[-4000:]}")

    # calls
    def call(self, path, iface, member, sig="", *args):
        return self.conn.call(h.BUS_NAME, path, iface, member, sig, args)

    def call1(self, *a):
        r = self.call(*a)
        assert len(r) == 1, r
        return r[0]

    def prop(self, path, iface, name):
        return unwrap(self.call1(path, h.PROPS_IFACE, "Get", "ss", iface, name))

    def props(self, path, iface):
        return {k: unwrap(v) for k, v in self.call1(path, h.PROPS_IFACE, "GetAll", "s", iface).items()}

    def manager(self, member, sig="", *args):
        return self.call(MANAGER_PATH, MANAGER_IFACE, member, sig, *args)

    def attach(self, name=None, size=1 * MiB, flags=(SC, P2P, PRE), seed=None, **sim):
        if name is None:
            self.counter += 1
            name = f"{self.name}{self.counter}"
        options = {"state-size": size, "flags": list(flags), "dirty-rate": 0}
        if seed is not None:
            options["seed"] = seed
        options.update({k.replace("_", "-"): v for k, v in sim.items()})
        return self.manager("AttachDevice", "sa{sv}", f"sim:{name}", variants(options, SIM_OPTION_TYPES))[0]

    def park_all(self):
        """Leaves every device idle and running, but attached: a finished job keeps pointers to its
        devices, and detaching them makes the daemon read freed memory (a known bug, see
        DetachAfterJob) -- the other tests must not depend on that.
        Names are unique per daemon, so nothing needs detaching; the daemon frees its jobs before
        its devices when it stops."""
        for dev_id, _addr, path in self.manager("ListDevices")[0]:
            try:
                if self.state(path) != "running":
                    self.call(path, DEVICE_IFACE, "Reset")
            except dbus_wire.WireError as e:
                h.log(f"{self.name}: could not reset {dev_id}: {e}")

    def state(self, dev):
        return self.prop(dev, DEVICE_IFACE, "State")

    def digest(self, dev):
        return self.prop(dev, SIM_IFACE, "StateDigest")

    def prepare(self, devices, **options):
        job, token, addresses = self.manager("PrepareIncoming", "aoa{sv}", list(devices),
                                             variants(options, OPTION_TYPES))
        return job, token, addresses

    def start_migration(self, devices, peer, token, **options):
        return self.manager("StartMigration", "aossa{sv}", list(devices), peer, token,
                            variants(options, OPTION_TYPES))[0]

    def job(self, path):
        return self.props(path, MIGRATION_IFACE)

    def phase(self, path):
        return self.prop(path, MIGRATION_IFACE, "Phase")

    def wait_phase(self, path, phases, timeout=20.0):
        phases = (phases,) if isinstance(phases, str) else tuple(phases)
        deadline = time.monotonic() + timeout
        while True:
            p = self.phase(path)
            if p in phases:
                return p
            if p in FINAL or time.monotonic() >= deadline:
                raise AssertionError(f"{self.name}: {path} is {p}, waited for {phases}: {self.job(path)}")
            time.sleep(0.01)

    def wait_final(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            p = self.phase(path)
            if p in FINAL:
                return p
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name}: {path} still {p} after {timeout}s: {self.job(path)}")
            time.sleep(0.01)

    def wait_prop(self, path, iface, name, predicate, timeout=10.0, what=None):
        deadline = time.monotonic() + timeout
        while True:
            v = self.prop(path, iface, name)
            if predicate(v):
                return v
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name}: {path} {name}={v!r}, waited for {what or predicate}")
            time.sleep(0.01)

    def cancel_running_jobs(self):
        for _id, _direction, phase, _bytes, path in self.manager("ListMigrations")[0]:
            if phase not in FINAL:
                try:
                    self.call(path, MIGRATION_IFACE, "Cancel")
                except dbus_wire.WireError as e:
                    h.log(f"{self.name}: cancel {path}: {e}")

    def rss(self):
        return proc_memory(self.daemon.pid)


def reset_peak_rss(pid):
    """Resets VmHWM to the current VmRSS (proc(5): clear_refs, value 5), so that a measurement
    is not hidden by an earlier peak."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        h.log(f"cannot reset the peak RSS of {pid}: {e}")


def proc_memory(pid):
    """{'VmRSS': bytes, 'VmHWM': bytes} of a process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


# --------------------------------------------------------------------------------------------
# Fixtures


class PairCase(unittest.TestCase):
    """A source and a destination daemon per class; every test leaves both without devices."""

    src_args = ()
    dst_args = ()

    @classmethod
    def setUpClass(cls):
        cls.src = Side("src", cls.src_args)
        cls.addClassCleanup(cls.src.stop)
        cls.src.start()
        cls.dst = Side("dst", cls.dst_args)
        cls.addClassCleanup(cls.dst.stop)
        cls.dst.start()

    def run(self, result=None):
        bad = (lambda: len(result.failures) + len(result.errors)) if result is not None else (lambda: 0)
        before = bad()
        t0 = time.monotonic()
        out = super().run(result)
        h.log(f"{self.id()}: {time.monotonic() - t0:.2f} s")
        if bad() > before:
            for side in (self.src, self.dst):
                if side.daemon is not None:
                    h.log(f"--- {side.name} vfiomigd log (the end) after {self.id()} failed ---\n"
                          f"{side.daemon.log()[-5000:]}")
        return out

    def tearDown(self):
        for side in (self.src, self.dst):
            if side.daemon is None or not side.daemon.alive():
                side.restart_daemon()
                continue
            side.cancel_running_jobs()
            side.park_all()

    # assertions
    def assertWireError(self, name, fn, *args, **kwargs):
        try:
            value = fn(*args, **kwargs)
        except dbus_wire.WireError as e:
            self.assertEqual(e.name, name, f"wrong error ({e.message})")
            self.assertTrue(e.message, f"{e.name} without a message")
            return e
        self.fail(f"expected {name}, the call returned {value!r}")

    def pair(self, size, flags=(SC, P2P, PRE), src_opts=None, dst_opts=None, name=None):
        """A source device and its destination twin (same size and flags, another seed)."""
        ps = self.src.attach(name, size=size, flags=flags, seed=0x5EED0000 + size % 9973, **(src_opts or {}))
        pd = self.dst.attach(name, size=size, flags=flags, seed=0xD0570000 + size % 9973, **(dst_opts or {}))
        self.assertNotEqual(self.src.digest(ps), self.dst.digest(pd), "source and destination start out equal")
        return ps, pd

    def migrate(self, src_devs, dst_devs, prepare=None, start=None, timeout=60.0, expect="completed"):
        """Prepares, starts, waits for both jobs; returns (source job, destination job, seconds)."""
        t0 = time.monotonic()
        djob, token, addresses = self.dst.prepare(dst_devs, **(prepare or {}))
        sjob = self.src.start_migration(src_devs, addresses[0], token, **(start or {}))
        s_phase = self.src.wait_final(sjob, timeout)
        d_phase = self.dst.wait_final(djob, timeout)
        took = time.monotonic() - t0
        if expect is not None:
            self.assertEqual((s_phase, d_phase), (expect, expect),
                             f"source: {self.src.job(sjob)}\ndestination: {self.dst.job(djob)}")
        return sjob, djob, took

    def assertMigrated(self, src_devs, dst_devs, digests, dst_state="stop"):
        for ps, pd in zip(src_devs, dst_devs):
            self.assertEqual(self.src.state(ps), "stop", f"source {ps} after completion")
            self.assertEqual(self.dst.state(pd), dst_state, f"destination {pd} after completion")
            self.assertEqual(self.dst.digest(pd), digests[ps], f"{pd}: the state did not arrive exactly")
            self.assertEqual(self.src.digest(ps), digests[ps], f"{ps}: the source state changed after stop")
            self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), "/")
            self.assertEqual(self.dst.prop(pd, DEVICE_IFACE, "Migration"), "/")


def expected_failure_if(condition, reason):
    """Marks a test an expected failure when condition holds: a known daemon bug, the check kept.
    VFM_SHOW_KNOWN_BUGS=1 in the environment runs them as ordinary tests, to see how they fail."""
    def deco(fn):
        if condition and not os.environ.get("VFM_SHOW_KNOWN_BUGS"):
            fn.__doc__ = (fn.__doc__ or "") + f"\n\nEXPECTED FAILURE: {reason}"
            return unittest.expectedFailure(fn)
        return fn
    return deco


# --------------------------------------------------------------------------------------------
# 1. Transfers


class Transfers(PairCase):

    SIZES = (1, 64 * KiB + 1, 3 * MiB, 64 * MiB)
    FLAG_SETS = ((SC,), (SC, P2P), (SC, P2P, PRE))
    CHANNELS = (1, 2, 4, 8)

    def test_matrix(self):
        """Every size with every channel count; the flag sets rotate so each meets each size."""
        cases = []
        for i, size in enumerate(self.SIZES):
            for j, channels in enumerate(self.CHANNELS):
                cases.append((size, self.FLAG_SETS[(i + j) % 3], channels, {}))
        # the blocking-I/O paths: both sides, and each side alone
        cases.append((3 * MiB, (SC, P2P, PRE), 4, {"src": {"io-uring": False}, "dst": {"io-uring": False}}))
        cases.append((64 * MiB, (SC,), 2, {"src": {"io-uring": False}}))
        cases.append((64 * KiB + 1, (SC, P2P), 8, {"dst": {"io-uring": False}}))
        for size, flags, channels, io in cases:
            with self.subTest(size=size, flags=flags, channels=channels, io=io):
                ps, pd = self.pair(size, flags)
                digest = self.src.digest(ps)
                start = {"channels": channels, **io.get("src", {})}
                if PRE in flags:
                    # Switch over as soon as the initial data is loaded (automatic switchover
                    # has its own tests).
                    start["switchover"] = "manual"
                djob, token, addresses = self.dst.prepare([pd], **io.get("dst", {}))
                self.assertEqual(len(token), 64)
                self.assertRegex(token, "^[0-9a-f]{64}$")
                self.assertTrue(addresses and all(a.startswith("127.0.0.1:") for a in addresses), addresses)
                self.assertNotEqual(addresses[0], "127.0.0.1:0")
                t0 = time.monotonic()
                sjob = self.src.start_migration([ps], addresses[0], token, **start)
                if PRE in flags:
                    self.src.call(sjob, MIGRATION_IFACE, "Switchover")
                self.assertEqual(self.src.wait_final(sjob, 60), "completed", self.src.job(sjob))
                self.assertEqual(self.dst.wait_final(djob, 60), "completed", self.dst.job(djob))
                h.log(f"  {size} bytes, {'+'.join(flags)}, {channels} channel(s) {io}: "
                      f"{(time.monotonic() - t0) * 1000:.0f} ms")
                self.assertMigrated([ps], [pd], {ps: digest})
                sj, dj = self.src.job(sjob), self.dst.job(djob)
                stream = h.sim_stream_size(size)
                self.assertEqual(sj["Precopy"], PRE in flags)
                self.assertEqual(sj["Channels"], channels)
                self.assertEqual(dj["Channels"], channels)
                # Every stream byte went over, pre-copy bytes included (no dirtying here).
                self.assertGreaterEqual(sj["BytesTransferred"], stream)
                self.assertEqual(sj["BytesTransferred"], dj["BytesTransferred"])
                self.assertEqual(sj["Error"], "")
                self.assertEqual(dj["ErrorName"], "")
                self.src.call(ps, DEVICE_IFACE, "Reset")
                self.dst.call(pd, DEVICE_IFACE, "Reset")

    def test_job_object(self):
        """The Migration object and the Device.Migration link during and after a job."""
        ps, pd = self.pair(2 * MiB, (SC, P2P, PRE))
        digest = self.src.digest(ps)
        djob, token, addresses = self.dst.prepare([pd], **{"run": True, "stall-timeout": 20000})
        self.assertRegex(djob, r"^/org/vfiomig1/migration/_[1-9][0-9]*$")
        d = self.dst.job(djob)
        self.assertEqual(d["Direction"], "incoming")
        self.assertEqual(d["Phase"], "setup")
        self.assertEqual(d["Devices"], [pd])
        self.assertEqual(d["Error"], "")
        self.assertEqual(self.dst.state(pd), "resuming")
        self.assertEqual(self.dst.prop(pd, DEVICE_IFACE, "Migration"), djob)
        self.assertEqual(self.dst.prop(MANAGER_PATH, MANAGER_IFACE, "StreamAddresses"), addresses)
        self.assertEqual(self.dst.prop(MANAGER_PATH, MANAGER_IFACE, "MaxMigrations"), 8)
        listed = {tuple(x)[4]: tuple(x) for x in self.dst.manager("ListMigrations")[0]}
        self.assertIn(djob, listed)
        self.assertEqual(listed[djob][1:3], ("incoming", "setup"))
        self.assertEqual(listed[djob][0], d["Id"])

        sjob = self.src.start_migration([ps], addresses[0], token, channels=3, switchover="manual",
                                        **{"downtime-limit": 1234})
        s = self.src.job(sjob)
        self.assertEqual(s["Direction"], "outgoing")
        self.assertEqual(s["Devices"], [ps])
        self.assertEqual(s["Channels"], 3)
        self.assertEqual(s["SwitchoverMode"], "manual")
        self.assertEqual(s["DowntimeLimit"], 1234)
        self.assertEqual(s["Peer"], addresses[0])
        self.assertTrue(s["Precopy"])
        self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), sjob)
        self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataLoaded", bool, what="InitialDataLoaded")
        self.assertEqual(self.src.phase(sjob), "precopy")
        self.assertEqual(self.src.state(ps), "pre-copy")
        # A device in a job refuses everything else.
        self.assertWireError(E_BUSY, self.src.call, ps, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
        self.assertWireError(E_BUSY, self.src.manager, "DetachDevice", "s", ps.rsplit("/", 1)[1])
        self.assertWireError(E_BUSY, self.src.call, ps, DEVICE_IFACE, "SetMigrationBlob", "ay", b"late")
        self.assertWireError(E_INVALID_ARGS, self.dst.call, djob, MIGRATION_IFACE, "Switchover")
        self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        self.assertEqual(self.src.wait_final(sjob), "completed")
        self.assertEqual(self.dst.wait_final(djob), "completed")
        # run=true: the destination runs the state it received
        self.assertEqual(self.dst.state(pd), "running")
        self.assertEqual(self.dst.digest(pd), digest)
        self.assertEqual(self.src.state(ps), "stop")
        s, d = self.src.job(sjob), self.dst.job(djob)
        self.assertTrue(s["SwitchoverRequested"])
        self.assertEqual(s["BytesExpected"], s["BytesTransferred"])
        self.assertEqual(d["BytesExpected"], d["BytesTransferred"])
        self.assertEqual(d["Channels"], 3)
        self.assertEqual(s["Rate"], 0)
        self.assertLess(s["Downtime"], 10000)
        for side, job in ((self.src, sjob), (self.dst, djob)):
            sig = side.watcher.wait(job, MIGRATION_IFACE, "Completed")
            self.assertEqual(sig[0][3], ["completed", ""])
            self.assertEqual(len(sig), 1, "Completed sent more than once")
            # Phase changes are announced.
            phases = [body[1].get("Phase") for _p, _i, _m, body in
                      side.watcher.find(job, h.PROPS_IFACE, "PropertiesChanged") if body[0] == MIGRATION_IFACE]
            self.assertIn(("s", "completed"), phases)
        self.assertWireError(E_BUSY, self.src.call, sjob, MIGRATION_IFACE, "Cancel")
        self.assertWireError(E_BUSY, self.src.call, sjob, MIGRATION_IFACE, "Switchover")
        self.assertWireError("org.vfiomig1.Error.NoSuchMigration", self.src.prop,
                             "/org/vfiomig1/migration/_999", MIGRATION_IFACE, "Phase")

    def test_incoming_peer_known(self):
        """The destination learns who connected (migration.h: Peer, 'incoming: once known')."""
        ps, pd = self.pair(64 * KiB, (SC, P2P))
        _sjob, djob, _t = self.migrate([ps], [pd], start={"channels": 1})
        self.assertRegex(self.dst.prop(djob, MIGRATION_IFACE, "Peer"), r"^127\.0\.0\.1:[1-9][0-9]*$")

    def test_group_of_three(self):
        """Three devices of different sizes in one job, with blobs set on two of them."""
        sizes = (1 * MiB, 64 * KiB + 1, 5 * MiB)
        srcs, dsts, digests = [], [], {}
        for size in sizes:
            ps, pd = self.pair(size, (SC, P2P, PRE))
            srcs.append(ps)
            dsts.append(pd)
            digests[ps] = self.src.digest(ps)
        blobs = [bytes(range(256)) * 7 + b"\0end", b"", os.urandom(1 * MiB)]
        for ps, blob in zip(srcs, blobs):
            if blob:
                self.src.call(ps, DEVICE_IFACE, "SetMigrationBlob", "ay", blob)
            self.assertEqual(self.src.call1(ps, DEVICE_IFACE, "GetMigrationBlob"), blob)
        self.assertWireError(E_LIMIT_EXCEEDED, self.src.call, srcs[0], DEVICE_IFACE, "SetMigrationBlob", "ay",
                             bytes(1 * MiB + 1))
        djob, token, addresses = self.dst.prepare(dsts)
        t0 = time.monotonic()
        sjob = self.src.start_migration(srcs, addresses[0], token, channels=4, switchover="manual")
        for ps in srcs:
            self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), sjob)
        for pd in dsts:
            self.assertEqual(self.dst.prop(pd, DEVICE_IFACE, "Migration"), djob)
        self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob), "completed", self.dst.job(djob))
        h.log(f"  group of 3: {(time.monotonic() - t0) * 1000:.0f} ms")
        self.assertMigrated(srcs, dsts, digests)
        self.assertEqual(self.src.prop(sjob, MIGRATION_IFACE, "Devices"), srcs)
        self.assertEqual(self.dst.prop(djob, MIGRATION_IFACE, "Devices"), dsts)
        # the source keeps its blobs (test_blobs_arrive checks the destination's)
        for ps, blob in zip(srcs, blobs):
            self.assertEqual(self.src.call1(ps, DEVICE_IFACE, "GetMigrationBlob"), blob)

    def test_blobs_arrive(self):
        """SetMigrationBlob on the source, GetMigrationBlob on the destination after completion."""
        wrong = []

        def check(side_dev, expected, what):
            got = self.dst.call1(side_dev, DEVICE_IFACE, "GetMigrationBlob")
            if got != expected:
                wrong.append(f"{what}: {len(got)} bytes arrived, {len(expected)} expected")

        # one device, the largest blob
        ps, pd = self.pair(64 * KiB, (SC,))
        blob = os.urandom(1 * MiB)
        self.src.call(ps, DEVICE_IFACE, "SetMigrationBlob", "ay", blob)
        self.migrate([ps], [pd])
        check(pd, blob, "single device")
        # a group: a small blob, none (a stale destination blob must not survive), the largest
        srcs, dsts = [], []
        for size in (1 * MiB, 64 * KiB + 1, 5 * MiB):
            ps, pd = self.pair(size, (SC, P2P))
            srcs.append(ps)
            dsts.append(pd)
        blobs = [b"\x01small\x00", b"", os.urandom(1 * MiB)]
        for ps, b in zip(srcs, blobs):
            if b:
                self.src.call(ps, DEVICE_IFACE, "SetMigrationBlob", "ay", b)
        self.dst.call(dsts[1], DEVICE_IFACE, "SetMigrationBlob", "ay", b"stale")
        self.migrate(srcs, dsts, start={"channels": 4})
        for i, (pd, b) in enumerate(zip(dsts, blobs)):
            check(pd, b, f"group device {i}")
        # again and again: the order of END, BLOB and the commit must not matter
        for round_ in range(4):
            ps1, pd1 = self.pair(64 * KiB, (SC, P2P))
            ps2, pd2 = self.pair(1, (SC, P2P))
            b1, b2 = os.urandom(1 * MiB), os.urandom(300 * KiB)
            self.src.call(ps1, DEVICE_IFACE, "SetMigrationBlob", "ay", b1)
            self.src.call(ps2, DEVICE_IFACE, "SetMigrationBlob", "ay", b2)
            self.migrate([ps1, ps2], [pd1, pd2], start={"channels": 2})
            check(pd1, b1, f"round {round_} device 0")
            check(pd2, b2, f"round {round_} device 1")
        self.assertEqual(wrong, [], "blobs did not arrive")

    def test_group_without_p2p_needs_force(self):
        ps1, pd1 = self.pair(128 * KiB, (SC,))
        ps2, pd2 = self.pair(64 * KiB, (SC, P2P))
        digests = {ps1: self.src.digest(ps1), ps2: self.src.digest(ps2)}
        e = self.assertWireError(E_P2P_REQUIRED, self.dst.prepare, [pd1, pd2])
        self.assertIn("force-without-p2p", e.message)
        djob, token, addresses = self.dst.prepare([pd1, pd2], **{"force-without-p2p": True})
        self.assertWireError(E_P2P_REQUIRED, self.src.start_migration, [ps1, ps2], addresses[0], token)
        sjob = self.src.start_migration([ps1, ps2], addresses[0], token, **{"force-without-p2p": True})
        self.assertEqual(self.src.wait_final(sjob), "completed")
        self.assertEqual(self.dst.wait_final(djob), "completed")
        self.assertMigrated([ps1, ps2], [pd1, pd2], digests)

    def test_edges(self):
        """64 channels for 1 byte; mtty's read quirk in pre-copy; a destination that starts stopped;
        a group run on arrival."""
        ps, pd = self.pair(1, (SC, P2P))
        d = self.src.digest(ps)
        sjob, djob, _t = self.migrate([ps], [pd], start={"channels": 64})
        self.assertEqual(self.dst.prop(djob, MIGRATION_IFACE, "Channels"), 64)
        self.assertMigrated([ps], [pd], {ps: d})

        ps, pd = self.pair(3 * MiB, (SC, P2P, PRE), src_opts={"mtty_quirks": True, "precopy_size": 1 * MiB})
        d = self.src.digest(ps)
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=2, switchover="manual")
        self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataLoaded", bool, what="InitialDataLoaded")
        self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob), "completed", self.dst.job(djob))
        self.assertMigrated([ps], [pd], {ps: d})

        ps, pd = self.pair(2 * MiB, (SC,))
        d = self.src.digest(ps)
        self.dst.call(pd, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
        self.migrate([ps], [pd])
        self.assertMigrated([ps], [pd], {ps: d})

        pairs = [self.pair(s, (SC, P2P)) for s in (1 * MiB, 2 * MiB)]
        digests = {ps: self.src.digest(ps) for ps, _ in pairs}
        self.migrate([p[0] for p in pairs], [p[1] for p in pairs], prepare={"run": True}, start={"channels": 2})
        self.assertMigrated([p[0] for p in pairs], [p[1] for p in pairs], digests, dst_state="running")

    def test_same_daemon(self):
        """Source and destination devices in one daemon: its own listener, its own main loop."""
        ps = self.src.attach(size=4 * MiB, seed=1)
        pd = self.src.attach(size=4 * MiB, seed=2)
        d = self.src.digest(ps)
        djob, token, addresses = self.src.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, switchover="manual")
        self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
        self.assertEqual(self.src.wait_final(djob), "completed", self.src.job(djob))
        self.assertEqual(self.src.digest(pd), d)
        self.assertEqual(self.src.state(pd), "stop")

    def test_bandwidth_limit(self):
        size = 6 * MiB
        ps, pd = self.pair(size, (SC,))
        digest = self.src.digest(ps)
        limit = 12 * MiB
        sjob, djob, took = self.migrate([ps], [pd], start={"bandwidth-limit": limit, "channels": 2})
        h.log(f"  {size} bytes at {limit} bytes/s: {took:.2f} s")
        self.assertMigrated([ps], [pd], {ps: digest})
        # 6 MiB at 12 MiB/s is 0.5 s; allow for a first burst, not for no limit at all.
        self.assertGreater(took, 0.3, "the bandwidth limit was not applied")
        self.assertLess(took, 10)

    def test_many_jobs_at_once(self):
        """Several concurrent jobs between the same daemons, each with its own token."""
        pairs = [self.pair(s, f) for s, f in ((2 * MiB, (SC,)), (3 * MiB, (SC, P2P)), (1 * MiB, (SC, P2P, PRE)),
                                              (4 * MiB, (SC,)))]
        digests = {ps: self.src.digest(ps) for ps, _ in pairs}
        jobs = []
        for ps, pd in pairs:
            djob, token, addresses = self.dst.prepare([pd])
            jobs.append((ps, pd, djob, token, addresses[0]))
        started = []
        for ps, pd, djob, token, address in jobs:
            sjob = self.src.start_migration([ps], address, token, channels=2, switchover="manual")
            started.append((ps, pd, sjob, djob))
        for ps, pd, sjob, djob in started:
            if self.src.prop(sjob, MIGRATION_IFACE, "Precopy"):
                self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        for ps, pd, sjob, djob in started:
            self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
            self.assertEqual(self.dst.wait_final(djob), "completed", self.dst.job(djob))
        self.assertMigrated([p[0] for p in started], [p[1] for p in started], digests)


class DetachAfterJob(PairCase):
    """Detaching devices whose jobs have finished. Daemons of their own: the bug poisons them."""

    def tearDown(self):
        # Fresh daemons: the old ones hold jobs that point at freed devices (a sanitizer build
        # reports it again when they stop; restart_daemon logs the exit status).
        for side in (self.src, self.dst):
            side.restart_daemon()

    def test_job_outlives_detached_device(self):
        """A finished job still answers after its devices were detached."""
        ps, pd = self.pair(64 * KiB, (SC,))
        sjob, djob, _t = self.migrate([ps], [pd])
        self.src.call(ps, DEVICE_IFACE, "Reset")
        self.src.manager("DetachDevice", "s", ps.rsplit("/", 1)[1])
        self.dst.call(pd, DEVICE_IFACE, "Reset")
        self.dst.manager("DetachDevice", "s", pd.rsplit("/", 1)[1])
        for side, job in ((self.src, sjob), (self.dst, djob)):
            props = side.job(job)
            self.assertEqual(props["Phase"], "completed")
            self.assertIsInstance(props["Devices"], list)
            side.call(MANAGER_PATH, h.OM_IFACE, "GetManagedObjects")
            side.manager("ListMigrations")
            self.assertTrue(side.daemon.alive())


class OverIPv6(PairCase):
    """Both daemons on [::1]:0: addresses in brackets, a migration over IPv6."""

    @classmethod
    def setUpClass(cls):
        try:
            with socket.socket(socket.AF_INET6) as s6:
                s6.bind(("::1", 0))
        except OSError as e:
            raise unittest.SkipTest(f"no IPv6 loopback: {e}")
        cls.src = Side("src", listen="[::1]:0")
        cls.addClassCleanup(cls.src.stop)
        cls.src.start()
        cls.dst = Side("dst", listen="[::1]:0")
        cls.addClassCleanup(cls.dst.stop)
        cls.dst.start()

    def test_ipv6(self):
        ps, pd = self.pair(5 * MiB, (SC, P2P))
        d = self.src.digest(ps)
        djob, token, addresses = self.dst.prepare([pd])
        self.assertTrue(addresses and all(re.fullmatch(r"\[::1\]:[1-9][0-9]*", a) for a in addresses), addresses)
        sjob = self.src.start_migration([ps], addresses[0], token, channels=4)
        self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob), "completed")
        self.assertMigrated([ps], [pd], {ps: d})
        self.assertEqual(self.src.prop(sjob, MIGRATION_IFACE, "Peer"), addresses[0])


# --------------------------------------------------------------------------------------------
# 2. Pre-copy and switchover


class Precopy(PairCase):

    def dirty_pair(self, size=8 * MiB, rate=4 * MiB):
        return self.pair(size, (SC, P2P, PRE), src_opts={"precopy_size": size, "dirty_rate": rate})

    def test_manual_switchover(self):
        ps, pd = self.dirty_pair()
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=2, switchover="manual")
        self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataLoaded", bool, timeout=20, what="InitialDataLoaded")
        self.dst.wait_prop(djob, MIGRATION_IFACE, "InitialDataLoaded", bool, timeout=5, what="InitialDataLoaded")
        first = self.src.prop(sjob, MIGRATION_IFACE, "BytesTransferred")
        self.assertGreaterEqual(first, 8 * MiB, "initial data loaded before it was all sent")
        # The job waits for the operator while the device keeps dirtying and pre-copy keeps sending.
        changed = len(self.src.watcher.find(sjob, h.PROPS_IFACE, "PropertiesChanged"))
        time.sleep(1.5)
        changed = len(self.src.watcher.find(sjob, h.PROPS_IFACE, "PropertiesChanged")) - changed
        # progress is announced, at a bounded rate
        self.assertGreaterEqual(changed, 1, "no PropertiesChanged during 1.5 s of pre-copy")
        self.assertLessEqual(changed, 30, "PropertiesChanged is not rate-limited")
        s = self.src.job(sjob)
        self.assertEqual(s["Phase"], "precopy", s)
        self.assertFalse(s["SwitchoverRequested"])
        self.assertEqual(self.dst.phase(djob), "precopy")
        self.assertEqual(self.src.state(ps), "pre-copy")
        self.assertEqual(self.dst.state(pd), "resuming")
        self.assertGreater(s["BytesTransferred"], first + 1 * MiB, "no dirty data flowed during pre-copy")
        self.assertGreater(s["Rate"], 0, "Rate not updated during pre-copy")
        self.assertGreater(s["BytesExpected"], 0)
        self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob), "completed", self.dst.job(djob))
        digest = self.src.digest(ps)
        self.assertMigrated([ps], [pd], {ps: digest})
        s = self.src.job(sjob)
        self.assertTrue(s["SwitchoverRequested"])
        for side, job in ((self.src, sjob), (self.dst, djob)):
            sig = side.watcher.wait(job, MIGRATION_IFACE, "Completed")
            self.assertEqual([x[3] for x in sig], [["completed", ""]])

    def test_switchover_requested_early(self):
        """Switchover() before the initial data is loaded waits for it, then happens."""
        ps, pd = self.dirty_pair(16 * MiB, 2 * MiB)
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=1, switchover="manual",
                                        **{"bandwidth-limit": 32 * MiB})
        self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        self.assertTrue(self.src.prop(sjob, MIGRATION_IFACE, "SwitchoverRequested"))
        self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob), "completed")
        self.assertMigrated([ps], [pd], {ps: self.src.digest(ps)})

    def test_auto_switchover(self):
        ps, pd = self.dirty_pair(8 * MiB, 1 * MiB)
        djob, token, addresses = self.dst.prepare([pd])
        t0 = time.monotonic()
        sjob = self.src.start_migration([ps], addresses[0], token, channels=2)
        self.assertEqual(self.src.prop(sjob, MIGRATION_IFACE, "SwitchoverMode"), "auto")
        self.assertEqual(self.src.prop(sjob, MIGRATION_IFACE, "DowntimeLimit"), 300)
        self.assertEqual(self.src.wait_final(sjob, 15), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob, 5), "completed", self.dst.job(djob))
        h.log(f"  automatic switchover after {time.monotonic() - t0:.2f} s")
        self.assertMigrated([ps], [pd], {ps: self.src.digest(ps)})
        self.assertTrue(self.src.prop(sjob, MIGRATION_IFACE, "SwitchoverRequested"))
        for side, job in ((self.src, sjob), (self.dst, djob)):
            self.assertEqual(side.watcher.wait(job, MIGRATION_IFACE, "Completed")[0][3], ["completed", ""])

    def test_auto_switchover_without_dirtying(self):
        """Pre-copy that converges at once (nothing dirtied) switches over by itself."""
        ps, pd = self.pair(4 * MiB, (SC, P2P, PRE))
        sjob, djob, took = self.migrate([ps], [pd], start={"channels": 2}, timeout=15)
        h.log(f"  converged pre-copy switched over after {took:.2f} s")
        self.assertMigrated([ps], [pd], {ps: self.src.digest(ps)})


# --------------------------------------------------------------------------------------------
# 3. Cancel, 4. a peer killed


class Cancel(PairCase):

    def assertRolledBack(self, ps, pd, dst_digest_before):
        self.assertEqual(self.src.state(ps), "running", "the source device does not run again")
        self.assertEqual(self.dst.state(pd), "running", "the destination device was not reset")
        self.assertEqual(self.dst.digest(pd), dst_digest_before, "a half-loaded state survived on the destination")
        self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), "/")
        self.assertEqual(self.dst.prop(pd, DEVICE_IFACE, "Migration"), "/")
        # both devices are usable again: the pair migrates cleanly now (the source may be
        # dirtying while it runs: compare once it stopped)
        self.migrate([ps], [pd], start={"channels": 2, "precopy": False})
        self.assertEqual(self.dst.digest(pd), self.src.digest(ps))

    def assertEnded(self, side, job, phase, error_name, *fragments):
        j = side.job(job)
        self.assertEqual(j["Phase"], phase, j)
        if error_name is None:
            self.assertTrue(j["ErrorName"].startswith(E), j)
        else:
            self.assertEqual(j["ErrorName"], error_name, j)
        self.assertTrue(j["Error"], j)
        for f in fragments:
            self.assertIn(f.lower(), j["Error"].lower())
        sig = side.watcher.wait(job, MIGRATION_IFACE, "Completed")
        self.assertEqual(len(sig), 1)
        self.assertEqual(sig[0][3][0], phase)
        self.assertEqual(sig[0][3][1], j["Error"])
        return j

    def start_in(self, phase, ps, pd):
        """A job pair held in the given phase on both sides."""
        if phase == "precopy":
            djob, token, addresses = self.dst.prepare([pd])
            sjob = self.src.start_migration([ps], addresses[0], token, switchover="manual")
            self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataLoaded", bool, what="InitialDataLoaded")
        else:  # stop-copy: no pre-copy, and slow enough to catch
            djob, token, addresses = self.dst.prepare([pd])
            sjob = self.src.start_migration([ps], addresses[0], token, precopy=False,
                                            **{"bandwidth-limit": 4 * MiB})
        try:
            self.src.wait_phase(sjob, phase)
            self.dst.wait_phase(djob, phase)
        except AssertionError as e:
            e.jobs = (sjob, djob)
            raise
        return sjob, djob

    def cancel_case(self, phase, side):
        size = 24 * MiB if phase == "stop-copy" else 4 * MiB
        for attempt in range(3):
            ps, pd = self.pair(size, (SC, P2P, PRE), src_opts={"precopy_size": 2 * MiB, "dirty_rate": 1 * MiB}
                               if phase == "precopy" else None)
            before = self.dst.digest(pd)
            try:
                sjob, djob = self.start_in(phase, ps, pd)
                break
            except AssertionError as e:
                # KNOWN PROBLEM (README, "Migration between hosts"): now and then, in a full run of
                # this file, the test's calls to the source went unanswered for the ~6 s of a bandwidth-
                # limited stop-copy, so the pair finished before the test could see stop-copy on
                # both sides. Unexplained so far; a new pair catches the phase. Any other failure
                # to reach the phase still fails the test.
                jobs = getattr(e, "jobs", None)
                if phase != "stop-copy" or not jobs or self.dst.phase(jobs[1]) != "completed":
                    raise
                self.assertEqual(self.src.wait_final(jobs[0]), "completed")
                h.log(f"attempt {attempt + 1}: the pair finished before both sides were seen in {phase}: {e}")
        else:
            self.fail(f"three pairs finished before both sides were seen in {phase}")
        if phase == "stop-copy":
            self.assertEqual(self.src.state(ps), "stop-copy")
        if side == "source":
            self.src.call(sjob, MIGRATION_IFACE, "Cancel")
            self.assertEqual(self.src.wait_final(sjob), "cancelled")
            self.assertEqual(self.dst.wait_final(djob), "failed")
            self.assertEnded(self.src, sjob, "cancelled", E_CANCELLED, phase)
            self.assertEnded(self.dst, djob, "failed", E_PEER_ABORTED, "cancel")
        else:
            self.dst.call(djob, MIGRATION_IFACE, "Cancel")
            self.assertEqual(self.dst.wait_final(djob), "cancelled")
            self.assertEqual(self.src.wait_final(sjob), "failed")
            self.assertEnded(self.dst, djob, "cancelled", E_CANCELLED, phase)
            self.assertEnded(self.src, sjob, "failed", E_PEER_ABORTED, "cancel")
        self.assertRolledBack(ps, pd, before)

    def test_cancel_precopy_source(self):
        self.cancel_case("precopy", "source")

    def test_cancel_precopy_destination(self):
        self.cancel_case("precopy", "destination")

    def test_cancel_stopcopy_source(self):
        self.cancel_case("stop-copy", "source")

    def test_cancel_stopcopy_destination(self):
        self.cancel_case("stop-copy", "destination")

    def test_cancel_setup_destination(self):
        """A prepared job cancelled before anyone connected; its token then opens nothing."""
        ps, pd = self.pair(1 * MiB)
        before = self.dst.digest(pd)
        djob, token, addresses = self.dst.prepare([pd])
        self.assertEqual(self.dst.phase(djob), "setup")
        self.dst.call(djob, MIGRATION_IFACE, "Cancel")
        self.assertEnded(self.dst, djob, "cancelled", E_CANCELLED, "setup")
        sjob = self.src.start_migration([ps], addresses[0], token)
        self.assertEqual(self.src.wait_final(sjob), "failed")
        self.assertEnded(self.src, sjob, "failed", None, "token")  # the name: test_refusal_error_name
        self.assertRolledBack(ps, pd, before)

    def test_cancel_setup_source(self):
        """A source stuck in the handshake (the peer accepts and never answers) cancels cleanly."""
        ps = self.src.attach(size=1 * MiB)
        mute = socket.socket()
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        self.addCleanup(mute.close)
        peer = "127.0.0.1:%d" % mute.getsockname()[1]
        sjob = self.src.start_migration([ps], peer, "ab" * 32, channels=2)
        time.sleep(0.3)
        self.assertEqual(self.src.phase(sjob), "setup")
        self.src.call(sjob, MIGRATION_IFACE, "Cancel")
        self.assertEnded(self.src, sjob, "cancelled", E_CANCELLED, "setup")
        self.assertEqual(self.src.state(ps), "running")
        self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), "/")

    def test_peer_unreachable(self):
        ps = self.src.attach(size=1 * MiB)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nobody listens there now
        sjob = self.src.start_migration([ps], f"127.0.0.1:{port}", "cd" * 32)
        self.assertEqual(self.src.wait_final(sjob), "failed")
        self.assertEnded(self.src, sjob, "failed", E_PEER_UNREACHABLE)
        self.assertEqual(self.src.state(ps), "running")

    def test_incompatible_devices(self):
        """A source whose device differs is refused at the handshake; the prepared job waits on."""
        ps = self.src.attach(size=2 * MiB)
        pd = self.dst.attach(size=3 * MiB)
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token)
        self.assertEqual(self.src.wait_final(sjob), "failed")
        j = self.assertEnded(self.src, sjob, "failed", None, "incompatible")  # the name: test_refusal_error_name
        self.assertIn("state size", j["Error"])
        self.assertEqual(self.src.state(ps), "running")
        self.assertEqual(self.dst.phase(djob), "setup")
        self.assertEqual(self.dst.state(pd), "resuming")

    def test_refusal_error_name(self):
        """vfiomig1.h: PeerRejected is 'the peer refused the handshake'."""
        names = []
        ps = self.src.attach(size=2 * MiB)
        pd = self.dst.attach(size=3 * MiB)
        djob, token, addresses = self.dst.prepare([pd])
        for t in ("ee" * 32, token):  # unknown token; then the right one with an incompatible device
            sjob = self.src.start_migration([ps], addresses[0], t)
            self.assertEqual(self.src.wait_final(sjob), "failed")
            names.append(self.src.prop(sjob, MIGRATION_IFACE, "ErrorName"))
        self.assertEqual(names, [E_PEER_REJECTED, E_PEER_REJECTED])


class PeerKilled(PairCase):

    def start_precopy(self):
        ps, pd = self.pair(4 * MiB, (SC, P2P, PRE), src_opts={"precopy_size": 4 * MiB, "dirty_rate": 2 * MiB})
        before = self.dst.digest(pd)
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=4, switchover="manual")
        self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataLoaded", bool, what="InitialDataLoaded")
        self.assertEqual(self.dst.phase(djob), "precopy")
        return ps, pd, sjob, djob, before

    def test_source_killed(self):
        ps, pd, sjob, djob, before = self.start_precopy()
        self.src.kill9()
        self.assertEqual(self.dst.wait_final(djob, 15), "failed")
        j = self.dst.job(djob)
        self.assertEqual(j["ErrorName"], E_PEER_LOST, j)
        self.assertIn("closed", j["Error"])
        self.assertEqual(self.dst.state(pd), "running")
        self.assertEqual(self.dst.digest(pd), before)
        self.assertEqual(self.dst.watcher.wait(djob, MIGRATION_IFACE, "Completed")[0][3], ["failed", j["Error"]])
        self.assertTrue(self.dst.daemon.alive())

    def test_destination_killed(self):
        ps, pd, sjob, djob, before = self.start_precopy()
        self.dst.kill9()
        self.assertEqual(self.src.wait_final(sjob, 15), "failed")
        j = self.src.job(sjob)
        self.assertEqual(j["ErrorName"], E_PEER_LOST, j)
        self.assertEqual(self.src.state(ps), "running")
        self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), "/")
        self.assertTrue(self.src.daemon.alive())

    def test_daemon_stopped_mid_job(self):
        """SIGTERM during pre-copy: the daemon exits 0 and its peer's job fails, devices reset."""
        ps, pd, sjob, djob, before = self.start_precopy()
        self.src.disconnect()
        self.assertEqual(self.src.daemon.stop(expect=None), 0)
        self.src.daemon = None
        self.assertEqual(self.dst.wait_final(djob, 15), "failed")
        j = self.dst.job(djob)
        self.assertIn(j["ErrorName"], (E_PEER_ABORTED, E_PEER_LOST), j)
        self.assertEqual(self.dst.state(pd), "running")
        self.assertEqual(self.dst.digest(pd), before)


# --------------------------------------------------------------------------------------------
# 5. A hostile source


class Hostile(PairCase):
    """Hand-written sources against a prepared destination."""

    BUDGET = 64 * MiB  # the smallest the daemon accepts (four 16 MiB packets)

    def setUp(self):
        # A bystander: a prepared job no hostile connection may disturb; migrated at the end.
        self.bystander_src, self.bystander_dst = self.pair(2 * MiB, (SC,))
        self.bystander_digest = self.src.digest(self.bystander_src)
        self.bystander_job, self.bystander_token, _a = self.dst.prepare([self.bystander_dst])
        self.dev = self.dst.attach(size=1 * MiB, flags=(SC, P2P, PRE), seed=99)
        self.before = self.dst.digest(self.dev)
        self.record = {"flags": 7, "state_size": 1 * MiB, "driver": self.dst.prop(self.dev, DEVICE_IFACE, "Driver")}

    def tearDown(self):
        if self.dst.daemon is not None and self.dst.daemon.alive():
            self.assertEqual(self.dst.phase(self.bystander_job), "setup", "a hostile connection disturbed another job")
            addresses = self.dst.prop(MANAGER_PATH, MANAGER_IFACE, "StreamAddresses")
            sjob = self.src.start_migration([self.bystander_src], addresses[0], self.bystander_token)
            self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
            self.assertEqual(self.dst.wait_final(self.bystander_job), "completed")
            self.assertEqual(self.dst.digest(self.bystander_dst), self.bystander_digest)
        super().tearDown()

    def prepare(self, **options):
        job, token, addresses = self.dst.prepare([self.dev], **options)
        return job, bytes.fromhex(token), addresses[0]

    def connect(self, address, token, **kw):
        src = RawSource(address)
        self.addCleanup(src.close)
        welcome = src.handshake(hello(token, [self.record], **kw))
        return src, welcome

    def assertViolation(self, job, src, *fragments, timeout=10):
        packets = src.read_until_closed(timeout)
        aborts = [p for p in packets if p["type"] == ABORT]
        self.assertEqual(len(aborts), 1, f"expected one ABORT before the close, got {packets}")
        (reason,) = struct.unpack("<I", aborts[0]["payload"][:4])
        self.assertEqual(reason, ABORT_PROTOCOL, aborts[0])
        self.assertEqual(self.dst.wait_final(job, timeout), "failed")
        j = self.dst.job(job)
        self.assertEqual(j["ErrorName"], E_PEER_VIOLATION, j)
        for f in fragments:
            self.assertIn(f, j["Error"])
        self.assertDeviceReset()
        return j

    def assertDeviceReset(self):
        self.assertEqual(self.dst.state(self.dev), "running")
        self.assertEqual(self.dst.digest(self.dev), self.before)
        self.assertEqual(self.dst.prop(self.dev, DEVICE_IFACE, "Migration"), "/")
        self.assertTrue(self.dst.daemon.alive())

    def test_wrong_token(self):
        job, token, address = self.prepare()
        wrong = bytes(b ^ 0x55 for b in token)
        src, welcome = self.connect(address, wrong)
        self.assertEqual(welcome["status"], 3, welcome)
        self.assertEqual(REFUSALS[welcome["status"]], "token")
        self.assertTrue(welcome["reason"])
        self.assertEqual(src.read_until_closed(5), [])
        self.assertEqual(self.dst.phase(job), "setup")
        self.assertEqual(self.dst.state(self.dev), "resuming")
        # the right token still opens it
        src, welcome = self.connect(address, token)
        self.assertEqual(welcome["status"], 0, welcome)
        self.assertGreaterEqual(welcome["max_payload"], 64 * KiB)
        self.assertEqual(welcome["major"], 2)
        self.dst.wait_phase(job, "precopy")
        self.dst.call(job, MIGRATION_IFACE, "Cancel")
        packets = src.read_until_closed(5)
        self.assertEqual([p["type"] for p in packets], [ABORT])
        self.assertDeviceReset()

    def test_source_proof_checked(self):
        """Protocol v2: a source that knows the job identifier but proves the token wrongly (or
        not at all) never reaches the job; the right proof then still opens it."""
        job, token, address = self.prepare(**{"stall-timeout": 20000})
        src = RawSource(address)
        self.addCleanup(src.close)
        welcome = src.handshake(hello(token, [self.record]), prove="wrong")
        self.assertEqual(welcome["status"], 0, welcome)
        packets = src.read_until_closed(5)
        self.assertEqual([p["type"] for p in packets], [ABORT], packets)
        self.assertEqual(struct.unpack("<I", packets[0]["payload"][:4])[0], ABORT_PROTOCOL)
        self.assertIn(b"proof on channel 0 is wrong", packets[0]["payload"])
        self.assertEqual(self.dst.phase(job), "setup")
        self.assertEqual(self.dst.state(self.dev), "resuming")
        silent = RawSource(address)
        self.addCleanup(silent.close)
        welcome = silent.handshake(hello(token, [self.record]), prove="none")
        self.assertEqual(welcome["status"], 0, welcome)
        t0 = time.monotonic()
        self.assertEqual(silent.read_until_closed(15), [])
        self.assertLess(time.monotonic() - t0, 12)
        self.assertEqual(self.dst.phase(job), "setup")
        src, welcome = self.connect(address, token)
        self.assertEqual(welcome["status"], 0, welcome)
        self.dst.wait_phase(job, "precopy")
        self.dst.call(job, MIGRATION_IFACE, "Cancel")
        self.assertEqual([p["type"] for p in src.read_until_closed(5)], [ABORT])
        self.assertDeviceReset()

    def test_version_1_refused(self):
        """A version 1 source (its token in clear in the HELLO) is refused as `version`, with text."""
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token, major=1)
        self.assertEqual(REFUSALS.get(welcome["status"]), "version", welcome)
        self.assertIn("version 1.0; this destination speaks 2.1", welcome["reason"])
        self.assertEqual(src.read_until_closed(5), [])
        self.assertEqual(self.dst.phase(job), "setup")
        self.dst.call(job, MIGRATION_IFACE, "Cancel")

    def test_bad_hello_crc(self):
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token, corrupt_crc=True)
        self.assertEqual(REFUSALS.get(welcome["status"]), "bad-hello", welcome)
        self.assertEqual(src.read_until_closed(5), [])
        # A HELLO that cannot be trusted names no job: the prepared job waits on.
        self.assertEqual(self.dst.phase(job), "setup")
        for kw, status in (({"major": 1}, "version"), ({"major": 3}, "version"), ({"channel_index": 3, "channel_count": 2}, "bad-hello"),
                           ({"max_payload": 32 * MiB}, "bad-hello"), ({"flags": 0x80}, "bad-hello")):
            with self.subTest(**kw):
                src, welcome = self.connect(address, token, **kw)
                self.assertEqual(REFUSALS.get(welcome["status"]), status, welcome)
                self.assertEqual(src.read_until_closed(5), [])
        self.assertEqual(self.dst.phase(job), "setup")
        self.dst.call(job, MIGRATION_IFACE, "Cancel")
        self.assertDeviceReset()

    def test_incompatible_record(self):
        job, token, address = self.prepare()
        for change, status in (({"state_size": 2 * MiB}, "incompatible"), ({"flags": 3}, "incompatible"),
                               ({"driver": "mlx5_vfio_pci"}, "incompatible")):
            with self.subTest(change=change):
                saved = self.record
                self.record = dict(saved, **change)
                try:
                    src, welcome = self.connect(address, token)
                finally:
                    self.record = saved
                self.assertEqual(REFUSALS.get(welcome["status"]), status, welcome)
        src = RawSource(address)
        self.addCleanup(src.close)
        welcome = src.handshake(hello(token, [self.record, self.record]))
        self.assertEqual(REFUSALS.get(welcome["status"]), "devices", welcome)
        self.assertEqual(self.dst.phase(job), "setup")
        self.dst.call(job, MIGRATION_IFACE, "Cancel")

    def test_bad_payload_crc(self):
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        self.assertEqual(welcome["status"], 0, welcome)
        payload = os.urandom(4096)
        src.send(packet(DATA, 0, 0, 0, payload, flags=3, payload_crc=crc32c(payload) ^ 1))
        self.assertViolation(job, src, "CRC")

    def test_bad_header_crc(self):
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        raw = bytearray(packet(INITIAL_DONE, 0, 0, 0))
        raw[39] ^= 0xFF
        src.send(bytes(raw))
        self.assertViolation(job, src, "checksum")

    def test_repeated_sequence_number(self):
        """A packet applied, then the same stream sequence number again on the same channel."""
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        src.send(packet(INITIAL_DONE, 0, 0, 0))
        reply = src.read_packet()  # the destination applied it
        self.assertEqual((reply["type"], reply["device"]), (INITIAL_LOADED, 0), reply)
        self.dst.wait_prop(job, MIGRATION_IFACE, "InitialDataLoaded", bool, what="InitialDataLoaded")
        src.send(packet(INITIAL_DONE, 0, 0, 0))
        j = self.assertViolation(job, src)
        self.assertRegex(j["Error"], "stream sequence number (does not increase|already received|repeated)")

    def test_repeated_sequence_number_other_channel(self):
        """Channel 1 repeats what channel 0 delivered."""
        job, token, address = self.prepare()
        ch0, w0 = self.connect(address, token, channel_index=0, channel_count=2)
        ch1, w1 = self.connect(address, token, channel_index=1, channel_count=2)
        self.assertEqual((w0["status"], w1["status"]), (0, 0))
        self.assertEqual((w0["channel_index"], w1["channel_index"]), (0, 1))
        # a third connection for a channel already up is refused
        ch2, w2 = self.connect(address, token, channel_index=1, channel_count=2)
        self.assertIn(REFUSALS.get(w2["status"]), ("channels", "busy"), w2)
        ch0.send(packet(INITIAL_DONE, 0, 0, 0))
        self.assertEqual(ch0.read_packet()["type"], INITIAL_LOADED)
        ch1.send(packet(INITIAL_DONE, 0, 0, 0))
        self.assertViolation(job, ch0, "stream sequence number already received")
        ch1.read_until_closed(5)

    def test_repeated_device_sequence_number(self):
        """Two packets ahead of the frontier claim the same device sequence number."""
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        src.send(packet(INITIAL_DONE, 0, 1, 0) + packet(DATA, 0, 2, 0, b"x" * 100, flags=3))
        j = self.assertViolation(job, src)
        self.assertRegex(j["Error"], "device sequence number (repeated|already applied)")

    def test_oversize_length(self):
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        src.send(packet(DATA, 0, 0, 0, b"", flags=3, length=welcome["max_payload"] + 1, payload_crc=0))
        self.assertViolation(job, src, "longer")

    def test_oversize_length_huge(self):
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        src.send(packet(DATA, 0, 0, 0, b"", length=0xFFFFFFFF, payload_crc=0))
        self.assertViolation(job, src, "longer")
        self.assertLess(self.dst.rss()["VmRSS"], 512 * MiB)

    def test_destination_only_packets(self):
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        src.send(packet(COMPLETE, JOB_DEVICE, 0, 0, bytes(48)))  # one well-formed record
        self.assertViolation(job, src, "only a destination sends")

    def test_end_totals_lie(self):
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        src.send(packet(END, 0, 0, 0, struct.pack("<QQ", 1 * MiB, 16)))
        self.assertViolation(job, src, "END")

    def test_garbage_data_is_a_device_failure(self):
        """Well-formed packets with a stream the device refuses: the device says so, and is reset."""
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        src.send(packet(DATA, 0, 0, 0, b"\x5a" * 8192, flags=3))
        src.read_until_closed(10)
        self.assertEqual(self.dst.wait_final(job), "failed")
        j = self.dst.job(job)
        self.assertEqual(j["ErrorName"], E + "DeviceFailed", j)
        self.assertDeviceReset()

    def test_source_vanishes(self):
        """A source that closes mid-stream: the job fails as PeerLost and the device is reset."""
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        src.send(packet(INITIAL_DONE, 0, 0, 0))
        src.read_packet()
        src.close()
        self.assertEqual(self.dst.wait_final(job), "failed")
        self.assertEqual(self.dst.prop(job, MIGRATION_IFACE, "ErrorName"), E_PEER_LOST)
        self.assertDeviceReset()

    def test_source_abort(self):
        """An ABORT from the source ends the job as PeerAborted, with its text made printable."""
        job, token, address = self.prepare()
        src, welcome = self.connect(address, token)
        src.send(packet(ABORT, JOB_DEVICE, 0, 0, struct.pack("<I", 2) + b"disk\x1b[31m on fire\x00"))
        self.assertEqual(self.dst.wait_final(job), "failed")
        j = self.dst.job(job)
        self.assertEqual(j["ErrorName"], E_PEER_ABORTED, j)
        self.assertIn("disk", j["Error"])
        self.assertNotIn("\x1b", j["Error"])
        src.read_until_closed(5)
        self.assertDeviceReset()

    def test_hijack_running_job(self):
        """Someone with the token connects while the real source streams: refused, and the real
        migration completes."""
        job, token, address = self.prepare()
        ps = self.src.attach(size=1 * MiB, flags=(SC, P2P, PRE), seed=7, precopy_size=1 * MiB,
                             dirty_rate=1 * MiB)
        sjob = self.src.start_migration([ps], address, token.hex(), channels=2, switchover="manual")
        self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataLoaded", bool, what="InitialDataLoaded")
        for index in (0, 1):
            intruder, welcome = self.connect(address, token, channel_index=index, channel_count=2)
            self.assertEqual(REFUSALS.get(welcome["status"]), "busy", welcome)
            self.assertEqual(intruder.read_until_closed(5), [])
        self.assertEqual(self.src.phase(sjob), "precopy")
        self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(job), "completed", self.dst.job(job))
        self.assertEqual(self.dst.digest(self.dev), self.src.digest(ps))

    def test_idle_precopy_is_not_a_stall(self):
        """A source that has sent what it had and waits (nothing new to pre-copy, or an operator's
        Switchover()) is not stalled, however long the stall timeout is exceeded."""
        job, token, address = self.prepare(**{"stall-timeout": 1000})
        src, welcome = self.connect(address, token)
        time.sleep(3)
        self.assertEqual(self.dst.phase(job), "precopy")
        self.dst.call(job, MIGRATION_IFACE, "Cancel")
        self.assertDeviceReset()

    def test_stall_timeout(self):
        """After SWITCHOVER the source owes the rest: silence then is a stall."""
        job, token, address = self.prepare(**{"stall-timeout": 1500})
        src, welcome = self.connect(address, token)
        src.send(packet(SWITCHOVER, 0xFFFF, 0, 0))
        t0 = time.monotonic()
        self.assertEqual(self.dst.wait_final(job, 10), "failed")
        took = time.monotonic() - t0
        self.assertGreater(took, 1.0)
        self.assertLess(took, 6)
        packets = src.read_until_closed(5)
        self.assertEqual([p["type"] for p in packets], [ABORT])
        self.assertEqual(struct.unpack("<I", packets[0]["payload"][:4])[0], 5)  # timeout
        self.assertEqual(self.dst.prop(job, MIGRATION_IFACE, "ErrorName"), E_PEER_LOST)
        self.assertDeviceReset()

    def test_slow_hello(self):
        """A connection that never finishes its HELLO is dropped; the job is not touched."""
        job, token, address = self.prepare()
        src = RawSource(address)
        self.addCleanup(src.close)
        src.send(hello(token, [self.record])[:30])
        t0 = time.monotonic()
        self.assertEqual(src.read_until_closed(15), [])
        self.assertLess(time.monotonic() - t0, 12)
        self.assertEqual(self.dst.phase(job), "setup")
        self.dst.call(job, MIGRATION_IFACE, "Cancel")

    def flood(self, seqs, channels=1, payload_size=1 * MiB, total=None):
        """Prepares a job with the smallest budget and floods it from `channels` connections with
        DATA packets at the stream sequence numbers seqs(channel) yields (never the frontier).
        Returns (job, memory before, memory after, bytes the daemon took)."""
        job, token, address = self.prepare(**{"reassembly-budget": self.BUDGET, "stall-timeout": 20000})
        srcs = []
        for c in range(channels):
            src, welcome = self.connect(address, token, channel_index=c, channel_count=channels, flags=1)
            self.assertEqual(welcome["status"], 0, welcome)
            srcs.append(src)
        self.dst.wait_phase(job, "precopy")
        payload = bytes(range(256)) * (payload_size // 256)
        pcrc = crc32c(payload)
        reset_peak_rss(self.dst.daemon.pid)
        before = self.dst.rss()
        sent = [0] * channels
        total = total or 3 * self.BUDGET // channels

        def pump(c):
            src = srcs[c]
            src.sock.settimeout(20)
            try:
                for n, seq in enumerate(seqs(c)):
                    if sent[c] >= total:
                        break
                    src.sock.sendall(packet(DATA, 0, seq, seq, payload, flags=1, payload_crc=pcrc))
                    sent[c] += len(payload)
            except (OSError, socket.timeout):
                pass

        threads = [threading.Thread(target=pump, args=(c,), daemon=True) for c in range(channels)]
        for t in threads:
            t.start()
        self.assertEqual(self.dst.wait_final(job, 30), "failed", self.dst.job(job))
        for t in threads:
            t.join(25)
        after = self.dst.rss()
        h.log(f"  flood over {channels} channel(s): sent {sum(sent) >> 20} MiB; VmRSS {before['VmRSS'] >> 20} -> "
              f"{after['VmRSS'] >> 20} MiB, VmHWM {before['VmHWM'] >> 20} -> {after['VmHWM'] >> 20} MiB")
        return job, srcs, before, after, sum(sent)

    def assertBounded(self, before, after):
        margin = 48 * MiB
        self.assertLess(after["VmHWM"] - before["VmHWM"], self.BUDGET + margin,
                        f"the daemon's peak memory grew past the budget: {before} -> {after}")
        self.assertLess(after["VmRSS"] - before["VmRSS"], self.BUDGET + margin)

    def test_flood_ahead_of_frontier(self):
        """Four channels of 1 MiB packets after a frontier that never comes: the budget fills,
        nothing can ever be applied, the job fails, and memory stays within the budget."""
        job, srcs, before, after, sent = self.flood(lambda c: range(1 + c, 1 << 40, 4), channels=4)
        self.assertGreaterEqual(sent, self.BUDGET // 2, "the daemon took too little to prove anything")
        j = self.dst.job(job)
        self.assertEqual(j["ErrorName"], E_PEER_VIOLATION, j)
        self.assertBounded(before, after)
        for src in srcs:
            src.read_until_closed(10)
        self.assertDeviceReset()

    def test_flood_out_of_window(self):
        """Packets far beyond the reassembly window are never buffered."""
        job, srcs, before, after, sent = self.flood(lambda c: range(1 << 20, 1 << 40), channels=1)
        j = self.dst.job(job)
        self.assertEqual(j["ErrorName"], E_PEER_VIOLATION, j)
        self.assertBounded(before, after)
        self.assertDeviceReset()

    def test_small_budget_refused(self):
        self.assertWireError(E_INVALID_ARGS, self.dst.prepare, [self.dev], **{"reassembly-budget": 1 * MiB})
        self.assertEqual(self.dst.state(self.dev), "running")

    def test_connection_flood(self):
        """Many idle connections do not keep an honest source out."""
        job, token, address = self.prepare()
        idle = []
        for _ in range(100):
            s = RawSource(address)
            self.addCleanup(s.close)
            idle.append(s)
        src, welcome = self.connect(address, token)
        self.assertEqual(welcome["status"], 0, welcome)
        self.dst.call(job, MIGRATION_IFACE, "Cancel")
        self.assertDeviceReset()


# --------------------------------------------------------------------------------------------
# 6. Refusals


class Refusals(PairCase):

    def snapshot(self):
        out = {}
        for side in (self.src, self.dst):
            devices = sorted(tuple(d) for d in side.manager("ListDevices")[0])
            out[side.name] = {
                "devices": devices,
                "states": {p: side.state(p) for _i, _a, p in devices},
                "links": {p: side.prop(p, DEVICE_IFACE, "Migration") for _i, _a, p in devices},
                "digests": {p: side.digest(p) for _i, _a, p in devices},
                "jobs": sorted(tuple(j) for j in side.manager("ListMigrations")[0]),
            }
        return out

    def refused(self, name, fn, *args, **kwargs):
        before = self.snapshot()
        e = self.assertWireError(name, fn, *args, **kwargs)
        self.assertEqual(self.snapshot(), before, f"a refused call changed something ({e.message})")
        return e

    def test_start_refusals(self):
        ps = self.src.attach(size=1 * MiB, flags=(SC, P2P))
        pd = self.dst.attach(size=1 * MiB, flags=(SC, P2P))
        djob, token, addresses = self.dst.prepare([pd])
        peer = addresses[0]
        cases = [
            # tokens
            (E_INVALID_ARGS, [ps], peer, "xyz", {}),
            (E_INVALID_ARGS, [ps], peer, token[:-1], {}),
            (E_INVALID_ARGS, [ps], peer, token + "0", {}),
            (E_INVALID_ARGS, [ps], peer, "g" + token[1:], {}),
            (E_INVALID_ARGS, [ps], peer, "", {}),
            # peers
            (E_INVALID_ARGS, [ps], "localhost:7179", token, {}),
            (E_INVALID_ARGS, [ps], "127.0.0.1", token, {}),
            (E_INVALID_ARGS, [ps], "127.0.0.1:0", token, {}),
            (E_INVALID_ARGS, [ps], "127.0.0.1:65536", token, {}),
            (E_INVALID_ARGS, [ps], "127.0.0.1:-1", token, {}),
            (E_INVALID_ARGS, [ps], "::1:7179", token, {}),
            (E_INVALID_ARGS, [ps], "[::1]", token, {}),
            (E_INVALID_ARGS, [ps], "", token, {}),
            (E_INVALID_ARGS, [ps], "300.1.1.1:7179", token, {}),
            # options
            (E_INVALID_ARGS, [ps], peer, token, {"channels": 0}),
            (E_INVALID_ARGS, [ps], peer, token, {"channels": 65}),
            (E_INVALID_ARGS, [ps], peer, token, {"channels": ("t", 2)}),
            (E_INVALID_ARGS, [ps], peer, token, {"switchover": "sometimes"}),
            (E_INVALID_ARGS, [ps], peer, token, {"downtime-limit": 0}),
            (E_INVALID_ARGS, [ps], peer, token, {"no-such-option": ("b", True)}),
            (E_INVALID_ARGS, [ps], peer, token, {"run": True}),
            # pre-copy asked of a device without it
            (E_NOT_MIGRATABLE, [ps], peer, token, {"precopy": True}),
            # devices
            (E_INVALID_ARGS, [], peer, token, {}),
            (E_INVALID_ARGS, [ps, ps], peer, token, {}),
            (E_NO_SUCH_DEVICE, ["/org/vfiomig1/device/sim_nope"], peer, token, {}),
            (E_INVALID_ARGS, ["/org/vfiomig1/space/s0"], peer, token, {}),
        ]
        for name, devs, p, t, opts in cases:
            with self.subTest(devices=devs, peer=p, token=t, options=opts):
                e = self.refused(name, self.src.start_migration, devs, p, t, **opts)
                self.assertNotIn("(null)", e.message)
        # nothing was ever started: the prepared job still waits and works
        self.assertEqual(self.dst.phase(djob), "setup")
        sjob = self.src.start_migration([ps], peer, token)
        self.assertEqual(self.src.wait_final(sjob), "completed")

    def test_device_states_and_jobs(self):
        ps = self.src.attach(size=1 * MiB)
        pd = self.dst.attach(size=1 * MiB)
        # a source device must be running
        self.src.call(ps, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
        e = self.refused(E_INVALID_ARGS, self.src.start_migration, [ps], "127.0.0.1:7179", "00" * 32)
        self.assertIn("running", e.message)
        self.src.call(ps, DEVICE_IFACE, "SetState", "sa{sv}", "running", {})
        # a device in a job is busy for every other job
        djob, token, addresses = self.dst.prepare([pd])
        self.refused(E_BUSY, self.dst.prepare, [pd])
        ps2 = self.src.attach(size=1 * MiB)
        sjob = self.src.start_migration([ps], addresses[0], token, switchover="manual")
        self.src.wait_phase(sjob, "precopy")
        # the initial data is all there is (no dirtying): then the job's counters stand still
        self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataLoaded", bool, what="InitialDataLoaded")
        self.refused(E_BUSY, self.src.start_migration, [ps], addresses[0], token)
        self.refused(E_BUSY, self.src.start_migration, [ps2, ps], addresses[0], token)
        self.refused(E_BUSY, self.src.prepare, [ps])
        self.src.call(sjob, MIGRATION_IFACE, "Cancel")
        self.src.wait_final(sjob)
        self.dst.wait_final(djob)
        # a detached device is gone
        self.src.manager("DetachDevice", "s", ps2.rsplit("/", 1)[1])
        self.refused(E_NO_SUCH_DEVICE, self.src.start_migration, [ps2], addresses[0], token)
        self.refused(E_NO_SUCH_DEVICE, self.dst.prepare, [ps2.replace("src", "dst")])

    def test_prepare_refusals(self):
        pd = self.dst.attach(size=1 * MiB)
        for opts in ({"reassembly-budget": 1 * MiB}, {"stall-timeout": 25 * 3600 * 1000},
                     {"channels": 2}, {"run": ("s", "yes")}, {"bogus": ("b", True)}):
            with self.subTest(options=opts):
                self.refused(E_INVALID_ARGS, self.dst.prepare, [pd], **opts)
        self.refused(E_INVALID_ARGS, self.dst.prepare, [])
        self.refused(E_INVALID_ARGS, self.dst.prepare, [pd, pd])
        self.refused(E_NO_SUCH_DEVICE, self.dst.prepare, ["/org/vfiomig1/device/sim_nope"])
        # a destination device must be running or stopped
        busy = self.dst.attach(size=64 * KiB)
        self.dst.call(busy, DEVICE_IFACE, "SetState", "sa{sv}", "stop-copy", {})
        e = self.refused(E_INVALID_ARGS, self.dst.prepare, [busy])
        self.assertIn("stop-copy", e.message)

    def test_job_limit(self):
        limit = self.dst.prop(MANAGER_PATH, MANAGER_IFACE, "MaxMigrations")
        self.assertEqual(limit, 8)
        devs = [self.dst.attach(size=64 * KiB) for _ in range(limit + 1)]
        # the smallest budget, so that the job limit and not the total reassembly cap is hit
        small = {"reassembly-budget": 64 * MiB}
        jobs = [self.dst.prepare([d], **small)[0] for d in devs[:limit]]
        e = self.refused(E_LIMIT_EXCEEDED, self.dst.prepare, [devs[-1]], **small)
        self.assertIn(str(limit), e.message)
        self.dst.call(jobs[0], MIGRATION_IFACE, "Cancel")
        job = self.dst.prepare([devs[-1]], **small)[0]
        self.assertEqual(self.dst.phase(job), "setup")

    def test_total_reassembly_cap(self):
        """The incoming jobs' reassembly budgets together stay within a quarter of the memory."""
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
        per_job = min(16 << 30, total)  # the largest budget one job may ask for
        n = total // per_job            # that many fit; one more does not
        if n + 1 > 8:
            self.skipTest(f"{n + 1} jobs of {per_job >> 20} MiB would exceed the job limit first")
        devs = [self.dst.attach(size=64 * KiB) for _ in range(n + 1)]
        jobs = [self.dst.prepare([d], **{"reassembly-budget": per_job})[0] for d in devs[:n]]
        e = self.refused(E_LIMIT_EXCEEDED, self.dst.prepare, [devs[-1]], **{"reassembly-budget": per_job})
        self.assertIn("a quarter of the memory", e.message)
        self.assertEqual(self.dst.state(devs[-1]), "running")
        self.dst.call(jobs[0], MIGRATION_IFACE, "Cancel")
        job = self.dst.prepare([devs[-1]], **{"reassembly-budget": per_job})[0]
        self.assertEqual(self.dst.phase(job), "setup")
        for j in jobs[1:] + [job]:
            self.dst.call(j, MIGRATION_IFACE, "Cancel")

    def test_total_reassembly_cap_from_the_config(self):
        """vfiomigd.conf's max-reassembly-bytes sets the total: two 64 MiB budgets fit in 128 MiB,
        a third does not, and the refusal names the setting."""
        tmp = h.TempDir()
        self.addCleanup(tmp.stop)
        conf = str(tmp / "vfiomigd.conf")
        with open(conf, "w") as f:
            json.dump({"allow-simulated": True, "max-reassembly-bytes": 128 * MiB}, f)
        side = Side("capped", [f"--config={conf}"])
        self.addCleanup(side.stop)
        side.start()
        small = {"reassembly-budget": 64 * MiB}
        devs = [side.attach(size=64 * KiB) for _ in range(3)]
        jobs = [side.prepare([d], **small)[0] for d in devs[:2]]
        e = self.assertWireError(E_LIMIT_EXCEEDED, side.prepare, [devs[2]], **small)
        self.assertIn("max-reassembly-bytes", e.message)
        self.assertEqual(side.state(devs[2]), "running")
        side.call(jobs[0], MIGRATION_IFACE, "Cancel")
        job = side.prepare([devs[2]], **small)[0]
        self.assertEqual(side.phase(job), "setup")

    def test_prepared_job_expires(self):
        """A prepared job no source joins ends after setup-timeout, its devices reset; it cannot be
        told to wait forever."""
        pd = self.dst.attach(size=64 * KiB)
        before = self.dst.digest(pd)
        for value in (0, 999, 25 * 3600 * 1000):
            with self.subTest(value=value):
                self.refused(E_INVALID_ARGS, self.dst.prepare, [pd], **{"setup-timeout": value})
        t0 = time.monotonic()
        job = self.dst.prepare([pd], **{"setup-timeout": 1500})[0]
        self.assertEqual(self.dst.state(pd), "resuming")
        self.assertEqual(self.dst.wait_final(job, 10), "failed")
        took = time.monotonic() - t0
        self.assertGreater(took, 1.4)
        self.assertLess(took, 4)
        j = self.dst.job(job)
        self.assertEqual(j["ErrorName"], E + "Timeout", j)
        self.assertIn("no source joined", j["Error"])
        self.assertEqual(self.dst.state(pd), "running")
        self.assertEqual(self.dst.digest(pd), before)

    def test_finished_jobs_are_pruned(self):
        """At most 16 finished jobs stay listed; the oldest go, running ones never."""
        pd = self.dst.attach(size=64 * KiB)
        keep = self.dst.attach(size=64 * KiB)
        running = self.dst.prepare([keep])[0]
        first = None
        for _ in range(20):
            job = self.dst.prepare([pd])[0]
            first = first or job
            self.dst.call(job, MIGRATION_IFACE, "Cancel")
        listed = [tuple(j)[4] for j in self.dst.manager("ListMigrations")[0]]
        self.assertIn(running, listed)
        self.assertNotIn(first, listed)
        self.assertLessEqual(len([j for j in self.dst.manager("ListMigrations")[0] if j[2] in FINAL]), 16)
        self.assertWireError("org.vfiomig1.Error.NoSuchMigration", self.dst.prop, first, MIGRATION_IFACE,
                             "Phase")


# --------------------------------------------------------------------------------------------
# 7. vfiomigctl


def ctl_commands():
    try:
        r = subprocess.run([str(h.CLI), "--help"], capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return r.stdout


class Vfiomigctl(PairCase):

    def setUp(self):
        helptext = ctl_commands()
        missing = [c for c in ("incoming", "migrate", "jobs", "cancel") if not re.search(rf"^\s+{c}\b", helptext, re.M)]
        if missing:
            self.skipTest(f"vfiomigctl has no {', '.join(missing)} command (yet)")

    def ctl(self, side, *args, expect=0, timeout=60):
        cmd = [str(h.CLI), f"--address={side.bus.address}"] + [str(a) for a in args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=h.clean_env(), timeout=timeout)
        if expect is not None:
            self.assertEqual(r.returncode, expect, f"{' '.join(cmd)}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def ctl_json(self, side, *args, expect=0):
        r = self.ctl(side, "--json=short", *args, expect=expect)
        try:
            return json.loads(r.stdout)
        except ValueError as e:
            self.fail(f"not JSON ({e}): {r.stdout!r}\nstderr: {r.stderr}")

    def incoming(self, *args):
        out = self.ctl_json(self.dst, "incoming", *args)
        self.assertEqual(sorted(out), ["addresses", "id", "migration", "token"], out)
        self.assertEqual(out["migration"], f"/org/vfiomig1/migration/_{out['id']}")
        self.assertRegex(out["migration"], r"^/org/vfiomig1/migration/_[1-9][0-9]*$")
        self.assertRegex(out["token"], "^[0-9a-f]{64}$")
        self.assertEqual(out["addresses"], self.dst.prop(MANAGER_PATH, MANAGER_IFACE, "StreamAddresses"))
        self.assertEqual(self.dst.phase(out["migration"]), "setup")
        return out["migration"], out["token"], out["addresses"][0]

    def test_incoming_migrate(self):
        ps, pd = self.pair(3 * MiB, (SC, P2P, PRE))
        digest = self.src.digest(ps)
        # devices by id, by address and by object path
        djob, token, address = self.incoming(pd.rsplit("/", 1)[1], "--run", "--stall-timeout=20s")
        r = self.ctl(self.src, "migrate", "sim:" + ps.rsplit("_", 1)[1], f"--to={address}", f"--token={token}",
                     "--channels=3", "--no-precopy")
        self.assertEqual(self.dst.wait_final(djob), "completed")
        self.assertEqual(self.dst.digest(pd), digest)
        self.assertEqual(self.dst.state(pd), "running")  # --run
        self.assertEqual(self.src.state(ps), "stop")
        sjob = self.src.manager("ListMigrations")[0][-1][4]
        self.assertEqual(self.src.phase(sjob), "completed", "migrate returned before the job ended")
        self.assertFalse(self.src.prop(sjob, MIGRATION_IFACE, "Precopy"))
        self.assertEqual(self.src.prop(sjob, MIGRATION_IFACE, "Channels"), 3)
        self.assertEqual(r.stderr.count("Traceback"), 0)
        for side in (self.src, self.dst):
            listed = {e["object"]: e for e in self.ctl_json(side, "jobs")}
            for jid, direction, phase, nbytes, path in side.manager("ListMigrations")[0]:
                self.assertIn(path, listed)
                e = listed[path]
                self.assertEqual((e["id"], e["direction"], e["phase"]), (jid, direction, phase))
                if phase in FINAL:
                    self.assertEqual(e["bytes_transferred"], nbytes)
        one = self.ctl_json(self.dst, "job", djob)
        props = self.dst.job(djob)
        self.assertEqual((one["id"], one["object"], one["direction"], one["phase"]),
                         (props["Id"], djob, "incoming", "completed"))
        self.assertEqual(one["bytes_transferred"], props["BytesTransferred"])
        self.assertEqual(self.ctl_json(self.dst, "job", str(props["Id"]))["object"], djob)
        human = self.ctl(self.dst, "jobs").stdout
        self.assertIn("completed", human)
        self.assertIn("incoming", human)

    def test_migrate_fails_nonzero(self):
        ps, pd = self.pair(1 * MiB, (SC,))
        djob, token, address = self.incoming(pd)
        r = self.ctl(self.src, "migrate", ps, f"--to={address}", "--token=" + "0" * 64, expect=None)
        self.assertNotEqual(r.returncode, 0, r)
        self.assertIn("token", r.stderr.lower())
        self.assertEqual(self.src.state(ps), "running")
        self.assertEqual(self.dst.phase(djob), "setup")
        jobs = self.src.manager("ListMigrations")[0]
        r = self.ctl(self.src, "migrate", ps, f"--to={address}", "--token=nothex", expect=None)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(r.stdout, "")
        self.assertEqual(self.src.manager("ListMigrations")[0], jobs, "a refused migrate started a job")
        # and the right token works, with --json printing nothing but JSON
        r = self.ctl(self.src, "--json=short", "migrate", ps, f"--to={address}", f"--token={token}")
        if r.stdout.strip():
            json.loads(r.stdout)
        self.assertEqual(self.dst.wait_final(djob), "completed")

    def test_cancel_and_no_wait(self):
        ps, pd = self.pair(4 * MiB, (SC, P2P, PRE), src_opts={"precopy_size": 4 * MiB, "dirty_rate": 1 * MiB})
        before = self.dst.digest(pd)
        djob, token, address = self.incoming(pd)
        out = self.ctl_json(self.src, "migrate", ps, f"--to={address}", f"--token={token}",
                            "--switchover=manual", "--no-wait")
        self.assertEqual(sorted(out), ["id", "migration"], out)
        sjob = out["migration"]
        self.assertEqual(sjob, f"/org/vfiomig1/migration/_{out['id']}")
        self.assertEqual(self.src.prop(sjob, MIGRATION_IFACE, "SwitchoverMode"), "manual")
        self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataLoaded", bool)
        self.ctl(self.src, "cancel", sjob.rsplit("_", 1)[1])
        self.assertEqual(self.src.wait_final(sjob), "cancelled")
        self.assertEqual(self.dst.wait_final(djob), "failed")
        self.assertEqual(self.src.state(ps), "running")
        self.assertEqual(self.dst.state(pd), "running")
        self.assertEqual(self.dst.digest(pd), before)
        r = self.ctl(self.src, "cancel", sjob, expect=None)
        self.assertNotEqual(r.returncode, 0)
        self.assertTrue(r.stderr.startswith("vfiomigctl: "), r.stderr)
        r = self.ctl(self.src, "cancel", "4711", expect=None)
        self.assertNotEqual(r.returncode, 0)

    def test_blob_commands(self):
        ps, pd = self.pair(64 * KiB, (SC,))
        blob = os.urandom(5000)
        tmp = h.TempDir("vfm-blob-")
        self.addCleanup(tmp.stop)
        (tmp / "in").write_bytes(blob)
        self.ctl(self.src, "blob", "set", ps, tmp / "in")
        self.assertEqual(self.src.call1(ps, DEVICE_IFACE, "GetMigrationBlob"), blob)
        r = subprocess.run([str(h.CLI), f"--address={self.src.bus.address}", "blob", "get", ps],
                           capture_output=True, env=h.clean_env(), timeout=30)
        self.assertEqual((r.returncode, r.stdout), (0, blob), r.stderr)
        r = self.ctl(self.src, "blob", "set", ps, tmp / "missing", expect=None)
        self.assertNotEqual(r.returncode, 0)
        self.migrate([ps], [pd])
        # what the daemon holds, whatever that is (Transfers checks that it is the blob)
        self.ctl(self.dst, "blob", "get", pd, tmp / "out")
        self.assertEqual((tmp / "out").read_bytes(), self.dst.call1(pd, DEVICE_IFACE, "GetMigrationBlob"))


def _walk(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    else:
        yield value


# --------------------------------------------------------------------------------------------
# 8. The stream socket from the service manager


class SocketActivation(unittest.TestCase):
    """The destination daemon takes the stream socket it is passed (FileDescriptorName=stream)."""

    def setUp(self):
        self.src = Side("src")
        self.addCleanup(self.src.stop)
        self.src.start()

    def run_migration(self, dst, expected_address):
        ps = self.src.attach(size=3 * MiB)
        pd = dst.attach(size=3 * MiB, seed=4242)
        digest = self.src.digest(ps)
        djob, token, addresses = dst.prepare([pd])
        self.assertEqual(addresses, [expected_address])
        self.assertEqual(dst.prop(MANAGER_PATH, MANAGER_IFACE, "StreamAddresses"), [expected_address])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=4, switchover="manual")
        self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
        self.assertEqual(dst.wait_final(djob), "completed", dst.job(djob))
        self.assertEqual(dst.digest(pd), digest)

    def test_hand_made_listen_fds(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        dst = PassedSocketSide("dst", listener)
        self.addCleanup(dst.stop)
        dst.start()
        listener.close()  # the daemon holds its own copy
        self.run_migration(dst, f"127.0.0.1:{port}")
        self.assertIn("socket the service manager passed", dst.daemon.log())

    def socket_activated(self):
        tool = h.find_program("systemd-socket-activate")
        if not tool:
            self.skipTest("systemd-socket-activate is not installed")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        dst = SocketActivateSide("dst", tool, port)
        self.addCleanup(dst.stop)
        dst.start()
        # The tool execs the daemon on the first connection, which brings a HELLO with a token
        # nobody prepared: the daemon must refuse it.
        first = RawSource(f"127.0.0.1:{port}")
        self.addCleanup(first.close)
        first.send(hello(b"\x11" * 32, [{"flags": 7, "state_size": 3 * MiB, "driver": "sim"}]))
        dst.wait_ready()
        return dst, port, first

    def test_systemd_socket_activate(self):
        dst, port, first = self.socket_activated()
        self.run_migration(dst, f"127.0.0.1:{port}")
        self.assertIn("socket the service manager passed", dst.daemon.log())
        first.sock.settimeout(10)
        welcome = parse_welcome(recv_exact(first.sock, WELCOME.size))
        self.assertEqual(REFUSALS.get(welcome["status"]), "token", welcome)

    def test_activating_connection_answered(self):
        dst, port, first = self.socket_activated()
        first.sock.settimeout(2)
        welcome = parse_welcome(recv_exact(first.sock, WELCOME.size))
        self.assertEqual(REFUSALS.get(welcome["status"]), "token", welcome)


# Puts the descriptor given as argv[1] at 3 and execs argv[2:] with LISTEN_PID set to its own PID,
# as a service manager passes sockets (sd_listen_fds(3)).
_LISTEN_FDS_WRAPPER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.set_inheritable(3, True)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")


class PassedSocketSide(Side):
    """vfiomigd with LISTEN_FDS=1, LISTEN_FDNAMES=stream and the socket as fd 3, as systemd passes it."""

    def __init__(self, name, listener):
        super().__init__(name, listen=None)
        self.listener = listener

    def start_daemon(self):
        fd = self.listener.fileno()
        self.daemon = h.Daemon(self.bus, args=self.daemon_args(), pass_fds=(fd,),
                               wrapper=[sys.executable, "-c", _LISTEN_FDS_WRAPPER, str(fd)],
                               env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "stream"}).start()
        self.connect()


class SocketActivateSide(Side):
    """vfiomigd under systemd-socket-activate, which execs it on the first connection."""

    def __init__(self, name, tool, port):
        super().__init__(name, listen=None)
        self.tool = tool
        self.port = port

    def start_daemon(self):
        self.daemon = h.Daemon(self.bus, args=self.daemon_args(),
                               wrapper=[self.tool, "-l", f"127.0.0.1:{self.port}", "--fdname=stream",
                                        "-E", "DBUS_SYSTEM_BUS_ADDRESS"]).start(wait=False)
        h.wait_until(lambda: _listening(self.port) or not self.daemon.alive(), 10, 0.02,
                     "systemd-socket-activate to listen")
        if not self.daemon.alive():
            raise RuntimeError(f"systemd-socket-activate exited:\n{self.daemon.log()}")

    def wait_ready(self):
        try:
            self.bus.client.wait_for_name(h.BUS_NAME, 15, proc=self.daemon.proc, what="vfiomigd")
        except Exception as e:
            raise RuntimeError(f"{e}\n--- log ---\n{self.daemon.log()}") from None
        self.connect()


def _listening(port):
    """True once something listens on 127.0.0.1:port (/proc/net/tcp, state 0A)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "0100007F:%04X" % port and fields[3] == "0A":
                return True
    return False


if __name__ == "__main__":
    h.main([h.require_root, lambda: h.require_programs("dbus-daemon", "busctl"), h.require_daemon,
            lambda: h.require_files(h.BUS_POLICY)])
