#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Faults at every message of the commit, between two real vfiomigd (issue 9, "Must show" 3).

Two daemons migrate a group of two simulated devices (dev0: 512 KiB, dev1: 16 MiB; stop-copy
without pre-copy, one channel, cleartext) through fault_proxy.FaultProxy, which relays the v2
handshake and then, at one message of the commit, applies one fault:

  messages  SWITCHOVER, each device's last DATA, END and BLOB, and COMPLETE;
  faults    drop (the message and everything after it are lost: every connection is cut),
            delay (the path goes silent at the message for longer than the source's stall
            timeout, then delivers everything), kill -9 of the source or of the destination
            daemon when the proxy sees the message, and link down (both daemons in network
            namespaces of their own, joined to the proxy by veth pairs this test makes; the
            links go down at the message, come back once the source has decided).

dev0 is small and dev1 large, so that the messages fall into two kinds: up to dev0's BLOB the
source still has megabytes to send when the fault strikes (it cannot have handed its last byte
to the kernel: the destination cannot have committed), and from dev1's last DATA on it has
handed out everything (the destination may have committed, and without COMPLETE or ABORT the
source cannot know). The rule (proto/stream-protocol.md, the commit-failure table; BRIEF item 4):

  * before the last byte: the source job fails (PeerLost), its devices RUNNING, their state
    intact; the destination job fails and resets its devices, Committed=false;
  * after it, without a valid COMPLETE or an ABORT: the source job is `indeterminate`, its
    devices stay in stop-copy, until Resolve() with the destination's answer (Committed);
  * a destination commits only once it has every BLOB, then runs its devices (run=true here)
    and sends COMPLETE; it never sends ABORT after committing.

The table below (CASES) is the expected outcome of every (message x fault), checked case by
case, and each case names the row of the specification's outcome table (§3.2) it falls under;
the table is checked against those rows when the module loads. Every case also checks the
invariants: a sampler on bus connections of its own reads both sides every 20 ms (never a
committed destination running its devices while a source device runs), and at the moment the
source decides and again at the end: never a source reporting success while the destination
lacks the state, and a failed source's devices running with their state digest intact. An
indeterminate source is resolved with the destination's answer: Committed when its job still
exists; when its daemon was killed, what the proxy saw it send (a COMPLETE proves it had
committed; before that it had not, and its devices died with it).

Besides the table: a control run through the proxy without a fault (which also proves the
sampler sees a source run next to a committed destination); the other order of the stall timers
at the tail, where the destination's commit races the source's ABORT (all three outcomes allowed
by the spec, each checked); and a link that stays down at SWITCHOVER, where only keepalive and
TCP_USER_TIMEOUT end the idle destination (about 30 s, the longest case).

Runs as root (the harness needs it); the link-down cases need `ip` and network namespaces.
Standard library only. Everything started here is stopped by PID (harness.py).
"""

import os
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire  # noqa: E402
import harness as h  # noqa: E402
import stream_wire as w  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402
from test_migration import DEVICE_IFACE, MIGRATION_IFACE, KiB, MiB, P2P, PairCase, SC, Side, unwrap  # noqa: E402

E = "org.vfiomig1.Error."
PEER_LOST, PEER_ABORTED = E + "PeerLost", E + "PeerAborted"

SIZES = (512 * KiB, 16 * MiB)
# The destination's stall timer is the shorter: at a delayed message after SWITCHOVER it gives up
# first and its ABORT reaches the source, which then knows the destination did not commit. (With
# the source's the shorter, the source's own ABORT follows the delayed tail, and whether the
# destination commits before reading it is a race: both outcomes are safe, neither is
# repeatable.)
SRC_STALL_MS = 2500   # StartMigration stall-timeout
DST_STALL_MS = 1000   # PrepareIncoming stall-timeout
DELAY_S = 4.0         # longer than either

MESSAGES = ("switchover", ("last-data", 0), ("end", 0), ("blob", 0), ("last-data", 1), ("end", 1), ("blob", 1),
            "complete")
FAULTS = ("drop", "delay", "kill-src", "kill-dst", "link-down")

# Outcomes.
#   source:      "failed"         failed, devices running, digests intact
#                "indeterminate"  devices in stop-copy and owned by the job, until Resolve()
#                "killed"         the daemon was killed
#   destination: "failed"         failed, Committed=false, devices reset (not holding the state)
#                "committed"      completed, Committed=true, devices running with the state
#                "killed"
#   errors:      the job's ErrorName and a fragment of its Error text:
#   resolve:     the destination's answer an indeterminate source is resolved with
FAILED, INDETERMINATE, KILLED, COMMITTED = "failed", "indeterminate", "killed", "committed"
NOT_COMMITTED = "not-committed"
CLOSED = (PEER_LOST, "closed channel 0 before the migration completed")  # the peer's end of the channel
SEND_STALL = (PEER_LOST, "stalled: nothing could be sent")  # the source's stall timer, bytes left
COMMIT_STALL = (PEER_LOST, "did not confirm the commit")     # the source's stall timer, all handed out
DST_STALL = (PEER_LOST, "stalled: no packet applied")         # the destination's stall timer
ABORTED = (PEER_ABORTED, "the destination aborted: stalled")  # ... and its ABORT, at the source
NONE = ("", "")
# A cut seen by the source: channel 0's end, or the send under way failing, whichever first.
CUT = (CLOSED, (PEER_LOST, "sending on channel 0 failed"))
# After a delayed SWITCHOVER the destination gets SWITCHOVER at last, then whatever the failed
# source's kernel still delivers: the end of the channel, or nothing for its stall timeout.
CLOSED_OR_DST_STALL = (CLOSED, DST_STALL)

SW, DATA0, END0, BLOB0, DATA1, END1, BLOB1, COMPLETE = ("switchover", "last-data:0", "end:0", "blob:0",
                                                        "last-data:1", "end:1", "blob:1", "complete")

def alternatives(error):
    """An expected error: (name, text), or a tuple of such, any of which may happen."""
    return error if isinstance(error[0], tuple) else (error,)


# The outcome table of proto/stream-protocol.md §3.2, row by row: the source and destination
# outcomes each row allows. Every case below names its row, and is checked against it here.
SPEC_ROWS = {
    "R1": ("anything fails before the source handed its last byte", {FAILED}, {FAILED}),
    "R2": ("the destination sends ABORT (any time before it commits)", {FAILED}, {FAILED}),
    "R4": ("every byte handed; the connection breaks, or no COMPLETE within the stall timeout",
           {INDETERMINATE}, {FAILED, COMMITTED}),
    "R5": ("the destination commits, COMPLETE is lost", {INDETERMINATE}, {COMMITTED}),
    "R7": ("the source daemon dies (SIGKILL) before its last byte", {KILLED}, {FAILED}),
    "R8": ("the source daemon dies after its last byte", {KILLED}, {FAILED, COMMITTED}),
    "R10": ("the destination daemon dies before it committed", {FAILED, INDETERMINATE}, {KILLED}),
    "R11": ("the destination daemon dies after it committed", {INDETERMINATE, "completed"}, {KILLED}),
}
# Which error each row names at the source (None: no source job left to say).
SPEC_SOURCE_ERRORS = {"R1": {PEER_LOST}, "R2": {PEER_ABORTED}, "R4": {PEER_LOST}, "R5": {PEER_LOST},
                      "R7": {None}, "R8": {None}, "R10": {PEER_LOST}, "R11": {PEER_LOST}}
R1, R2, R4, R5, R7, R8, R10, R11 = SPEC_ROWS

# (message, fault): (source, its error, destination, its error, resolve with, the row of the
# specification's outcome table it falls under)
CASES = {
    # drop: the message and everything after it are lost, every connection is cut
    (SW, "drop"):            (FAILED, CUT, FAILED, CLOSED, None, R1),
    (DATA0, "drop"):         (FAILED, CUT, FAILED, CLOSED, None, R1),
    (END0, "drop"):          (FAILED, CUT, FAILED, CLOSED, None, R1),
    (BLOB0, "drop"):         (FAILED, CUT, FAILED, CLOSED, None, R1),
    (DATA1, "drop"):         (INDETERMINATE, CUT, FAILED, CLOSED, NOT_COMMITTED, R4),
    (END1, "drop"):          (INDETERMINATE, CUT, FAILED, CLOSED, NOT_COMMITTED, R4),
    (BLOB1, "drop"):         (INDETERMINATE, CUT, FAILED, CLOSED, NOT_COMMITTED, R4),
    (COMPLETE, "drop"):      (INDETERMINATE, CUT, COMMITTED, NONE, COMMITTED, R5),
    # delay past the stall timeouts, then everything is delivered. Before SWITCHOVER arrives the
    # destination's clock does not run and the source's stops it; after, the destination's
    # stops it first and its ABORT tells the source.
    (SW, "delay"):           (FAILED, SEND_STALL, FAILED, CLOSED_OR_DST_STALL, None, R1),
    (DATA0, "delay"):        (FAILED, ABORTED, FAILED, DST_STALL, None, R2),
    (END0, "delay"):         (FAILED, ABORTED, FAILED, DST_STALL, None, R2),
    (BLOB0, "delay"):        (FAILED, ABORTED, FAILED, DST_STALL, None, R2),
    (DATA1, "delay"):        (FAILED, ABORTED, FAILED, DST_STALL, None, R2),
    (END1, "delay"):         (FAILED, ABORTED, FAILED, DST_STALL, None, R2),
    (BLOB1, "delay"):        (FAILED, ABORTED, FAILED, DST_STALL, None, R2),
    (COMPLETE, "delay"):     (INDETERMINATE, COMMIT_STALL, COMMITTED, NONE, COMMITTED, R5),
    # kill -9 of the source daemon when the proxy sees the message (which is lost)
    (SW, "kill-src"):        (KILLED, None, FAILED, CLOSED, None, R7),
    (DATA0, "kill-src"):     (KILLED, None, FAILED, CLOSED, None, R7),
    (END0, "kill-src"):      (KILLED, None, FAILED, CLOSED, None, R7),
    (BLOB0, "kill-src"):     (KILLED, None, FAILED, CLOSED, None, R7),
    (DATA1, "kill-src"):     (KILLED, None, FAILED, CLOSED, None, R8),
    (END1, "kill-src"):      (KILLED, None, FAILED, CLOSED, None, R8),
    (BLOB1, "kill-src"):     (KILLED, None, FAILED, CLOSED, None, R8),
    (COMPLETE, "kill-src"):  (KILLED, None, COMMITTED, NONE, None, R8),
    # kill -9 of the destination daemon when the proxy sees the message (which is lost)
    (SW, "kill-dst"):        (FAILED, CUT, KILLED, None, None, R10),
    (DATA0, "kill-dst"):     (FAILED, CUT, KILLED, None, None, R10),
    (END0, "kill-dst"):      (FAILED, CUT, KILLED, None, None, R10),
    (BLOB0, "kill-dst"):     (FAILED, CUT, KILLED, None, None, R10),
    (DATA1, "kill-dst"):     (INDETERMINATE, CUT, KILLED, None, NOT_COMMITTED, R10),
    (END1, "kill-dst"):      (INDETERMINATE, CUT, KILLED, None, NOT_COMMITTED, R10),
    (BLOB1, "kill-dst"):     (INDETERMINATE, CUT, KILLED, None, NOT_COMMITTED, R10),
    (COMPLETE, "kill-dst"):  (INDETERMINATE, CUT, KILLED, None, COMMITTED, R11),
    # both links down at the message (lost); up again, and the connections closed, once both
    # sides decided (or, before SWITCHOVER, the source did: the destination's clock does not run)
    (SW, "link-down"):       (FAILED, SEND_STALL, FAILED, CLOSED, None, R1),
    (DATA0, "link-down"):    (FAILED, SEND_STALL, FAILED, DST_STALL, None, R1),
    (END0, "link-down"):     (FAILED, SEND_STALL, FAILED, DST_STALL, None, R1),
    (BLOB0, "link-down"):    (FAILED, SEND_STALL, FAILED, DST_STALL, None, R1),
    (DATA1, "link-down"):    (INDETERMINATE, COMMIT_STALL, FAILED, DST_STALL, NOT_COMMITTED, R4),
    (END1, "link-down"):     (INDETERMINATE, COMMIT_STALL, FAILED, DST_STALL, NOT_COMMITTED, R4),
    (BLOB1, "link-down"):    (INDETERMINATE, COMMIT_STALL, FAILED, DST_STALL, NOT_COMMITTED, R4),
    (COMPLETE, "link-down"): (INDETERMINATE, COMMIT_STALL, COMMITTED, NONE, COMMITTED, R5),
}
assert len(CASES) == len(MESSAGES) * len(FAULTS)
for _case, (_src, _src_error, _dst, _dst_error, _resolve, _row) in CASES.items():
    _what, _srcs, _dsts = SPEC_ROWS[_row]
    assert _src in _srcs and _dst in _dsts, f"{_case}: {_src}/{_dst} is not what the specification says: {_what}"
    _names = {name for name, _text in alternatives(_src_error)} if _src_error else {None}
    assert _names <= SPEC_SOURCE_ERRORS[_row], f"{_case}: {_src_error}"
    assert (_resolve is not None) == (_src == INDETERMINATE), _case


def message_key(message):
    return message if isinstance(message, str) else f"{message[0]}:{message[1]}"


def parse_message(key):
    if ":" in key:
        kind, d = key.split(":")
        return (kind, int(d))
    return key


class InvariantSampler:
    """Watches both sides every 20 ms during a case, on bus connections of its own: once the
    destination job says Committed and one of its devices runs, no source device may run (the
    destination is read first, so a source seen running afterwards really runs after it). A
    killed daemon just stops answering, and is skipped."""

    def __init__(self, src, dst, src_devs, dst_devs, djob):
        self.sides = [(dst, dbus_wire.WireConnection(dst.bus.address, timeout=5), dst_devs),
                      (src, dbus_wire.WireConnection(src.bus.address, timeout=5), src_devs)]
        self.djob = djob
        self.samples, self.violations = 0, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="invariants", daemon=True)
        self.thread.start()

    def _get(self, conn, path, iface, name):
        return unwrap(conn.call(h.BUS_NAME, path, h.PROPS_IFACE, "Get", "ss", (iface, name))[0])

    def _run(self):
        while not self.done.wait(0.02):
            self.sample()

    def sample(self):
        (_dst, dconn, ddevs), (_src, sconn, sdevs) = self.sides
        self.samples += 1
        try:
            committed = self._get(dconn, self.djob, MIGRATION_IFACE, "Committed")
            dst_running = [d for d in ddevs if self._get(dconn, d, DEVICE_IFACE, "State") == "running"]
        except (dbus_wire.WireError, OSError, ValueError):
            return
        if not (committed and dst_running):
            return
        try:
            src_running = [d for d in sdevs if self._get(sconn, d, DEVICE_IFACE, "State") == "running"]
        except (dbus_wire.WireError, OSError, ValueError):
            return
        if src_running:
            self.violations.append(f"destination committed and runs {dst_running}, then the source runs "
                                   f"{src_running}")

    def stop(self):
        self.done.set()
        self.thread.join(10)
        self.sample()  # and the end state, however short the case was
        for _side, conn, _devs in self.sides:
            conn.close()
        return self.samples, self.violations


class CommitFaultCase(PairCase):
    """The daemons of PairCase (loopback); a killed one is started again in tearDown."""

    proxy_host = "127.0.0.1"

    def setUp(self):
        self.proxy = None
        self.sampler = None
        self.sjob = None
        self.devices = []

    def tearDown(self):
        if self.sampler is not None:
            self.sampler.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.links_up()
        # A case that failed half-way may leave the source job indeterminate: Cancel cannot end it.
        if self.sjob and self.src.daemon is not None and self.src.daemon.alive() and self.src.conn is not None:
            try:
                if self.src.phase(self.sjob) == INDETERMINATE:
                    self.src.call(self.sjob, MIGRATION_IFACE, "Resolve", "s", NOT_COMMITTED)
            except dbus_wire.WireError as e:
                h.log(f"resolving {self.sjob}: {e}")
        super().tearDown()
        # Each case attaches fresh devices: detach them, so the daemons stay small.
        for side, dev in self.devices:
            if side.daemon is None or not side.daemon.alive() or side.conn is None:
                continue
            try:
                if side.state(dev) != "running":
                    side.call(dev, DEVICE_IFACE, "Reset")
                side.manager("DetachDevice", "s", dev.rsplit("/", 1)[1])
            except dbus_wire.WireError as e:
                if "NoSuchDevice" not in e.name and "UnknownObject" not in e.name:
                    h.log(f"detaching {dev}: {e}")

    def links_up(self):
        pass

    def take_links_down(self):
        raise unittest.SkipTest("no links to take down over loopback")

    # ---- one case ----

    def attach_pair(self):
        self.src_devs, self.dst_devs, self.digests = [], [], {}
        for i, size in enumerate(SIZES):
            ps = self.src.attach(size=size, flags=(SC, P2P), seed=0x5EED0000 + i)
            pd = self.dst.attach(size=size, flags=(SC, P2P), seed=0xD0570000 + i)
            self.devices += [(self.src, ps), (self.dst, pd)]
            self.src_devs.append(ps)
            self.dst_devs.append(pd)
            self.digests[ps] = self.src.digest(ps)
            self.assertNotEqual(self.digests[ps], self.dst.digest(pd))

    def on_hit(self, proxy, hit):
        """In the proxy's thread, at the fault point: kill by PID, or take the links down."""
        fault = hit["fault"]
        if fault in ("kill-src", "kill-dst"):
            side = self.src if fault == "kill-src" else self.dst
            side.daemon.proc.send_signal(signal.SIGKILL)
            side.daemon.proc.wait(10)
        elif fault == "link-down":
            self.take_links_down()

    def resources(self, side):
        """(open fds, threads) of a side's daemon."""
        pid = side.daemon.pid
        return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))

    def detach_and_check_resources(self, side, devices, before):
        """Detaches the case's devices, then the daemon must hold what it held before the case."""
        for dev in devices:
            if side.state(dev) != "running":
                side.call(dev, DEVICE_IFACE, "Reset")
            side.manager("DetachDevice", "s", dev.rsplit("/", 1)[1])
        deadline = time.monotonic() + 5
        while self.resources(side) != before and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.resources(side), before, f"{side.name}: (fds, threads) before the case and after")

    warmed = set()

    def warm_up(self, side):
        """The stream listener (a socket and a thread) comes with a daemon's first PrepareIncoming
        and stays: a throwaway job makes it before a case counts what the daemon holds."""
        if side.daemon.pid in self.warmed:
            return
        dev = side.attach(size=4 * KiB, flags=(SC, P2P))
        job, _token, _addresses = side.prepare([dev])
        side.call(job, MIGRATION_IFACE, "Cancel")
        side.wait_final(job, 10)
        side.call(dev, DEVICE_IFACE, "Reset")
        side.manager("DetachDevice", "s", dev.rsplit("/", 1)[1])
        self.warmed.add(side.daemon.pid)

    def run_case(self, key, fault):
        message = parse_message(key)
        want_src, want_src_error, want_dst, want_dst_error, resolve, _row = CASES[(key, fault)]
        for side in (self.src, self.dst):
            self.warm_up(side)
        before = {side.name: self.resources(side) for side in (self.src, self.dst)}
        self.attach_pair()
        djob, token, addresses = self.dst.prepare(self.dst_devs, run=True, **{"stall-timeout": DST_STALL_MS})
        self.proxy = FaultProxy(addresses[0], message, fault, listen_host=self.proxy_host, delay=DELAY_S,
                                on_hit=self.on_hit)
        self.sampler = InvariantSampler(self.src, self.dst, self.src_devs, self.dst_devs, djob)
        self.sjob = sjob = self.src.start_migration(self.src_devs, self.proxy.address, token, precopy=False,
                                                    channels=1, **{"stall-timeout": SRC_STALL_MS})
        hit = self.proxy.wait_hit(30)
        self.assertEqual(hit["message"], key)
        if fault == "kill-src":
            self.src.kill9()
        if fault == "kill-dst":
            self.dst.kill9()

        # The source decides.
        if want_src != KILLED:
            t0 = time.monotonic()
            phase = self.wait_decided(self.src, sjob, 20)
            took = time.monotonic() - t0
            j = self.src.job(sjob)
            h.log(f"{key} x {fault}: source {phase} {j['ErrorName']}: {j['Error']} ({took:.1f} s)")
            self.assertEqual(phase, want_src, f"source: {j}\nproxy delivered: {self.proxy.delivered_summary()}")
            self.assertTrue(any(j["ErrorName"] == name and text in j["Error"]
                                for name, text in alternatives(want_src_error)),
                            f"source error not one of {alternatives(want_src_error)}: {j}")
            self.assertFalse(j["Committed"], j)
            if fault in ("delay", "link-down"):
                # within stall-timeout + a few seconds of the fault
                self.assertLess(took, SRC_STALL_MS / 1000 + 5, j)
            self.check_source_devices(want_src, sjob)
            self.check_invariants(sjob, djob, fault)

        # The destination decides.
        if want_dst != KILLED:
            if fault == "link-down" and want_dst == FAILED and key == SW:
                # SWITCHOVER never arrived: the destination waits in pre-copy, where its clock
                # does not run (an idle pre-copy is not a stall); only keepalive would notice
                # the dead link, after 25 s. The link comes back, the proxy closes.
                self.links_up()
                self.proxy.cut()
            d_phase = self.dst.wait_final(djob, 25)
            dj = self.dst.job(djob)
            h.log(f"{key} x {fault}: destination {d_phase} committed={dj['Committed']} {dj['ErrorName']}: "
                  f"{dj['Error']}")
            self.assertTrue(any(dj["ErrorName"] == name and text in dj["Error"]
                                for name, text in alternatives(want_dst_error)),
                            f"destination error not one of {alternatives(want_dst_error)}: {dj}")
            if want_dst == COMMITTED:
                self.assertEqual(d_phase, "completed", dj)
                self.assertTrue(dj["Committed"], dj)
                for ps, pd in zip(self.src_devs, self.dst_devs):
                    self.assertEqual(self.dst.state(pd), "running", f"{pd}: {dj}")
                    self.assertEqual(self.dst.digest(pd), self.digests[ps], f"{pd}: the state did not arrive")
            else:
                self.assertEqual(d_phase, "failed", dj)
                self.assertFalse(dj["Committed"], dj)
                for ps, pd in zip(self.src_devs, self.dst_devs):
                    self.assertNotEqual(self.dst.digest(pd), self.digests[ps], f"{pd} holds the state: {dj}")
                    self.assertNotEqual(self.dst.state(pd), "resuming", f"{pd} was not reset: {dj}")
        if fault == "link-down" or fault == "delay":
            # The proxy let everything through (delay) or is silent (link down): the links and
            # connections go now, so nothing of this case lingers.
            self.links_up()
            self.proxy.cut()

        # The source, once more after the destination decided, and resolved.
        if want_src != KILLED:
            self.check_invariants(sjob, djob, fault)
            if want_src == INDETERMINATE:
                if want_dst != KILLED:
                    answer = COMMITTED if self.dst.job(djob)["Committed"] else NOT_COMMITTED
                else:
                    # The destination daemon is gone with its job: what it sent is the answer.
                    answer = COMMITTED if self.proxy.hit["message"] == COMPLETE else NOT_COMMITTED
                self.assertEqual(answer, resolve)
                self.src.call(sjob, MIGRATION_IFACE, "Resolve", "s", answer)
                j = self.src.job(sjob)
                if answer == COMMITTED:
                    self.assertEqual(j["Phase"], "completed", j)
                    self.assertTrue(j["Committed"], j)
                    for ps in self.src_devs:
                        self.assertEqual(self.src.state(ps), "stop")
                        self.assertEqual(self.src.digest(ps), self.digests[ps])
                else:
                    self.assertEqual(j["Phase"], "failed", j)
                    self.assertEqual(j["ErrorName"], alternatives(want_src_error)[0][0], j)
                    self.check_source_devices(FAILED, sjob)
                for ps in self.src_devs:
                    self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), "/")
            self.check_invariants(sjob, djob, fault)
        self.assertEqual(self.proxy.errors, [])
        samples, violations = self.sampler.stop()
        self.sampler = None
        h.log(f"{key} x {fault}: {samples} samples of both sides, no moment with both running")
        self.assertEqual(violations, [])
        # Nothing of the job is left in a surviving daemon: no socket, no engine thread.
        self.proxy.stop()
        for side, devs, killed in ((self.src, self.src_devs, fault == "kill-src"),
                                   (self.dst, self.dst_devs, fault == "kill-dst")):
            if not killed:
                self.detach_and_check_resources(side, devs, before[side.name])

    def wait_decided(self, side, job, timeout):
        deadline = time.monotonic() + timeout
        while True:
            p = side.phase(job)
            if p in ("completed", "failed", "cancelled", INDETERMINATE):
                return p
            if time.monotonic() >= deadline:
                raise AssertionError(f"{side.name}: {job} still {p} after {timeout}s: {side.job(job)}")
            time.sleep(0.02)

    def check_source_devices(self, outcome, sjob):
        for ps in self.src_devs:
            state = self.src.state(ps)
            if outcome == FAILED:
                self.assertEqual(state, "running", ps)
                self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), "/")
            else:
                self.assertEqual(state, "stop-copy", ps)
                self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), sjob)
            self.assertEqual(self.src.digest(ps), self.digests[ps], f"{ps}: the source state changed")

    def check_invariants(self, sjob, djob, fault):
        """Never both sides running the state; never a completed source while the destination
        lacks it. A killed side runs nothing."""
        src_alive = self.src.daemon is not None and self.src.conn is not None and fault != "kill-src"
        dst_alive = self.dst.daemon is not None and self.dst.conn is not None and fault != "kill-dst"
        src_running = src_alive and any(self.src.state(ps) == "running" for ps in self.src_devs)
        dst_committed = dst_alive and self.dst.job(djob)["Committed"]
        dst_running_state = dst_alive and any(
            self.dst.state(pd) == "running" and self.dst.digest(pd) == self.digests[ps]
            for ps, pd in zip(self.src_devs, self.dst_devs))
        if src_running and (dst_committed or dst_running_state):
            self.fail(f"both sides run the devices: source {self.src.job(sjob)}, destination {self.dst.job(djob)}")
        if src_alive and self.src.phase(sjob) == "completed" and dst_alive:
            self.assertTrue(dst_committed, "the source reports success, the destination did not commit")
            for ps, pd in zip(self.src_devs, self.dst_devs):
                self.assertEqual(self.dst.digest(pd), self.digests[ps])


# The other order of the stall timers: the source's the shorter. At a delayed tail the source
# gives up first (every byte handed: indeterminate) and sends ABORT, which travels right behind
# the tail once the delay ends; the destination then reads the last BLOB and that ABORT almost
# at once. Whether it commits first is a race inside the destination (its writer applying the
# BLOB against its receiver reading the ABORT), and the specification's row R4 allows both:
# not committed (failed, PeerAborted, reset) or committed (Committed=true, the state kept). The
# source is resolved with whichever answer the destination gives.
RACE_SRC_STALL_MS, RACE_DST_STALL_MS = 1500, 8000
RACE_MESSAGES = (DATA1, END1, BLOB1)


class RaceMixin:
    def run_race(self, key):
        self.attach_pair()
        djob, token, addresses = self.dst.prepare(self.dst_devs, run=True, **{"stall-timeout": RACE_DST_STALL_MS})
        self.proxy = FaultProxy(addresses[0], parse_message(key), "delay", listen_host=self.proxy_host,
                                delay=RACE_SRC_STALL_MS / 1000 + 2)
        self.sjob = sjob = self.src.start_migration(self.src_devs, self.proxy.address, token, precopy=False,
                                                    channels=1, **{"stall-timeout": RACE_SRC_STALL_MS})
        self.proxy.wait_hit(30)
        self.assertEqual(self.wait_decided(self.src, sjob, 20), INDETERMINATE, self.src.job(sjob))
        j = self.src.job(sjob)
        self.assertEqual((j["ErrorName"], COMMIT_STALL[1] in j["Error"]), (PEER_LOST, True), j)
        self.check_source_devices(INDETERMINATE, sjob)
        self.check_invariants(sjob, djob, "delay")
        d_phase = self.dst.wait_final(djob, 25)
        dj = self.dst.job(djob)
        h.log(f"{key} x delay (source first): destination {d_phase} committed={dj['Committed']} "
              f"{dj['ErrorName']}: {dj['Error']}")
        states = [self.dst.state(pd) for pd in self.dst_devs]
        held = all(self.dst.digest(pd) == self.digests[ps] for ps, pd in zip(self.src_devs, self.dst_devs))
        if dj["Committed"]:
            self.assertTrue(held, dj)
            if d_phase == "completed":
                self.assertEqual(states, ["running"] * 2, dj)
            else:
                # COMPLETE could not be sent: the state is kept, stopped, for the orchestrator
                self.assertEqual((d_phase, dj["ErrorName"]), ("failed", PEER_LOST), dj)
                # what it tells the orchestrator: the source waits to be resolved, it does not run
                self.assertIn("the devices committed the state", dj["Error"])
                self.assertIn("resolved as committed", dj["Error"])
                self.assertEqual(states, ["stop"] * 2, dj)
        else:
            self.assertEqual((d_phase, dj["ErrorName"]), ("failed", PEER_ABORTED), dj)
            self.assertFalse(held, dj)
        self.check_invariants(sjob, djob, "delay")
        answer = COMMITTED if dj["Committed"] else NOT_COMMITTED
        self.src.call(sjob, MIGRATION_IFACE, "Resolve", "s", answer)
        if answer == COMMITTED:
            self.assertEqual(self.src.phase(sjob), "completed")
            for ps in self.src_devs:
                self.assertEqual((self.src.state(ps), self.src.digest(ps)), ("stop", self.digests[ps]))
        else:
            self.assertEqual(self.src.phase(sjob), "failed")
            self.check_source_devices(FAILED, sjob)
        self.check_invariants(sjob, djob, "delay")
        self.proxy.cut()
        self.assertEqual(self.proxy.errors, [])


def add_cases(cls, faults):
    for message in MESSAGES:
        key = message_key(message)
        for fault in faults:
            name = f"test_{fault.replace('-', '_')}_at_{key.replace('-', '_').replace(':', '')}"
            setattr(cls, name, lambda self, k=key, f=fault: self.run_case(k, f))


class CommitFaultsLoopback(RaceMixin, CommitFaultCase):
    """Drop, delay and kill -9 of either daemon, over loopback; and the race of the other order
    of the stall timers."""

    def test_control_no_fault_and_the_sampler_sees_both_running(self):
        """Through the proxy without a fault the migration completes exactly (the relay is
        invisible to the proofs and the commit check); then, running the source devices by hand
        next to the committed, running destination is what the sampler must report."""
        self.attach_pair()
        djob, token, addresses = self.dst.prepare(self.dst_devs, run=True, **{"stall-timeout": DST_STALL_MS})
        self.proxy = FaultProxy(addresses[0], listen_host=self.proxy_host)
        self.sampler = InvariantSampler(self.src, self.dst, self.src_devs, self.dst_devs, djob)
        self.sjob = sjob = self.src.start_migration(self.src_devs, self.proxy.address, token, precopy=False,
                                                    channels=1, **{"stall-timeout": SRC_STALL_MS})
        self.assertEqual(self.src.wait_final(sjob, 30), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob, 30), "completed", self.dst.job(djob))
        self.assertTrue(self.dst.job(djob)["Committed"])
        for ps, pd in zip(self.src_devs, self.dst_devs):
            self.assertEqual((self.src.state(ps), self.dst.state(pd)), ("stop", "running"))
            self.assertEqual(self.dst.digest(pd), self.digests[ps])
        self.assertTrue(self.proxy.delivered("d2s", w.COMPLETE))
        self.assertIsNone(self.proxy.hit)
        time.sleep(0.2)
        self.assertEqual(self.sampler.violations, [])
        self.src.call(self.src_devs[0], DEVICE_IFACE, "SetState", "sa{sv}", "running", {})
        deadline = time.monotonic() + 5
        while not self.sampler.violations and time.monotonic() < deadline:
            time.sleep(0.02)
        _samples, violations = self.sampler.stop()
        self.sampler = None
        self.assertTrue(violations, "the sampler did not see both sides running")
        self.assertIn(self.src_devs[0], violations[0])
        self.assertEqual(self.proxy.errors, [])


add_cases(CommitFaultsLoopback, ("drop", "delay", "kill-src", "kill-dst"))
for _key in RACE_MESSAGES:
    setattr(CommitFaultsLoopback, f"test_delay_source_first_at_{_key.replace('-', '_').replace(':', '')}",
            lambda self, k=_key: self.run_race(k))


class NetnsSide(Side):
    """A Side whose daemon runs in a network namespace (ip netns exec execs it: the PID is the
    daemon's). The bus is a socket file, which every network namespace reaches."""

    def __init__(self, name, netns, listen):
        # the proxy reads the packets, so the channels are cleartext, which a daemon without
        # credentials allows off loopback only when told to (vfiomigd.conf(5))
        super().__init__(name, listen=listen, config={"allow-cleartext": True})
        self.netns = netns

    def start_daemon(self):
        self.daemon = h.Daemon(self.bus, args=self.daemon_args(), config=self.config,
                               wrapper=["ip", "netns", "exec", self.netns]).start()
        self.connect()


def ip(*args):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class CommitFaultsLinkDown(CommitFaultCase):
    """Link down: the source daemon in one network namespace, the destination in another, each
    joined to this (the proxy's) namespace by a veth pair made here. At the fault point both
    veth ends on the proxy's side go down: the daemons' packets go nowhere, nobody sees a FIN or
    a reset, only the timers can end it."""

    @classmethod
    def setUpClass(cls):
        tag = os.getpid() % 250
        cls.netns = (f"vfmf-src-{os.getpid()}", f"vfmf-dst-{os.getpid()}")
        cls.links = (f"vfmfs{tag}", f"vfmfd{tag}")       # the proxy's ends; the daemons' end in "p"
        cls.nets = ((f"10.213.{tag}.1", f"10.213.{tag}.2"), (f"10.213.{tag}.5", f"10.213.{tag}.6"))
        cls.addClassCleanup(cls.remove_netns)
        for ns, link, (here, there) in zip(cls.netns, cls.links, cls.nets):
            try:
                ip("netns", "add", ns)
            except RuntimeError as e:
                raise unittest.SkipTest(f"cannot make a network namespace (root without CAP_SYS_ADMIN?): {e}")
            ip("link", "add", link, "type", "veth", "peer", "name", link + "p", "netns", ns)
            ip("addr", "add", f"{here}/30", "dev", link)
            ip("link", "set", link, "up")
            ip("-n", ns, "addr", "add", f"{there}/30", "dev", link + "p")
            ip("-n", ns, "link", "set", link + "p", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        cls.proxy_host = cls.nets[0][0]
        cls.src = NetnsSide("src", cls.netns[0], f"{cls.nets[0][1]}:0")
        cls.addClassCleanup(cls.src.stop)
        cls.src.start()
        cls.dst = NetnsSide("dst", cls.netns[1], f"{cls.nets[1][1]}:0")
        cls.addClassCleanup(cls.dst.stop)
        cls.dst.start()

    @classmethod
    def remove_netns(cls):
        for ns in cls.netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its veth pair along
        for link in cls.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)

    def take_links_down(self):
        for link in self.links:
            ip("link", "set", link, "down")

    def links_up(self):
        for link in self.links:
            ip("link", "set", link, "up")


add_cases(CommitFaultsLinkDown, ("link-down",))


def test_link_stays_down_at_switchover(self):
    """SWITCHOVER lost with the link, and the link stays down: the destination, waiting in
    pre-copy with nothing owed (no stall clock), learns of it only from TCP keepalive and
    TCP_USER_TIMEOUT, within about 30 s (proto/stream-protocol.md §3.3, vfiomigd(8))."""
    self.attach_pair()
    djob, token, addresses = self.dst.prepare(self.dst_devs, run=True, **{"stall-timeout": DST_STALL_MS})
    self.proxy = FaultProxy(addresses[0], SW, "link-down", listen_host=self.proxy_host, on_hit=self.on_hit)
    self.sjob = sjob = self.src.start_migration(self.src_devs, self.proxy.address, token, precopy=False, channels=1,
                                                **{"stall-timeout": SRC_STALL_MS})
    t0 = self.proxy.wait_hit(30)["time"]
    self.assertEqual(self.wait_decided(self.src, sjob, 20), FAILED, self.src.job(sjob))
    self.check_source_devices(FAILED, sjob)
    self.assertEqual(self.dst.phase(djob), "precopy", self.dst.job(djob))
    d_phase = self.dst.wait_final(djob, 50)
    took = time.monotonic() - t0
    dj = self.dst.job(djob)
    h.log(f"link stays down: destination {d_phase} after {took:.1f} s: {dj['ErrorName']}: {dj['Error']}")
    self.assertEqual((d_phase, dj["ErrorName"], dj["Committed"]), ("failed", PEER_LOST, False), dj)
    self.assertGreater(took, 9, "before keepalive's first probe (10 s idle)")
    self.assertLess(took, 40, "the documented figure is about 30 s")
    self.check_invariants(sjob, djob, "link-down")


CommitFaultsLinkDown.test_link_stays_down_at_switchover = test_link_stays_down_at_switchover


if __name__ == "__main__":
    h.main([h.require_root, lambda: h.require_programs("dbus-daemon", "busctl"), h.require_daemon,
            lambda: h.require_files(h.BUS_POLICY), lambda: h.require_programs("ip")])
