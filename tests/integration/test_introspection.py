#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The running daemon's introspection equals the contract in proto/*.xml.

For org.vfiomig1.Manager at /org/vfiomig1, org.vfiomig1.Device on a device object and
org.vfiomig1.Migration on a live migration job (a prepared incoming migration): method
names, argument names, types and directions (in order), signal arguments, property names, types,
access and the org.freedesktop.DBus.Property.EmitsChangedSignal annotation (absent means "true").
Other annotations and whitespace are ignored. A mismatch prints a precise, line-per-difference diff.
Also: the root implements org.freedesktop.DBus.ObjectManager.
"""

import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402

EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"


def parse_interfaces(xml_text):
    """{interface name: normalized description} of an introspection document."""
    root = ET.fromstring(xml_text)
    return {iface.get("name"): normalize_interface(iface) for iface in root.findall("interface")}


def _emits(element):
    for a in element.findall("annotation"):
        if a.get("name") == EMITS:
            return a.get("value")
    return "true"


def normalize_interface(iface):
    out = {"method": {}, "signal": {}, "property": {}}
    for m in iface.findall("method"):
        out["method"][m.get("name")] = [
            (a.get("name"), a.get("type"), a.get("direction") or "in") for a in m.findall("arg")]
    for s in iface.findall("signal"):
        # Signal args have no direction, or "out"; both mean the same.
        out["signal"][s.get("name")] = [
            (a.get("name"), a.get("type"), a.get("direction") or "out") for a in s.findall("arg")]
    for p in iface.findall("property"):
        out["property"][p.get("name")] = {"type": p.get("type"), "access": p.get("access"),
                                          "emits-changed-signal": _emits(p)}
    return out


def diff_interfaces(name, expected, actual):
    """A list of human-readable differences (proto = expected, daemon = actual)."""
    diffs = []
    for kind in ("method", "signal", "property"):
        exp, act = expected[kind], actual[kind]
        for member in sorted(set(exp) - set(act)):
            diffs.append(f"{name}: {kind} {member} is in proto/ but not served by the daemon")
        for member in sorted(set(act) - set(exp)):
            diffs.append(f"{name}: {kind} {member} is served by the daemon but not in proto/")
        for member in sorted(set(exp) & set(act)):
            e, a = exp[member], act[member]
            if e == a:
                continue
            if kind == "property":
                for key in ("type", "access", "emits-changed-signal"):
                    if e[key] != a[key]:
                        diffs.append(f"{name}: property {member}: {key}: proto {e[key]!r}, daemon {a[key]!r}")
                continue
            if len(e) != len(a):
                diffs.append(f"{name}: {kind} {member}: proto has {len(e)} args {e}, daemon has {len(a)} {a}")
            for i, (ea, aa) in enumerate(zip(e, a)):
                for j, what in enumerate(("name", "type", "direction")):
                    if ea[j] != aa[j]:
                        diffs.append(f"{name}: {kind} {member}: arg {i} ({ea[0]}): {what}: proto {ea[j]!r}, "
                                     f"daemon {aa[j]!r}")
    return diffs


def proto_interface(iface_name):
    path = h.PROTO_DIR / f"{iface_name}.xml"
    interfaces = parse_interfaces(path.read_text())
    if iface_name not in interfaces:
        raise AssertionError(f"{path} does not define {iface_name}")
    return interfaces[iface_name]


class Introspection(h.DaemonTestCase):

    def compare(self, path, iface_name):
        """Compares every org.vfiomig1 interface served at path with proto/; iface_name must be one."""
        xml_text = self.client.introspect_xml(path)
        served = parse_interfaces(xml_text)
        self.assertIn(iface_name, served, f"{path} does not serve {iface_name}:\n{xml_text}")
        diffs = []
        for name in sorted(i for i in served if i.startswith("org.vfiomig1.")):
            if not (h.PROTO_DIR / f"{name}.xml").exists():
                diffs.append(f"{name}: served at {path} but there is no proto/{name}.xml")
                continue
            diffs += diff_interfaces(name, proto_interface(name), served[name])
        if diffs:
            self.fail(f"introspection of {path} differs from proto/:\n  " + "\n  ".join(diffs))
        return served

    def test_manager(self):
        served = self.compare(h.MANAGER_PATH, h.MANAGER_IFACE)
        self.assertIn(h.OM_IFACE, served, "the root does not implement org.freedesktop.DBus.ObjectManager")
        self.assertIn("GetManagedObjects", served[h.OM_IFACE]["method"])
        self.assertIn("InterfacesAdded", served[h.OM_IFACE]["signal"])
        self.assertIn("InterfacesRemoved", served[h.OM_IFACE]["signal"])
        for std in ("org.freedesktop.DBus.Properties", "org.freedesktop.DBus.Introspectable",
                    "org.freedesktop.DBus.Peer"):
            self.assertIn(std, served)

    def test_device(self):
        path = self.attach("sim:intro")
        self.compare(path, h.DEVICE_IFACE)

    def test_object_manager_works(self):
        path = self.attach("sim:om")
        objects = self.client.call1(h.MANAGER_PATH, h.OM_IFACE, "GetManagedObjects")
        self.assertEqual(sorted(objects), [path])
        for iface, props in objects[path].items():
            if iface.startswith("org.vfiomig1."):
                with self.subTest(interface=iface):
                    self.assertEqual(sorted(props), sorted(proto_interface(iface)["property"]))
        self.assertIn(h.DEVICE_IFACE, objects[path])

    def test_device_node_listed(self):
        self.attach("sim:node")
        root = ET.fromstring(self.client.introspect_xml("/org/vfiomig1/device"))
        self.assertIn("sim_node", [n.get("name") for n in root.findall("node")])

    def test_property_types_match_values(self):
        # GetAll returns each property with the type the contract declares.
        path = self.attach("sim:types")
        for obj, iface in ((h.MANAGER_PATH, h.MANAGER_IFACE), (path, h.DEVICE_IFACE)):
            props = self.client.get_all(obj, iface)
            for name, spec in proto_interface(iface)["property"].items():
                with self.subTest(interface=iface, property=name):
                    self.assertIn(name, props)
                    self.assertEqual(props[name][0], spec["type"])


class MigrationIntrospection(h.DaemonTestCase):
    """A live org.vfiomig1.Migration object: one prepared incoming job for the class (the daemon
    listens on an ephemeral loopback port, so nothing binds the default stream port). Its device
    stays attached until the daemon stops: a finished job must not outlive its devices here (see
    test_migration.py, test_job_outlives_detached_device)."""

    daemon_kwargs = {"args": ["--stream-listen=127.0.0.1:0"]}
    MIGRATION_IFACE = "org.vfiomig1.Migration"

    compare = Introspection.compare

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dev = cls.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "AttachDevice", "sa{sv}", "sim:intro", {})
        cls.job, cls.token, cls.addresses = cls.client.call(h.MANAGER_PATH, h.MANAGER_IFACE, "PrepareIncoming",
                                                            "aoa{sv}", [cls.dev], {})

    def tearDown(self):
        pass  # keep the device and its job for the next test

    def test_prepared(self):
        self.assertRegex(self.job, r"^/org/vfiomig1/migration/_[1-9][0-9]*$")
        self.assertRegex(self.token, "^[0-9a-f]{64}$")
        self.assertTrue(self.addresses)
        self.assertEqual(self.client.get_property(self.job, self.MIGRATION_IFACE, "Phase"), "setup")
        self.assertEqual(self.client.dev_prop(self.dev, "Migration"), self.job)

    def test_migration(self):
        self.compare(self.job, self.MIGRATION_IFACE)

    def test_migration_node_listed(self):
        root = ET.fromstring(self.client.introspect_xml("/org/vfiomig1/migration"))
        self.assertIn(self.job.rsplit("/", 1)[1], [n.get("name") for n in root.findall("node")])

    def test_migration_property_types(self):
        props = self.client.get_all(self.job, self.MIGRATION_IFACE)
        for name, spec in proto_interface(self.MIGRATION_IFACE)["property"].items():
            with self.subTest(property=name):
                self.assertIn(name, props)
                self.assertEqual(props[name][0], spec["type"])
        self.assertEqual(sorted(props), sorted(proto_interface(self.MIGRATION_IFACE)["property"]))

    def test_migration_managed_object(self):
        objects = self.client.call1(h.MANAGER_PATH, h.OM_IFACE, "GetManagedObjects")
        self.assertEqual(sorted(objects), sorted([self.dev, self.job]))
        self.assertEqual(sorted(objects[self.job][self.MIGRATION_IFACE]),
                         sorted(proto_interface(self.MIGRATION_IFACE)["property"]))


class SelfCheck(h.unittest.TestCase):
    """The comparison itself finds what it should."""

    def test_diff_detects_changes(self):
        exp = proto_interface(h.DEVICE_IFACE)
        act = {k: dict(v) for k, v in exp.items()}
        act["method"] = dict(exp["method"])
        act["method"]["SetState"] = [("target", "s", "in"), ("opts", "a{sv}", "in"), ("reached", "s", "out")]
        act["property"] = dict(exp["property"])
        act["property"]["State"] = dict(exp["property"]["State"], **{"emits-changed-signal": "false"})
        del act["property"]["Id"]
        diffs = diff_interfaces("X", exp, act)
        self.assertEqual(len(diffs), 3, diffs)


if __name__ == "__main__":
    h.main([h.require_root, lambda: h.require_programs("dbus-daemon", "busctl"), h.require_daemon,
            lambda: h.require_files(h.BUS_POLICY)])
