#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vfiomigd under a real service manager: units/vfiomigd.service.in, adapted for a non-PID-1
``systemd --user`` (systemd-harness.md §2), running the real daemon on a private system bus.

* Type=notify: when ``systemctl --user start`` returns, org.vfiomig1 is owned and the devices of
  the configuration file exist (READY=1 comes only after both), the unit is active/running and
  its MainPID is the name's owner.
* STATUS= text is visible (StatusText) and follows the device count.
* The watchdog is fed (with a 1 s WatchdogSec the unit stays up, NRestarts=0).
* Stop is clean: inactive/dead, ExecMainStatus=0, Result=success, the name released.
* The daemon logged to the (private) journal.
"""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402

UNIT = "vfiomigd.service"


def adapt_unit(text, bus_address, config_path, watchdog_sec=None):
    """The project's unit, changed only where a user manager or the test setup requires it.
    Every change is explained in a comment in the generated unit."""
    out = []
    seen = set()
    under_home = any(str(h.BUILD_ROOT.resolve()).startswith(p) for p in ("/home/", "/root/", "/run/user/"))
    under_tmp = any(str(h.BUILD_ROOT.resolve()).startswith(p) for p in ("/tmp/", "/var/tmp/"))
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or line.lstrip().startswith(("#", ";")):
            out.append(line)
            continue
        seen.add(key)
        if key == "ExecStart":
            out.append("# test: the daemon from the build tree, simulation allowed, devices from a test config,")
            out.append(f"# debug logging; was {line.strip()}")
            out.append(f"ExecStart={h.DAEMON} --allow-simulated --config {config_path} --log-level=debug")
            out.append("# test: the private system bus; sd_bus_open_system() honours this variable.")
            out.append(f"Environment=DBUS_SYSTEM_BUS_ADDRESS={bus_address}")
            out.append("# test: an observation hook. An inactive unit is garbage-collected at once, so")
            out.append("# `systemctl show` after stop cannot tell how the main process ended; log it.")
            out.append("ExecStopPost=+/bin/sh -c 'echo \"vfm-test-exit result=$SERVICE_RESULT code=$EXIT_CODE "
                       "status=$EXIT_STATUS\"'")
        elif key in ("Requires", "After", "Wants") and "dbus.socket" in value:
            out.append(f"# test: dropped {line.strip()!r}: in a user manager dbus.socket is the user bus,")
            out.append("# not our private system bus (which the test starts before the unit).")
        elif key == "BusName":
            out.append(f"# test: dropped {line.strip()!r}: a user manager watches the name on its own user")
            out.append("# bus, not on the private system bus; Type=notify alone decides readiness.")
        elif key == "WatchdogSec" and watchdog_sec is not None:
            out.append(f"# test: {line.strip()} shortened so that a missing ping shows within seconds.")
            out.append(f"WatchdogSec={watchdog_sec}")
        elif key == "PrivateTmp" and value.strip() == "yes" and under_tmp:
            out.append("# test: PrivateTmp=yes would hide the build tree, which is under /tmp here")
            out.append("# (a fresh clone for CI may well be); the daemon never uses /tmp itself.")
            out.append("PrivateTmp=no")
        elif key == "ProtectHome" and value.strip() == "yes" and under_home:
            out.append("# test: ProtectHome=yes would hide the build tree under a home directory;")
            out.append("ProtectHome=read-only")
        else:
            out.append(line)
    text = "\n".join(out) + "\n"
    leftover = re.findall(r"@\w+@", "\n".join(l for l in out if not l.lstrip().startswith("#")))
    if leftover:
        raise AssertionError(f"unsubstituted meson variables in the adapted unit: {leftover}")
    return text, seen


def unit_source():
    """The unit as meson configured it into the build tree, else its template."""
    built = h.BUILD_ROOT / "units" / UNIT
    return built if built.exists() else h.SERVICE_UNIT_IN


class UnderUserManager(h.unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        # The bus lives under /run, not /tmp: the unit has PrivateTmp=yes, and the test should not
        # weaken the unit's sandbox just to reach the socket.
        cls.rundir = h.TempDir("vfm-it-", parent="/run")
        cls.addClassCleanup(cls.rundir.stop)
        cls.bus = h.PrivateBus(base_dir=cls.rundir.path).start()
        cls.addClassCleanup(cls.bus.stop)
        cls.config = cls.rundir / "vfiomigd.json"
        cls.config.write_text(json.dumps({"devices": [
            {"address": "sim:cfg1", "options": {"state-size": 1048576}},
            {"address": "sim:cfg2", "options": {"flags": ["stop-copy"]}},
        ]}))
        os.chmod(cls.config, 0o644)
        cls.manager = h.SystemdUserManager().start()
        cls.addClassCleanup(cls.manager.stop)
        cls.client = cls.bus.client

    def setUp(self):
        self.addCleanup(self.stop_unit_quietly)

    def stop_unit_quietly(self):
        self.manager.systemctl("stop", UNIT, check=False)
        self.manager.systemctl("reset-failed", UNIT, check=False)

    def install(self, watchdog_sec=None):
        text, keys = adapt_unit(unit_source().read_text(), self.bus.address, self.config, watchdog_sec)
        for key in ("Type", "NotifyAccess", "WatchdogSec"):
            self.assertIn(key, keys, f"units/vfiomigd.service.in has no {key}=")
        self.assertRegex(text, r"(?m)^Type=notify$")
        self.manager.install_unit(UNIT, text)
        return text

    def diagnostics(self):
        return (f"\n--- systemctl status ---\n{self.manager.systemctl('status', UNIT, check=False).stdout}"
                f"\n--- journal ---\n{self.manager.journal('-o', 'short-monotonic', check=False)[-6000:]}")

    def start_unit(self):
        try:
            r = self.manager.systemctl("start", UNIT, check=False, timeout=20)
        except h.subprocess.TimeoutExpired:
            self.fail(f"systemctl --user start {UNIT} did not return within 20 s (no READY=1?)"
                      f"{self.diagnostics()}")
        if r.returncode != 0:
            self.fail(f"systemctl --user start {UNIT} failed: {r.stderr.strip()}{self.diagnostics()}")

    def test_ready_means_ready(self):
        self.install()
        t0 = time.monotonic()
        self.start_unit()
        elapsed = time.monotonic() - t0
        # At the moment start returned, before anything else: the name and the configured devices.
        owned = self.client.name_has_owner(h.BUS_NAME)
        devices = sorted(tuple(d) for d in self.client.manager("ListDevices")[0])
        self.assertTrue(owned, "Type=notify unit active before org.vfiomig1 was owned" + self.diagnostics())
        self.assertEqual(devices, [("sim_cfg1", "sim:cfg1", "/org/vfiomig1/device/sim_cfg1"),
                                   ("sim_cfg2", "sim:cfg2", "/org/vfiomig1/device/sim_cfg2")])
        props = self.manager.show(UNIT, "ActiveState", "SubState", "MainPID", "Type", "NotifyAccess")
        self.assertEqual((props["ActiveState"], props["SubState"]), ("active", "running"), self.diagnostics())
        self.assertEqual(props["Type"], "notify")
        self.assertEqual(props["NotifyAccess"], "main")
        self.assertEqual(int(props["MainPID"]), self.client.name_owner_pid(h.BUS_NAME))
        self.assertEqual(self.client.dev_prop("/org/vfiomig1/device/sim_cfg2", "MigrationFlags"), ["stop-copy"])
        h.log(f"start took {elapsed:.3f}s")

    def test_status_text(self):
        self.install()
        self.start_unit()
        status = self.manager.show(UNIT, "StatusText")["StatusText"]
        self.assertTrue(status, "no STATUS= text" + self.diagnostics())
        self.assertIn("2", status)
        self.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "AttachDevice", "sa{sv}", "sim:extra", {})
        try:
            h.wait_until(lambda: "3" in self.manager.show(UNIT, "StatusText")["StatusText"], 5, 0.05,
                         "StatusText to count 3 devices")
        except TimeoutError:
            self.fail(f"StatusText did not follow the device count: "
                      f"{self.manager.show(UNIT, 'StatusText')['StatusText']!r}")

    def exit_lines(self):
        return [line for line in self.manager.journal("-o", "cat", check=False).splitlines()
                if line.startswith("vfm-test-exit ")]

    def test_clean_stop(self):
        self.install()
        self.start_unit()
        pid = int(self.manager.show(UNIT, "MainPID")["MainPID"])
        before = len(self.exit_lines())
        self.manager.systemctl("stop", UNIT)
        props = self.manager.show(UNIT, "ActiveState", "SubState", "Result", "NRestarts")
        self.assertEqual(props["ActiveState"], "inactive", props)
        self.assertEqual(props["SubState"], "dead", props)
        self.assertEqual(props["Result"], "success", props)
        self.assertEqual(props["NRestarts"], "0", props)
        self.assertFalse(h.pid_alive(pid))
        self.assertFalse(self.client.name_has_owner(h.BUS_NAME))
        r = self.manager.systemctl("is-failed", UNIT, check=False)
        self.assertNotEqual(r.stdout.strip(), "failed")
        # How the main process ended, as systemd saw it (ExecMainStatus=0, no signal).
        lines = h.wait_until(lambda: self.exit_lines()[before:], 5, 0.05, "the ExecStopPost line")
        self.assertEqual(lines, ["vfm-test-exit result=success code=exited status=0"], self.diagnostics())

    def test_watchdog_is_fed(self):
        self.install(watchdog_sec="1s")
        self.start_unit()
        pid = self.manager.show(UNIT, "MainPID")["MainPID"]
        time.sleep(3)
        props = self.manager.show(UNIT, "ActiveState", "MainPID", "NRestarts", "WatchdogUSec", "Result")
        self.assertEqual(props["WatchdogUSec"], "1s")
        self.assertEqual((props["ActiveState"], props["MainPID"], props["NRestarts"], props["Result"]),
                         ("active", pid, "0", "success"), self.diagnostics())

    def test_journal(self):
        self.install()
        self.start_unit()
        self.manager.systemctl("stop", UNIT)
        cgroup = self.manager.unit_cgroup(UNIT)
        text = ""
        try:
            text = h.wait_until(lambda: self.manager.journal("-o", "cat", f"_SYSTEMD_CGROUP={cgroup}", check=False),
                                5, 0.1, "journal entries")
        except TimeoutError:
            pass
        self.assertTrue(text.strip(), f"nothing in the journal for {cgroup}{self.diagnostics()}")
        self.assertIn("sim:cfg1", text + self.manager.journal("-o", "cat", "-t", "vfiomigd", check=False))


if __name__ == "__main__":
    h.main([h.require_root,
            lambda: h.require_programs("dbus-daemon", "busctl", "systemctl", "journalctl", "unshare", "mount",
                                       "/lib/systemd/systemd", "/lib/systemd/systemd-journald"),
            lambda: h.require_files(h.SERVICE_UNIT_IN, h.BUS_POLICY),
            h.require_mount_namespaces, h.require_cgroups, h.require_daemon])
