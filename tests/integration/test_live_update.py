#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Step 3's promise under a real service manager: "a restart of vfiomigd (upgrade or crash) or of
the VMM never interrupts device DMA and never loses a mapping".

vfiomigd.service is units/vfiomigd.service.in adapted for a non-PID-1 ``systemd --user`` as
test_systemd.py does (Type=notify, the private system bus in Environment=), keeping
FileDescriptorStoreMax= and Restart=on-failure from the unit, with RestartSec=100ms. The test
plays the orchestrator (busctl, and dbus_wire.py where a descriptor must travel: busctl v252
cannot send one) and the VMM: a separate process (``dbus_wire.py vmm``) that calls
Device.OpenFd over its own bus connection and stays connected holding the device fd, the way a
VMM does. Guest memory is the test's own memfds, so every byte a simulated device writes through
the IOMMU is checked with pread() on the test's descriptor at offset + (iova - mapping iova).

For each simulated mapping style -- by-file (iommufd MAP_FILE + IOAS_CHANGE_PROCESS) and
by-address (type1 VADDR invalidate + re-register) -- one scenario runs through:

  A. ``systemctl --user restart`` while a thread keeps the device writing (DmaWrite) all along;
  B. ``kill -9`` of the MainPID (Restart=on-failure brings it back, NRestarts counts it), same;
  C. a second planned restart with the device in STOP;
  D. an Unmap after a restart (the store shrinks) and one more restart.

After each restart: the same device and space objects, identical ListMappings / MappingCount /
PinnedBytes / LiveUpdate / Devices, the device still attached and in the state it was left in,
the VMM still counted in Clients and holding the very same device file, StateDigest unchanged,
every byte written before readable through DmaRead and pread alike, new writes landing in the
same pages, a read-only mapping still refusing device writes. Every write the device was told to
make during the restart either landed or was refused by the bus because nobody owned the name
(ServiceUnknown) or the old daemon left without answering (NoReply) -- never an IOMMU fault,
never an unknown object: the name comes back only once everything is restored.

Descriptors are counted on both sides of the store: the daemon's /proc/PID/fd and the service
manager's own /proc/PID/fd (what it holds for us), by memfd name and by inode, and
NFileDescriptorStore; the serialized state (the one state memfd in the store) is read back and
checked (magic, CRC32C, mappings, device, clients). The counts must not grow across restarts.

Also: a VMM that restarts (Clients follows it, the device is neither reset nor detached, DMA goes
on), a VMM that goes away while vfiomigd is down, and the documented limit: stop followed by
start releases the store, and the daemon comes up empty.

Mappings sharing one memfd (test_mappings_sharing_a_memfd): ranges of one guest memfd in two
spaces and a second open of it survive a planned restart and a kill -9; the store holds one entry
per open file description, which is all systemd keeps.

A store the daemon must not trust (a refused state, a lost entry) is test_fd_store.py.

Timings (restart, crash to serving, the longest gap between two acknowledged device writes)
are printed at the end; they are measurements, not assertions.
"""

import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire as w  # noqa: E402
import harness as h  # noqa: E402
from test_systemd import adapt_unit, unit_source  # noqa: E402

UNIT = "vfiomigd.service"
DBUS_WIRE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dbus_wire.py")

KiB, MiB = 1 << 10, 1 << 20
PAGE = 4096
GUEST_SIZE = 8 * MiB

# The guest: two memfds. M1 is read-write, M2 a read-only view (O_RDONLY descriptor) of another
# part of the same file, M3 maps a second file.
GUEST_NAME, GUEST2_NAME = "vfm-guest", "vfm-guest2"
M1 = dict(iova=0x1_0000_0000, offset=1 * MiB, length=4 * MiB, access=["read", "write"])
M2 = dict(iova=0x2_0000_0000, offset=6 * MiB, length=1 * MiB, access=["read"])
M3 = dict(iova=0x3_0000_0000, offset=0, length=1 * MiB, access=["read", "write"])
# The background writer uses the last MiB of M1, 16 bytes a write.
HAMMER_BASE = M1["iova"] + 3 * MiB
HAMMER_SLOTS = MiB // 16
# Errors a device write may get while vfiomigd is restarting: nobody owns org.vfiomig1 yet, or
# the old daemon exited with the call unanswered. Anything else is a failure.
RESTART_ERRORS = {"org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NoReply",
                  "org.freedesktop.DBus.Error.NameHasNoOwner"}
# Log lines that must never appear after a restore.
BAD_RESTORE_LINES = ("unrecognised descriptor", "missing from the fd store", "Skipping", "could not take the mappings",
                     "did not come back", "cannot rejoin", "Failed to", "did not hand back", "the mapping is lost")

TIMINGS = []


def timing(what, seconds):
    TIMINGS.append((what, seconds))
    h.log(f"timing: {what}: {seconds * 1000:.1f} ms")


def classify(link):
    """A descriptor's kind from its /proc/PID/fd link: memfd names, sockets, anon inodes."""
    m = re.match(r"^/memfd:(.*) \(deleted\)$", link)
    if m:
        return "memfd:" + m.group(1)
    if link.startswith("socket:"):
        return "socket"
    m = re.match(r"^anon_inode:\[?([^\]]*)\]?$", link)
    if m:
        return "anon:" + m.group(1)
    return link


def census(pid):
    """{kind: count} of a process's open descriptors, plus {kind: {inode,...}} of its memfds.
    Read until two readings agree, so that a descriptor open for an instant (sd_notify's socket)
    does not count."""
    last = None
    for _ in range(20):
        now = _census_once(pid)
        if now == last:
            return now
        last = now
        time.sleep(0.02)
    return last


def _census_once(pid):
    counts, inodes = {}, {}
    for fd, link in h.open_fds(pid).items():
        kind = classify(link)
        counts[kind] = counts.get(kind, 0) + 1
        if kind.startswith("memfd:"):
            try:
                inodes.setdefault(kind, set()).add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
            except FileNotFoundError:
                pass
    return counts, inodes


class Vmm:
    """The VMM stand-in: ``dbus_wire.py vmm`` in its own process, on its own bus connection."""

    def __init__(self, address, device_path):
        self.address = address
        self.device_path = device_path
        self.proc = None
        self.info = None

    def __repr__(self):
        return f"Vmm(pid={self.proc.pid if self.proc else None})"

    def start(self, timeout=10):
        h.track(self)
        self.proc = subprocess.Popen([sys.executable, DBUS_WIRE, "vmm", self.address, self.device_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=h.clean_env())
        self.info = self._read(timeout)
        if "error" in self.info:
            raise AssertionError(f"the VMM's OpenFd failed: {self.info}")
        h.log(f"VMM pid={self.proc.pid} as {self.info['unique']} holds fd {self.info['fd']} ({self.info['link']})")
        return self

    def _read(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("the VMM stand-in did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the VMM stand-in exited ({self.proc.wait()})")
        return json.loads(line)

    @property
    def unique(self):
        return self.info["unique"]

    def stat(self):
        """The identity of the device file it holds now."""
        self.proc.stdin.write("stat\n")
        self.proc.stdin.flush()
        return self._read(10)

    def stop(self):
        h.untrack(self)
        if self.proc is None:
            return
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            h.stop_child(self.proc, 5)
        self.proc.stdout.close()
        self.proc = None


class Hammer(threading.Thread):
    """A device writing all along: DmaWrite of 16 numbered bytes into successive slots of the
    last MiB of M1, over its own bus connection, recording every outcome."""

    next_slot = 0  # across all hammers of a scenario: each write has its own slot

    def __init__(self, address, device_path, tag):
        super().__init__(daemon=True)
        self.address = address
        self.device_path = device_path
        self.tag = tag
        self.stopping = threading.Event()
        self.results = []  # (time, slot, payload, error name or None)
        self.lock = threading.Lock()

    def payload(self, slot):
        return struct.pack("<QQ", 0x5646_4D5F_4841_4D52 ^ self.tag, slot)

    def run(self):
        with w.WireConnection(self.address, timeout=10) as conn:
            while not self.stopping.is_set() and Hammer.next_slot < HAMMER_SLOTS:
                slot = Hammer.next_slot
                Hammer.next_slot += 1
                data = self.payload(slot)
                try:
                    conn.call(h.BUS_NAME, self.device_path, h.SIM_DEVICE_IFACE, "DmaWrite", "tay",
                              [HAMMER_BASE + 16 * slot, data])
                    err = None
                except w.WireError as e:
                    err = e.name
                with self.lock:
                    self.results.append((time.monotonic(), slot, data, err))
                time.sleep(0.0005)

    def oks_after(self, t):
        with self.lock:
            return sum(1 for r in self.results if r[3] is None and r[0] > t)

    def finish(self):
        self.stopping.set()
        self.join(15)
        return list(self.results)


class LiveUpdate(h.unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        # Under /run, not /tmp: the unit has PrivateTmp=yes (as test_systemd.py).
        cls.rundir = h.TempDir("vfm-it-", parent="/run")
        cls.addClassCleanup(cls.rundir.stop)
        cls.bus = h.PrivateBus(base_dir=cls.rundir.path).start()
        cls.addClassCleanup(cls.bus.stop)
        cls.client = cls.bus.client
        cls.config = cls.rundir / "vfiomigd.json"
        cls.config.write_text(json.dumps({"allow-simulated": True}))
        os.chmod(cls.config, 0o644)
        cls.manager = h.SystemdUserManager().start()
        cls.addClassCleanup(cls.manager.stop)
        text, keys = adapt_unit(unit_source().read_text(), cls.bus.address, cls.config)
        for key in ("Type", "Restart", "FileDescriptorStoreMax"):
            assert key in keys, f"units/vfiomigd.service.in has no {key}="
        assert re.search(r"(?m)^Restart=on-failure$", text), "the unit does not restart on failure"
        text = re.sub(r"(?m)^Restart=on-failure$",
                      "Restart=on-failure\n# test: restart a crashed daemon at once (RestartSec= is not in the "
                      "unit; 100ms is systemd's default)\nRestartSec=100ms", text)
        cls.unit_text = text
        cls.manager.install_unit(UNIT, text)
        props = cls.manager.show(UNIT, "FileDescriptorStoreMax", "Restart", "RestartUSec", "Type")
        assert props == {"FileDescriptorStoreMax": re.search(r"(?m)^FileDescriptorStoreMax=(\d+)$", text).group(1),
                         "Restart": "on-failure", "RestartUSec": "100ms", "Type": "notify"}, props
        cls.wire = w.WireConnection(cls.bus.address)
        cls.addClassCleanup(cls.wire.close)

    def setUp(self):
        self.addCleanup(self.stop_unit_quietly)

    def stop_unit_quietly(self):
        self.manager.systemctl("stop", UNIT, check=False)
        self.manager.systemctl("reset-failed", UNIT, check=False)

    def run(self, result=None):
        bad = (lambda: len(result.failures) + len(result.errors)) if result is not None else (lambda: 0)
        before = bad()
        out = super().run(result)
        if bad() > before:
            h.log(f"--- journal (the end) after {self.id()} failed ---\n"
                  f"{self.manager.journal('-o', 'short-monotonic', check=False)[-8000:]}")
        return out

    # ---- helpers --------------------------------------------------------------------------

    def call(self, path, iface, member, sig="", *args, fds=()):
        return self.wire.call(h.BUS_NAME, path, iface, member, sig, list(args), fds)

    def show(self, *props):
        return self.manager.show(UNIT, *props)

    def main_pid(self):
        return int(self.show("MainPID")["MainPID"])

    def n_restarts(self):
        return int(self.show("NRestarts")["NRestarts"])

    def n_stored(self):
        return int(self.show("NFileDescriptorStore")["NFileDescriptorStore"])

    def diagnostics(self):
        return (f"\n--- systemctl status ---\n{self.manager.systemctl('status', UNIT, check=False).stdout}"
                f"\n--- journal ---\n{self.manager.journal('-o', 'short-monotonic', check=False)[-6000:]}")

    def fresh_start(self):
        """Starts the unit with an empty store (stop releases it)."""
        self.stop_unit_quietly()
        self.manager.systemctl("start", UNIT, timeout=30)
        self.assertEqual(self.n_stored(), 0)
        self.assertEqual(self.client.manager("ListDevices"), [[]])
        self.assertEqual(self.client.manager("ListAddressSpaces"), [[]])
        self.assertIs(self.client.mgr_prop("FileDescriptorStore"), True)
        return self.main_pid()

    def wait_serving(self, old_pid, timeout=20):
        """Waits for a new MainPID that is active (READY=1 sent) and owns the bus name."""
        def ready():
            p = self.show("MainPID", "ActiveState", "SubState")
            pid = int(p["MainPID"])
            if pid in (0, old_pid) or (p["ActiveState"], p["SubState"]) != ("active", "running"):
                return None
            return pid if self.client.name_owner_pid(h.BUS_NAME) == pid else None
        try:
            return h.wait_until(ready, timeout, 0.005, "the restarted vfiomigd")
        except TimeoutError as e:
            self.fail(f"{e}{self.diagnostics()}")

    def journal_of(self, pid, wait_for=None, timeout=10):
        """What process pid logged (the private journald), waiting until wait_for shows up."""
        def text():
            t = self.manager.journal("-o", "cat", f"_PID={pid}", check=False)
            return t if wait_for is None or wait_for in t else None
        try:
            return h.wait_until(text, timeout, 0.05, f"{wait_for!r} in the journal of {pid}")
        except TimeoutError as e:
            self.fail(f"{e}:\n{self.manager.journal('-o', 'cat', f'_PID={pid}', check=False)}")

    def dma_write(self, dev, iova, data):
        # busctl, the reference client: the device's writes as an operator would drive them.
        self.client.call(dev, h.SIM_DEVICE_IFACE, "DmaWrite", "tay", iova, list(data))

    def dma_read(self, dev, iova, length):
        return bytes(self.client.call1(dev, h.SIM_DEVICE_IFACE, "DmaRead", "tt", iova, length))

    def assertLanded(self, fd, mapping, iova, data, dev=None):
        """data is at the file offset mapping['offset'] + (iova - mapping['iova']) of fd, and,
        with dev, the device reads the same through the IOMMU."""
        at = mapping["offset"] + (iova - mapping["iova"])
        self.assertEqual(os.pread(fd, len(data), at), data, f"IOVA 0x{iova:x} is not at file offset 0x{at:x}")
        if dev is not None:
            self.assertEqual(self.dma_read(dev, iova, len(data)), data, f"DmaRead of IOVA 0x{iova:x}")

    def stored_state(self):
        """The serialized state in the service manager's store: (sequence number, JSON)."""
        found = []
        for fd, link in h.open_fds(self.manager.manager_pid).items():
            if classify(link) == "memfd:vfiomigd-state":
                with open(f"/proc/{self.manager.manager_pid}/fd/{fd}", "rb") as f:
                    found.append(f.read())
        self.assertEqual(len(found), 1, "the store should hold exactly one state memfd")
        return h.parse_state(found[0])

    # ---- the scenario ---------------------------------------------------------------------

    def set_up_guest(self, style):
        """Space, device, three mappings, a VMM, a pattern: returns the scenario's context."""
        t0 = time.monotonic()
        ctx = {"style": style}
        Hammer.next_slot = 0
        guest = os.memfd_create(GUEST_NAME, os.MFD_CLOEXEC)
        self.addCleanup(os.close, guest)
        os.ftruncate(guest, GUEST_SIZE)
        guest_ro = os.open(f"/proc/self/fd/{guest}", os.O_RDONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, guest_ro)
        guest2 = os.memfd_create(GUEST2_NAME, os.MFD_CLOEXEC)
        self.addCleanup(os.close, guest2)
        os.ftruncate(guest2, M3["length"])
        # Recognisable contents everywhere, so that a mapping of the wrong pages shows.
        os.pwrite(guest, b"".join(struct.pack("<Q", i) for i in range(GUEST_SIZE // 8)), 0)
        os.pwrite(guest2, b"\x5a" * M3["length"], 0)
        ctx.update(guest=guest, guest2=guest2, ino=os.fstat(guest).st_ino, ino2=os.fstat(guest2).st_ino)

        space = self.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "CreateAddressSpace", "a{sv}",
                                  {"backend": ("s", "sim"), "sim-mapping": ("s", style)})
        dev = self.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "AttachDevice", "sa{sv}", "sim:gpu",
                                {"state-size": ("t", 2 * MiB)})
        self.client.call(dev, h.DEVICE_IFACE, "AttachAddressSpace", "o", space)
        for m, fd in ((M1, guest), (M2, guest_ro), (M3, guest2)):
            self.call(space, h.SPACE_IFACE, "Map", "htttas", 0, m["offset"], m["length"], m["iova"], m["access"],
                      fds=[fd])
        ctx.update(space=space, dev=dev, mappings=[M1, M2, M3])
        self.assertEqual(self.client.call1(space, h.SPACE_IFACE, "ListMappings"),
                         [[m["iova"], m["length"], m["offset"], m["access"]] for m in (M1, M2, M3)])

        vmm = Vmm(self.bus.address, dev).start()
        self.addCleanup(vmm.stop)
        ctx["vmm"] = vmm
        self.assertEqual(self.client.dev_prop(dev, "Clients"), 1)

        # The device moves to RUNNING_P2P (not RUNNING, so that a restart that forgot the state
        # would show) and writes a pattern, some writes straddling a page boundary.
        self.assertEqual(self.client.call1(dev, h.DEVICE_IFACE, "SetState", "sa{sv}", "running-p2p", {}),
                         "running-p2p")
        ctx["state"] = "running-p2p"
        ctx["written"] = []
        self.write_pattern(ctx, "setup")
        self.assertEqual(self.n_stored(), 3 + 1 + 1, "3 mappings + 1 sim device + 1 state")
        timing(f"{style}: set-up (space, device, 3 maps, VMM, pattern)", time.monotonic() - t0)
        return ctx

    def write_pattern(self, ctx, tag):
        dev = ctx["dev"]
        rnd = ctx["rounds"] = ctx.get("rounds", -1) + 1  # each round writes to its own bytes
        for k in range(6):
            iova = M1["iova"] + k * (512 * KiB) + rnd * 8 * KiB + (PAGE - 40 if k % 2 else 123)
            data = f"{ctx['style']}:{tag}:{k}:".encode().ljust(80, b"#")
            self.dma_write(dev, iova, data)
            self.assertLanded(ctx["guest"], M1, iova, data, dev)
            ctx["written"].append((ctx["guest"], M1, iova, data))
        if M3 not in ctx["mappings"]:
            return
        iova = M3["iova"] + PAGE * (7 + rnd) + 11
        data = f"{ctx['style']}:{tag}:m3".encode()
        self.dma_write(dev, iova, data)
        self.assertLanded(ctx["guest2"], M3, iova, data, dev)
        ctx["written"].append((ctx["guest2"], M3, iova, data))

    def observe(self, ctx):
        """Everything the restart must keep, as seen from outside."""
        space, dev = ctx["space"], ctx["dev"]
        return {
            "devices": self.client.manager("ListDevices"),
            "spaces": self.client.manager("ListAddressSpaces"),
            "mappings": self.client.call1(space, h.SPACE_IFACE, "ListMappings"),
            "space-props": self.client.get_all(space, h.SPACE_IFACE),
            # LastTransition is not part of the saved state: a restarted daemon reports "" (reported).
            "device-props": {k: v for k, v in self.client.get_all(dev, h.DEVICE_IFACE).items()
                             if k != "LastTransition"},
            "digest": self.client.get_property(dev, h.SIM_DEVICE_IFACE, "StateDigest"),
            "fd-store": self.client.mgr_prop("FileDescriptorStore"),
        }

    def check_descriptors(self, ctx, pid):
        """Both sides of the store, by kind and inode; returns the daemon's census."""
        n_maps = len(ctx["mappings"])
        maps_guest = sum(1 for m in ctx["mappings"] if m is not M3)
        maps_guest2 = n_maps - maps_guest
        # The service manager: exactly one descriptor per mapping (the same file as the test's),
        # one per sim device, one state.
        self.assertEqual(self.n_stored(), n_maps + 1 + 1, "NFileDescriptorStore: mappings + sim device + state")
        counts, inodes = census(self.manager.manager_pid)
        held = {k: v for k, v in counts.items() if k.startswith("memfd:")}
        expect = {"memfd:" + GUEST_NAME: maps_guest, "memfd:vfiomig-sim-device": 1, "memfd:vfiomigd-state": 1}
        if maps_guest2:
            expect["memfd:" + GUEST2_NAME] = maps_guest2
        self.assertEqual(held, expect, "what the service manager holds for vfiomigd")
        self.assertEqual(inodes["memfd:" + GUEST_NAME], {ctx["ino"]})
        if maps_guest2:
            self.assertEqual(inodes["memfd:" + GUEST2_NAME], {ctx["ino2"]})
        # The daemon: per mapping, the address space's descriptor (the one it stores) and the
        # simulated IOMMU's own reference (the kernel's page pin on real hardware, which is no
        # descriptor); one sim device; no state memfd (the store has it); a by-address space
        # also has one shared mapping (the registered host address) per mapping.
        counts, inodes = census(pid)
        held = {k: v for k, v in counts.items() if k.startswith("memfd:")}
        expect = {"memfd:" + GUEST_NAME: 2 * maps_guest, "memfd:vfiomig-sim-device": 1}
        if maps_guest2:
            expect["memfd:" + GUEST2_NAME] = 2 * maps_guest2
        self.assertEqual(held, expect, f"vfiomigd's memfds: {h.open_fds(pid)}")
        self.assertEqual(inodes["memfd:" + GUEST_NAME], {ctx["ino"]}, "vfiomigd maps a copy, not the guest's file")
        self.assertEqual(inodes["memfd:vfiomig-sim-device"], {ctx["vmm"].stat()["ino"]},
                         "the VMM and vfiomigd hold different device files")
        with open(f"/proc/{pid}/maps") as f:
            views = [line for line in f if "/memfd:vfm-guest" in line]
        self.assertEqual(len(views), n_maps if ctx["style"] == "by-address" else 0,
                         f"host address views of guest memory:\n{''.join(views)}")
        return counts

    def check_state_record(self, ctx):
        """The serialized state in the store says what the bus says."""
        seq, state = self.stored_state()
        # Saves only move forward, also across restarts (the successor continues the sequence).
        self.assertGreaterEqual(seq, ctx.get("seq", 0))
        ctx["seq"] = seq
        space_id = ctx["space"].rsplit("/", 1)[1]
        [space] = [s for s in state["spaces"] if s["id"] == space_id]
        self.assertEqual(space["sim-mapping"], ctx["style"])
        self.assertIs(space["prepared"], False, "a running daemon's space must not be marked prepared")
        self.assertEqual([(m["iova"], m["length"], m["offset"], m["by-file"]) for m in space["mappings"]],
                         [(m["iova"], m["length"], m["offset"], ctx["style"] == "by-file") for m in ctx["mappings"]])
        [dev] = [d for d in state["devices"] if d["address"] == "sim:gpu"]
        self.assertEqual(dev["space"], space_id)
        self.assertEqual(dev["clients"], [ctx["vmm"].unique] if ctx.get("vmm") else [])
        self.assertEqual(dev["sim"]["state"], ctx["state"])

    def check_after_restart(self, ctx, before, pid, what):
        """The restart kept everything: objects, properties, data, descriptors, DMA."""
        after = self.observe(ctx)
        for key in before:
            self.assertEqual(after[key], before[key], f"{what}: {key} changed")
        dev, space = ctx["dev"], ctx["space"]
        self.assertEqual(after["device-props"]["AddressSpace"], ("o", space))
        self.assertEqual(after["device-props"]["State"], ("s", ctx["state"]))
        self.assertEqual(after["device-props"]["Clients"], ("u", 1))
        self.assertTrue(after["space-props"]["LiveUpdate"][1].startswith("survives"), after["space-props"])
        # The VMM never noticed: same connection, same device file, still open.
        st = ctx["vmm"].stat()
        self.assertTrue(st["valid"])
        self.assertEqual(st["ino"], ctx["vmm"].info["ino"])
        # Everything written before is still there, through the IOMMU and in the file; a stopped
        # device performs no DMA at all (the uAPI's rule, which the sim enforces), so then the
        # file alone is read, and the device's refusal checked.
        running = ctx["state"] != "stop"
        for fd, m, iova, data in ctx["written"]:
            self.assertLanded(fd, m, iova, data, dev if running else None)
        if not running:
            with self.assertRaises(h.DBusError) as cm:
                self.dma_read(dev, M1["iova"], 8)
            self.assertEqual(cm.exception.name, h.E_DMA_FAULT)
            self.assertIn("not running", cm.exception.message)
        # The untouched parts of the guest are untouched (the file's own numbering).
        self.assertEqual(os.pread(ctx["guest"], 8, 5 * MiB + 8 * 7), struct.pack("<Q", (5 * MiB + 8 * 7) // 8))
        # M2 is still read-only for the device, and reads the right pages.
        with self.assertRaises(h.DBusError) as cm:
            self.dma_write(dev, M2["iova"], b"nope")
        self.assertEqual(cm.exception.name, h.E_DMA_FAULT)
        if running:
            self.assertEqual(self.dma_read(dev, M2["iova"] + 8 * 3, 8),
                             struct.pack("<Q", (M2["offset"] + 8 * 3) // 8))
        # The journal of the new process: a restore, no complaints.
        log = self.journal_of(pid, "Serving org.vfiomig1.")
        self.assertIn(f"The service manager handed back {len(ctx['mappings']) + 2} descriptors; restoring.", log)
        n = len(ctx["mappings"])
        kind = "planned restart" if what != "crash" else "after a crash"
        self.assertIn(f"Address space {space.rsplit('/', 1)[1]}: took over {n} mapping{'s' if n != 1 else ''} "
                      f"({kind}).", log)
        self.assertIn(f"Restored {dev.rsplit('/', 1)[1]} (sim, address space {space.rsplit('/', 1)[1]}).", log)
        for bad in BAD_RESTORE_LINES:
            self.assertNotIn(bad, log, f"{what}: the restored daemon logged {bad!r}:\n{log}")
        self.check_state_record(ctx)
        census_now = self.check_descriptors(ctx, pid)
        # New writes go to the same pages (if the device may write in its state).
        if ctx["state"] != "stop":
            self.write_pattern(ctx, what)
        return census_now

    def check_hammer(self, ctx, results, t_down, what):
        """Every acknowledged write landed; every refusal was the bus's, during the restart."""
        oks = [r for r in results if r[3] is None]
        errors = {}
        for r in results:
            if r[3] is not None:
                errors[r[3]] = errors.get(r[3], 0) + 1
        self.assertTrue(any(r[0] < t_down for r in oks), f"{what}: no write succeeded before the restart")
        self.assertTrue(any(r[0] > t_down for r in oks), f"{what}: no write succeeded after the restart")
        self.assertLessEqual(set(errors), RESTART_ERRORS, f"{what}: device writes failed with {errors}")
        for _t, slot, data, _err in oks:
            self.assertLanded(ctx["guest"], M1, HAMMER_BASE + 16 * slot, data)
        times = [r[0] for r in oks]
        gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
        timing(f"{ctx['style']}: {what}: longest gap between acknowledged device writes", gap)
        h.log(f"{ctx['style']}: {what}: {len(results)} device writes, {len(oks)} acknowledged and found in the "
              f"guest memfd, refused by the bus: {errors or 'none'}")

    def restart_with_hammer(self, ctx, what, do_restart):
        pid = self.main_pid()
        hammer = Hammer(self.bus.address, ctx["dev"], tag=len(TIMINGS))
        hammer.start()
        h.wait_until(lambda: hammer.oks_after(0) >= 20, 10, 0.01, "the device writing before the restart")
        t_down = time.monotonic()
        new_pid = do_restart(pid, f"{ctx['style']}: {what}")
        t_up = time.monotonic()
        try:
            h.wait_until(lambda: hammer.oks_after(t_up) >= 20, 10, 0.01, "the device writing after the restart")
        finally:
            results = hammer.finish()
        self.check_hammer(ctx, results, t_down, what)
        return pid, new_pid

    def planned_restart(self, pid, label):
        t0 = time.monotonic()
        r = self.manager.systemctl("restart", UNIT, check=False, timeout=30)
        self.assertEqual(r.returncode, 0, f"systemctl restart: {r.stderr}{self.diagnostics()}")
        new_pid = self.wait_serving(pid)
        timing(f"{label}: systemctl --user restart until the new daemon serves", time.monotonic() - t0)
        return new_pid

    def crash(self, pid, label):
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        new_pid = self.wait_serving(pid)
        timing(f"{label}: kill -9 until the restarted daemon serves (RestartSec=100ms)", time.monotonic() - t0)
        return new_pid

    def scenario(self, style):
        pid0 = self.fresh_start()
        ctx = self.set_up_guest(style)
        first_census = self.check_descriptors(ctx, pid0)
        self.check_state_record(ctx)
        restarts0 = self.n_restarts()

        # A. Planned restart, the device writing all along.
        before = self.observe(ctx)
        old, pid = self.restart_with_hammer(ctx, "planned restart", self.planned_restart)
        self.assertEqual(self.n_restarts(), restarts0, "a planned restart is not counted as a failure restart")
        old_log = self.journal_of(old, "Exiting.")
        self.assertIn(f"Address space {ctx['space'].rsplit('/', 1)[1]}: 3 mappings ready for a successor,", old_log)
        census_a = self.check_after_restart(ctx, before, pid, "planned restart")
        self.assertEqual(census_a, first_census, "the descriptors of a restarted daemon differ from the first's")

        # B. Crash: SIGKILL, nothing prepared; Restart=on-failure brings it back.
        before = self.observe(ctx)
        old, pid = self.restart_with_hammer(ctx, "crash", self.crash)
        self.assertEqual(self.n_restarts(), restarts0 + 1, "NRestarts did not count the crash")
        self.assertNotIn("ready for a successor", self.journal_of(old))
        census_b = self.check_after_restart(ctx, before, pid, "crash")
        self.assertEqual(census_b, census_a, "descriptors grew across restarts")

        # C. The device in STOP, planned restart again: the state and its digest survive.
        self.assertEqual(self.client.call1(ctx["dev"], h.DEVICE_IFACE, "SetState", "sa{sv}", "stop", {}), "stop")
        ctx["state"] = "stop"
        before = self.observe(ctx)
        pid = self.planned_restart(pid, f"{style}: planned restart in stop")
        census_c = self.check_after_restart(ctx, before, pid, "planned restart in stop")
        self.assertEqual(census_c, census_a, "descriptors grew across restarts")
        self.assertEqual(self.client.call1(ctx["dev"], h.DEVICE_IFACE, "SetState", "sa{sv}", "running-p2p", {}),
                         "running-p2p")
        ctx["state"] = "running-p2p"
        self.write_pattern(ctx, "after stop")

        # D. Unmap after a restart: the store lets go of that file, and a restart agrees.
        self.call(ctx["space"], h.SPACE_IFACE, "Unmap", "tt", M3["iova"], M3["length"])
        ctx["mappings"] = [M1, M2]
        ctx["written"] = [x for x in ctx["written"] if x[1] is not M3]
        self.assertEqual(self.client.get_property(ctx["space"], h.SPACE_IFACE, "MappingCount"), 2)
        self.assertEqual(self.client.get_property(ctx["space"], h.SPACE_IFACE, "PinnedBytes"),
                         M1["length"] + M2["length"])
        self.check_descriptors(ctx, pid)  # NFileDescriptorStore is one less, guest2 gone on both sides
        self.check_state_record(ctx)
        with self.assertRaises(h.DBusError) as cm:
            self.dma_write(ctx["dev"], M3["iova"], b"gone")
        self.assertEqual(cm.exception.name, h.E_DMA_FAULT)
        before = self.observe(ctx)
        pid = self.planned_restart(pid, f"{style}: planned restart after an unmap")
        self.check_after_restart(ctx, before, pid, "planned restart after an unmap")
        with self.assertRaises(h.DBusError) as cm:
            self.dma_write(ctx["dev"], M3["iova"], b"gone")
        self.assertEqual(cm.exception.name, h.E_DMA_FAULT)

    def test_by_file(self):
        self.scenario("by-file")

    def test_by_address(self):
        self.scenario("by-address")

    # ---- mappings sharing one memfd --------------------------------------------------------

    def test_mappings_sharing_a_memfd(self):
        """The normal VMM layout: one guest-RAM memfd carrying many ranges, in one space and across
        two, plus a second open of the same memfd. systemd keeps one fd store entry per open file
        description and drops a second FDSTORE=1 of it silently, so vfiomigd stores each
        description once: every range survives a planned restart and a kill -9, and the store
        holds exactly the entries the state lists."""
        pid = self.fresh_start()
        guest = os.memfd_create(GUEST_NAME, os.MFD_CLOEXEC)
        self.addCleanup(os.close, guest)
        os.ftruncate(guest, GUEST_SIZE)
        os.pwrite(guest, b"".join(struct.pack("<Q", i) for i in range(GUEST_SIZE // 8)), 0)
        # A separate open (its own open file description where kcmp tells them apart).
        reopened = os.open(f"/proc/self/fd/{guest}", os.O_RDWR | os.O_CLOEXEC)
        self.addCleanup(os.close, reopened)
        kcmp = h.have_kcmp()

        spaces, devs = {}, {}
        for name, style in (("a", "by-file"), ("b", "by-address")):
            spaces[name] = self.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "CreateAddressSpace", "a{sv}",
                                             {"backend": ("s", "sim"), "sim-mapping": ("s", style)})
            devs[name] = self.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "AttachDevice", "sa{sv}",
                                           f"sim:dev{name}", {"state-size": ("t", 256 * KiB)})
            self.client.call(devs[name], h.DEVICE_IFACE, "AttachAddressSpace", "o", spaces[name])
        rw = ["read", "write"]
        # (space, fd, iova, offset, length): three ranges of guest in a, a fourth through the
        # second open, one range of guest in b.
        ranges = [("a", guest, 0x1_0000_0000 + i * MiB, i * MiB, 256 * KiB) for i in range(3)]
        ranges += [("a", reopened, 0x1_1000_0000, 4 * MiB, 256 * KiB), ("b", guest, 0x2_0000_0000, 6 * MiB, 512 * KiB)]
        for sp, fd, iova, offset, length in ranges:
            self.call(spaces[sp], h.SPACE_IFACE, "Map", "htttas", 0, offset, length, iova, rw, fds=[fd])

        entries = (2 if kcmp else 1) + 2  # the guest (and its second open), two sim devices
        self.assertEqual(self.n_stored(), entries + 1, "entries + the state" + self.diagnostics())

        def write_all(tag):
            rnd = len(written) // len(ranges)  # each round writes its own bytes
            for k, (sp, fd, iova, offset, length) in enumerate(ranges):
                data = f"{tag}:{k}".encode().ljust(24, b".")
                at = iova + length - 4096 * (rnd + 1) - 7 * k  # inside the range, not at its start
                self.dma_write(devs[sp], at, data)
                self.assertEqual(os.pread(guest, len(data), offset + (at - iova)), data, f"{tag}: range {k}")
                written.append((sp, at, offset + (at - iova), data))

        def observe():
            return {sp: (self.client.call1(spaces[sp], h.SPACE_IFACE, "ListMappings"),
                         self.client.get_property(spaces[sp], h.SPACE_IFACE, "MappingCount"),
                         self.client.get_property(spaces[sp], h.SPACE_IFACE, "PinnedBytes"))
                    for sp in spaces}

        def check(before, pid, what):
            self.assertEqual(observe(), before, f"{what}: the mappings changed")
            self.assertEqual(before["a"][1:], (4, 4 * 256 * KiB))
            self.assertEqual(before["b"][1:], (1, 512 * KiB))
            for sp in spaces:
                live = self.client.get_property(spaces[sp], h.SPACE_IFACE, "LiveUpdate")
                self.assertTrue(live.startswith("survives"), f"{what}: {live}")
            for sp, at, off, data in written:
                self.assertEqual(self.dma_read(devs[sp], at, len(data)), data, f"{what}: DmaRead 0x{at:x}")
                self.assertEqual(os.pread(guest, len(data), off), data)
            log = self.journal_of(pid, "Serving org.vfiomig1.")
            self.assertIn(f"The service manager handed back {entries + 1} descriptors; restoring.", log)
            self.assertIn(f"The fd store handed back {entries} of the {entries} entries the saved state lists.",
                          log)
            self.assertIn(f"took over 4 mappings ({'planned restart' if what == 'planned' else 'after a crash'})",
                          log)
            for bad in BAD_RESTORE_LINES:
                self.assertNotIn(bad, log, f"{what}: the restored daemon logged {bad!r}:\n{log}")
            self.assertEqual(self.n_stored(), entries + 1, f"{what}: NFileDescriptorStore")
            # The state lists each description once, with every mapping that uses it.
            _seq, record = self.stored_state()
            users = sorted(sorted(u) for u in h.entry_users(record).values())
            a, b = (s.rsplit("/", 1)[1] for s in (spaces["a"], spaces["b"]))
            guest_users = sorted([f"map-{a}-0", f"map-{a}-1", f"map-{a}-2", f"map-{b}-0"] +
                                 ([] if kcmp else [f"map-{a}-3"]))
            expect = [guest_users, ["sim-device-deva"], ["sim-device-devb"]] + ([[f"map-{a}-3"]] if kcmp else [])
            self.assertEqual(users, sorted(expect))
            write_all(what)

        written = []
        write_all("setup")
        before = observe()
        pid = self.planned_restart(pid, "shared memfd: planned restart")
        check(before, pid, "planned")
        before = observe()
        restarts = self.n_restarts()
        pid = self.crash(pid, "shared memfd: kill -9")
        self.assertEqual(self.n_restarts(), restarts + 1)
        check(before, pid, "crash")

        # Unmapping all but one range of the guest keeps its entry; the last one removes it.
        for sp, fd, iova, offset, length in ranges[:3]:
            self.call(spaces[sp], h.SPACE_IFACE, "Unmap", "tt", iova, length)
        self.assertEqual(self.n_stored(), entries + 1, "the entry stays while a range uses it")
        self.call(spaces["b"], h.SPACE_IFACE, "Unmap", "tt", ranges[4][2], ranges[4][4])
        expect_left = entries if kcmp else entries + 1  # without kcmp the second open is that entry
        h.wait_until(lambda: self.n_stored() == expect_left, 5, 0.02, "the store letting go of the guest's entry")

    # ---- the VMM restarts -----------------------------------------------------------------

    def test_vmm_restart(self):
        """A VMM that goes and comes back: the device is neither reset nor detached, DMA goes
        on, Clients follows the VMM; the new VMM gets the same device."""
        self.fresh_start()
        ctx = self.set_up_guest("by-file")
        dev = ctx["dev"]
        before = self.observe(ctx)
        ino = ctx["vmm"].info["ino"]
        ctx["vmm"].stop()
        h.wait_until(lambda: self.client.dev_prop(dev, "Clients") == 0, 10, 0.02, "Clients to drop to 0")
        after = self.observe(ctx)
        for key in ("devices", "spaces", "mappings", "space-props", "digest"):
            self.assertEqual(after[key], before[key], f"the VMM's exit changed {key}")
        self.assertEqual(after["device-props"]["State"], ("s", "running-p2p"), "the VMM's exit reset the device")
        self.assertEqual(after["device-props"]["AddressSpace"], ("o", ctx["space"]))
        ctx["vmm"] = None
        self.check_state_record(ctx)
        for fd, m, iova, data in ctx["written"]:
            self.assertLanded(fd, m, iova, data, dev)
        self.write_pattern(ctx, "between VMMs")
        vmm = Vmm(self.bus.address, dev).start()
        self.addCleanup(vmm.stop)
        ctx["vmm"] = vmm
        self.assertEqual(vmm.info["ino"], ino, "the new VMM got a different device")
        self.assertEqual(self.client.dev_prop(dev, "Clients"), 1)
        self.check_state_record(ctx)

    def vmm_gone_while_daemon_down(self):
        """The VMM disconnects while vfiomigd is dead (frozen with SIGSTOP, so that it cannot see
        the VMM go, then killed): everything else survives the crash as usual."""
        self.fresh_start()
        ctx = self.set_up_guest("by-address")
        pid = self.main_pid()
        self.check_state_record(ctx)  # the VMM is in the stored state
        os.kill(pid, signal.SIGSTOP)
        try:
            unique = ctx["vmm"].unique
            ctx["vmm"].stop()
            h.wait_until(lambda: not self.client.name_has_owner(unique), 10, 0.02, "the VMM's name to vanish")
        finally:
            os.kill(pid, signal.SIGKILL)
        pid = self.wait_serving(pid)
        self.assertEqual(self.client.dev_prop(ctx["dev"], "State"), "running-p2p")
        self.assertEqual(self.client.dev_prop(ctx["dev"], "AddressSpace"), ctx["space"])
        self.assertEqual(self.client.call1(ctx["space"], h.SPACE_IFACE, "ListMappings"),
                         [[m["iova"], m["length"], m["offset"], m["access"]] for m in ctx["mappings"]])
        for fd, m, iova, data in ctx["written"]:
            self.assertLanded(fd, m, iova, data, ctx["dev"])
        return ctx, pid

    def test_vmm_gone_while_daemon_down(self):
        self.vmm_gone_while_daemon_down()

    # DAEMON BUG (reported): a client recorded before the restart whose bus name is gone by the
    # time the new daemon starts is never dropped. bus_service_track_client() relies on the
    # track handler running "at once" for a vanished peer, but sd_bus_track_add_name() fails with
    # ENXIO instead ("Cannot watch client :1.N of sim_gpu, ignoring: No such device or address"),
    # so Clients stays 1 and the stale name stays in the saved state for good. Remove the
    # decorator when the daemon drops such clients.
    def test_vmm_gone_while_daemon_down_is_dropped(self):
        ctx, pid = self.vmm_gone_while_daemon_down()
        log = self.journal_of(pid, "Serving org.vfiomig1.")
        try:
            h.wait_until(lambda: self.client.dev_prop(ctx["dev"], "Clients") == 0, 3, 0.02,
                         "the restarted daemon to drop the vanished VMM")
        except TimeoutError as e:
            self.fail(f"{e}: Clients is still {self.client.dev_prop(ctx['dev'], 'Clients')}; the journal says:\n"
                      + "\n".join(line for line in log.splitlines() if "client" in line))
        ctx["vmm"] = None
        self.check_state_record(ctx)

    # ---- the documented limit -------------------------------------------------------------

    def test_stop_then_start_releases_everything(self):
        """stop releases the store (systemd 252 has no FileDescriptorStorePreserve=): the next
        start comes up empty. Documented in the unit and vfiomigd(8); checked here."""
        self.fresh_start()
        ctx = self.set_up_guest("by-file")
        self.assertEqual(self.client.call1(ctx["dev"], h.DEVICE_IFACE, "SetState", "sa{sv}", "running", {}),
                         "running")
        old = self.main_pid()
        self.manager.systemctl("stop", UNIT)
        old_log = self.journal_of(old, "Exiting.")
        # What the stopping daemon says: it cannot tell a stop from a restart, so it prepares.
        self.assertIn("Stopping on SIGTERM.", old_log)
        self.assertIn("3 mappings ready for a successor,", old_log)
        self.assertEqual(self.n_stored(), 0)
        self.manager.systemctl("start", UNIT)
        pid = self.main_pid()
        log = self.journal_of(pid, "Serving org.vfiomig1.")
        self.assertEqual(self.client.manager("ListDevices"), [[]])
        self.assertEqual(self.client.manager("ListAddressSpaces"), [[]])
        self.assertEqual(self.n_stored(), 0)
        # It received nothing and restored nothing, and says so.
        self.assertIn("The service manager handed back no descriptors: starting with no devices", log)
        self.assertNotIn("descriptors; restoring", log)
        self.assertNotIn("Restored", log)
        self.assertNotIn("took over", log)
        # It holds no guest memory and no device any more; the guest's bytes are the VMM's.
        held = {k for k in census(pid)[0] if k.startswith("memfd:")}
        self.assertEqual(held, set(), f"the fresh daemon holds {held}")
        for fd, m, iova, data in ctx["written"]:
            at = m["offset"] + (iova - m["iova"])
            self.assertEqual(os.pread(fd, len(data), at), data)
        # The old device path is gone; the VMM still holds its (now orphaned) file.
        with self.assertRaises(h.DBusError) as cm:
            self.client.dev_prop(ctx["dev"], "State")
        self.assertEqual(cm.exception.name, "org.vfiomig1.Error.NoSuchDevice", cm.exception.message)
        self.assertTrue(ctx["vmm"].stat()["valid"])


def print_timings():
    if TIMINGS:
        print("\ntimings (measured, not asserted):", file=sys.stderr)
        for what, seconds in TIMINGS:
            print(f"  {seconds * 1000:8.1f} ms  {what}", file=sys.stderr)


if __name__ == "__main__":
    import atexit
    atexit.register(print_timings)
    h.main([h.require_root,
            lambda: h.require_programs("dbus-daemon", "busctl", "systemctl", "journalctl", "unshare", "mount",
                                       "/lib/systemd/systemd", "/lib/systemd/systemd-journald"),
            lambda: h.require_files(h.SERVICE_UNIT_IN, h.BUS_POLICY),
            h.require_mount_namespaces, h.require_cgroups, h.require_daemon])
