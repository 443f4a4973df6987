#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The org.vfiomig1 D-Bus API of the real vfiomigd on a private system bus, as root, with busctl.

Every method with valid input and with each kind of malformed input, checking the exact D-Bus
error name, and that a failed call changed nothing (devices, states). Signals (DeviceAttached,
DeviceDetached, ObjectManager InterfacesAdded/Removed, PropertiesChanged) are watched with a
busctl monitor. Separate daemons check max-devices, simulation not allowed, and devices
pre-attached from the configuration file.

State transfers (SaveState/LoadState, over dbus_wire: busctl cannot send an fd) into a pipe
nobody reads or from one nobody writes: the deadline ("timeout" option) and CancelTransfer end
them with Timeout and Cancelled, every other change of the busy device is refused with Busy, the
device is usable afterwards, and no descriptor or thread is left behind. SIGTERM during such a
SaveState (also under the ASan build, when build-asan exists) exits 0 with no sanitizer report.
"""

import contextlib
import os
import socket
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire as w  # noqa: E402
import harness as h  # noqa: E402
from harness import (BUS_NAME, DEVICE_IFACE, DEVICE_PATH_PREFIX, MANAGER_IFACE, MANAGER_PATH,  # noqa: E402
                     OM_IFACE, DBusError)

V = lambda sig, value: (sig, value)  # noqa: E731  a D-Bus variant for a{sv} options


def dev_path(dev_id):
    return DEVICE_PATH_PREFIX + dev_id


class ApiTestCase(h.DaemonTestCase):
    """Shared assertions: snapshots that prove a failed call changed nothing."""

    def snapshot(self):
        devices = sorted(self.list_devices())
        states = {path: self.client.dev_prop(path, "State") for _id, _addr, path in devices}
        return devices, states, self.client.mgr_prop("DeviceCount")

    @contextlib.contextmanager
    def unchanged(self):
        before = self.snapshot()
        yield
        self.assertEqual(self.snapshot(), before, "a failed call changed the daemon's state")

    def fails(self, name, fn, *args, **kwargs):
        """Expects error name from fn and no change of devices or states."""
        with self.unchanged():
            return self.assertDBusError(name, fn, *args, **kwargs)

    def set_state(self, path, target, options=None):
        return self.client.call1(path, DEVICE_IFACE, "SetState", "sa{sv}", target, options or {})

    def set_states(self, paths, target, options=None):
        data = self.client.call1(MANAGER_PATH, MANAGER_IFACE, "SetStates", "aosa{sv}", paths, target,
                                 options or {})
        return [tuple(x) for x in data]

    def state(self, path):
        return self.client.dev_prop(path, "State")

    def precopy_info(self, path):
        return self.client.device(path, "GetPrecopyInfo")


class ManagerMethods(ApiTestCase):

    def test_attach_returns_object_path(self):
        path = self.attach("sim:a")
        self.assertEqual(path, "/org/vfiomig1/device/sim_a")
        self.assertEqual(self.list_devices(), [("sim_a", "sim:a", path)])
        self.assertEqual(self.client.mgr_prop("DeviceCount"), 1)

    def test_attach_twice(self):
        self.attach("sim:a")
        e = self.fails(h.E_INVALID_ARGS, self.attach, "sim:a")
        self.assertIn("sim", e.message)

    def test_bad_addresses(self):
        self.attach("sim:keep")
        for address in ("", "sim:", "sim:bad-name", "zz:zz", "0000:3b:00", "sim:" + "x" * 65, "sim:a/b",
                        "sim:a b", "0000:3b:00.8", "0000:3b:20.1", "0000:3b:00.1x"):
            with self.subTest(address=address):
                e = self.fails(h.E_INVALID_ARGS, self.attach, address)
                self.assertTrue(e.message, "error without a message")

    def test_pci_device_that_does_not_exist(self):
        address = "0000:fe:1f.7"
        if os.path.exists(f"/sys/bus/pci/devices/{address}"):
            self.skipTest(f"{address} exists on this machine")
        e = self.fails(h.E_NO_SUCH_DEVICE, self.attach, address)
        self.assertIn("fe:1f.7", e.message.lower())

    def test_unknown_option(self):
        e = self.fails(h.E_INVALID_ARGS, self.attach, "sim:a", {"no-such-option": V("t", 1)})
        self.assertIn("no-such-option", e.message)

    def test_wrong_option_types(self):
        cases = [
            {"state-size": V("s", "131072")},
            {"state-size": V("u", 131072)},
            {"flags": V("s", "stop-copy")},
            {"mtty-quirks": V("s", "yes")},
            {"fail-arcs": V("s", "stop>stop-copy")},
        ]
        for options in cases:
            with self.subTest(options=options):
                self.fails(h.E_INVALID_ARGS, self.attach, "sim:a", options)

    def test_bad_option_values(self):
        cases = [
            {"state-size": V("t", 0)},
            {"flags": V("as", ["bogus"])},
            {"flags": V("as", ["p2p"])},                      # p2p without stop-copy
            {"state-size": V("t", 65536), "precopy-size": V("t", 65537)},
            {"fail-arcs": V("as", ["stop"])},
            {"error-arcs": V("as", ["stop>bogus"])},
        ]
        for options in cases:
            with self.subTest(options=options):
                self.fails(h.E_INVALID_ARGS, self.attach, "sim:a", options)

    def test_options_applied(self):
        size = 300000
        path = self.attach("sim:opt", {"state-size": V("t", size), "flags": V("as", ["stop-copy"])})
        self.assertEqual(self.client.dev_prop(path, "MigrationFlags"), ["stop-copy"])
        self.assertEqual(self.client.dev_prop(path, "StopCopySize"), h.sim_stream_size(size))

    def test_small_state_size(self):
        # Only state-size given: the other sizes' defaults must fit it (precopy-size defaults to
        # 256 KiB, which a 128 KiB device cannot offer).
        path = self.attach("sim:small", {"state-size": V("t", 131072)})
        self.assertEqual(self.client.dev_prop(path, "StopCopySize"), h.sim_stream_size(131072))

    def test_list_and_get(self):
        pa = self.attach("sim:a")
        pb = self.attach("sim:b2")
        self.assertEqual(sorted(self.list_devices()), [("sim_a", "sim:a", pa), ("sim_b2", "sim:b2", pb)])
        for key in ("sim_a", "sim:a"):
            self.assertEqual(self.client.call1(MANAGER_PATH, MANAGER_IFACE, "GetDevice", "s", key), pa)
        self.assertEqual(self.client.call1(MANAGER_PATH, MANAGER_IFACE, "GetDevice", "s", "sim:b2"), pb)
        for key in ("sim_c", "sim:c", "", "0000:fe:1f.7"):
            with self.subTest(key=key):
                self.fails(h.E_NO_SUCH_DEVICE, self.client.manager, "GetDevice", "s", key)

    def test_list_devices_signature(self):
        r = self.client.busctl("call", BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "ListDevices")
        self.assertIn('"type":"a(sso)"', r.stdout)

    def test_detach_unknown(self):
        self.attach("sim:a")
        self.fails(h.E_NO_SUCH_DEVICE, self.client.manager, "DetachDevice", "s", "sim:nope")
        self.fails(h.E_NO_SUCH_DEVICE, self.client.manager, "DetachDevice", "s", "")

    def test_detach_by_id_and_by_address(self):
        self.attach("sim:a")
        self.attach("sim:b")
        self.client.manager("DetachDevice", "s", "sim_a")
        self.client.manager("DetachDevice", "s", "sim:b")
        self.assertEqual(self.list_devices(), [])
        self.assertEqual(self.client.mgr_prop("DeviceCount"), 0)
        # The object is gone, not just unlisted.
        with self.assertRaises(DBusError) as cm:
            self.client.dev_prop(dev_path("sim_a"), "State")
        self.assertEqual(cm.exception.name, "org.vfiomig1.Error.NoSuchDevice", cm.exception.message)

    def test_detach_busy_outside_running(self):
        path = self.attach("sim:a")
        self.assertEqual(self.set_state(path, "stop"), "stop")
        self.fails(h.E_BUSY, self.client.manager, "DetachDevice", "s", "sim_a")
        self.assertEqual(self.set_state(path, "running"), "running")
        self.client.manager("DetachDevice", "s", "sim_a")
        self.assertEqual(self.list_devices(), [])

    def test_reattach_after_detach(self):
        path = self.attach("sim:a")
        self.client.manager("DetachDevice", "s", "sim:a")
        self.assertEqual(self.attach("sim:a"), path)
        self.assertEqual(self.state(path), "running")

    def test_manager_properties(self):
        props = self.client.get_all(MANAGER_PATH, MANAGER_IFACE)
        self.assertEqual(props["Version"][0], "s")
        self.assertTrue(props["Version"][1])
        self.assertEqual(props["KernelFeatures"][0], "as")
        self.assertEqual(props["SimulationAllowed"], ("b", True))
        self.assertEqual(props["MaxDevices"][0], "u")
        self.assertGreater(props["MaxDevices"][1], 2)
        self.assertEqual(props["DeviceCount"], ("u", 0))

    def test_malformed_message_signature(self):
        # busctl sends exactly what we ask for: a wrong signature must be refused by the daemon.
        with self.unchanged():
            self.assertDBusError(h.E_INVALID_ARGS, self.client.call, MANAGER_PATH, MANAGER_IFACE,
                                 "AttachDevice", "s", "sim:a")
            self.assertDBusError(h.E_INVALID_ARGS, self.client.call, MANAGER_PATH, MANAGER_IFACE,
                                 "AttachDevice", "ss", "sim:a", "x")


class DeviceProperties(ApiTestCase):

    def test_properties(self):
        size = 1 << 20
        path = self.attach("sim:a", {"state-size": V("t", size)})
        props = self.client.get_all(path, DEVICE_IFACE)
        expected = {
            "Id": ("s", "sim_a"),
            "Address": ("s", "sim:a"),
            "Driver": ("s", "sim"),
            "Backend": ("s", "sim"),
            "MigrationFlags": ("as", ["stop-copy", "p2p", "pre-copy"]),
            "Migratable": ("b", True),
            "MigratableReason": ("s", ""),
            "PrecopyInfo": ("s", "v2"),
            "State": ("s", "running"),
            "StopCopySize": ("t", h.sim_stream_size(size)),
        }
        for name, value in expected.items():
            with self.subTest(property=name):
                self.assertEqual(props.get(name), value)
                self.assertEqual(self.client.dev_prop(path, name), value[1])
        self.assertEqual(props["LastTransition"][0], "s")
        # Exactly the properties of the contract (test_introspection checks their types).
        proto = ET.parse(h.PROTO_DIR / "org.vfiomig1.Device.xml").getroot()
        self.assertEqual(sorted(props), sorted(p.get("name") for p in proto.iter("property")))

    def test_stop_copy_size_follows_state_size(self):
        for name, size in (("s1", 1), ("s2", 65536), ("s3", 65537), ("s4", 5 * 65536 + 17)):
            with self.subTest(state_size=size):
                path = self.attach(f"sim:{name}", {"state-size": V("t", size), "precopy-size": V("t", 0)})
                self.assertEqual(self.client.dev_prop(path, "StopCopySize"), h.sim_stream_size(size))

    def test_last_transition(self):
        path = self.attach("sim:a")
        self.set_state(path, "stop")
        text = self.client.dev_prop(path, "LastTransition")
        self.assertIn("stop", text)
        self.assertIn("running", text)

    def test_unknown_property(self):
        path = self.attach("sim:a")
        with self.unchanged():
            with self.assertRaises(DBusError) as cm:
                self.client.dev_prop(path, "NoSuchProperty")
        self.assertIn(cm.exception.name, ("org.freedesktop.DBus.Error.UnknownProperty", h.E_INVALID_ARGS))

    def test_properties_are_read_only(self):
        path = self.attach("sim:a")
        with self.unchanged():
            with self.assertRaises(DBusError) as cm:
                self.client.call(path, h.PROPS_IFACE, "Set", "ssv", DEVICE_IFACE, "State", ("s", "stop"))
        self.assertIn(cm.exception.name, ("org.freedesktop.DBus.Error.PropertyReadOnly", h.E_ACCESS_DENIED))


class SetState(ApiTestCase):

    def test_migration_sequence(self):
        path = self.attach("sim:a", {"state-size": V("t", 1 << 20), "precopy-size": V("t", 256 << 10)})
        self.assertEqual(self.state(path), "running")
        self.assertEqual(self.set_state(path, "pre-copy"), "pre-copy")
        self.assertEqual(self.state(path), "pre-copy")
        initial, dirty = self.precopy_info(path)
        self.assertGreater(initial, 0)
        self.assertGreaterEqual(dirty, 0)
        self.assertEqual(self.set_state(path, "stop-copy"), "stop-copy")
        self.assertEqual(self.state(path), "stop-copy")
        self.assertGreater(self.client.dev_prop(path, "StopCopySize"), 0)
        self.assertEqual(self.set_state(path, "stop"), "stop")
        self.assertEqual(self.state(path), "stop")
        self.assertEqual(self.set_state(path, "running"), "running")
        self.assertEqual(self.state(path), "running")

    def test_destination_sequence(self):
        path = self.attach("sim:dst")
        for target in ("stop", "resuming"):
            self.assertEqual(self.set_state(path, target), target)
        # Nothing was written: leaving RESUMING must not pretend a truncated stream loaded.
        with self.assertRaises(DBusError):
            self.set_state(path, "stop")
        self.client.device(path, "Reset")
        self.assertEqual(self.state(path), "running")

    def test_multi_step_walks(self):
        # Each target is several arcs away from the previous one; the daemon walks the kernel's table.
        path = self.attach("sim:a")
        for target in ("stop-copy", "running", "pre-copy-p2p", "running-p2p", "stop", "pre-copy", "stop",
                       "resuming", "running"):
            with self.subTest(target=target):
                if target == "running" and self.state(path) == "resuming":
                    self.client.device(path, "Reset")  # nothing loaded: leave RESUMING by reset
                    continue
                self.assertEqual(self.set_state(path, target), target)
                self.assertEqual(self.state(path), target)

    def test_set_same_state(self):
        path = self.attach("sim:a")
        self.assertEqual(self.set_state(path, "running"), "running")

    def test_invalid_transition(self):
        path = self.attach("sim:a")
        self.set_state(path, "stop-copy")
        e = self.fails(h.E_INVALID_TRANSITION, self.set_state, path, "pre-copy")
        self.assertIn("pre-copy", e.message)
        self.assertEqual(self.state(path), "stop-copy")

    def test_error_is_no_target(self):
        path = self.attach("sim:a")
        self.fails(h.E_INVALID_TRANSITION, self.set_state, path, "error")

    def test_bogus_state(self):
        path = self.attach("sim:a")
        for target in ("bogus", "", "RUNNING", "stop_copy"):
            with self.subTest(target=target):
                self.fails(h.E_INVALID_ARGS, self.set_state, path, target)

    def test_bad_options(self):
        path = self.attach("sim:a")
        for options in ({"bogus": V("s", "x")}, {"recover-state": V("b", True)},
                        {"recover-state": V("s", "bogus")}):
            with self.subTest(options=options):
                self.fails(h.E_INVALID_ARGS, self.set_state, path, "stop", options)

    def test_state_missing_from_device(self):
        path = self.attach("sim:nop2p", {"flags": V("as", ["stop-copy"])})
        for target in ("running-p2p", "pre-copy", "pre-copy-p2p"):
            with self.subTest(target=target):
                self.fails(h.E_INVALID_TRANSITION, self.set_state, path, target)

    def test_fail_arc_with_recover_state(self):
        path = self.attach("sim:f", {"fail-arcs": V("as", ["stop>stop-copy"])})
        e = self.assertDBusError(h.E_TRANSITION_FAILED, self.set_state, path, "stop-copy",
                                 {"recover-state": V("s", "running")})
        self.assertIn("Steps", e.message)
        self.assertIn("stop-copy", e.message)
        self.assertEqual(self.state(path), "running")
        self.assertIn("stop-copy", self.client.dev_prop(path, "LastTransition"))
        # The device is usable afterwards.
        self.assertEqual(self.set_state(path, "stop"), "stop")

    def test_error_arc_resets_device(self):
        path = self.attach("sim:e", {"error-arcs": V("as", ["stop>stop-copy"])})
        e = self.assertDBusError(h.E_TRANSITION_FAILED, self.set_state, path, "stop-copy")
        self.assertIn("Steps", e.message)
        self.assertEqual(self.state(path), "running")
        self.assertIn("reset", (e.message + self.client.dev_prop(path, "LastTransition")).lower())

    def test_precopy_info_outside_precopy(self):
        path = self.attach("sim:a")
        for state in ("running", "stop", "stop-copy"):
            with self.subTest(state=state):
                self.set_state(path, state)
                self.fails(h.E_NO_PRECOPY_SESSION, self.precopy_info, path)

    def test_precopy_info_on_device_without_precopy(self):
        path = self.attach("sim:nopre", {"flags": V("as", ["stop-copy", "p2p"])})
        with self.unchanged():
            with self.assertRaises(DBusError) as cm:
                self.precopy_info(path)
        self.assertIn(cm.exception.name, (h.E_NO_PRECOPY_SESSION, "org.vfiomig1.Error.NotMigratable"))

    def test_reset(self):
        path = self.attach("sim:a")
        self.set_state(path, "stop-copy")
        self.client.device(path, "Reset")
        self.assertEqual(self.state(path), "running")
        self.assertEqual(self.set_state(path, "pre-copy"), "pre-copy")
        self.client.device(path, "Reset")
        self.assertEqual(self.state(path), "running")
        self.fails(h.E_NO_PRECOPY_SESSION, self.precopy_info, path)

    def test_unknown_device_object(self):
        self.attach("sim:a")
        with self.unchanged():
            with self.assertRaises(DBusError) as cm:
                self.set_state(dev_path("sim_nope"), "stop")
        self.assertEqual(cm.exception.name, "org.vfiomig1.Error.NoSuchDevice", cm.exception.message)
        self.assertIn("No device is attached at /org/vfiomig1/device/sim_nope", cm.exception.message)


class SetStates(ApiTestCase):

    def test_group_of_p2p_devices(self):
        pa = self.attach("sim:ga")
        pb = self.attach("sim:gb")
        self.assertEqual(self.set_states([pa, pb], "stop"), [(pa, "stop"), (pb, "stop")])
        self.assertEqual((self.state(pa), self.state(pb)), ("stop", "stop"))
        self.assertEqual(self.set_states([pb, pa], "running"), [(pb, "running"), (pa, "running")])
        self.assertEqual((self.state(pa), self.state(pb)), ("running", "running"))

    def test_group_needs_p2p(self):
        pa = self.attach("sim:ga")
        pn = self.attach("sim:nop2p", {"flags": V("as", ["stop-copy", "pre-copy"])})
        e = self.fails(h.E_P2P_REQUIRED, self.set_states, [pa, pn], "stop")
        self.assertIn("nop2p", e.message)
        self.assertEqual(self.set_states([pa, pn], "stop", {"force-without-p2p": V("b", True)}),
                         [(pa, "stop"), (pn, "stop")])
        self.assertEqual((self.state(pa), self.state(pn)), ("stop", "stop"))

    def test_group_errors(self):
        pa = self.attach("sim:ga")
        self.fails(h.E_INVALID_ARGS, self.set_states, [], "stop")
        self.fails(h.E_INVALID_ARGS, self.set_states, [pa], "bogus")
        self.fails(h.E_INVALID_ARGS, self.set_states, [pa, pa], "stop")
        self.fails(h.E_INVALID_ARGS, self.set_states, [pa], "stop", {"bogus": V("b", True)})
        self.fails(h.E_INVALID_ARGS, self.set_states, [pa], "stop", {"force-without-p2p": V("s", "yes")})
        self.fails(h.E_INVALID_ARGS, self.set_states, ["/org/vfiomig1"], "stop")
        self.fails(h.E_NO_SUCH_DEVICE, self.set_states, [pa, dev_path("sim_nope")], "stop")
        self.fails(h.E_INVALID_TRANSITION, self.set_states, [pa], "error")

    def test_group_one_invalid_member(self):
        pa = self.attach("sim:ga")
        pb = self.attach("sim:gb")
        self.set_state(pb, "stop-copy")
        # stop-copy -> pre-copy is impossible for pb: nothing may move, pa included.
        self.fails(h.E_INVALID_TRANSITION, self.set_states, [pa, pb], "pre-copy")


class Signals(ApiTestCase):

    def setUp(self):
        self.monitor = h.Monitor(self.bus.address).start()
        self.addCleanup(self.monitor.stop)

    def test_attach_detach_signals(self):
        path = self.attach("sim:sig")
        m = self.monitor.wait_for(lambda m: m.get("type") == "signal" and m.get("member") == "DeviceAttached",
                                  what="DeviceAttached")
        self.assertEqual(m["interface"], MANAGER_IFACE)
        self.assertEqual(m["path"], MANAGER_PATH)
        self.assertEqual(m["payload"]["data"], ["sim_sig", path])
        m = self.monitor.wait_for(lambda m: m.get("type") == "signal" and m.get("member") == "InterfacesAdded",
                                  what="InterfacesAdded")
        self.assertEqual(m["interface"], OM_IFACE)
        self.assertEqual(m["path"], MANAGER_PATH)
        self.assertEqual(m["payload"]["data"][0], path)
        self.assertIn(DEVICE_IFACE, m["payload"]["data"][1])
        added = m["payload"]["data"][1][DEVICE_IFACE]
        self.assertEqual(added["Id"]["data"], "sim_sig")
        self.assertEqual(added["State"]["data"], "running")

        self.client.manager("DetachDevice", "s", "sim_sig")
        m = self.monitor.wait_for(lambda m: m.get("type") == "signal" and m.get("member") == "DeviceDetached",
                                  what="DeviceDetached")
        self.assertEqual(m["payload"]["data"], ["sim_sig", path])
        m = self.monitor.wait_for(lambda m: m.get("type") == "signal" and m.get("member") == "InterfacesRemoved",
                                  what="InterfacesRemoved")
        self.assertEqual(m["path"], MANAGER_PATH)
        self.assertEqual(m["payload"]["data"][0], path)
        self.assertIn(DEVICE_IFACE, m["payload"]["data"][1])

    def test_state_properties_changed(self):
        path = self.attach("sim:pc")
        self.set_state(path, "stop")
        m = self.monitor.wait_for(lambda m: h.properties_changed(m, path, "State") and (
            m["payload"]["data"][1].get("State", {}).get("data") == "stop" or "State" in m["payload"]["data"][2]),
            what="PropertiesChanged(State=stop)")
        self.assertEqual(m["sender"][0], ":")
        self.set_states([path], "running")
        self.monitor.wait_for(lambda m: h.properties_changed(m, path, "State") and
                              m["payload"]["data"][1].get("State", {}).get("data") == "running",
                              what="PropertiesChanged(State=running) after SetStates")

    def test_device_count_changed(self):
        self.attach("sim:dc")
        self.monitor.wait_for(lambda m: h.properties_changed(m, MANAGER_PATH, "DeviceCount", iface=MANAGER_IFACE),
                              what="PropertiesChanged(DeviceCount)")

    def test_failed_calls_emit_nothing(self):
        path = self.attach("sim:quiet")
        self.monitor.wait_for(lambda m: m.get("member") == "InterfacesAdded", what="InterfacesAdded")
        self.monitor.wait_for(lambda m: h.properties_changed(m, MANAGER_PATH, "DeviceCount", iface=MANAGER_IFACE),
                              what="PropertiesChanged(DeviceCount)")
        self.monitor.clear()
        self.assertDBusError(h.E_INVALID_ARGS, self.attach, "sim:quiet")
        self.assertDBusError(h.E_INVALID_ARGS, self.set_state, path, "bogus")
        self.assertDBusError(h.E_INVALID_TRANSITION, self.set_state, path, "error")
        self.assertDBusError(h.E_NO_PRECOPY_SESSION, self.precopy_info, path)
        self.assertDBusError(h.E_NO_SUCH_DEVICE, self.client.manager, "DetachDevice", "s",
                             "sim:nope")
        self.client.dev_prop(path, "State")  # a round trip after the calls
        time.sleep(0.3)                       # and time for the monitor to print anything
        self.assertEqual([(m.get("member"), m.get("path")) for m in self.monitor.signals()], [])


class ObjectManager(ApiTestCase):

    def test_managed_objects(self):
        pa = self.attach("sim:a")
        objs = self.client.call1(MANAGER_PATH, OM_IFACE, "GetManagedObjects")
        self.assertIn(pa, objs)
        self.assertEqual(objs[pa][DEVICE_IFACE]["Address"]["data"], "sim:a")


class SigtermExit(h.unittest.TestCase):

    def test_exit_zero_with_devices(self):
        bus = h.PrivateBus().start()
        self.addCleanup(bus.stop)
        daemon = h.Daemon(bus).start()
        self.addCleanup(daemon.stop, None)
        c = bus.client
        path = c.call1(MANAGER_PATH, MANAGER_IFACE, "AttachDevice", "sa{sv}", "sim:x", {})
        c.call1(path, DEVICE_IFACE, "SetState", "sa{sv}", "pre-copy", {})
        self.assertEqual(daemon.stop(expect=None), 0, daemon.log())
        self.assertFalse(c.name_has_owner(BUS_NAME))


E_TIMED_OUT = "org.vfiomig1.Error.Timeout"
E_CANCELLED = "org.vfiomig1.Error.Cancelled"
E_NO_TRANSFER = "org.vfiomig1.Error.NoTransfer"
STATE_SIZE = 4 << 20  # far more than a pipe holds


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


class Pending:
    """One method call sent without waiting on a connection of its own; answered() peeks whether
    the reply is there, result() collects it (its first value; an error raises DBusError)."""

    def __init__(self, address, path, iface, member, sig="", args=(), fds=()):
        self.wire = w.WireConnection(address)
        self.serial = self.wire.send(BUS_NAME, path, iface, member, sig, list(args), fds=list(fds))
        self.reply = None

    def _take(self, timeout):
        deadline = time.monotonic() + timeout
        while self.reply is None:
            self.wire.sock.settimeout(max(0.001, deadline - time.monotonic()))
            msg = self.wire.receive()
            msg.close_fds()
            if msg.fields.get(w.F_REPLY_SERIAL) == self.serial:
                self.reply = msg

    def answered(self):
        with contextlib.suppress(TimeoutError, socket.timeout, BlockingIOError):
            self._take(0.001)
        return self.reply is not None

    def result(self, timeout=30):
        try:
            self._take(timeout)
        finally:
            self.wire.close()
        if self.reply.type == w.ERROR:
            raise DBusError(self.reply.fields.get(w.F_ERROR_NAME), self.reply.body[0] if self.reply.body else "")
        return self.reply.body[0] if self.reply.body else None


class Transfer(Pending):
    """One SaveState/LoadState sent without waiting; result() collects its reply."""

    def __init__(self, address, path, member, fd, options=None):
        super().__init__(address, path, DEVICE_IFACE, member, "ha{sv}", [0, options or {}], fds=[fd])


class StateTransfers(ApiTestCase):

    def setUp(self):
        self.dev = self.attach("sim:xfer", {"state-size": V("t", STATE_SIZE)})
        self.set_state(self.dev, "stop")
        self.pid = self.daemon.pid
        # settle: the attach's own descriptors and threads are there before the count
        self.fds_before, self.threads_before = len(h.open_fds(self.pid)), threads(self.pid)

    def assertNothingLeft(self):
        h.wait_until(lambda: threads(self.pid) == self.threads_before, 10, what="the worker thread to end")
        # The reply goes out just before the worker's eventfd is closed: give it that moment.
        with contextlib.suppress(TimeoutError):
            h.wait_until(lambda: len(h.open_fds(self.pid)) == self.fds_before, 5)
        fds, tasks = len(h.open_fds(self.pid)), threads(self.pid)
        h.log(f"{self.id()}: daemon fds {self.fds_before} -> {fds}, threads {self.threads_before} -> {tasks}")
        self.assertEqual(fds, self.fds_before, h.open_fds(self.pid))
        self.assertEqual(tasks, self.threads_before)

    def stuck_save(self, options=None, pair=os.pipe2):
        """A SaveState into a pipe (or socket) whose read end the test holds and never reads."""
        r, wr = pair(os.O_CLOEXEC)
        self.addCleanup(os.close, r)
        t = Transfer(self.bus.address, self.dev, "SaveState", wr, options)
        os.close(wr)
        # the worker runs once the pipe is full
        h.wait_until(lambda: threads(self.pid) == self.threads_before + 1, 10, what="the worker thread")
        self.addCleanup(self.cancel_quietly)
        return t, r

    def cancel_quietly(self):
        with contextlib.suppress(DBusError):
            self.client.device(self.dev, "CancelTransfer")

    def save_to_memfd(self):
        fd = os.memfd_create("state", os.MFD_CLOEXEC)
        self.addCleanup(os.close, fd)
        n = Transfer(self.bus.address, self.dev, "SaveState", fd).result()
        return fd, n

    def assertUsable(self):
        """The device takes a full save again, and state changes."""
        self.assertEqual(self.state(self.dev), "stop")
        _fd, n = self.save_to_memfd()
        self.assertEqual(n, h.sim_stream_size(STATE_SIZE))
        self.assertEqual(self.set_state(self.dev, "running"), "running")

    def test_save_load_roundtrip(self):
        fd, n = self.save_to_memfd()
        self.assertEqual(n, h.sim_stream_size(STATE_SIZE))
        os.lseek(fd, 0, os.SEEK_SET)
        self.assertEqual(Transfer(self.bus.address, self.dev, "LoadState", fd).result(), n)
        self.assertEqual(self.state(self.dev), "stop")
        self.assertNothingLeft()

    def test_save_load_through_pipes(self):
        # Blocking pipes, as a shell gives them: the daemon never changes the caller's file.
        expected, _n = self.save_to_memfd()
        r, wr = os.pipe2(os.O_CLOEXEC)
        t = Transfer(self.bus.address, self.dev, "SaveState", wr)
        os.close(wr)
        got = bytearray()
        while chunk := os.read(r, 1 << 16):
            got += chunk
        os.close(r)
        self.assertEqual(t.result(), len(got))
        self.assertEqual(bytes(got), os.pread(expected, len(got) + 1, 0))
        r, wr = os.pipe2(os.O_CLOEXEC)
        t = Transfer(self.bus.address, self.dev, "LoadState", r)
        os.close(r)
        self.assertEqual(os.get_blocking(wr), True)
        view = memoryview(bytes(got))
        while view:
            view = view[os.write(wr, view[:1 << 16]):]
        os.close(wr)
        self.assertEqual(t.result(), len(got))
        self.assertEqual(self.state(self.dev), "stop")
        self.assertNothingLeft()

    def test_deadline_of_a_pipe_nobody_reads(self):
        started = time.monotonic()
        t, _r = self.stuck_save({"timeout": V("t", 700)})
        e = self.assertDBusError(E_TIMED_OUT, t.result)
        took = time.monotonic() - started
        self.assertIn("timed out after 700 ms", e.message)
        self.assertIn("did not take the state in time", e.message)
        self.assertGreaterEqual(took, 0.6)
        self.assertLess(took, 5)
        self.assertNothingLeft()
        self.assertUsable()

    def test_deadline_of_a_socket_nobody_reads(self):
        def socketpair(_flags):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            return a.detach(), b.detach()
        t, _r = self.stuck_save({"timeout": V("t", 500)}, pair=socketpair)
        e = self.assertDBusError(E_TIMED_OUT, t.result)
        self.assertIn("timed out after 500 ms", e.message)
        self.assertNothingLeft()
        self.assertUsable()

    def test_cancel_save(self):
        self.assertDBusError(E_NO_TRANSFER, self.client.device, self.dev, "CancelTransfer")
        t, _r = self.stuck_save()
        self.client.device(self.dev, "CancelTransfer")  # returns when the transfer has ended
        self.assertEqual(threads(self.pid), self.threads_before)
        e = self.assertDBusError(E_CANCELLED, t.result)
        self.assertIn("cancelled by CancelTransfer", e.message)
        self.assertIn("CancelTransfer", self.client.dev_prop(self.dev, "LastTransition"))
        self.assertDBusError(E_NO_TRANSFER, self.client.device, self.dev, "CancelTransfer")
        self.assertNothingLeft()
        self.assertUsable()

    def test_cancel_load_resets_the_device(self):
        saved, _n = self.save_to_memfd()
        r, wr = os.pipe2(os.O_CLOEXEC)
        self.addCleanup(os.close, wr)
        os.write(wr, os.pread(saved, 16384, 0))  # a true beginning, then nothing: the writer stays open
        t = Transfer(self.bus.address, self.dev, "LoadState", r)
        os.close(r)
        h.wait_until(lambda: threads(self.pid) == self.threads_before + 1, 10, what="the worker thread")
        self.addCleanup(self.cancel_quietly)
        self.client.device(self.dev, "CancelTransfer")
        e = self.assertDBusError(E_CANCELLED, t.result)
        # Bytes a device took in a load nobody finished must never commit: it is reset.
        self.assertIn("was reset", e.message)
        self.assertEqual(self.state(self.dev), "running")
        self.assertNothingLeft()
        self.set_state(self.dev, "stop")
        self.assertUsable()

    def test_busy_device_is_left_alone(self):
        t, _r = self.stuck_save()
        other = self.attach("sim:other")
        attempts = [
            ("DetachDevice", lambda: self.client.manager("DetachDevice", "s", "sim_xfer")),
            ("SetStates", lambda: self.set_states([other, self.dev], "stop")),
            ("SetState", lambda: self.set_state(self.dev, "running")),
            ("Reset", lambda: self.client.device(self.dev, "Reset")),
            ("RevokeClients", lambda: self.client.device(self.dev, "RevokeClients")),
            ("SetMigrationBlob", lambda: self.client.call(self.dev, DEVICE_IFACE, "SetMigrationBlob", "ay", [1])),
        ]
        for label, fn in attempts:
            with self.subTest(method=label):
                e = self.fails(h.E_BUSY, fn)
                self.assertIn("busy saving its state", e.message)
        fd = os.memfd_create("second", os.MFD_CLOEXEC)
        self.addCleanup(os.close, fd)
        self.fails(h.E_BUSY, Transfer(self.bus.address, self.dev, "SaveState", fd).result)
        self.assertEqual(self.state(self.dev), "stop-copy")  # the save's own session
        self.client.device(self.dev, "CancelTransfer")
        self.assertDBusError(E_CANCELLED, t.result)
        self.client.manager("DetachDevice", "s", "sim_other")
        self.assertNothingLeft()
        self.assertUsable()

    def test_bad_options_and_descriptors(self):
        fd = os.memfd_create("state", os.MFD_CLOEXEC)
        self.addCleanup(os.close, fd)
        for options in ({"timeout": V("t", 0)}, {"timeout": V("t", 24 * 3600 * 1000 + 1)}, {"timeout": V("u", 5)},
                        {"deadline": V("t", 5)}):
            with self.subTest(options=options):
                self.fails(h.E_INVALID_ARGS, Transfer(self.bus.address, self.dev, "SaveState", fd, options).result)
        # A character device could block the worker forever and cannot be bounded: refused.
        null = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, null)
        e = self.fails(h.E_INVALID_ARGS, Transfer(self.bus.address, self.dev, "SaveState", null).result)
        self.assertIn("not a regular file, block device, pipe or socket", e.message)
        # A pipe nobody reads from at all.
        r, wr = os.pipe2(os.O_CLOEXEC)
        os.close(r)
        self.addCleanup(os.close, wr)
        e = self.fails("org.vfiomig1.Error.TransferFailed", Transfer(self.bus.address, self.dev, "SaveState", wr).result)
        self.assertEqual(e.message, "writing to the file descriptor failed after 0 bytes: Broken pipe")
        self.assertNothingLeft()


SLOW_ARC_USEC = 2_000_000  # running-p2p>stop takes this long on the slow device


class SlowTransitions(ApiTestCase):
    """State changes run off the event loop: while a driver takes its time the bus answers
    everything else, the device itself is Busy, and the caller hears the outcome at the end."""

    def setUp(self):
        self.slow = self.attach("sim:slow", {"arc-latency-usec": V("t", SLOW_ARC_USEC),
                                             "latency-arcs": V("as", ["running-p2p>stop"])})
        self.other = self.attach("sim:quick")

    def pending(self, path, iface, member, sig, *args):
        call = Pending(self.bus.address, path, iface, member, sig, args)
        self.addCleanup(call.wire.close)
        return call

    def assertAnsweredMeanwhile(self, call):
        """The daemon answers others while call waits for its slow arc."""
        started = time.monotonic()
        self.client.call(MANAGER_PATH, "org.freedesktop.DBus.Peer", "Ping")
        self.assertEqual(self.state(self.other), "running")
        self.assertEqual(self.client.mgr_prop("DeviceCount"), 2)
        answered = call.answered()
        h.log(f"{self.id()}: Ping and two property reads took {time.monotonic() - started:.3f} s "
              f"during a {SLOW_ARC_USEC / 1e6:.0f} s arc")
        self.assertFalse(answered, "the slow move ended before the other calls were answered")

    def test_set_state_leaves_the_bus_free(self):
        call = self.pending(self.slow, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
        self.assertAnsweredMeanwhile(call)
        # The moving device: State is where it started, every change is refused as Busy, and it
        # stays attached.
        self.assertEqual(self.state(self.slow), "running")
        e = self.assertDBusError(h.E_BUSY, self.set_state, self.slow, "running")
        self.assertIn("is busy changing its state", e.message)
        e = self.assertDBusError(h.E_BUSY, self.client.call, self.slow, DEVICE_IFACE, "Reset")
        self.assertIn("is busy changing its state", e.message)
        self.assertDBusError(h.E_BUSY, self.client.call, MANAGER_PATH, MANAGER_IFACE, "DetachDevice", "s", "sim_slow")
        self.assertEqual(call.result(), "stop")
        self.assertEqual(self.state(self.slow), "stop")
        # Idle again: quick moves need no worker to wait for.
        self.assertEqual(self.set_state(self.slow, "running"), "running")

    def test_set_states_and_reset_leave_the_bus_free(self):
        call = self.pending(MANAGER_PATH, MANAGER_IFACE, "SetStates", "aosa{sv}", [self.slow, self.other], "stop", {})
        self.assertAnsweredMeanwhile(call)
        e = self.assertDBusError(h.E_BUSY, self.set_state, self.other, "running")
        self.assertIn("changing its state with others", e.message)
        self.assertEqual(sorted(tuple(x) for x in call.result()), sorted([(self.slow, "stop"), (self.other, "stop")]))
        self.assertEqual((self.state(self.slow), self.state(self.other)), ("stop", "stop"))
        # A reset of a device whose reset is quick, while the slow one is moving back.
        back = self.pending(self.slow, DEVICE_IFACE, "SetState", "sa{sv}", "stop-copy", {})
        self.client.call(self.other, DEVICE_IFACE, "Reset")
        self.assertEqual(self.state(self.other), "running")
        self.assertEqual(back.result(), "stop-copy")

    def test_a_failed_move_is_reported_at_its_end(self):
        slow_fail = self.attach("sim:slowfail", {"arc-latency-usec": V("t", SLOW_ARC_USEC),
                                                 "latency-arcs": V("as", ["running-p2p>stop"]),
                                                 "fail-arcs": V("as", ["stop>stop-copy"])})
        call = self.pending(slow_fail, DEVICE_IFACE, "SetState", "sa{sv}", "stop-copy", {})
        with self.assertRaises(DBusError) as cm:
            call.result()
        self.assertEqual(cm.exception.name, "org.vfiomig1.Error.TransitionFailed", cm.exception.message)
        self.assertIn("Steps:", cm.exception.message)
        self.assertEqual(self.state(slow_fail), "stop")


ASAN_DAEMON = h.SOURCE_ROOT / "build-asan" / "daemon" / "vfiomigd"


class SigtermDuringTransfer(h.unittest.TestCase):
    """SIGTERM while a SaveState writes into a pipe nobody reads: the worker is cancelled and
    joined before the daemon frees what it uses; exit 0, and no sanitizer report."""

    def shutdown_during_save(self, program=None, drain=False):
        """drain: the test starts reading the pipe once SIGTERM is sent, so that the worker is
        moving data while the daemon shuts down (what used to free the service under it)."""
        bus = h.PrivateBus().start()
        self.addCleanup(bus.stop)
        env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
               "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
        daemon = h.Daemon(bus, env=env)
        if program is not None:
            daemon.command = lambda: [str(program)] + h.Daemon.command(daemon)[1:]
        daemon.start(timeout=30)
        self.addCleanup(daemon.stop, None)
        c = bus.client
        path = c.call1(MANAGER_PATH, MANAGER_IFACE, "AttachDevice", "sa{sv}", "sim:x",
                       {"state-size": V("t", STATE_SIZE)})
        c.call1(path, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
        tasks = threads(daemon.pid)
        r, wr = os.pipe2(os.O_CLOEXEC)
        self.addCleanup(os.close, r)
        t = Transfer(bus.address, path, "SaveState", wr)
        os.close(wr)
        h.wait_until(lambda: threads(daemon.pid) == tasks + 1, 10, what="the worker thread")
        started = time.monotonic()
        if drain:
            os.kill(daemon.pid, h.signal.SIGTERM)
            # Read only once the daemon has asked the worker to give up: reading earlier lets a
            # busy machine's worker finish the whole 4 MiB before the daemon sees the signal, and
            # the transfer then succeeds (what CI once saw). From here on the worker moves data
            # while the daemon shuts down, which is the case this test is for.
            h.wait_until(lambda: "waiting for its state transfer to give up" in daemon.log(), 10,
                         what="the daemon to cancel the transfer")
            os.set_blocking(r, False)
            while daemon.proc.poll() is None and time.monotonic() - started < 30:
                with contextlib.suppress(BlockingIOError):
                    if os.read(r, 1 << 16) == b"":
                        break
        rc = daemon.terminate(timeout=30)
        took = time.monotonic() - started
        text = daemon.log()
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "SUMMARY:"):
            self.assertNotIn(marker, text)
        self.assertEqual(rc, 0, text)
        self.assertLess(took, 10, text)
        # The caller heard why, before the daemon let go of the bus.
        with self.assertRaises(DBusError) as cm:
            t.result()
        self.assertEqual(cm.exception.name, E_CANCELLED, text)
        self.assertIn("the daemon is stopping", cm.exception.message)
        h.log(f"SIGTERM during SaveState ({program or h.DAEMON}, drain={drain}): exit {rc} after {took:.2f} s, "
              f"caller got {cm.exception.name}, no sanitizer report")
        self.assertIn("waiting for its state transfer to give up", text)
        self.assertIn("cancelled after", text)
        return text

    def test_sigterm_during_save(self):
        self.shutdown_during_save()

    def test_sigterm_during_a_slow_state_change(self):
        """An arc cannot be interrupted: the daemon waits for it, the caller hears the outcome,
        and the state saved at the stop is where the device ended."""
        bus = h.PrivateBus().start()
        self.addCleanup(bus.stop)
        daemon = h.Daemon(bus).start()
        self.addCleanup(daemon.stop, None)
        path = bus.client.call1(MANAGER_PATH, MANAGER_IFACE, "AttachDevice", "sa{sv}", "sim:slow",
                                {"arc-latency-usec": V("t", SLOW_ARC_USEC), "latency-arcs": V("as", ["running-p2p>stop"])})
        tasks = threads(daemon.pid)
        call = Pending(bus.address, path, DEVICE_IFACE, "SetState", "sa{sv}", ["stop", {}])
        self.addCleanup(call.wire.close)
        h.wait_until(lambda: threads(daemon.pid) == tasks + 1, 10, what="the move's worker thread")
        os.kill(daemon.pid, h.signal.SIGTERM)
        self.assertEqual(call.result(), "stop")
        rc = daemon.terminate(timeout=30)
        text = daemon.log()
        self.assertEqual(rc, 0, text)
        self.assertIn("Waiting for a state change of sim_slow to end.", text)
        self.assertIn("sim_slow: running → stop: ok", text)

    def test_sigterm_during_save_draining(self):
        self.shutdown_during_save(drain=True)

    def test_sigterm_during_save_asan(self):
        if not ASAN_DAEMON.exists():
            self.skipTest(f"no ASan build at {ASAN_DAEMON} (tools/test.sh makes one)")
        for drain in (False, True):
            with self.subTest(drain=drain):
                self.shutdown_during_save(ASAN_DAEMON, drain)


class MaxDevices(ApiTestCase):
    daemon_kwargs = {"allow_simulated": False, "config": {"allow-simulated": True, "max-devices": 2}}

    def test_limit(self):
        self.assertEqual(self.client.mgr_prop("MaxDevices"), 2)
        self.assertTrue(self.client.mgr_prop("SimulationAllowed"))
        self.attach("sim:one")
        self.attach("sim:two")
        e = self.fails(h.E_LIMIT_EXCEEDED, self.attach, "sim:three")
        self.assertIn("2", e.message)
        self.client.manager("DetachDevice", "s", "sim:one")
        self.attach("sim:three")


class SimulationNotAllowed(ApiTestCase):
    daemon_kwargs = {"allow_simulated": False}

    @classmethod
    def setUpClass(cls):
        path = h.default_config_path()
        if path is not None and path.exists():
            raise h.unittest.SkipTest(f"{path} exists: the daemon without --config would read it")
        super().setUpClass()

    def test_sim_refused(self):
        self.assertFalse(self.client.mgr_prop("SimulationAllowed"))
        e = self.fails(h.E_INVALID_ARGS, self.attach, "sim:x")
        self.assertIn("simulat", e.message.lower())

    def test_sim_options_refused_for_pci(self):
        with self.unchanged():
            with self.assertRaises(DBusError) as cm:
                self.attach("0000:fe:1f.7", {"state-size": V("t", 4096)})
        self.assertIn(cm.exception.name, (h.E_INVALID_ARGS, h.E_NO_SUCH_DEVICE))


class PreattachedFromConfig(ApiTestCase):
    daemon_kwargs = {"config": {"devices": [{"address": "sim:pre", "options": {"state-size": 131072}}]}}

    def tearDown(self):
        pass  # the pre-attached device stays: it is what this class checks

    def test_present_at_ready(self):
        # Daemon.start() returned as soon as the name was owned: the device must already be there.
        path = dev_path("sim_pre")
        self.assertEqual(self.list_devices(), [("sim_pre", "sim:pre", path)])
        self.assertEqual(self.client.dev_prop(path, "State"), "running")
        self.assertEqual(self.client.dev_prop(path, "StopCopySize"), h.sim_stream_size(131072))


class BadConfig(h.unittest.TestCase):

    def test_invalid_config_fails_start(self):
        bus = h.PrivateBus().start()
        self.addCleanup(bus.stop)
        for config in ('{"allow-simulated": "yes"}', '{"bogus": 1}', "not json",
                       '{"devices": [{"address": "sim:x", "options": {"bogus": 1}}]}'):
            with self.subTest(config=config):
                d = h.Daemon(bus, config=config)
                with self.assertRaises(RuntimeError) as cm:
                    d.start(timeout=10)
                self.assertNotEqual(d.proc.returncode, 0)
                self.assertNotIn("Traceback", str(cm.exception))
                d.stop(expect=None)


if __name__ == "__main__":
    h.main([h.require_root, lambda: h.require_programs("dbus-daemon", "busctl"), h.require_daemon,
            lambda: h.require_files(h.BUS_POLICY)])
