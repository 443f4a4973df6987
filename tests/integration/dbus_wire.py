#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""A minimal D-Bus client in the standard library, for the two things busctl cannot do.

* busctl (v252) cannot send a file descriptor: ``busctl call ... Map htttas 5 ...`` fails with
  "UNIX file descriptor not supported as type." whatever fds it inherits. Map takes the guest
  memory as an 'h', so the tests send it over this connection (SCM_RIGHTS).
* busctl (and dbus-send, gdbus) exit after one call, dropping their bus connection. A VMM holds
  its device fd *and* stays connected, and vfiomigd counts it as a client for as long as its
  unique name lives. ``python3 dbus_wire.py vmm ADDRESS DEVICE_PATH`` is that stand-in: it calls
  OpenFd over its own connection, prints one JSON line (its unique name, the fd it got and that
  file's identity) and then stays connected, holding the fd, until stdin says "quit" or closes.
  "stat" on stdin prints the identity of the file it holds again.

Only what the tests need: EXTERNAL authentication with fd passing negotiated, method calls with
any signature built from y b n q i u x t d s o g h a ( ) { } v, and their replies or errors.
Values follow harness.busctl_args: variants are (signature, value) pairs, a{..} dicts, arrays
lists, structs tuples. Nothing outside the standard library (python3-dbus is not a dependency
of the tests).
"""

import array
import json
import os
import socket
import struct
import sys
import time

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
FLAG_NO_REPLY_EXPECTED = 0x1
F_PATH, F_INTERFACE, F_MEMBER, F_ERROR_NAME, F_REPLY_SERIAL, F_DESTINATION, F_SENDER, F_SIGNATURE, F_UNIX_FDS = \
    range(1, 10)
_FIELD_TYPES = {F_PATH: "o", F_INTERFACE: "s", F_MEMBER: "s", F_ERROR_NAME: "s", F_REPLY_SERIAL: "u",
                F_DESTINATION: "s", F_SENDER: "s", F_SIGNATURE: "g", F_UNIX_FDS: "u"}

_FIXED = {"y": ("B", 1), "b": ("I", 4), "n": ("h", 2), "q": ("H", 2), "i": ("i", 4), "u": ("I", 4),
          "x": ("q", 8), "t": ("Q", 8), "d": ("d", 8), "h": ("I", 4)}
_ALIGN = {"y": 1, "g": 1, "v": 1, "b": 4, "i": 4, "u": 4, "h": 4, "s": 4, "o": 4, "a": 4, "n": 2, "q": 2,
          "x": 8, "t": 8, "d": 8, "(": 8, "{": 8}


class WireError(Exception):
    """An error reply: name is the D-Bus error name."""

    def __init__(self, name, message):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def split_signature(sig):
    out, i = [], 0
    while i < len(sig):
        j = _type_end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _type_end(sig, i):
    c = sig[i]
    if c == "a":
        return _type_end(sig, i + 1)
    if c in "({":
        depth = 0
        for j in range(i, len(sig)):
            if sig[j] in "({":
                depth += 1
            elif sig[j] in ")}":
                depth -= 1
                if depth == 0:
                    return j + 1
        raise ValueError(f"unbalanced signature {sig!r}")
    if c not in _ALIGN:
        raise ValueError(f"unsupported type {c!r} in {sig!r}")
    return i + 1


class _Writer:
    def __init__(self):
        self.buf = bytearray()

    def align(self, n):
        self.buf += b"\0" * (-len(self.buf) % n)

    def put(self, t, v):
        c = t[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            fmt, _size = _FIXED[c]
            self.buf += struct.pack("<" + fmt, int(v) if c != "d" else float(v))
        elif c in "so":
            b = v.encode()
            self.buf += struct.pack("<I", len(b)) + b + b"\0"
        elif c == "g":
            b = v.encode()
            self.buf += struct.pack("<B", len(b)) + b + b"\0"
        elif c == "v":
            vt, vv = v
            self.put("g", vt)
            self.put(vt, vv)
        elif c == "a":
            et = t[1:]
            at = len(self.buf)
            self.buf += b"\0\0\0\0"
            self.align(_ALIGN[et[0]])
            start = len(self.buf)
            items = v.items() if et[0] == "{" else v
            if et == "y" and isinstance(v, (bytes, bytearray)):
                self.buf += v
            else:
                for e in items:
                    self.put(et, e)
            struct.pack_into("<I", self.buf, at, len(self.buf) - start)
        elif c in "({":
            for ft, fv in zip(split_signature(t[1:-1]), v):
                self.put(ft, fv)
        else:
            raise ValueError(f"cannot marshal {t!r}")


class _Reader:
    def __init__(self, data, endian="<"):
        self.data = data
        self.pos = 0
        self.e = endian

    def align(self, n):
        self.pos += -self.pos % n

    def get(self, t):
        c = t[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            fmt, size = _FIXED[c]
            (v,) = struct.unpack_from(self.e + fmt, self.data, self.pos)
            self.pos += size
            return bool(v) if c == "b" else v
        if c in "so":
            (n,) = struct.unpack_from(self.e + "I", self.data, self.pos)
            v = bytes(self.data[self.pos + 4:self.pos + 4 + n]).decode()
            self.pos += 4 + n + 1
            return v
        if c == "g":
            n = self.data[self.pos]
            v = bytes(self.data[self.pos + 1:self.pos + 1 + n]).decode()
            self.pos += 1 + n + 1
            return v
        if c == "v":
            vt = self.get("g")
            return (vt, self.get(vt))
        if c == "a":
            (n,) = struct.unpack_from(self.e + "I", self.data, self.pos)
            self.pos += 4
            et = t[1:]
            self.align(_ALIGN[et[0]])
            end = self.pos + n
            if et == "y":
                v = bytes(self.data[self.pos:end])
                self.pos = end
                return v
            out = {} if et[0] == "{" else []
            while self.pos < end:
                e = self.get(et)
                if et[0] == "{":
                    out[e[0]] = e[1]
                else:
                    out.append(e)
            return out
        if c in "({":
            return tuple(self.get(ft) for ft in split_signature(t[1:-1]))
        raise ValueError(f"cannot unmarshal {t!r}")


def _marshal(msg_type, serial, fields, sig, args, flags=0):
    body = _Writer()
    for t, v in zip(split_signature(sig), args):
        body.put(t, v)
    if sig:
        fields[F_SIGNATURE] = sig
    head = _Writer()
    head.buf += struct.pack("<cBBBII", b"l", msg_type, flags, 1, len(body.buf), serial)
    head.put("a(yv)", [(code, (_FIELD_TYPES[code], value)) for code, value in sorted(fields.items())])
    head.align(8)
    return bytes(head.buf + body.buf)


class Message:
    def __init__(self, msg_type, flags, serial, fields, body, fds):
        self.type = msg_type
        self.flags = flags
        self.serial = serial
        self.fields = fields
        self.signature = fields.get(F_SIGNATURE, "")
        self.body = body
        self.fds = fds

    def close_fds(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


class WireConnection:
    """One connection to a bus at a unix:path= address."""

    def __init__(self, address, timeout=30.0):
        path = None
        for part in address.split(";")[0].partition(":")[2].split(","):
            k, _, v = part.partition("=")
            if k == "path":
                path = v
        if not address.startswith("unix:") or not path:
            raise ValueError(f"only unix:path= addresses are supported, not {address!r}")
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.inbuf = bytearray()
        self.infds = []
        self.serial = 0
        self._auth()
        self.unique_name = self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                     "Hello")[0]

    def _line(self):
        while b"\r\n" not in self.inbuf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the bus closed the connection during authentication")
            self.inbuf += chunk
        line, _, rest = bytes(self.inbuf).partition(b"\r\n")
        self.inbuf = bytearray(rest)
        return line.decode()

    def _auth(self):
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.geteuid()).encode().hex().encode() + b"\r\n")
        reply = self._line()
        if not reply.startswith("OK "):
            raise ConnectionError(f"EXTERNAL authentication refused: {reply!r}")
        self.sock.sendall(b"NEGOTIATE_UNIX_FD\r\n")
        reply = self._line()
        if reply != "AGREE_UNIX_FD":
            raise ConnectionError(f"the bus does not pass file descriptors: {reply!r}")
        self.sock.sendall(b"BEGIN\r\n")

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for fd in self.infds:
            os.close(fd)
        self.infds = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, dest, path, iface, member, sig="", args=(), fds=(), flags=0):
        self.serial += 1
        fields = {F_PATH: path, F_MEMBER: member}
        if iface:
            fields[F_INTERFACE] = iface
        if dest:
            fields[F_DESTINATION] = dest
        if fds:
            fields[F_UNIX_FDS] = len(fds)
        data = _marshal(METHOD_CALL, self.serial, fields, sig, list(args), flags)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sent = self.sock.sendmsg([data], anc)
        if sent < len(data):
            self.sock.sendall(data[sent:])
        return self.serial

    def _fill(self):
        data, anc, _flags, _addr = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(253 * 4), socket.MSG_CMSG_CLOEXEC)
        if not data:
            raise ConnectionError("the bus closed the connection")
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self.infds.extend(fds)
        self.inbuf += data

    def receive(self):
        """The next message from the bus."""
        while len(self.inbuf) < 16:
            self._fill()
        endian = "<" if self.inbuf[0:1] == b"l" else ">"
        body_len, serial, fields_len = struct.unpack_from(endian + "III", self.inbuf, 4)
        header_len = 16 + fields_len + (-(16 + fields_len) % 8)
        total = header_len + body_len
        while len(self.inbuf) < total:
            self._fill()
        raw = bytes(self.inbuf[:total])
        del self.inbuf[:total]
        r = _Reader(raw, endian)
        r.pos = 12
        fields = {code: value[1] for code, value in r.get("a(yv)")}
        n_fds = fields.get(F_UNIX_FDS, 0)
        fds, self.infds = self.infds[:n_fds], self.infds[n_fds:]
        body = []
        sig = fields.get(F_SIGNATURE, "")
        if sig:
            br = _Reader(raw[header_len:], endian)
            body = [br.get(t) for t in split_signature(sig)]
        return Message(raw[1], raw[2], serial, fields, body, fds)

    def call_with_fds(self, dest, path, iface, member, sig="", args=(), fds=()):
        """Calls a method; returns (reply values, received fds). Error replies raise WireError."""
        serial = self.send(dest, path, iface, member, sig, args, fds)
        deadline = time.monotonic() + self.timeout
        while True:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            msg = self.receive()
            if msg.type in (METHOD_RETURN, ERROR) and msg.fields.get(F_REPLY_SERIAL) == serial:
                if msg.type == ERROR:
                    msg.close_fds()
                    text = msg.body[0] if msg.body and isinstance(msg.body[0], str) else ""
                    raise WireError(msg.fields.get(F_ERROR_NAME, "?"), text)
                return msg.body, msg.fds
            msg.close_fds()  # signals (NameAcquired) and anything else: not ours

    def call(self, dest, path, iface, member, sig="", args=(), fds=()):
        """Calls a method; returns the reply values (received fds are closed)."""
        body, got = self.call_with_fds(dest, path, iface, member, sig, args, fds)
        for fd in got:
            os.close(fd)
        return body


def _identity(fd):
    try:
        st = os.fstat(fd)
    except OSError as e:
        return {"valid": False, "errno": e.errno}
    return {"valid": True, "dev": st.st_dev, "ino": st.st_ino, "link": os.readlink(f"/proc/self/fd/{fd}")}


def vmm_main(address, device_path):
    """The VMM stand-in: OpenFd over its own connection, then hold the fd and stay connected."""
    try:
        conn = WireConnection(address)
        _body, fds = conn.call_with_fds("org.vfiomig1", device_path, "org.vfiomig1.Device", "OpenFd")
    except WireError as e:
        print(json.dumps({"error": e.name, "message": e.message}), flush=True)
        return 1
    fd = fds[0]
    print(json.dumps({"unique": conn.unique_name, "pid": os.getpid(), "fd": fd, **_identity(fd)}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stat":
            print(json.dumps(_identity(fd)), flush=True)
        elif cmd == "quit":
            break
    os.close(fd)
    conn.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "vmm":
        sys.exit(vmm_main(sys.argv[2], sys.argv[3]))
    print(f"usage: {sys.argv[0]} vmm ADDRESS DEVICE_PATH", file=sys.stderr)
    sys.exit(2)
