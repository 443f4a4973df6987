#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Restart and change costs under load, against baselines of the same run (a benchmark, not a
test: it asserts nothing about time and is not registered with `meson test`).

Under a `systemd --user` manager with the project's unit (as tests/integration/test_live_update.py
runs it), the daemon gets a load of --devices simulated devices and --mappings mappings, spread
over --spaces address spaces, backed by --memfds guest memfds (a VMM's RAM regions; the mappings
of one memfd share one fd store entry; --memfds 0 gives every mapping a memfd of its own, the
worst case for the store). It prints medians of --runs:

  restart to READY   `systemctl --user restart` until it returns (Type=notify: READY=1 sent) with
                     the load, against `systemctl --user start` with an empty store (stop
                     released it) in the same run; goals: < 100 ms, and <= 2x the empty start
  SetState           a Device.SetState round trip (running <-> running-p2p, each one saved before
                     the reply) under the load, against org.freedesktop.DBus.Peer.Ping to the
                     daemon on the same connection; goal <= 2x
  Map + Unmap        one more mapping and its removal under the load, against Ping

Run as root from the source tree after `ninja -C build`:

    python3 tests/bench/bench-restart.py [--runs 15] [--devices 64] [--mappings 1000]
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import dbus_wire as w  # noqa: E402
import harness as h  # noqa: E402
from test_systemd import adapt_unit, unit_source  # noqa: E402

UNIT = "vfiomigd.service"
KiB, MiB = 1 << 10, 1 << 20


def median_ms(samples):
    return statistics.median(samples) * 1000


def timed(fn, runs):
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.rundir = h.TempDir("vfm-bench-", parent="/run")
        self.bus = h.PrivateBus(base_dir=self.rundir.path).start()
        self.client = self.bus.client
        config = self.rundir / "vfiomigd.json"
        config.write_text(json.dumps({"allow-simulated": True, "max-devices": max(args.devices, 1)}))
        os.chmod(config, 0o644)
        self.manager = h.SystemdUserManager().start()
        text, _ = adapt_unit(unit_source().read_text(), self.bus.address, config)
        # Debug logging would measure journald; the unit's own level is what a host runs.
        text = text.replace(" --log-level=debug", "")
        self.manager.install_unit(UNIT, text)
        self.wire = None
        self.memfds = []

    def stop(self):
        if self.wire:
            self.wire.close()
        self.manager.systemctl("stop", UNIT, check=False)
        for fd in self.memfds:
            os.close(fd)
        self.manager.stop()
        self.bus.stop()
        self.rundir.stop()

    def systemctl(self, *args):
        r = self.manager.systemctl(*args, check=False, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"systemctl {' '.join(args)}: {r.stderr}")

    def connect(self):
        if self.wire:
            self.wire.close()
        self.wire = w.WireConnection(self.bus.address)

    def call(self, path, iface, member, sig="", *args, fds=()):
        return self.wire.call(h.BUS_NAME, path, iface, member, sig, list(args), fds)

    def ping(self):
        self.wire.call(h.BUS_NAME, "/", "org.freedesktop.DBus.Peer", "Ping")

    def n_stored(self):
        return int(self.manager.show(UNIT, "NFileDescriptorStore")["NFileDescriptorStore"])

    def empty_starts(self):
        def once():
            self.systemctl("start", UNIT)
        samples = []
        for _ in range(self.args.runs):
            self.systemctl("stop", UNIT)
            samples += timed(once, 1)
            self.manager.systemctl("reset-failed", UNIT, check=False)
        return samples

    def load(self):
        a = self.args
        self.connect()
        spaces = [self.call(h.MANAGER_PATH, h.MANAGER_IFACE, "CreateAddressSpace", "a{sv}",
                            {"backend": ("s", "sim"), "sim-mapping": ("s", "by-file")})[0]
                  for _ in range(a.spaces)]
        devices = []
        for i in range(a.devices):
            dev = self.call(h.MANAGER_PATH, h.MANAGER_IFACE, "AttachDevice", "sa{sv}", f"sim:b{i}",
                            {"state-size": ("t", 64 * KiB)})[0]
            self.call(dev, h.DEVICE_IFACE, "AttachAddressSpace", "o", spaces[i % a.spaces])
            devices.append(dev)
        n_files = a.memfds or a.mappings
        per_file = -(-a.mappings // n_files)
        for i in range(n_files):
            fd = os.memfd_create(f"vfm-bench-{i}", os.MFD_CLOEXEC)
            os.ftruncate(fd, per_file * 64 * KiB)
            self.memfds.append(fd)
        for k in range(a.mappings):
            fd = self.memfds[k % n_files]
            self.call(spaces[k % a.spaces], h.SPACE_IFACE, "Map", "htttas", 0, (k // n_files) * 64 * KiB, 4 * KiB,
                      (1 << 32) + k * 64 * KiB, ["read", "write"], fds=[fd])
        return spaces, devices

    def loaded_restarts(self):
        def once():
            self.systemctl("restart", UNIT)
        samples = []
        for _ in range(self.args.runs):
            samples += timed(once, 1)
            # Every start counts against the unit's start limit; this is a benchmark, not an upgrade.
            self.manager.systemctl("reset-failed", UNIT, check=False)
        self.connect()
        return samples


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--mappings", type=int, default=1000)
    p.add_argument("--spaces", type=int, default=4)
    p.add_argument("--memfds", type=int, default=8, help="guest memfds (0: one per mapping)")
    p.add_argument("--calls", type=int, default=300, help="round trips per call measurement")
    p.add_argument("--perf", metavar="FILE", help="perf record -g the daemon during the SetState calls into FILE")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-restart needs root (systemd --user in a private cgroup, as the integration tests)")

    b = Bench(args)
    try:
        empty = b.empty_starts()
        t0 = time.perf_counter()
        spaces, devices = b.load()
        t_load = time.perf_counter() - t0
        stored = b.n_stored()
        b.connect()
        dev = devices[0]
        states = ["running-p2p", "running"]
        turn = [0]

        def set_state():
            turn[0] ^= 1
            b.call(dev, h.DEVICE_IFACE, "SetState", "sa{sv}", states[turn[0]], {})

        def map_unmap():
            b.call(spaces[0], h.SPACE_IFACE, "Map", "htttas", 0, 0, 4 * KiB, 1 << 48, ["read", "write"],
                   fds=[b.memfds[0]])
            b.call(spaces[0], h.SPACE_IFACE, "Unmap", "tt", 1 << 48, 4 * KiB)

        for fn in (b.ping, set_state):  # warm up the connection and the caches
            timed(fn, 20)
        ping = timed(b.ping, args.calls)
        perf = None
        if args.perf:
            pid = int(b.manager.show(UNIT, "MainPID")["MainPID"])
            perf = h.subprocess.Popen(["perf", "record", "-q", "--call-graph", "dwarf,16384", "-e", "cpu-clock", "-o", args.perf, "-p", str(pid)])
            time.sleep(0.5)
        setstate = timed(set_state, args.calls)
        if perf:
            perf.send_signal(h.signal.SIGINT)
            perf.wait()
        mapunmap = timed(map_unmap, max(args.calls // 3, 1))
        ping2 = timed(b.ping, args.calls)
        loaded = b.loaded_restarts()
        after = b.n_stored()
        mappings = sum(b.client.get_property(s, h.SPACE_IFACE, "MappingCount") for s in spaces)
    finally:
        b.stop()

    ping_ms = min(median_ms(ping), median_ms(ping2))
    print(f"load: {args.devices} sim devices, {args.mappings} mappings in {args.spaces} spaces over "
          f"{args.memfds or args.mappings} memfds, built in {t_load:.1f} s; fd store entries "
          f"{stored} (after the restarts {after}); mappings after the restarts {mappings}")
    print(f"medians of {args.runs} restarts / {args.calls} calls:")
    print(f"  empty-store start to READY   {median_ms(empty):8.1f} ms")
    print(f"  loaded restart to READY      {median_ms(loaded):8.1f} ms   "
          f"{median_ms(loaded) / median_ms(empty):5.2f}x the empty start (goals: < 100 ms, <= 2x)")
    print(f"  Peer.Ping                    {ping_ms:8.3f} ms")
    print(f"  SetState round trip          {median_ms(setstate):8.3f} ms   "
          f"{median_ms(setstate) / ping_ms:5.2f}x Ping (goal <= 2x)")
    print(f"  Map + Unmap                  {median_ms(mapunmap):8.3f} ms   {median_ms(mapunmap) / ping_ms:5.2f}x Ping")
    if mappings != args.mappings:
        print(f"WARNING: {args.mappings} mappings were made, {mappings} came back", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
