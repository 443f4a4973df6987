# SPDX-License-Identifier: GPL-2.0-or-later
"""The stream protocol, version 2 (proto/stream-protocol.md), in Python: what the hostile source
(test_migration.py) and the hostile destination (test_hostile_destination.py) speak over raw
sockets. Written from the specification, not from the daemon's code: where the two disagree,
the tests fail.

Standard library only.
"""

import hashlib
import hmac
import os
import socket
import struct
import time

KiB, MiB = 1 << 10, 1 << 20


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc32c_table()
_crc_cache = {}


def crc32c(data):
    data = bytes(data)
    if len(data) >= 4096 and data in _crc_cache:
        return _crc_cache[data]
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    crc ^= 0xFFFFFFFF
    if len(data) >= 4096:
        _crc_cache[data] = crc
    return crc


# The standard check value.
assert crc32c(b"123456789") == 0xE3069283

# The raw peers speak 2.0 unless told otherwise: what a daemon of 2.1 must still serve (§1.5).
MAJOR, MINOR = 2, 0
MINOR_REINIT = 1  # 2.1: re-opened initial data (§2.6)
HELLO_FIXED = struct.Struct("<8sHHHH16s32sIII4x")   # 80 bytes
HELLO_V1_FIXED = struct.Struct("<8sHHHH32sIII4x")   # 64 bytes: what a version 1 source sent
HELLO_DEVICE = struct.Struct("<IIHH4xQQ64s32x")     # 128 bytes
WELCOME = struct.Struct("<8sHHIHHI68sI")            # 96 bytes (+ 64 of proof when accepted)
WELCOME_PROOF_SIZE = 64
PROOF = struct.Struct("<8s32s4xI")                  # 48 bytes
HEADER = struct.Struct("<4sBBHQQIII")               # 36 bytes, then the header CRC
COMPLETE_RECORD = struct.Struct("<QQ32s")           # 48 bytes per device
DIGEST_RECORD = struct.Struct("<QBB2xII4x")         # 24 bytes per ordered packet
assert HELLO_FIXED.size == 80 and HELLO_V1_FIXED.size == 64 and HELLO_DEVICE.size == 128
assert WELCOME.size == 96 and PROOF.size == 48 and HEADER.size == 36
assert COMPLETE_RECORD.size == 48 and DIGEST_RECORD.size == 24

DATA, INITIAL_DONE, END, BLOB, SWITCHOVER, INITIAL_LOADED, COMPLETE, ABORT = 1, 2, 3, 4, 16, 17, 18, 19
ORDERED = (DATA, INITIAL_DONE, END, BLOB)
REFUSALS = {1: "bad-hello", 2: "version", 3: "token", 4: "channels", 5: "devices", 6: "incompatible",
            7: "busy", 8: "limit"}
ABORT_CANCELLED, ABORT_DEVICE, ABORT_PROTOCOL, ABORT_INTERNAL, ABORT_TIMEOUT = 1, 2, 3, 4, 5
JOB_DEVICE = 0xFFFF
LABEL_JOB_ID, LABEL_DST, LABEL_SRC = b"vfiomigd job id", b"vfiomigd v2 dst", b"vfiomigd v2 src"
ZERO_BINDING = bytes(32)  # cleartext channels


def job_id(token):
    return hmac.new(token, LABEL_JOB_ID, hashlib.sha256).digest()[:16]


def proof_mac(token, label, hello_bytes, welcome96, nonce_src, nonce_dst, index, count, binding=ZERO_BINDING):
    msg = label + bytes(hello_bytes) + bytes(welcome96) + nonce_src + nonce_dst + struct.pack("<HH", index, count) + binding
    return hmac.new(token, msg, hashlib.sha256).digest()


class Hello(bytes):
    """A HELLO's bytes, remembering what the handshake needs (token, nonce, channel)."""
    token = nonce = None
    channel_index = channel_count = 0


def hello(token, devices, channel_index=0, channel_count=1, flags=1, max_payload=1 * MiB, major=MAJOR, minor=MINOR,
          corrupt_crc=False, nonce=None):
    """A HELLO for devices: a list of dicts with flags (int), state_size, driver. major=1 makes
    a version-1 HELLO (the token in clear at offset 16)."""
    nonce = os.urandom(32) if nonce is None else nonce
    if major == 1:
        body = HELLO_V1_FIXED.pack(b"VFMHELLO", major, minor, channel_index, channel_count, token, len(devices),
                                   flags, max_payload)
    else:
        body = HELLO_FIXED.pack(b"VFMHELLO", major, minor, channel_index, channel_count, job_id(token), nonce,
                                len(devices), flags, max_payload)
    for d in devices:
        body += HELLO_DEVICE.pack(d["flags"], 1, 0xFFFF, 0xFFFF, d.get("stop_copy_size", 0), d["state_size"],
                                  d["driver"].encode())
    crc = crc32c(body)
    if corrupt_crc:
        crc ^= 0x00010000
    out = Hello(body + struct.pack("<I", crc))
    out.token, out.nonce, out.channel_index, out.channel_count = token, nonce, channel_index, channel_count
    return out


def parse_hello(data):
    """A v2 HELLO the daemon sent (checks magic and CRC)."""
    magic, major, minor, index, count, jid, nonce, ndev, flags, max_payload = HELLO_FIXED.unpack(data[:80])
    assert magic == b"VFMHELLO", f"not a HELLO: {data[:8]!r}"
    assert struct.unpack("<I", data[-4:])[0] == crc32c(data[:-4]), "HELLO checksum mismatch"
    return {"major": major, "minor": minor, "channel_index": index, "channel_count": count, "job_id": jid,
            "nonce": nonce, "device_count": ndev, "flags": flags, "max_payload": max_payload}


def welcome(status, channel_index, max_payload=1 * MiB, reason=b"", major=MAJOR, minor=MINOR):
    body = WELCOME.pack(b"VFMWELCM", major, minor, status, channel_index, 0, max_payload, reason, 0)[:92]
    return body + struct.pack("<I", crc32c(body))


def parse_welcome(data):
    magic, major, minor, status, index, reserved, max_payload, reason, crc = WELCOME.unpack(data[:96])
    assert magic == b"VFMWELCM", f"not a WELCOME: {data[:8]!r}"
    assert crc == crc32c(data[:92]), "WELCOME checksum mismatch"
    return {"major": major, "minor": minor, "status": status, "channel_index": index, "max_payload": max_payload,
            "reason": reason.rstrip(b"\0").decode(errors="replace"), "raw": bytes(data[:96])}


def proof(mac):
    body = PROOF.pack(b"VFMPROOF", mac, 0)[:44]
    return body + struct.pack("<I", crc32c(body))


def parse_proof(data):
    magic, mac, crc = PROOF.unpack(data)
    assert magic == b"VFMPROOF", f"not a PROOF: {data[:8]!r}"
    assert crc == crc32c(data[:44]), "PROOF checksum mismatch"
    return mac


def packet(ptype, device, stream_seq, device_seq, payload=b"", flags=0, length=None, payload_crc=None):
    length = len(payload) if length is None else length
    payload_crc = crc32c(payload) if payload_crc is None else payload_crc
    head = HEADER.pack(b"VFPK", ptype, flags, device, stream_seq, device_seq, length, payload_crc, 0)
    return head + struct.pack("<I", crc32c(head)) + payload


def parse_header(data):
    magic, ptype, flags, device, sseq, dseq, length, pcrc, reserved = HEADER.unpack(data[:36])
    (hcrc,) = struct.unpack("<I", data[36:40])
    assert magic == b"VFPK" and hcrc == crc32c(data[:36]), f"bad packet header from the daemon: {data!r}"
    return {"type": ptype, "flags": flags, "device": device, "stream_seq": sseq, "device_seq": dseq,
            "length": length, "payload_crc": pcrc}


def digest_record(head):
    return DIGEST_RECORD.pack(head["device_seq"], head["type"], head["flags"], head["length"], head["payload_crc"])


def complete_payload(records):
    """records: [(data bytes, DATA packets, 32-byte digest)] per device."""
    return b"".join(COMPLETE_RECORD.pack(b, n, d) for b, n, d in records)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def address_tuple(address):
    """'127.0.0.1:PORT' or '[::1]:PORT' -> (family, (host, port))."""
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
        return socket.AF_INET6, (host, int(port))
    host, _, port = address.rpartition(":")
    return socket.AF_INET, (host, int(port))


def read_until_closed(sock, timeout=10.0):
    """Packets the daemon sends until it closes the connection; raises if it does not."""
    packets = []
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the daemon did not close the connection within {timeout}s "
                                 f"(packets so far: {packets})")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 40:
            head = parse_header(bytes(buf[:40]))
            if len(buf) < 40 + head["length"]:
                break
            head["payload"] = bytes(buf[40:40 + head["length"]])
            del buf[:40 + head["length"]]
            packets.append(head)
    return packets


class RawSource:
    """One channel of a hostile (or just hand-written) source. track/untrack: the test harness's
    bookkeeping of what to close (optional)."""

    def __init__(self, address, timeout=10.0, track=None, untrack=None):
        family, sa = address_tuple(address)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(sa)
        self._untrack = untrack
        if track:
            track(self)

    def __repr__(self):
        return f"RawSource({self.sock})"

    def handshake(self, data, prove="right"):
        """Sends the HELLO; returns the WELCOME. An accepting WELCOME's proof must verify (the
        daemon knows the token), then the PROOF goes out: prove="right", "wrong" or "none"."""
        self.sock.sendall(data)
        w = parse_welcome(recv_exact(self.sock, WELCOME.size))
        if w["status"] != 0 or not isinstance(data, Hello) or data.token is None:
            return w
        tail = recv_exact(self.sock, WELCOME_PROOF_SIZE)
        w["nonce"], w["mac"] = tail[:32], tail[32:]
        args = (bytes(data), w["raw"], data.nonce, w["nonce"], data.channel_index, data.channel_count)
        want = proof_mac(data.token, LABEL_DST, *args)
        assert hmac.compare_digest(want, w["mac"]), "the daemon's WELCOME proof does not verify"
        mine = proof_mac(data.token, LABEL_SRC, *args)
        if prove == "wrong":
            mine = bytes([mine[0] ^ 1]) + mine[1:]
        if prove != "none":
            self.sock.sendall(proof(mine))
        return w

    def send(self, data):
        self.sock.sendall(data)

    def read_packet(self):
        head = parse_header(recv_exact(self.sock, 40))
        payload = recv_exact(self.sock, head["length"]) if head["length"] else b""
        if head["length"]:
            assert crc32c(payload) == head["payload_crc"], "bad payload CRC from the daemon"
        head["payload"] = payload
        return head

    def read_until_closed(self, timeout=10.0):
        return read_until_closed(self.sock, timeout)

    def stop(self):
        if self._untrack:
            self._untrack(self)
        try:
            self.sock.close()
        except OSError:
            pass

    close = stop
