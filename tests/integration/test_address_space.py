#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""org.vfiomig1.AddressSpace against malformed input, on the real vfiomigd (no service manager).

Every malformed Map/Unmap (and the DMA, attach and destroy calls around them) must come back as
a named error and change nothing: the space's MappingCount, PinnedBytes, ListMappings and
Devices, the device's State, AddressSpace and StateDigest, the list of spaces, the guest
memory's bytes and the daemon's open descriptors are compared before and after each call. The
last one catches a descriptor the daemon duplicated and then forgot on a refusal.

Map takes its memory as an 'h', which busctl v252 cannot send ("UNIX file descriptor not
supported as type."), so these calls go over dbus_wire.WireConnection, a standard-library
D-Bus client that passes descriptors with SCM_RIGHTS.

Without a service manager the daemon says plainly that a restart loses the mappings:
Manager.FileDescriptorStore is false, AddressSpace.LiveUpdate says "lost on restart", the log
says so at start, and a restart does lose them.

Both simulated mapping styles run: by-file (like iommufd MAP_FILE) and by-address (like type1
with a host address).
"""

import hashlib
import os
import socket
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire as w  # noqa: E402
import harness as h  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
PAGE = 4096
GUEST_SIZE = 8 * MiB
BASE_IOVA = 0x1_0000_0000
BASE_OFFSET = 1 * MiB
BASE_LEN = 2 * MiB
TOP = 1 << 64
CONFIG = {"allow-simulated": True, "max-mappings": 2, "max-pinned-bytes": 12 * MiB}


class MalformedInput(h.DaemonTestCase):
    """One daemon per class; per test a sim space of cls.style with sim:gpu attached and one
    2 MiB read-write mapping of an 8 MiB memfd at BASE_IOVA (file offset 1 MiB)."""

    style = None
    daemon_kwargs = {"config": CONFIG}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.wire = w.WireConnection(cls.bus.address)
        cls.addClassCleanup(cls.wire.close)

    def call(self, path, iface, member, sig="", *args, fds=()):
        return self.wire.call(h.BUS_NAME, path, iface, member, sig, list(args), fds)

    def manager_call(self, member, sig="", *args):
        return self.call(h.MANAGER_PATH, h.MANAGER_IFACE, member, sig, *args)

    def map(self, fd, offset, length, iova, access=("read", "write"), space=None):
        return self.call(space or self.space, h.SPACE_IFACE, "Map", "htttas", 0, offset, length, iova, list(access),
                         fds=[fd])

    def memfd(self, size=GUEST_SIZE, name="vfm-guest"):
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.addCleanup(os.close, fd)
        os.ftruncate(fd, size)
        return fd

    def setUp(self):
        self.guest = self.memfd()
        os.pwrite(self.guest, bytes(range(256)) * (GUEST_SIZE // 256), 0)
        self.space = self.manager_call("CreateAddressSpace", "a{sv}",
                                       {"backend": ("s", "sim"), "sim-mapping": ("s", self.style)})[0]
        self.dev = self.manager_call("AttachDevice", "sa{sv}", "sim:gpu", {})[0]
        self.call(self.dev, h.DEVICE_IFACE, "AttachAddressSpace", "o", self.space)
        self.map(self.guest, BASE_OFFSET, BASE_LEN, BASE_IOVA)
        self.before = self.snapshot()
        self.assertEqual(self.before["mappings"], [(BASE_IOVA, BASE_LEN, BASE_OFFSET, ["read", "write"])])
        self.assertEqual((self.before["count"], self.before["pinned"]), (1, BASE_LEN))

    def tearDown(self):
        if not self.daemon.alive():
            return
        for _id, path in self.manager_call("ListAddressSpaces")[0]:
            if self.call(path, h.SPACE_IFACE, "ListMappings")[0]:
                # Unmaps every whole mapping in [0, 2^64 - 4 KiB).
                self.call(path, h.SPACE_IFACE, "Unmap", "tt", 0, TOP - PAGE)
        for dev_id, _addr, path in self.list_devices():
            if self.client.dev_prop(path, "State") != "running":
                self.call(path, h.DEVICE_IFACE, "Reset")
            self.manager_call("DetachDevice", "s", dev_id)
        for _id, path in self.manager_call("ListAddressSpaces")[0]:
            self.manager_call("DestroyAddressSpace", "o", path)

    def snapshot(self):
        props = self.call(self.space, h.PROPS_IFACE, "GetAll", "s", h.SPACE_IFACE)[0]
        dev = self.call(self.dev, h.PROPS_IFACE, "GetAll", "s", h.DEVICE_IFACE)[0]
        guest = hashlib.sha256(os.pread(self.guest, GUEST_SIZE, 0)).hexdigest()
        return {
            "mappings": self.call(self.space, h.SPACE_IFACE, "ListMappings")[0],
            "count": props["MappingCount"][1],
            "pinned": props["PinnedBytes"][1],
            "space-devices": props["Devices"][1],
            "live-update": props["LiveUpdate"][1],
            "spaces": self.manager_call("ListAddressSpaces")[0],
            "device-space": dev["AddressSpace"][1],
            "state": dev["State"][1],
            "clients": dev["Clients"][1],
            "digest": self.call(self.dev, h.PROPS_IFACE, "Get", "ss", h.SIM_DEVICE_IFACE, "StateDigest")[0][1],
            "guest-sha256": guest,
            "daemon-fds": h.open_fds(self.daemon.pid),
        }

    def assertRefused(self, error, path, iface, member, sig, *args, fds=(), before=None):
        """The call fails with the D-Bus error named error, and nothing changed."""
        with self.assertRaises(w.WireError, msg=f"{member}{args} was accepted") as cm:
            self.call(path, iface, member, sig, *args, fds=fds)
        self.assertEqual(cm.exception.name, error, f"{member}{args}: {cm.exception.message}")
        self.assertTrue(cm.exception.message, f"{member}{args}: {error} without a message")
        self.assertEqual(self.snapshot(), before or self.before, f"{member}{args} changed something")
        return cm.exception

    def assertMapRefused(self, error, fd, offset, length, iova, access=("read", "write"), before=None):
        return self.assertRefused(error, self.space, h.SPACE_IFACE, "Map", "htttas", 0, offset, length, iova,
                                  list(access), fds=[fd], before=before)

    def assertUnmapRefused(self, error, iova, length):
        return self.assertRefused(error, self.space, h.SPACE_IFACE, "Unmap", "tt", iova, length)

    # ---------------------------------------------------------------------------------------

    def test_descriptor_kinds(self):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        r, wr = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, wr)
        with tempfile.TemporaryDirectory(prefix="vfm-it-") as tmp:
            path = os.path.join(tmp, "guest.img")
            with open(path, "wb") as f:
                f.truncate(GUEST_SIZE)
            rdonly = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            wronly = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            opath = os.open(path, os.O_PATH | os.O_CLOEXEC)
            dirfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            memfd_ro = os.open(f"/proc/self/fd/{self.guest}", os.O_RDONLY | os.O_CLOEXEC)
            for fd in (rdonly, wronly, opath, dirfd, null, memfd_ro):
                self.addCleanup(os.close, fd)
            cases = [("socket", a.fileno(), ("read", "write")), ("pipe read end", r, ("read",)),
                     ("pipe write end", wr, ("read", "write")), ("directory", dirfd, ("read",)),
                     ("character device", null, ("read", "write")), ("O_PATH file", opath, ("read",)),
                     ("read-only file, write access", rdonly, ("read", "write")),
                     ("read-only file, write-only access", rdonly, ("write",)),
                     ("read-only memfd, write access", memfd_ro, ("read", "write")),
                     ("write-only file", wronly, ("write",))]
            for what, fd, access in cases:
                with self.subTest(what):
                    self.assertMapRefused(h.E_INVALID_ARGS, fd, 0, PAGE, 0x2_0000_0000, access)
            # Controls: the same read-only descriptors are fine for read-only mappings, and
            # unmapping them returns everything (descriptors included) to where it was.
            for what, fd in (("read-only file", rdonly), ("read-only memfd", memfd_ro)):
                with self.subTest(f"control: {what}, read access"):
                    self.map(fd, 0, PAGE, 0x2_0000_0000, ("read",))
                    self.assertEqual(self.snapshot()["count"], 2)
                    self.call(self.space, h.SPACE_IFACE, "Unmap", "tt", 0x2_0000_0000, PAGE)
                    self.assertEqual(self.snapshot(), self.before)

    def test_message_level_errors(self):
        # No descriptor where the signature says 'h', or an index past the descriptors sent.
        self.assertRefused(h.E_INVALID_ARGS, self.space, h.SPACE_IFACE, "Map", "tttas", 0, PAGE, 0x2_0000_0000,
                           ["read"])
        self.assertRefused("org.freedesktop.DBus.Error.InconsistentMessage", self.space, h.SPACE_IFACE, "Map",
                           "htttas", 1, 0, PAGE, 0x2_0000_0000, ["read"], fds=[self.guest])
        self.assertRefused("org.vfiomig1.Error.NoSuchAddressSpace", h.SPACE_PATH_PREFIX + "nope", h.SPACE_IFACE,
                           "Map", "htttas", 0, 0, PAGE, 0x2_0000_0000, ["read"], fds=[self.guest])

    def test_bad_ranges(self):
        g = self.guest
        cases = [
            ("unaligned offset", 1, PAGE, 0x2_0000_0000),
            ("unaligned length", 0, PAGE + 1, 0x2_0000_0000),
            ("unaligned iova", 0, PAGE, 0x2_0000_0800),
            ("zero length", 0, 0, 0x2_0000_0000),
            ("range beyond the end of the file", GUEST_SIZE - PAGE, 2 * PAGE, 0x2_0000_0000),
            ("offset at the end of the file", GUEST_SIZE, PAGE, 0x2_0000_0000),
            ("longer than the file", 0, GUEST_SIZE + PAGE, 0x2_0000_0000),
            ("iova range wraps", 0, 2 * PAGE, TOP - PAGE),
            ("offset range wraps", TOP - PAGE, 2 * PAGE, 0x2_0000_0000),
            ("length wraps the iova space", 0, TOP - PAGE, 0x2_0000_0000),
        ]
        for what, offset, length, iova in cases:
            with self.subTest(what):
                self.assertMapRefused(h.E_INVALID_ARGS, g, offset, length, iova)

    def test_bad_access(self):
        for access in (["execute"], [], ["READ"], ["read", "exec"], [""]):
            with self.subTest(access=access):
                self.assertMapRefused(h.E_INVALID_ARGS, self.guest, 0, PAGE, 0x2_0000_0000, access)

    def test_overlaps(self):
        cases = [
            ("the same range", BASE_IOVA, BASE_LEN),
            ("over its first page", BASE_IOVA - PAGE, 2 * PAGE),
            ("over its last page", BASE_IOVA + BASE_LEN - PAGE, 2 * PAGE),
            ("inside it", BASE_IOVA + PAGE, PAGE),
            ("around it", BASE_IOVA - MiB, BASE_LEN + 2 * MiB),
        ]
        for what, iova, length in cases:
            with self.subTest(what):
                self.assertMapRefused(h.E_MAPPING_CONFLICT, self.guest, 0, length, iova)

    def test_unmap(self):
        cases = [
            (h.E_MAPPING_CONFLICT, "its first page only (bisects it)", BASE_IOVA, PAGE),
            (h.E_MAPPING_CONFLICT, "its middle", BASE_IOVA + MiB, PAGE),
            (h.E_MAPPING_CONFLICT, "over its end", BASE_IOVA + MiB, BASE_LEN),
            (h.E_MAPPING_CONFLICT, "over its start", BASE_IOVA - MiB, BASE_LEN),
            (h.E_NO_SUCH_MAPPING, "nothing mapped there", 0x2_0000_0000, PAGE),
            (h.E_NO_SUCH_MAPPING, "just before it", BASE_IOVA - PAGE, PAGE),
            (h.E_NO_SUCH_MAPPING, "just after it", BASE_IOVA + BASE_LEN, PAGE),
            (h.E_INVALID_ARGS, "unaligned iova", BASE_IOVA + 1, BASE_LEN),
            (h.E_INVALID_ARGS, "unaligned length", BASE_IOVA, BASE_LEN + 1),
            (h.E_INVALID_ARGS, "zero length", BASE_IOVA, 0),
            (h.E_INVALID_ARGS, "wrapping range", TOP - PAGE, 2 * PAGE),
        ]
        for error, what, iova, length in cases:
            with self.subTest(what):
                self.assertUnmapRefused(error, iova, length)

    def test_limits(self):
        # max-pinned-bytes (12 MiB, for the whole daemon): 2 MiB are pinned, 16 MiB more is too much.
        big = self.memfd(16 * MiB, "vfm-guest-big")
        e = self.assertMapRefused(h.E_LIMIT_EXCEEDED, big, 0, 16 * MiB, 0x2_0000_0000)
        self.assertIn("max-pinned-bytes", e.message)
        # max-mappings (2 per space): the second is fine, the third is refused.
        self.map(self.guest, 0, PAGE, 0x2_0000_0000)
        full = self.snapshot()
        self.assertEqual((full["count"], full["pinned"]), (2, BASE_LEN + PAGE))
        e = self.assertMapRefused(h.E_LIMIT_EXCEEDED, self.guest, 0, PAGE, 0x3_0000_0000, before=full)
        self.assertIn("max-mappings", e.message)
        # The limit counts mappings, not attempts: after an unmap there is room again.
        self.call(self.space, h.SPACE_IFACE, "Unmap", "tt", 0x2_0000_0000, PAGE)
        self.assertEqual(self.snapshot(), self.before)
        self.map(self.guest, 0, PAGE, 0x3_0000_0000)

    def test_dma_faults(self):
        sim = h.SIM_DEVICE_IFACE
        self.assertRefused(h.E_DMA_FAULT, self.dev, sim, "DmaWrite", "tay", 0x2_0000_0000, b"\xaa" * 16)
        self.assertRefused(h.E_DMA_FAULT, self.dev, sim, "DmaWrite", "tay", BASE_IOVA - PAGE, b"\xaa" * 16)
        self.assertRefused(h.E_DMA_FAULT, self.dev, sim, "DmaWrite", "tay", BASE_IOVA + BASE_LEN, b"\xaa" * 16)
        self.assertRefused(h.E_DMA_FAULT, self.dev, sim, "DmaRead", "tt", 0x2_0000_0000, 16)
        self.assertRefused(h.E_INVALID_ARGS, self.dev, sim, "DmaWrite", "tay", BASE_IOVA, b"")
        self.assertRefused(h.E_INVALID_ARGS, self.dev, sim, "DmaRead", "tt", BASE_IOVA, 0)
        self.assertRefused(h.E_INVALID_ARGS, self.dev, sim, "DmaRead", "tt", TOP - 8, 16)
        # A read-only mapping faults on a device write and serves a device read.
        self.map(self.guest, 4 * MiB, PAGE, 0x2_0000_0000, ("read",))
        ro = self.snapshot()
        self.assertRefused(h.E_DMA_FAULT, self.dev, sim, "DmaWrite", "tay", 0x2_0000_0000, b"\xaa" * 16, before=ro)
        data = self.call(self.dev, sim, "DmaRead", "tt", 0x2_0000_0000 + 100, 16)[0]
        self.assertEqual(data, os.pread(self.guest, 16, 4 * MiB + 100))
        # A device that is in no address space faults on every DMA.
        other = self.manager_call("AttachDevice", "sa{sv}", "sim:nic", {})[0]
        ro = self.snapshot()
        self.assertRefused(h.E_DMA_FAULT, other, sim, "DmaWrite", "tay", BASE_IOVA, b"\xaa" * 16, before=ro)
        self.assertRefused(h.E_DMA_FAULT, other, sim, "DmaRead", "tt", BASE_IOVA, 16, before=ro)

    def test_busy(self):
        second = self.manager_call("CreateAddressSpace", "a{sv}", {"backend": ("s", "sim")})[0]
        before = self.snapshot()
        # A device stays in its space: attaching it elsewhere is refused, attaching it again is not.
        self.assertRefused(h.E_BUSY, self.dev, h.DEVICE_IFACE, "AttachAddressSpace", "o", second, before=before)
        self.call(self.dev, h.DEVICE_IFACE, "AttachAddressSpace", "o", self.space)
        self.assertEqual(self.snapshot(), before)
        # A space with a device (and mappings) is not destroyed.
        e = self.assertRefused(h.E_BUSY, h.MANAGER_PATH, h.MANAGER_IFACE, "DestroyAddressSpace", "o", self.space,
                               before=before)
        self.assertIn(self.dev.rsplit("/", 1)[1], e.message)  # names the device
        self.assertIn(self.space.rsplit("/", 1)[1], e.message)
        # Nor one with mappings but no device.
        self.map(self.guest, 0, PAGE, 0x2_0000_0000, space=second)
        before = self.snapshot()
        self.assertRefused(h.E_BUSY, h.MANAGER_PATH, h.MANAGER_IFACE, "DestroyAddressSpace", "o", second,
                           before=before)
        self.assertRefused(h.E_NO_SUCH_ADDRESS_SPACE, self.dev, h.DEVICE_IFACE, "AttachAddressSpace", "o",
                           h.SPACE_PATH_PREFIX + "nope", before=before)


class MalformedInputByFile(MalformedInput):
    style = "by-file"


class MalformedInputByAddress(MalformedInput):
    style = "by-address"


del MalformedInput  # only its subclasses run


class WithoutServiceManager(h.unittest.TestCase):
    """No $NOTIFY_SOCKET, so no fd store: the daemon says a restart loses everything, and it does."""

    def test_says_a_restart_loses_the_mappings(self):
        bus = h.PrivateBus().start()
        self.addCleanup(bus.stop)
        daemon = h.Daemon(bus).start()
        self.addCleanup(daemon.stop)
        wire = w.WireConnection(bus.address)
        self.addCleanup(wire.close)

        def call(path, iface, member, sig="", *args, fds=()):
            return wire.call(h.BUS_NAME, path, iface, member, sig, list(args), fds)

        self.assertIs(bus.client.mgr_prop("FileDescriptorStore"), False)
        self.assertIn("Not running under a service manager", daemon.log())
        guest = os.memfd_create("vfm-guest", os.MFD_CLOEXEC)
        self.addCleanup(os.close, guest)
        os.ftruncate(guest, GUEST_SIZE)
        for style in ("by-file", "by-address"):
            with self.subTest(style):
                space = call(h.MANAGER_PATH, h.MANAGER_IFACE, "CreateAddressSpace", "a{sv}",
                             {"backend": ("s", "sim"), "sim-mapping": ("s", style)})[0]
                live = bus.client.get_property(space, h.SPACE_IFACE, "LiveUpdate")
                self.assertTrue(live.startswith("lost on restart"), live)
                self.assertIn("service manager", live)
                call(space, h.SPACE_IFACE, "Map", "htttas", 0, 0, MiB, BASE_IOVA, ["read", "write"], fds=[guest])
                # A mapping does not change the answer.
                self.assertEqual(bus.client.get_property(space, h.SPACE_IFACE, "LiveUpdate"), live)
        # And it is true: a restart comes back empty.
        daemon.stop()
        daemon = h.Daemon(bus).start()
        self.addCleanup(daemon.stop)
        self.assertEqual(bus.client.manager("ListAddressSpaces"), [[]])
        self.assertEqual(bus.client.manager("ListDevices"), [[]])


if __name__ == "__main__":
    h.main([h.require_root,
            lambda: h.require_programs("dbus-daemon", "busctl"),
            lambda: h.require_files(h.BUS_POLICY),
            h.require_daemon])
