#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The org.vfiomig1 D-Bus API of the real vfiomigd on a private system bus, as root, with busctl.

Every method with valid input and with each kind of malformed input, checking the exact D-Bus
error name, and that a failed call changed nothing (devices, states). Signals (DeviceAttached,
DeviceDetached, ObjectManager InterfacesAdded/Removed, PropertiesChanged) are watched with a
busctl monitor. Separate daemons check max-devices, simulation not allowed, and devices
pre-attached from the configuration file.
"""

import contextlib
import os
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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
        self.assertIn(cm.exception.name, ("org.freedesktop.DBus.Error.UnknownObject",
                                          "org.freedesktop.DBus.Error.UnknownInterface",
                                          "org.freedesktop.DBus.Error.UnknownMethod",
                                          "org.freedesktop.DBus.Error.UnknownProperty"))

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
        self.assertIn(cm.exception.name, ("org.freedesktop.DBus.Error.UnknownObject",
                                          "org.freedesktop.DBus.Error.UnknownMethod"))


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
