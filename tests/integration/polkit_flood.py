#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""A local user wearing vfiomigd down through polkit: ``polkit_flood.py ADDRESS SPACE_PATH ROUNDS BATCH CONNS``.

Run as the unprivileged user under test. Each round sends BATCH Map calls on each of CONNS
connections without waiting, every call carrying the same memfd, then shrinks the memfd to zero
at once: calls whose polkit answer comes after the shrink fail validation when the daemon
dispatches them again (the path that used to leak the query and its fds), calls beyond the
daemon's caps on pending queries are refused at once. The memfd grows back before the next
round. Odd rounds send as fast as they can (to reach the caps), even rounds slower (so
that polkit answers some calls after the shrink). Prints one JSON line: {"replies": {error name or "ok": count}, "examples": {error name: [its
distinct messages, up to 8]}, "sent": N}.
"""

import array
import json
import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire as w  # noqa: E402

MiB = 1 << 20
SLOW_PER_CONNECTION = 16


def main(address, space, rounds, batch, conns):
    connections = [w.WireConnection(address, timeout=60) for _ in range(conns)]
    guest = os.memfd_create("vfm-flood", os.MFD_CLOEXEC)
    replies, examples = {}, {}
    sent = 0
    deadline = time.monotonic() + 600
    for round_ in range(rounds):
        os.ftruncate(guest, 8 * MiB)
        fast = round_ % 2 == 1
        # Fast rounds: marshalled first and then sent in one go, so that the daemon has many
        # calls in flight at once (polkitd answers one in about a millisecond): all of the first
        # connection's (over the per-connection cap), then the others' interleaved (over the
        # per-user cap). Slow rounds: 16 calls (the per-connection cap) on each of four connections
        # (the per-user cap), marshalled as they go, so that the daemon validates some and polkit
        # answers a few before the shrink, and the rest after it.
        serials = [set() for _ in connections]
        args = [0, 0, 2 * MiB, 0x1_0000_0000, ["read", "write"]]
        if fast:
            queued = []
            for i in [0] * batch + [i for _ in range(batch) for i in range(1, len(connections))]:
                c = connections[i]
                c.serial += 1
                serials[i].add(c.serial)
                queued.append((c, w._marshal(w.METHOD_CALL, c.serial, {
                    w.F_PATH: space, w.F_INTERFACE: "org.vfiomig1.AddressSpace", w.F_MEMBER: "Map",
                    w.F_DESTINATION: "org.vfiomig1", w.F_UNIX_FDS: 1}, "htttas", args)))
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [guest]))]
            for c, data in queued:
                if c.sock.sendmsg([data], anc) < len(data):
                    raise RuntimeError("short send")
        else:
            for c, mine in zip(connections[:4], serials):
                for _ in range(SLOW_PER_CONNECTION):
                    mine.add(c.send("org.vfiomig1", space, "org.vfiomig1.AddressSpace", "Map", "htttas", args,
                                    fds=[guest]))
        sent += sum(len(mine) for mine in serials)
        # Fast rounds: the first reply (a refusal over a cap) means the daemon validated the
        # calls before it and asked polkit: shrink now, while polkit thinks. Slow rounds: now.
        if fast:
            select.select([c.sock for c in connections], [], [], 30)
        os.ftruncate(guest, 0)
        for c, mine in zip(connections, serials):
            while mine:
                c.sock.settimeout(max(0.001, deadline - time.monotonic()))
                msg = c.receive()
                msg.close_fds()
                serial = msg.fields.get(w.F_REPLY_SERIAL)
                if msg.type not in (w.METHOD_RETURN, w.ERROR) or serial not in mine:
                    continue
                mine.discard(serial)
                name = "ok" if msg.type == w.METHOD_RETURN else msg.fields.get(w.F_ERROR_NAME, "?")
                replies[name] = replies.get(name, 0) + 1
                text = msg.body[0] if msg.body and isinstance(msg.body[0], str) else ""
                seen = examples.setdefault(name, []) if name != "ok" else []
                if name != "ok" and text not in seen and len(seen) < 8:
                    seen.append(text)
    for c in connections:
        c.close()
    print(json.dumps({"replies": replies, "examples": examples, "sent": sent}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
