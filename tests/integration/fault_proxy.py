# SPDX-License-Identifier: GPL-2.0-or-later
"""A fault-injecting TCP proxy between a source and a destination vfiomigd (protocol v2,
proto/stream-protocol.md; the codec is stream_wire.py).

The source daemon connects to the proxy as if it were the destination; the proxy connects to the
real destination and relays. The v2 handshake (HELLO, WELCOME and its proof, PROOF) passes
untouched: in cleartext the proofs bind the nonces and a zero channel binding, not the
addresses, so a relay is invisible to them. After the handshake the proxy parses every packet
header (40 bytes, then the payload) in both directions and, at one chosen message of the commit,
applies one fault:

  message   "switchover", ("last-data", d) (device d's last DATA), ("end", d), ("blob", d), or
            "complete" (the only one that travels destination -> source);
  fault     "drop"      the message and everything after it never arrive: the proxy cuts every
                        connection there;
            "delay"     the proxy stops reading the sender at the message (its kernel buffers
                        fill, as on a path that went silent) for `delay` seconds, then relays the
                        message and the rest;
            "kill-src", "kill-dst", "link-down"
                        the proxy stops at the message and calls the test's `on_hit` (which
                        kills a daemon or takes the link down); the message and everything after
                        it are lost, as when a host dies with its kernel. After a kill the
                        proxy cuts every connection; after "link-down" it stays silent until the
                        test calls cut().

A cut (drop, kill-dst) first takes from a live source what its kernel would have accepted
anyway: up to `drain` bytes, or until the source sent its last packet (every device's BLOB),
whichever comes first. So a cut just before a short tail finds the source having handed out
every byte (the destination may have committed: the outcome is unknown to the source), and a
cut with megabytes still to go finds it blocked. Both are what a real link does; the proxy makes
them repeatable.

"last-data" needs a look-ahead: the proxy holds device d's latest DATA (and whatever follows it)
until d's next packet shows whether it was the last (END follows) or not. One channel per
migration keeps that exact: it is what the fault tests use.

Standard library only. The proxy starts no processes.
"""

import socket
import struct
import threading
import time

import stream_wire as w

KiB, MiB = 1 << 10, 1 << 20
HELLO_FIXED = 80
MESSAGE_TYPES = {"switchover": w.SWITCHOVER, "last-data": w.DATA, "end": w.END, "blob": w.BLOB, "complete": w.COMPLETE}


def message_name(message):
    return message if isinstance(message, str) else f"{message[0]}:{message[1]}"


class _Closed(Exception):
    pass


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            raise _Closed() from None
        if not chunk:
            raise _Closed()
        buf += chunk
    return bytes(buf)


def _read_packet(sock):
    head = _recv_exact(sock, w.HEADER.size + 4)
    info = w.parse_header(head)
    payload = _recv_exact(sock, info["length"]) if info["length"] else b""
    info["raw"] = head + payload
    return info


class FaultProxy:
    """Listens on listen_host:0 and relays each accepted channel to upstream ('HOST:PORT').

    message/fault: see the module text; fault=None relays everything (a control run).
    on_hit(proxy, hit): called in a proxy thread at the fault point for kill-* and link-down,
    with everything held; it returns once the fault is in place, and only then does wait_hit()
    return. hit: {"message", "fault", "direction", "time"}.
    """

    def __init__(self, upstream, message=None, fault=None, listen_host="127.0.0.1", delay=3.0, drain=512 * KiB,
                 rcvbuf=128 * KiB, on_hit=None, track=None, untrack=None):
        assert fault in (None, "drop", "delay", "kill-src", "kill-dst", "link-down"), fault
        assert fault is None or message is not None
        self.upstream = w.address_tuple(upstream)
        self.message, self.fault = message, fault
        self.delay, self.drain_limit, self.on_hit = delay, drain, on_hit
        family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A small fixed receive buffer (accepted sockets inherit it): when the proxy stops
        # reading, the source blocks after its own send buffer plus this, not 32 MiB later.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind((listen_host, 0))
        self.listener.listen(8)
        host, port = self.listener.getsockname()[:2]
        self.address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        self.lock = threading.Condition()
        self.socks = []
        self.threads = []
        self.hit = None            # set once the fault point was reached
        self.cut_done = False
        self.silent = False        # link-down: nothing moves any more
        self.device_count = None
        self.blobs_seen = set()    # devices whose BLOB the source sent (delivered or not)
        self.forwarded = []        # (direction, type, device) of every packet delivered
        self.errors = []           # what went wrong inside the proxy (a test asserts it is empty)
        self._untrack = untrack
        self.accepter = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self.accepter.start()
        if track:
            track(self)

    def __repr__(self):
        return f"FaultProxy({self.address}, {message_name(self.message) if self.message else None}, {self.fault})"

    # ---- what the test sees ----

    def wait_hit(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.hit is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self}: the fault point was not reached within {timeout}s; delivered: "
                                         f"{self.delivered_summary()}")
                self.lock.wait(left)
            return self.hit

    def delivered(self, direction, ptype, device=None):
        with self.lock:
            return any(d == direction and t == ptype and (device is None or dev == device)
                       for d, t, dev in self.forwarded)

    def delivered_summary(self):
        with self.lock:
            out = {}
            for d, t, dev in self.forwarded:
                key = f"{d}:{t}:{dev}"
                out[key] = out.get(key, 0) + 1
            return out

    def cut(self):
        """Closes every connection (each side then sees the end of its channel)."""
        with self.lock:
            self.cut_done = True
            socks = list(self.socks)
            self.lock.notify_all()
        for s in socks:
            for how in (socket.SHUT_RDWR,):
                try:
                    s.shutdown(how)
                except OSError:
                    pass

    def stop(self):
        if self._untrack:
            self._untrack(self)
        self.cut()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() would not
        except OSError:
            pass
        self.listener.close()
        for t in self.threads + [self.accepter]:
            t.join(5)
        with self.lock:
            socks, self.socks = list(self.socks), []
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    close = stop

    # ---- relaying ----

    def _accept_loop(self):
        while True:
            try:
                src, _ = self.listener.accept()
            except OSError:
                return
            try:
                dst = socket.create_connection(self.upstream[1], timeout=10)
            except OSError as e:
                self.errors.append(f"cannot reach the destination {self.upstream}: {e}")
                src.close()
                continue
            dst.settimeout(None)
            src.settimeout(None)
            for s in (src, dst):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                if self.cut_done:
                    src.close()
                    dst.close()
                    continue
                self.socks += [src, dst]
            t = threading.Thread(target=self._channel, args=(src, dst), name="proxy-channel", daemon=True)
            self.threads.append(t)
            t.start()

    def _channel(self, src, dst):
        try:
            hello = _recv_exact(src, HELLO_FIXED)
            (ndev,) = struct.unpack_from("<I", hello, 64)
            hello += _recv_exact(src, ndev * w.HELLO_DEVICE.size + 4)
            with self.lock:
                self.device_count = ndev
            dst.sendall(hello)
            welcome = _recv_exact(dst, w.WELCOME.size)
            (status,) = struct.unpack_from("<I", welcome, 12)
            if status == 0:
                welcome += _recv_exact(dst, w.WELCOME_PROOF_SIZE)
            src.sendall(welcome)
            if status != 0:
                return
            dst.sendall(_recv_exact(src, w.PROOF.size))
        except (_Closed, OSError):
            return
        back = threading.Thread(target=self._pump, args=(dst, src, "d2s"), name="proxy-d2s", daemon=True)
        self.threads.append(back)
        back.start()
        self._pump(src, dst, "s2d")

    def _matches(self, direction, info):
        if self.fault is None or self.hit is not None:
            return False
        kind = self.message if isinstance(self.message, str) else self.message[0]
        if MESSAGE_TYPES[kind] != info["type"]:
            return False
        if direction != ("d2s" if kind == "complete" else "s2d"):
            return False
        return isinstance(self.message, str) or info["device"] == self.message[1]

    def _send(self, out, direction, info):
        out.sendall(info["raw"])
        with self.lock:
            self.forwarded.append((direction, info["type"], info["device"]))

    def _pump(self, inp, out, direction):
        lookahead = []  # last-data: device d's latest DATA, then whatever followed it
        want_last = (self.fault is not None and not isinstance(self.message, str) and self.message[0] == "last-data"
                     and direction == "s2d")
        try:
            while True:
                info = _read_packet(inp)
                if direction == "s2d" and info["type"] == w.BLOB:
                    with self.lock:
                        self.blobs_seen.add(info["device"])
                with self.lock:
                    if self.silent:
                        continue  # the link is down: nothing crosses
                    if self.hit is not None and self.fault in ("drop", "kill-src", "kill-dst"):
                        continue  # lost after the fault point
                if want_last and self.hit is None:
                    d = self.message[1]
                    if info["device"] == d and info["type"] == w.DATA:
                        for held in lookahead:
                            self._send(out, direction, held)
                        lookahead = [info]
                        continue
                    if lookahead and info["device"] == d and info["type"] == w.END:
                        held, after = lookahead[0], lookahead[1:] + [info]
                        lookahead = []
                        if self._fault(inp, out, direction, held, after):
                            return
                        continue
                    if lookahead:
                        lookahead.append(info)
                        continue
                if self._matches(direction, info):
                    if self._fault(inp, out, direction, info, []):
                        return
                    continue
                self._send(out, direction, info)
        except (_Closed, OSError, AssertionError) as e:
            if isinstance(e, AssertionError):
                self.errors.append(f"{direction}: {e}")
            # One side ended: so does the other direction (as a relay must).
            try:
                out.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _fault(self, inp, out, direction, info, after):
        """At the fault point. Returns True when this pump ends."""
        hit = {"message": message_name(self.message), "fault": self.fault, "direction": direction,
               "time": time.monotonic()}
        if self.fault in ("kill-src", "kill-dst", "link-down"):
            with self.lock:
                self.silent = True  # nothing crosses while the test acts
            if self.on_hit:
                self.on_hit(self, hit)
        # Published once the fault is in place: wait_hit() returns after the kill or link down.
        with self.lock:
            self.hit = hit
            self.lock.notify_all()
        if self.fault == "delay":
            time.sleep(self.delay)
            for p in [info] + after:
                self._send(out, direction, p)
            return False
        if self.fault == "link-down":
            return False  # keeps reading (and discarding) until the test cuts
        if self.fault != "kill-src" and direction == "s2d":
            self._drain(inp)
        self.cut()
        return True

    def _drain(self, src):
        """Takes from the live source what its kernel would accept anyway (see the module text)."""
        taken, deadline = 0, time.monotonic() + 1.0
        # A source with nothing more to hand over for 0.2 s is blocked or done.
        src.settimeout(0.2)
        try:
            while taken < self.drain_limit and time.monotonic() < deadline:
                with self.lock:
                    if self.device_count is not None and len(self.blobs_seen) >= self.device_count:
                        return
                info = _read_packet(src)
                taken += len(info["raw"])
                if info["type"] == w.BLOB:
                    with self.lock:
                        self.blobs_seen.add(info["device"])
        except (_Closed, OSError, AssertionError):
            pass
