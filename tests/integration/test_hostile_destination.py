#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""A real source vfiomigd against a hostile destination speaking protocol v2 over raw sockets
(proto/stream-protocol.md; the codec is stream_wire.py). The destination here is a Python
listener that the source daemon connects to with StartMigration; it knows the token (it chose
it) and says whatever a test wants.

Every case asserts, on the source job, the result (Phase) and the named error (ErrorName) with
a fragment of its text; on the source device, its state (running again, or kept stopped when
the outcome is indeterminate) and its SimDevice.StateDigest, unchanged; and that the daemon
holds as many file descriptors and threads after the job as before it (/proc/PID/fd, /proc/PID/task).

Cases: COMPLETE before SWITCHOVER; COMPLETE with wrong counts; with a wrong digest; a WELCOME
without a proof and with a wrong one; a destination that accepts and stops reading (the job
fails within stall-timeout + a few seconds); control packets on channel 1; an ABORT after
SWITCHOVER; the connection closed right after the last byte (indeterminate, then Resolve both
ways); silence after the last byte (indeterminate by the stall timer); and an honest COMPLETE,
which proves the codec here agrees with the daemon.

CommitFaults: two real daemons, the destination killed (SIGKILL) during stop-copy (the source
runs again) and as soon as it committed (the source completes or is indeterminate, never fails
with its devices running), and the source killed once the destination committed (the destination
keeps the state).

Standard library only. Everything started here is stopped by PID (harness.py).
"""

import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire  # noqa: E402
import harness as h  # noqa: E402
import stream_wire as w  # noqa: E402
from test_migration import DEVICE_IFACE, MIGRATION_IFACE, MiB, PRE, SC, P2P, PairCase, Side  # noqa: E402

E = "org.vfiomig1.Error."
E_PEER_VIOLATION = E + "PeerViolation"
E_PEER_ABORTED = E + "PeerAborted"
E_PEER_LOST = E + "PeerLost"
E_BUSY = E + "Busy"
E_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"


class Channel:
    """One accepted channel: a reader thread collects every packet the source sends."""

    def __init__(self, dest, sock, index):
        self.dest, self.sock, self.index = dest, sock, index
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            while True:
                head = w.parse_header(w.recv_exact(self.sock, 40))
                payload = w.recv_exact(self.sock, head["length"]) if head["length"] else b""
                assert w.crc32c(payload) == head["payload_crc"], "bad payload CRC from the source"
                head["payload"] = payload
                head["channel"] = self.index
                self.dest.add(head)
        except (EOFError, OSError, AssertionError):
            pass
        with self.dest.cond:
            self.closed = True
            self.dest.cond.notify_all()


class RawDestination:
    """Listens on 127.0.0.1:0 for one migration of `devices` devices over `channels` channels."""

    def __init__(self, channels=1):
        self.token = os.urandom(32)
        self.channels = channels
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(15)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.cond = threading.Condition()
        self.packets = []
        self.conns = {}
        self.hello_tail = {}
        h.track(self)

    def __repr__(self):
        return f"RawDestination({self.address})"

    def add(self, head):
        with self.cond:
            self.packets.append(head)
            self.cond.notify_all()

    def handshake(self, proof="right"):
        """Accepts every channel and answers its HELLO; proof: "right", "none" (a WELCOME that
        ends where its proof should be) or "wrong". Returns the HELLOs."""
        hellos = []
        for _ in range(self.channels):
            sock, _addr = self.listener.accept()
            sock.settimeout(15)
            fixed = w.recv_exact(sock, 80)
            (ndev,) = struct.unpack("<I", fixed[64:68])
            raw = fixed + w.recv_exact(sock, ndev * 128 + 4)
            hello = w.parse_hello(raw)
            assert hello["major"] == 2, hello
            assert hello["job_id"] == w.job_id(self.token), "the source names another job"
            assert self.token not in raw, "the token crossed the wire"
            index = hello["channel_index"]
            self.conns[index] = sock
            welcome = w.welcome(0, index)
            nonce = os.urandom(32)
            args = (raw, welcome, hello["nonce"], nonce, index, hello["channel_count"])
            mac = w.proof_mac(self.token, w.LABEL_DST, *args)
            if proof == "wrong":
                mac = bytes([mac[0] ^ 0x20]) + mac[1:]
            if proof == "none":
                sock.sendall(welcome)
                sock.shutdown(socket.SHUT_WR)
            else:
                sock.sendall(welcome + nonce + mac)
            if proof == "right":
                got = w.parse_proof(w.recv_exact(sock, 48))
                assert got == w.proof_mac(self.token, w.LABEL_SRC, *args), "the source's proof does not verify"
            hellos.append(hello)
        return hellos

    def start_reading(self, channels=None):
        for index in (channels if channels is not None else sorted(self.conns)):
            ch = Channel(self, self.conns[index], index)
            self.conns[index] = ch.sock
            ch.thread.start()
            setattr(self, f"reader{index}", ch)

    def wait(self, predicate, timeout=20.0, what="packets"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.packets):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"waited {timeout}s for {what}; got "
                                         f"{[(p['type'], p['device'], p['length']) for p in self.packets][-20:]}")
                self.cond.wait(left)
            return list(self.packets)

    def wait_blobs(self, devices, timeout=30.0):
        """Until every device's packets up to its BLOB arrived (they travel on any channel)."""
        def complete(ps):
            for d in range(devices):
                seqs = sorted(p["device_seq"] for p in ps if p["type"] in w.ORDERED and p["device"] == d)
                blob = [p["device_seq"] for p in ps if p["type"] == w.BLOB and p["device"] == d]
                if not blob or seqs != list(range(blob[0] + 1)):
                    return False
            return True
        return self.wait(complete, timeout, "every packet up to every BLOB")

    def records(self, devices):
        """What an honest COMPLETE says: per device (data bytes, DATA packets, digest)."""
        import hashlib
        with self.cond:
            packets = list(self.packets)
        out = []
        for d in range(devices):
            mine = sorted((p for p in packets if p["type"] in w.ORDERED and p["device"] == d),
                          key=lambda p: p["device_seq"])
            assert [p["device_seq"] for p in mine] == list(range(len(mine))), "a device sequence number is missing"
            data = [p for p in mine if p["type"] == w.DATA]
            digest = hashlib.sha256(b"".join(w.digest_record(p) for p in mine)).digest()
            out.append((sum(p["length"] for p in data), len(data), digest))
        return out

    def send(self, channel, data):
        self.conns[channel].sendall(data)

    def close(self):
        h.untrack(self)
        for sock in self.conns.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.conns = {}
        self.listener.close()

    stop = close


def counts(pid):
    return len(h.open_fds(pid)), len(os.listdir(f"/proc/{pid}/task"))


class HostileDestination(unittest.TestCase):
    """One source daemon for the class; each test migrates one fresh device to a RawDestination."""

    @classmethod
    def setUpClass(cls):
        cls.src = Side("src", listen=None)
        cls.addClassCleanup(cls.src.stop)
        cls.src.start()

    def setUp(self):
        self.dev = self.src.attach(size=2 * MiB, flags=(SC, P2P, PRE))
        self.digest = self.src.digest(self.dev)
        self.pid = self.src.daemon.pid
        self.before = counts(self.pid)

    def tearDown(self):
        self.assertTrue(self.src.daemon.alive(), "the source daemon died")

    def start(self, dest, **options):
        options.setdefault("precopy", False)
        options.setdefault("channels", dest.channels)
        return self.src.start_migration([self.dev], dest.address, dest.token.hex(), **options)

    def assertNoLeak(self):
        """The job's sockets, eventfds, rings and threads are gone (the engine is freed and its
        threads joined when the job ends)."""
        deadline = time.monotonic() + 5
        while True:
            now = counts(self.pid)
            if now == self.before or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(now, self.before, "(fds, threads) before and after the job")

    def assertFailed(self, job, error_name, *fragments, timeout=20):
        self.assertEqual(self.src.wait_final(job, timeout), "failed", self.src.job(job))
        j = self.src.job(job)
        self.assertEqual(j["ErrorName"], error_name, j)
        for f in fragments:
            self.assertIn(f, j["Error"])
        self.assertFalse(j["Committed"])
        self.assertRunningIntact()
        return j

    def assertRunningIntact(self):
        self.assertEqual(self.src.state(self.dev), "running")
        self.assertEqual(self.src.digest(self.dev), self.digest)
        self.assertEqual(self.src.prop(self.dev, DEVICE_IFACE, "Migration"), "/")

    def dest(self, channels=1):
        d = RawDestination(channels)
        self.addCleanup(d.close)
        return d

    def wait_phase(self, job, phase, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            p = self.src.phase(job)
            if p == phase:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{job} is {p}, waited for {phase}: {self.src.job(job)}")
            time.sleep(0.02)

    # ---- the handshake ----

    def test_welcome_without_proof(self):
        dest = self.dest()
        job = self.start(dest)
        dest.handshake(proof="none")
        self.assertFailed(job, E_PEER_VIOLATION, "without proving it knows the job's token")
        self.assertNothingAfterHello(dest)
        dest.close()
        self.assertNoLeak()

    def test_welcome_with_wrong_proof(self):
        dest = self.dest(channels=2)
        job = self.start(dest, channels=2)
        dest.handshake(proof="wrong")
        self.assertFailed(job, E_PEER_VIOLATION, "proof on channel 0 is wrong", "no device state was sent")
        self.assertNothingAfterHello(dest)
        dest.close()
        self.assertNoLeak()

    def assertNothingAfterHello(self, dest):
        """Not one byte of device state (nor a PROOF) followed the HELLO."""
        for sock in dest.conns.values():
            sock.settimeout(5)
            try:
                rest = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                rest = b""
            self.assertEqual(rest, b"", "the source sent something after its HELLO")

    # ---- the commit ----

    def test_complete_before_switchover(self):
        dest = self.dest()
        job = self.start(dest, precopy=True, switchover="manual")
        dest.handshake()
        dest.start_reading()
        self.wait_phase(job, "precopy")
        dest.send(0, w.packet(w.COMPLETE, w.JOB_DEVICE, 0, 0, w.complete_payload([(0, 0, bytes(32))])))
        self.assertFailed(job, E_PEER_VIOLATION, "COMPLETE that proves nothing", "before SWITCHOVER")
        # the source said why before it hung up
        packets = dest.wait(lambda ps: any(p["type"] == w.ABORT for p in ps), 10, "the source's ABORT")
        abort = [p for p in packets if p["type"] == w.ABORT][0]
        self.assertEqual(struct.unpack("<I", abort["payload"][:4])[0], w.ABORT_PROTOCOL)
        dest.close()
        self.assertNoLeak()

    def complete_after_everything(self, mangle):
        dest = self.dest(channels=2)
        job = self.start(dest, channels=2)
        dest.handshake()
        dest.start_reading()
        dest.wait_blobs(1)
        records = mangle(dest.records(1))
        dest.send(0, w.packet(w.COMPLETE, w.JOB_DEVICE, 0, 0, w.complete_payload(records)))
        return dest, job

    def test_complete_with_wrong_byte_count(self):
        dest, job = self.complete_after_everything(lambda r: [(r[0][0] + 1, r[0][1], r[0][2])])
        self.assertFailed(job, E_PEER_VIOLATION, "device 0: it claims")
        dest.close()
        self.assertNoLeak()

    def test_complete_with_wrong_packet_count(self):
        dest, job = self.complete_after_everything(lambda r: [(r[0][0], r[0][1] - 1, r[0][2])])
        self.assertFailed(job, E_PEER_VIOLATION, "device 0: it claims")
        dest.close()
        self.assertNoLeak()

    def test_complete_with_wrong_digest(self):
        dest, job = self.complete_after_everything(lambda r: [(r[0][0], r[0][1], bytes([r[0][2][0] ^ 1]) + r[0][2][1:])])
        self.assertFailed(job, E_PEER_VIOLATION, "digest")
        dest.close()
        self.assertNoLeak()

    def test_honest_complete(self):
        """The raw destination computes COMPLETE from the specification: the source accepts it."""
        dest, job = self.complete_after_everything(lambda r: r)
        self.assertEqual(self.src.wait_final(job), "completed", self.src.job(job))
        j = self.src.job(job)
        self.assertTrue(j["Committed"])
        self.assertEqual(j["ErrorName"], "")
        self.assertEqual(self.src.state(self.dev), "stop")
        self.assertEqual(self.src.digest(self.dev), self.digest)
        dest.close()
        self.assertNoLeak()
        self.src.call(self.dev, DEVICE_IFACE, "SetState", "sa{sv}", "running", {})

    def test_abort_after_switchover(self):
        """The destination may refuse until it commits: the source runs again."""
        dest = self.dest()
        job = self.start(dest)
        dest.handshake()
        dest.start_reading()
        dest.wait(lambda ps: any(p["type"] == w.SWITCHOVER for p in ps), 20, "SWITCHOVER")
        dest.send(0, w.packet(w.ABORT, w.JOB_DEVICE, 0, 0, struct.pack("<I", w.ABORT_DEVICE) + b"disk full"))
        self.assertFailed(job, E_PEER_ABORTED, "disk full")
        dest.close()
        self.assertNoLeak()

    def test_control_packets_on_channel_1(self):
        """Also with plain blocking sockets, whose receiver polls the other channels itself."""
        for ptype, payload, uring in ((w.COMPLETE, w.complete_payload([(0, 0, bytes(32))]), True),
                                      (w.ABORT, struct.pack("<I", w.ABORT_CANCELLED) + b"wrong channel", True),
                                      (w.COMPLETE, w.complete_payload([(0, 0, bytes(32))]), False)):
            with self.subTest(packet=ptype, io_uring=uring):
                self.dev = self.src.attach(size=2 * MiB, flags=(SC, P2P, PRE))
                self.digest = self.src.digest(self.dev)
                self.before = counts(self.pid)
                dest = self.dest(channels=2)
                job = self.start(dest, channels=2, precopy=True, switchover="manual", **{"io-uring": uring})
                dest.handshake()
                dest.start_reading()
                self.wait_phase(job, "precopy")
                dest.send(1, w.packet(ptype, w.JOB_DEVICE, 0, 0, payload))
                self.assertFailed(job, E_PEER_VIOLATION, "channel 1; it sends only on channel 0")
                dest.close()
                self.assertNoLeak()

    # ---- timeouts ----

    def test_destination_stops_reading(self):
        """Accepts, then never reads: the source's sends stop completing. The job fails within
        stall-timeout + a few seconds and the devices, stopped for stop-copy, run again."""
        self.dev_big = self.src.attach(size=48 * MiB, flags=(SC, P2P, PRE))
        digest = self.src.digest(self.dev_big)
        before = counts(self.pid)
        dest = self.dest()
        job = self.src.start_migration([self.dev_big], dest.address, dest.token.hex(), precopy=False, channels=1,
                                       **{"stall-timeout": 2000})
        dest.handshake()
        t0 = time.monotonic()
        self.assertEqual(self.src.wait_final(job, 20), "failed", self.src.job(job))
        took = time.monotonic() - t0
        j = self.src.job(job)
        self.assertEqual(j["ErrorName"], E_PEER_LOST, j)
        self.assertIn("stalled: nothing could be sent", j["Error"])
        self.assertGreater(took, 1.5)
        self.assertLess(took, 2 + 5)
        self.assertEqual(self.src.state(self.dev_big), "running")
        self.assertEqual(self.src.digest(self.dev_big), digest)
        dest.close()
        self.before = before
        self.assertNoLeak()

    def test_source_stall_timeout_refused_out_of_range(self):
        dest = self.dest()
        for value in (1, 999, 25 * 3600 * 1000):
            with self.subTest(value=value):
                with self.assertRaises(dbus_wire.WireError) as cm:
                    self.start(dest, **{"stall-timeout": value})
                self.assertEqual(cm.exception.name, E_INVALID_ARGS)
        self.assertRunningIntact()

    # ---- an unknown outcome ----

    def close_after_last_byte(self, uring=True):
        dest = self.dest(channels=2)
        job = self.start(dest, channels=2, **{"io-uring": uring})
        dest.handshake()
        dest.start_reading()
        dest.wait_blobs(1)
        dest.close()
        self.wait_phase(job, "indeterminate")
        j = self.src.job(job)
        self.assertEqual(j["ErrorName"], E_PEER_LOST, j)
        self.assertFalse(j["Committed"])
        # kept stopped, owned by the job: nothing else may touch it
        self.assertEqual(self.src.state(self.dev), "stop-copy")
        self.assertEqual(self.src.prop(self.dev, DEVICE_IFACE, "Migration"), job)
        with self.assertRaises(dbus_wire.WireError) as cm:
            self.src.call(job, MIGRATION_IFACE, "Cancel")
        self.assertEqual(cm.exception.name, E_BUSY)
        with self.assertRaises(dbus_wire.WireError) as cm:
            self.src.call(job, MIGRATION_IFACE, "Resolve", "s", "maybe")
        self.assertEqual(cm.exception.name, E_INVALID_ARGS)
        self.assertEqual(self.src.phase(job), "indeterminate")
        return job

    def test_closed_after_last_byte_not_committed(self):
        job = self.close_after_last_byte()
        self.src.call(job, MIGRATION_IFACE, "Resolve", "s", "not-committed")
        self.assertEqual(self.src.phase(job), "failed")
        self.assertEqual(self.src.job(job)["ErrorName"], E_PEER_LOST)
        self.assertRunningIntact()
        with self.assertRaises(dbus_wire.WireError) as cm:
            self.src.call(job, MIGRATION_IFACE, "Resolve", "s", "committed")
        self.assertEqual(cm.exception.name, E_BUSY)
        self.assertNoLeak()

    def test_closed_after_last_byte_blocking_io(self):
        job = self.close_after_last_byte(uring=False)
        self.src.call(job, MIGRATION_IFACE, "Resolve", "s", "not-committed")
        self.assertEqual(self.src.phase(job), "failed")
        self.assertRunningIntact()
        self.assertNoLeak()

    def test_closed_after_last_byte_committed(self):
        job = self.close_after_last_byte()
        self.src.call(job, MIGRATION_IFACE, "Resolve", "s", "committed")
        j = self.src.job(job)
        self.assertEqual(j["Phase"], "completed", j)
        self.assertTrue(j["Committed"])
        self.assertEqual(self.src.state(self.dev), "stop")
        self.assertEqual(self.src.digest(self.dev), self.digest)
        self.assertEqual(self.src.prop(self.dev, DEVICE_IFACE, "Migration"), "/")
        self.assertNoLeak()
        self.src.call(self.dev, DEVICE_IFACE, "SetState", "sa{sv}", "running", {})

    def test_silence_after_last_byte(self):
        """Everything read, the connection open, no answer: the stall timer ends the wait, and
        the outcome is unknown."""
        dest = self.dest()
        job = self.start(dest, **{"stall-timeout": 1500})
        dest.handshake()
        dest.start_reading()
        dest.wait_blobs(1)
        t0 = time.monotonic()
        self.wait_phase(job, "indeterminate", timeout=10)
        self.assertLess(time.monotonic() - t0, 1.5 + 5)
        j = self.src.job(job)
        self.assertEqual(j["ErrorName"], E_PEER_LOST, j)
        self.assertIn("did not confirm the commit", j["Error"])
        self.assertEqual(self.src.state(self.dev), "stop-copy")
        dest.close()
        self.src.call(job, MIGRATION_IFACE, "Resolve", "s", "not-committed")
        self.assertRunningIntact()
        self.assertNoLeak()


class CommitFaults(PairCase):
    """Two real daemons; the destination dies at a point of the commit. Whatever the timing, the
    source never reports failure with its devices running once the destination may have
    committed, and never reports success unless the destination proved the commit."""

    def test_destination_killed_in_stop_copy(self):
        """Stop-copy is under way (slowed by a bandwidth limit, so not everything went out): the
        source fails with PeerLost and runs its devices again, state intact."""
        ps, pd = self.pair(16 * MiB, (SC, P2P))
        digest = self.src.digest(ps)
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=2, precopy=False,
                                        **{"bandwidth-limit": 4 * MiB})
        self.src.wait_prop(sjob, MIGRATION_IFACE, "BytesTransferred", lambda v: v > 2 * MiB, timeout=20,
                           what="2 MiB sent")
        self.assertEqual(self.src.phase(sjob), "stop-copy")
        self.dst.kill9()
        self.assertEqual(self.src.wait_final(sjob, 15), "failed")
        j = self.src.job(sjob)
        self.assertEqual(j["ErrorName"], E_PEER_LOST, j)
        self.assertFalse(j["Committed"])
        self.assertEqual(self.src.state(ps), "running")
        self.assertEqual(self.src.digest(ps), digest)

    def test_destination_killed_once_committed(self):
        """Killed as soon as its job says Committed: the COMPLETE was sent before that (the
        commit sends it before anything else happens on the destination's main loop), so the
        source completes, or, had it been lost, would be indeterminate; never failed."""
        ps, pd = self.pair(8 * MiB, (SC, P2P))
        digest = self.src.digest(ps)
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=2, precopy=False)
        self.dst.wait_prop(djob, MIGRATION_IFACE, "Committed", bool, timeout=20, what="Committed")
        self.assertEqual(self.dst.digest(pd), digest, "the destination holds the source's state")
        self.dst.kill9()
        deadline = time.monotonic() + 15
        while self.src.phase(sjob) not in ("completed", "failed", "cancelled", "indeterminate"):
            self.assertLess(time.monotonic(), deadline, self.src.job(sjob))
            time.sleep(0.02)
        phase = self.src.phase(sjob)
        self.assertIn(phase, ("completed", "indeterminate"), self.src.job(sjob))
        if phase == "indeterminate":
            self.assertEqual(self.src.state(ps), "stop-copy")
            self.src.call(sjob, MIGRATION_IFACE, "Resolve", "s", "committed")
        self.assertEqual(self.src.phase(sjob), "completed")
        self.assertTrue(self.src.prop(sjob, MIGRATION_IFACE, "Committed"))
        self.assertEqual(self.src.state(ps), "stop")

    def test_source_killed_after_the_last_byte(self):
        """The source dies once the destination has every byte: the destination commits anyway
        and keeps the state (Committed), whether or not its COMPLETE could still be sent; it never
        resets a committed device."""
        ps, pd = self.pair(8 * MiB, (SC, P2P))
        digest = self.src.digest(ps)
        djob, token, addresses = self.dst.prepare([pd])
        self.src.start_migration([ps], addresses[0], token, channels=2, precopy=False)
        self.dst.wait_prop(djob, MIGRATION_IFACE, "Committed", bool, timeout=20, what="Committed")
        self.src.kill9()
        phase = self.dst.wait_final(djob, 15)
        j = self.dst.job(djob)
        self.assertIn(phase, ("completed", "failed"), j)
        if phase == "failed":
            self.assertEqual(j["ErrorName"], E_PEER_LOST, j)
        self.assertTrue(j["Committed"])
        self.assertEqual(self.dst.state(pd), "stop")
        self.assertEqual(self.dst.digest(pd), digest)


if __name__ == "__main__":
    h.main([h.require_root, lambda: h.require_programs("dbus-daemon", "busctl"), h.require_daemon,
            lambda: h.require_files(h.BUS_POLICY)])
