#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""TLS on the migration stream between two real vfiomigd (test_migration.py's Side: a private bus
and a daemon each), with a throwaway CA made here by tools/make-test-pki.sh.

* Migrations over TLS (x509 at 1 and 4 channels, and PSK): the state arrives (equal digests) and
  the jobs' Transport property says what ran (tls-user on a kernel without CONFIG_TLS).
* Every refusal, each checked on BOTH sides: the source job's named error and its text, the
  destination's log line and its job (still waiting in setup, no channel adopted), and the source
  device running with its state unchanged: a CA the source does not trust, an expired source
  certificate, a source not on the destination's allowed-peers, a PSK mismatch, a cleartext source
  against a TLS-only destination and a TLS source against a destination without credentials.
* Secure by default: without credentials, StartMigration to a non-loopback address is refused
  with InsecureTransport, and allow-cleartext lifts that.
* A capture (tcpdump in two network namespaces made here, joined by a veth) of a TLS migration
  holds neither the job token nor any 64-byte run of the device's state (saved with
  Device.SaveState before the migration); the same check on a cleartext migration finds both,
  so it can see. Without credentials, PrepareIncoming on a non-loopback address is refused.

Standard library only; everything started here is stopped by PID or name (harness.py).
"""

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire  # noqa: E402
import harness as h  # noqa: E402
import stream_wire  # noqa: E402
from test_migration import DEVICE_IFACE, MIGRATION_IFACE, MiB, PRE, P2P, SC, Side  # noqa: E402

E = "org.vfiomig1.Error."
E_AUTH = E + "AuthenticationFailed"
E_INSECURE = E + "InsecureTransport"
E_REJECTED = E + "PeerRejected"

PKI = None


def make_pki():
    global PKI
    PKI = h.TempDir(prefix="vfm-tls-pki-")
    script = str(h.SOURCE_ROOT / "tools" / "make-test-pki.sh")

    def run(*args):
        subprocess.run([script, *args], check=True)
    run("--ip", "127.0.0.1", "--ip", "10.77.0.1", "--ip", "10.77.0.2", str(PKI), "src", "dst")
    run("--expired", str(PKI), "old")
    run("--ca-name", "another CA", str(PKI / "other"), "src")
    run("--psk", "host-a", str(PKI / "psk1"), "h")
    run("--psk", "host-a", str(PKI / "psk2"), "h")


def x509(host, base=None, **extra):
    tls = {"x509-dir": str((base or PKI) / host)}
    tls.update({k.replace("_", "-"): v for k, v in extra.items()})
    return {"tls": tls}


def psk(which):
    return {"tls": {"psk-file": str(PKI / which / "h" / "psk.txt")}}


def kernel_tls(side):
    """What the daemon said at start: does this kernel take TLS records?"""
    return "kernel TLS is available" in side.daemon.log()


class TlsBase(unittest.TestCase):
    src_config = None
    dst_config = None
    src_kw = {}
    dst_kw = {}

    @classmethod
    def setUpClass(cls):
        cls.src = Side("src", config=cls.src_config, **cls.src_kw)
        cls.addClassCleanup(cls.src.stop)
        cls.src.start()
        cls.dst = Side("dst", config=cls.dst_config, **cls.dst_kw)
        cls.addClassCleanup(cls.dst.stop)
        cls.dst.start()

    def run(self, result=None):
        bad = (lambda: len(result.failures) + len(result.errors)) if result is not None else (lambda: 0)
        before = bad()
        out = super().run(result)
        if bad() > before:
            for side in (self.src, self.dst):
                if side.daemon is not None:
                    h.log(f"--- {side.name} vfiomigd log (the end) ---\n{side.daemon.log()[-5000:]}")
        return out

    def tearDown(self):
        for side in (self.src, self.dst):
            if side.daemon is None or not side.daemon.alive():
                side.restart_daemon()
                continue
            side.cancel_running_jobs()
            side.park_all()

    def configure(self, side, config):
        if side.config != config:
            side.config = config
            side.restart_daemon()

    def pair(self, size=2 * MiB, flags=(SC, P2P, PRE)):
        ps = self.src.attach(size=size, flags=flags, seed=0x7150 + size)
        pd = self.dst.attach(size=size, flags=flags, seed=0xD570 + size)
        self.assertNotEqual(self.src.digest(ps), self.dst.digest(pd))
        return ps, pd

    def wait_log(self, side, text, timeout=10.0):
        deadline = time.monotonic() + timeout
        while text not in side.daemon.log():
            if time.monotonic() >= deadline:
                self.fail(f"{side.name}'s log does not say {text!r}:\n{side.daemon.log()[-3000:]}")
            time.sleep(0.05)

    def migrate_ok(self, channels, transport):
        ps, pd = self.pair(size=3 * MiB + 17)
        digest = self.src.digest(ps)
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=channels)
        self.assertEqual(self.src.wait_final(sjob, 60), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob, 60), "completed", self.dst.job(djob))
        self.assertEqual(self.dst.digest(pd), digest, "the state did not arrive")
        self.assertEqual(self.src.job(sjob)["Transport"], transport)
        self.assertEqual(self.dst.job(djob)["Transport"], transport)
        return sjob, djob

    def refused(self, src_config, dst_config, error_name, src_text, dst_log):
        """A migration the handshake refuses: the source job fails with error_name and a text
        holding src_text, the destination's log says dst_log and its job still waits for a
        channel, and the source device runs on with its state unchanged."""
        self.configure(self.src, src_config)
        self.configure(self.dst, dst_config)
        ps, pd = self.pair()
        digest = self.src.digest(ps)
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=2)
        self.assertEqual(self.src.wait_final(sjob, 30), "failed", self.src.job(sjob))
        job = self.src.job(sjob)
        h.log(f"source: {job['ErrorName']}: {job['Error']}")
        self.assertEqual(job["ErrorName"], error_name, job["Error"])
        self.assertIn(src_text, job["Error"])
        self.assertEqual(self.src.state(ps), "running")
        self.assertEqual(self.src.digest(ps), digest)
        self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), "/")
        self.wait_log(self.dst, dst_log)
        # no channel was adopted: the destination job still waits, and says so
        d = self.dst.job(djob)
        self.assertEqual((d["Phase"], d["Channels"]), ("setup", 0), d)
        self.dst.call(djob, MIGRATION_IFACE, "Cancel")
        self.assertEqual(self.dst.wait_final(djob), "cancelled")
        return job


class Tls(TlsBase):
    @classmethod
    def setUpClass(cls):
        make_pki()
        cls.src_config = x509("src")
        cls.dst_config = x509("dst")
        super().setUpClass()

    def test_1_migration(self):
        self.configure(self.src, x509("src"))
        self.configure(self.dst, x509("dst"))
        transport = "tls-kernel" if kernel_tls(self.src) else "tls-user"
        h.log(f"this kernel: {transport}")
        for channels in (1, 4):
            self.migrate_ok(channels, transport)
        # both ends say who the peer was and what ran
        self.wait_log(self.src, "stream out: TLS to CN=dst,O=vfiomigd tests")
        self.wait_log(self.dst, f"({transport} with CN=src,O=vfiomigd tests")

    def test_2_psk(self):
        self.configure(self.src, psk("psk1"))
        self.configure(self.dst, psk("psk1"))
        self.migrate_ok(2, "tls-kernel" if kernel_tls(self.src) else "tls-user")
        self.wait_log(self.dst, "with psk:host-a")

    def test_3_unknown_ca(self):
        self.refused(x509("src", base=PKI / "other"), x509("dst"), E_AUTH,
                     "unknown CA: the peer's certificate (CN=dst,O=vfiomigd tests) is issued by \"CN=vfiomigd test CA\"",
                     "failed: the peer does not accept our certificate (see its log for why) (TLS alert \"CA is unknown\")")

    def test_4_expired(self):
        self.refused(x509("old"), x509("dst"), E_AUTH,
                     "the destination refused the TLS connection on channel 0: the peer does not accept our certificate",
                     "the peer's certificate (CN=old,O=vfiomigd tests) expired on 2020-12-31")

    def test_5_not_allowed(self):
        self.refused(x509("src"), x509("dst", allowed_peers=["CN=host-c,*", "10.0.0.3"]), E_AUTH,
                     "the peer does not allow our identity",
                     "the peer's identity is not allowed: none of subject \"CN=src,O=vfiomigd tests\"")

    def test_6_psk_mismatch(self):
        job = self.refused(psk("psk1"), psk("psk2"), E_AUTH, "TLS on channel 0", "TLS with 127.0.0.1:")
        self.assertTrue("PSK mismatch" in job["Error"] or "PSK mismatch" in self.dst.daemon.log(),
                        f"neither side names the PSK mismatch: {job['Error']}")

    def test_7_cleartext_source_tls_destination(self):
        self.refused(None, x509("dst"), E_REJECTED, "this destination only takes TLS",
                     "refusing a cleartext connection from 127.0.0.1:")

    def test_8_tls_source_cleartext_destination(self):
        self.refused(x509("src"), None, E_INSECURE,
                     "the destination does not speak TLS: it refused channel 0 in cleartext",
                     "started a TLS handshake, but this daemon has no TLS credentials")

    def test_a_hostile_bytes(self):
        """Garbage that looks like TLS, and a connection that says nothing, cost the TLS-only
        destination a log line and a closed socket within its deadline; the prepared job then
        still takes the honest source."""
        self.configure(self.src, x509("src"))
        self.configure(self.dst, x509("dst"))
        ps, pd = self.pair()
        digest = self.src.digest(ps)
        djob, token, addresses = self.dst.prepare([pd])
        host, _, port = addresses[0].rpartition(":")
        junk = socket.create_connection((host, int(port)), timeout=10)
        # a handshake record longer than TLS allows (2^14 + 256): refused on sight, not waited for
        junk.sendall(b"\x16\x03\x01\xff\xff" + bytes(range(64)) + bytes.fromhex(token))
        t0 = time.monotonic()
        answer = b""
        try:
            while True:
                chunk = junk.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset, after the alert (if it came first)
        junk.close()
        self.assertLess(time.monotonic() - t0, 3.0, "the garbage was not dropped at once")
        self.assertTrue(answer == b"" or answer[0] == 21, f"not a TLS alert: {answer[:16]!r}")
        self.wait_log(self.dst, "stream listener: TLS with 127.0.0.1:")
        silent = socket.create_connection((host, int(port)), timeout=15)
        t0 = time.monotonic()
        self.assertEqual(silent.recv(4096), b"", "a silent connection got an answer")
        took = time.monotonic() - t0
        silent.close()
        self.assertLess(took, 8.0, f"a silent connection was held {took:.1f} s (the HELLO deadline is 5 s)")
        self.assertEqual(self.dst.job(djob)["Phase"], "setup")
        sjob = self.src.start_migration([ps], addresses[0], token, channels=2)
        self.assertEqual(self.src.wait_final(sjob, 60), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob, 60), "completed", self.dst.job(djob))
        self.assertEqual(self.dst.digest(pd), digest)

    def test_9_secure_by_default(self):
        """Without credentials: no cleartext to a non-loopback address, unless allowed."""
        self.configure(self.src, None)
        ps = self.src.attach()
        digest = self.src.digest(ps)
        try:
            self.src.start_migration([ps], "192.0.2.1:7179", "00" * 32)
            self.fail("StartMigration to 192.0.2.1 without credentials was accepted")
        except dbus_wire.WireError as e:
            self.assertEqual(e.name, E_INSECURE, e.message)
            self.assertIn("cleartext migration to the non-loopback address 192.0.2.1:7179 refused", e.message)
        self.assertEqual(self.src.state(ps), "running")
        self.assertEqual(self.src.digest(ps), digest)
        self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "Migration"), "/")
        self.assertEqual(self.src.manager("ListMigrations")[0], [])
        self.wait_log(self.src, "No TLS credentials")

        self.configure(self.src, {"allow-cleartext": True})
        self.wait_log(self.src, "allow-cleartext is set")
        ps = self.src.attach()
        job = self.src.start_migration([ps], "192.0.2.1:7179", "00" * 32)
        self.assertEqual(self.src.job(job)["Transport"], "cleartext")
        # let through: it fails only where the network does (or we cancel it)
        try:
            self.src.call(job, MIGRATION_IFACE, "Cancel")
        except dbus_wire.WireError as e:
            self.assertEqual(e.name, E + "Busy", e.message)
        self.assertIn(self.src.wait_final(job), ("failed", "cancelled"))
        self.assertNotEqual(self.src.job(job)["ErrorName"], E_INSECURE)
        self.assertEqual(self.src.state(ps), "running")


# --------------------------------------------------------------------------------------------
# The capture


def pcap_flows(path):
    """The TCP payload of each direction of each connection in an Ethernet pcap, reassembled by
    sequence number: {(src, sport, dst, dport): bytes}."""
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data, 0)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    segments = {}
    off = 24
    while off + 16 <= len(data):
        _ts, _tu, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if linktype == 1:            # Ethernet
            if len(frame) < 14 or struct.unpack_from("!H", frame, 12)[0] != 0x0800:
                continue
            ip = frame[14:]
        elif linktype == 113:        # Linux cooked
            ip = frame[16:]
        else:
            raise AssertionError(f"unexpected pcap link type {linktype}")
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            continue
        sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            key = (bytes(ip[12:16]), sport, bytes(ip[16:20]), dport)
            segments.setdefault(key, {})[seq] = payload
    flows = {}
    for key, segs in segments.items():
        out = bytearray()
        nxt = None
        for seq in sorted(segs):
            p = segs[seq]
            if nxt is not None:
                if seq + len(p) <= nxt:             # a retransmission of what we have
                    continue
                if seq < nxt:
                    p = p[nxt - seq:]
            out += p
            nxt = seq + len(segs[seq])
        flows[key] = bytes(out)
    return flows


def state_runs(flows, state):
    """How many positions of the captured streams start 32 bytes that are an aligned 32-byte
    block of the state: any 64-byte run of the state holds such a block, so 0 means no 64-byte
    run of the state crossed the wire. Blocks of few distinct bytes (zeros, fill) are left out."""
    blocks = {state[i:i + 32] for i in range(0, len(state) - 31, 32) if len(set(state[i:i + 32])) >= 12}
    hits = 0
    for stream in flows.values():
        for i in range(len(stream) - 31):
            if stream[i:i + 32] in blocks:
                hits += 1
    return hits, len(blocks)


class Capture(TlsBase):
    """Two network namespaces joined by a veth; tcpdump on the source's end."""

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root for network namespaces and tcpdump")
        for tool in ("ip", "tcpdump"):
            if not h.find_program(tool):
                raise unittest.SkipTest(f"{tool} is missing (tools/setup.sh installs it)")
        if PKI is None:
            make_pki()
        tag = f"{os.getpid() % 100000}"
        cls.ns_a, cls.ns_b = f"vfmtls-a{tag}", f"vfmtls-b{tag}"
        cls.veth_a, cls.veth_b = f"vta{tag}", f"vtb{tag}"
        cls.addClassCleanup(cls._remove_namespaces)
        for cmd in (["ip", "netns", "add", cls.ns_a], ["ip", "netns", "add", cls.ns_b],
                    ["ip", "link", "add", cls.veth_a, "netns", cls.ns_a, "type", "veth", "peer", "name", cls.veth_b,
                     "netns", cls.ns_b],
                    ["ip", "-n", cls.ns_a, "addr", "add", "10.77.0.1/24", "dev", cls.veth_a],
                    ["ip", "-n", cls.ns_b, "addr", "add", "10.77.0.2/24", "dev", cls.veth_b],
                    ["ip", "-n", cls.ns_a, "link", "set", cls.veth_a, "up"],
                    ["ip", "-n", cls.ns_b, "link", "set", cls.veth_b, "up"],
                    ["ip", "-n", cls.ns_a, "link", "set", "lo", "up"],
                    ["ip", "-n", cls.ns_b, "link", "set", "lo", "up"]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise unittest.SkipTest(f"cannot make the network namespaces ({' '.join(cmd)}: {r.stderr.strip()})")
        cls.src_config = x509("src")
        cls.dst_config = x509("dst")
        cls.src_kw = {"wrapper": ["ip", "netns", "exec", cls.ns_a], "listen": "10.77.0.1:0"}
        cls.dst_kw = {"wrapper": ["ip", "netns", "exec", cls.ns_b], "listen": "10.77.0.2:0"}
        super().setUpClass()

    @classmethod
    def _remove_namespaces(cls):
        for ns in (cls.ns_a, cls.ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def save_state(self, ps):
        """The device's migration data (Device.SaveState into a file) while it is stopped."""
        self.src.call(ps, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
        with tempfile.TemporaryFile() as f:
            self.src.conn.call(h.BUS_NAME, ps, DEVICE_IFACE, "SaveState", "ha{sv}", (0, {}), fds=[f.fileno()])
            f.seek(0)
            state = f.read()
        self.src.call(ps, DEVICE_IFACE, "SetState", "sa{sv}", "running", {})
        return state

    def captured_migration(self, expect_transport):
        ps, pd = self.pair(size=2 * MiB)
        state = self.save_state(ps)
        self.assertGreater(len(state), 2 * MiB - 1)
        pcap = PKI / f"capture-{expect_transport}.pcap"
        tcpdump = subprocess.Popen(["ip", "netns", "exec", self.ns_a, "tcpdump", "-i", self.veth_a, "-U", "--immediate-mode", "-s", "0",
                                    "-B", "131072",
                                    "-w", str(pcap), "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            line = tcpdump.stderr.readline().decode(errors="replace")
            self.assertIn("listening on", line, "tcpdump did not start")
            djob, token, addresses = self.dst.prepare([pd])
            self.assertTrue(addresses[0].startswith("10.77.0.2:"), addresses)
            sjob = self.src.start_migration([ps], addresses[0], token, channels=2)
            self.assertEqual(self.src.wait_final(sjob, 60), "completed", self.src.job(sjob))
            self.assertEqual(self.dst.wait_final(djob, 60), "completed", self.dst.job(djob))
            self.assertEqual(self.src.job(sjob)["Transport"], expect_transport)
            sent = self.src.job(sjob)["BytesTransferred"]
            # tcpdump writes what it took in a while later: wait until the file stops growing
            size, stable, deadline = -1, 0, time.monotonic() + 10
            while stable < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
                now = pcap.stat().st_size if pcap.exists() else 0
                stable, size = (stable + 1, size) if now == size else (0, now)
        finally:
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(10)
            h.log("tcpdump: " + tcpdump.stderr.read().decode(errors="replace").strip().replace("\n", "; "))
            tcpdump.stderr.close()
        flows = pcap_flows(pcap)
        total = sum(len(v) for v in flows.values())
        h.log(f"captured {total} bytes, the job sent {sent} bytes of device data, SaveState gave {len(state)}")
        self.assertGreaterEqual(total, sent, "the capture holds less than the migration sent: it missed some")
        raw_token = bytes.fromhex(token)
        token_seen = any(raw_token in f or token.encode() in f for f in flows.values())
        # protocol v2 names the job by an identifier derived from the token (in the HELLO):
        # readable in cleartext, inside TLS it must not be
        job_id_seen = any(stream_wire.job_id(raw_token) in f for f in flows.values())
        hits, blocks = state_runs(flows, state)
        h.log(f"{expect_transport}: {len(flows)} flows, {total} bytes captured, token seen: {token_seen}, "
              f"job id seen: {job_id_seen}, {hits} positions matching {blocks} state blocks")
        return token_seen, job_id_seen, hits

    def test_1_tls_capture_holds_no_secret(self):
        self.configure(self.src, x509("src"))
        self.configure(self.dst, x509("dst"))
        token_seen, job_id_seen, hits = self.captured_migration("tls-kernel" if kernel_tls(self.src) else "tls-user")
        self.assertFalse(token_seen, "the token crossed the wire readable")
        self.assertFalse(job_id_seen, "the job identifier crossed the wire readable")
        self.assertEqual(hits, 0, "device state crossed the wire readable")

    def test_2_cleartext_needs_allow_cleartext(self):
        """Without credentials, the destination refuses to listen on a non-loopback address."""
        self.configure(self.dst, None)
        pd = self.dst.attach()
        try:
            self.dst.prepare([pd])
            self.fail("PrepareIncoming on 10.77.0.2 without credentials was accepted")
        except dbus_wire.WireError as e:
            self.assertEqual(e.name, E_INSECURE, e.message)
            self.assertIn("cleartext migration from the non-loopback address 10.77.0.2:", e.message)
        self.assertEqual(self.dst.state(pd), "running")

    def test_3_the_check_can_see(self):
        """The same capture of a cleartext migration shows the job identifier and the state, and
        still not the token: protocol v2 never sends it, only proofs of it."""
        self.configure(self.src, {"allow-cleartext": True})
        self.configure(self.dst, {"allow-cleartext": True})
        token_seen, job_id_seen, hits = self.captured_migration("cleartext")
        self.assertTrue(job_id_seen, "the check does not find the job identifier in cleartext")
        self.assertFalse(token_seen, "the token crossed the wire in cleartext")
        self.assertGreater(hits, 1000, "the check does not find the state in cleartext")


if __name__ == "__main__":
    h.main([h.require_root, lambda: h.require_programs("dbus-daemon", "busctl", "certtool"), h.require_daemon,
            lambda: h.require_files(h.BUS_POLICY)])
