#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The fd store as the daemon must not trust it, under a real service manager (the project's unit
in a ``systemd --user`` manager, as test_live_update.py runs it, with NotifyAccess=all and an
ExecStartPre= helper that plays a predecessor or a lossy store).

A saved state the daemon must refuse: a predecessor's state with a field of the wrong type is put
into the store; the daemon refuses it in one log line, serves with nothing restored, and through
kill -9 and restart keeps the store exactly as it is (NFileDescriptorStore, one restart per kill,
no start limit); with the bad state removed from the store the devices come back. The daemon
before this check aborted in json-c, crash-looped into the start limit and lost the store.

An entry removed from the store before a restart: exactly the mappings that used it are lost,
reported in the journal and in LiveUpdate, and their range is free again.
"""

import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire as w  # noqa: E402
import harness as h  # noqa: E402
from test_live_update import classify  # noqa: E402
from test_systemd import adapt_unit, unit_source  # noqa: E402

UNIT = "vfiomigd.service"
MiB = 1 << 20


# Plays a predecessor that left a bad state in the store: run as ExecStartPre= with
# NotifyAccess=all, it does what the file named on its command line says (when it exists):
# {"store": {NAME: HEX}} stores each memfd of bytes HEX under NAME, {"remove": [NAME...]} removes;
# then waits on BARRIER=1 so that the service manager has both before the daemon starts.
INJECTOR = r"""
import array, json, os, socket, sys
try:
    order = json.load(open(sys.argv[1]))
except FileNotFoundError:
    sys.exit(0)
addr = os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
def send(text, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    s.sendmsg([text.encode()], anc)
for name, data in order.get("store", {}).items():
    fd = os.memfd_create("vfm-injected", os.MFD_CLOEXEC)
    os.write(fd, bytes.fromhex(data))
    send(f"FDSTORE=1\nFDNAME={name}", [fd])
for name in order.get("remove", []):
    send(f"FDSTOREREMOVE=1\nFDNAME={name}")
r, w = os.pipe()
send("BARRIER=1", [w])
os.close(w)
os.read(r, 1)
"""


class RefusedState(h.unittest.TestCase):
    """Under the real service manager, with Restart=on-failure and the fd store: a saved state
    with a field of the wrong type (one json-c used to abort on) is refused without a crash, so
    no crash loop, no start limit and no released store; kills and restarts change nothing; once
    the bad state is gone from the store the devices come back from the good one."""

    @classmethod
    def setUpClass(cls):
        cls.rundir = h.TempDir("vfm-it-", parent="/run")
        cls.addClassCleanup(cls.rundir.stop)
        cls.bus = h.PrivateBus(base_dir=cls.rundir.path).start()
        cls.addClassCleanup(cls.bus.stop)
        cls.client = cls.bus.client
        cls.config = cls.rundir / "vfiomigd.json"
        cls.config.write_text(json.dumps({"allow-simulated": True}))
        os.chmod(cls.config, 0o644)
        cls.order = cls.rundir / "inject.json"
        injector = cls.rundir / "inject.py"
        injector.write_text(INJECTOR)
        os.chmod(injector, 0o644)
        os.chmod(cls.rundir.path, 0o755)
        cls.manager = h.SystemdUserManager().start()
        cls.addClassCleanup(cls.manager.stop)
        text, _ = adapt_unit(unit_source().read_text(), cls.bus.address, cls.config)
        text = re.sub(r"(?m)^Restart=on-failure$", "Restart=on-failure\n# test: at once\nRestartSec=100ms", text)
        text = re.sub(r"(?m)^NotifyAccess=main$",
                      "# test: the injector below runs before the daemon and must reach the store\n"
                      "NotifyAccess=all\n"
                      f"ExecStartPre=/usr/bin/python3 {injector} {cls.order}", text)
        assert "ExecStartPre=" in text and "RestartSec=100ms" in text, text
        cls.manager.install_unit(UNIT, text)

    def setUp(self):
        self.addCleanup(self.manager.systemctl, "reset-failed", UNIT, check=False)
        self.addCleanup(self.manager.systemctl, "stop", UNIT, check=False)

    def show(self, *props):
        return self.manager.show(UNIT, *props)

    def main_pid(self):
        return int(self.show("MainPID")["MainPID"])

    def diagnostics(self):
        return (f"\n--- systemctl status ---\n{self.manager.systemctl('status', UNIT, check=False).stdout}"
                f"\n--- journal ---\n{self.manager.journal('-o', 'short-monotonic', check=False)[-6000:]}")

    def serving_after(self, old_pid):
        def ready():
            p = self.show("MainPID", "ActiveState", "SubState")
            pid = int(p["MainPID"])
            if pid in (0, old_pid) or (p["ActiveState"], p["SubState"]) != ("active", "running"):
                return None
            return pid if self.client.name_owner_pid(h.BUS_NAME) == pid else None
        try:
            return h.wait_until(ready, 20, 0.01, "the restarted vfiomigd")
        except TimeoutError as e:
            self.fail(f"{e}{self.diagnostics()}")

    def journal_of(self, pid, wait_for):
        try:
            return h.wait_until(lambda: (lambda t: t if wait_for in t else None)(
                self.manager.journal("-o", "cat", f"_PID={pid}", check=False)), 10, 0.05, repr(wait_for))
        except TimeoutError as e:
            self.fail(f"{e}{self.diagnostics()}")

    def crash(self):
        # The test kills faster than StartLimitBurst= allows (5 starts in 10 s): reset the count, so
        # that only a daemon that failed by itself could run into the start limit.
        self.manager.systemctl("reset-failed", UNIT, check=False)
        pid = self.main_pid()
        os.kill(pid, signal.SIGKILL)
        return self.serving_after(pid)

    def test_bad_state_is_refused_and_the_store_kept(self):
        self.manager.systemctl("start", UNIT, timeout=30)
        for name in ("gpu", "nic"):
            self.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "AttachDevice", "sa{sv}", f"sim:{name}",
                              {"state-size": ("t", 1 << 20), "dirty-rate": ("t", 1 << 20)})
        self.client.device("/org/vfiomig1/device/sim_nic", "SetState", "sa{sv}", "stop", {})
        stored = int(self.show("NFileDescriptorStore")["NFileDescriptorStore"])
        self.assertEqual(stored, 3, "two device fds and one state" + self.diagnostics())

        # A newer state whose gens is an object: json_object_array_length() aborted on that.
        record = {"version": 1, "next-space": 0, "kernel": {"next-container-id": 1, "containers": []},
                  "spaces": [], "devices": [{"id": "sim_gpu", "address": "sim:gpu", "backend": "sim", "clients": [],
                                             "sim": {"state-size": 1 << 20, "precopy-size": 0, "dirty-rate": 0,
                                                     "flags": 1, "mtty-quirks": False, "fail-to-error": 0,
                                                     "fail-in-place": 0, "seed": 1, "state": "running",
                                                     "gens": {"0": 1}}}]}
        bad = h.state_bytes(999999, json.dumps(record).encode())
        self.order.write_text(json.dumps({"store": {"state-999999": bad.hex()}}))
        os.chmod(self.order, 0o644)

        for round_ in range(3):
            pid = self.crash()
            log = self.journal_of(pid, "Serving org.vfiomig1.")
            if round_ == 0:
                os.unlink(self.order)  # injected once: the store keeps it, as it would a predecessor's
            with self.subTest(round=round_):
                refusals = [line for line in log.splitlines() if line.startswith("Refusing the saved state")]
                self.assertEqual(len(refusals), 1, log)
                self.assertIn("Refusing the saved state state-999999: devices[0].sim.gens must be an array, not "
                              "an object.", refusals[0])
                self.assertNotIn("Removing the unrecognised descriptor", log)
                props = self.show("ActiveState", "NRestarts", "NFileDescriptorStore", "StatusText")
                self.assertEqual(props["ActiveState"], "active")
                self.assertEqual(int(props["NRestarts"]), 1, "more restarts than kills")
                time.sleep(0.5)  # a crash loop would have restarted it again by now
                self.assertEqual((self.main_pid(), self.show("NRestarts")["NRestarts"]), (pid, "1"))
                self.assertEqual(int(props["NFileDescriptorStore"]), 4, "the store lost or gained descriptors")
                self.assertIn("saved state was refused", props["StatusText"])
                self.assertEqual(self.client.manager("ListDevices"), [[]])
                self.assertIs(self.client.mgr_prop("FileDescriptorStore"), False)

        # A planned restart of a daemon that refused saves nothing and leaves the store as it is.
        pid = self.main_pid()
        self.manager.systemctl("reset-failed", UNIT, check=False)
        self.manager.systemctl("restart", UNIT, timeout=30)
        pid = self.serving_after(pid)
        self.journal_of(pid, "Refusing the saved state state-999999")
        self.assertEqual(int(self.show("NFileDescriptorStore")["NFileDescriptorStore"]), 4)

        # Rid of the bad state, the next start restores both devices from the good one.
        self.order.write_text(json.dumps({"remove": ["state-999999"]}))
        self.addCleanup(lambda: self.order.exists() and os.unlink(self.order))
        pid = self.crash()
        log = self.journal_of(pid, "Serving org.vfiomig1.")
        self.assertNotIn("Refusing", log)
        self.assertEqual(sorted(tuple(d)[0] for d in self.client.manager("ListDevices")[0]), ["sim_gpu", "sim_nic"])
        self.assertEqual(self.client.dev_prop("/org/vfiomig1/device/sim_nic", "State"), "stop")
        self.assertIs(self.client.mgr_prop("FileDescriptorStore"), True)
        self.assertEqual(int(self.show("NFileDescriptorStore")["NFileDescriptorStore"]), 3)

    def stored_record(self):
        """The state in the service manager's store (the one state memfd)."""
        pid = self.manager.manager_pid
        raws = []
        for fd, link in h.open_fds(pid).items():
            if classify(link) == "memfd:vfiomigd-state":
                with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
                    raws.append(f.read())
        self.assertEqual(len(raws), 1)
        return h.parse_state(raws[0])[1]

    def test_missing_entry_is_reported_and_unmapped(self):
        """Never believe the store holds what was sent: an entry that does not come back (removed
        here by the ExecStartPre= helper, as a service manager that dropped it would) costs exactly
        the mappings that used it. They are reported, not left live and unreachable: their range
        is free for a new Map, LiveUpdate says what the restart lost, the rest works."""
        self.manager.systemctl("start", UNIT, timeout=30)
        with w.WireConnection(self.bus.address) as wire:
            space = self.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "CreateAddressSpace", "a{sv}",
                                      {"backend": ("s", "sim"), "sim-mapping": ("s", "by-file")})
            dev = self.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "AttachDevice", "sa{sv}", "sim:gpu",
                                    {"state-size": ("t", 1 << 18)})
            self.client.call(dev, h.DEVICE_IFACE, "AttachAddressSpace", "o", space)
            kept, dropped = (os.memfd_create(n, os.MFD_CLOEXEC) for n in ("vfm-kept", "vfm-dropped"))
            self.addCleanup(os.close, kept)
            self.addCleanup(os.close, dropped)
            for fd in (kept, dropped):
                os.ftruncate(fd, 4 * MiB)
            rw = ["read", "write"]
            wire.call(h.BUS_NAME, space, h.SPACE_IFACE, "Map", "htttas", [0, 0, MiB, 1 << 32, rw], [kept])
            for k in range(2):  # two ranges of one memfd: one entry
                wire.call(h.BUS_NAME, space, h.SPACE_IFACE, "Map", "htttas",
                          [0, k * MiB, MiB, (2 << 32) + k * MiB, rw], [dropped])
        self.assertEqual(int(self.show("NFileDescriptorStore")["NFileDescriptorStore"]), 4,
                         "two memfds, a device, the state" + self.diagnostics())
        sid = space.rsplit("/", 1)[1]
        [lost] = [n for n, users in h.entry_users(self.stored_record()).items() if f"map-{sid}-1" in users]
        self.assertEqual(sorted(h.entry_users(self.stored_record())[lost]), [f"map-{sid}-1", f"map-{sid}-2"])

        self.order.write_text(json.dumps({"remove": [lost]}))
        os.chmod(self.order, 0o644)
        self.addCleanup(lambda: self.order.exists() and os.unlink(self.order))
        pid = self.crash()
        os.unlink(self.order)
        log = self.journal_of(pid, "Serving org.vfiomig1.")
        self.assertIn(f"The fd store did not hand back '{lost}', which the saved state lists for map-{sid}-1, "
                      f"map-{sid}-2: they cannot be restored.", log)
        self.assertIn("The fd store handed back 2 of the 3 entries the saved state lists; the objects using the "
                      "missing ones are lost (logged above).", log)
        for k in range(2):
            self.assertIn(f"Address space {sid}: the file of the mapping at IOVA 0x{(2 << 32) + k * MiB:x}+0x100000 "
                          "is missing from the fd store; the mapping is lost", log)
        self.assertEqual(self.client.get_property(space, h.SPACE_IFACE, "MappingCount"), 1)
        self.assertEqual(self.client.get_property(space, h.SPACE_IFACE, "PinnedBytes"), MiB)
        self.assertEqual(self.client.call1(space, h.SPACE_IFACE, "ListMappings"), [[1 << 32, MiB, 0, rw]])
        live = self.client.get_property(space, h.SPACE_IFACE, "LiveUpdate")
        self.assertTrue(live.startswith("the last restart lost 2 mappings: the fd store did not hand back their "
                                        "files (unmapped from the IOMMU); the others: survives"), live)
        # The lost range: nothing translates it, and it is free for a new Map.
        with self.assertRaises(h.DBusError) as cm:
            self.client.call(dev, h.SIM_DEVICE_IFACE, "DmaWrite", "tay", 2 << 32, list(b"gone"))
        self.assertEqual(cm.exception.name, h.E_DMA_FAULT)
        with w.WireConnection(self.bus.address) as wire:
            wire.call(h.BUS_NAME, space, h.SPACE_IFACE, "Map", "htttas", [0, 0, MiB, 2 << 32, rw], [dropped])
        self.client.call(dev, h.SIM_DEVICE_IFACE, "DmaWrite", "tay", (2 << 32) + 16, list(b"again"))
        self.assertEqual(os.pread(dropped, 5, 16), b"again")
        self.client.call(dev, h.SIM_DEVICE_IFACE, "DmaWrite", "tay", (1 << 32) + 16, list(b"kept"))
        self.assertEqual(os.pread(kept, 4, 16), b"kept")
        self.assertEqual(int(self.show("NFileDescriptorStore")["NFileDescriptorStore"]), 4)


if __name__ == "__main__":
    h.main([h.require_root,
            lambda: h.require_programs("dbus-daemon", "busctl", "systemctl", "journalctl", "unshare", "mount",
                                       "/lib/systemd/systemd", "/lib/systemd/systemd-journald"),
            lambda: h.require_files(h.SERVICE_UNIT_IN, h.BUS_POLICY),
            h.require_mount_namespaces, h.require_cgroups, h.require_daemon])
