#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Authorization with a real polkitd on the private bus and real non-root users.

vfmtest (no groups) is refused every mutating method with AccessDenied and nothing changes;
read-only calls work for it; vfmadm (group vfmadmin, granted org.vfiomig1.* by a test rule) is
allowed; root is allowed. The "device" detail reaches polkit (a narrow rule grants vfmtest
set-state on one device only). Without polkitd on the bus, vfmtest and vfmadm are refused and
root is allowed. The project's bus policy: vfmtest cannot own org.vfiomig1 nor set properties.

Interactive authorization (a rule that wants vfmtest's own password for one device): with
--no-ask-password, or without a terminal, vfiomigctl is refused and the message names the action;
on a terminal it starts the real pkttyagent, which asks for the password there, and the real
setuid polkit-agent-helper-1 checks it with PAM (a wrong one is refused, the right one lets the
call through).

A flood of Map calls by uid 65534 (polkit_flood.py) whose memfd shrinks while polkit thinks, so
that the call fails validation when the daemon dispatches it again, and many more calls than the
daemon keeps pending: the daemon's descriptor count and RSS stay flat, and every refusal is the
daemon's named error.
"""

import contextlib
import json
import os
import select
import shlex
import shutil
import subprocess
import time
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
from harness import (ADMIN_USER, DEVICE_IFACE, MANAGER_IFACE, MANAGER_PATH, TEST_USER,  # noqa: E402
                     DBusError)

# The test rule of the harness (vfmadmin may do everything) plus a narrow one: vfmtest may change
# the state of sim_narrow only, proving that the daemon passes the "device" detail.
RULES = h.TEST_RULE + """
polkit.addRule(function(action, subject) {
    if (action.id == "org.vfiomig1.set-state" && action.lookup("device") == "sim_narrow" &&
        subject.user == "vfmtest") {
        return polkit.Result.YES;
    }
});
// The flood by nobody: a polkitd that takes its time (10 ms a question, as a busy one does), so
// that a fast flood has more questions pending than the daemon's per-user cap on an idle machine
// too, where polkitd would otherwise answer before they pile up. No result: the defaults apply.
polkit.addRule(function(action, subject) {
    if (action.id == "org.vfiomig1.map-dma" && subject.user == "nobody") {
        polkit.spawn(["/bin/sleep", "0.01"]);
    }
});
// vfmtest may change sim_interactive's state after authenticating as itself.
polkit.addRule(function(action, subject) {
    if (action.id == "org.vfiomig1.set-state" && action.lookup("device") == "sim_interactive" &&
        subject.user == "vfmtest") {
        return polkit.Result.AUTH_SELF;
    }
});
"""
TEST_USER_PASSWORD = "vfm-Interactive-1"

USERS = None


def setUpModule():
    global USERS
    USERS = h.TestUsers().start()


def tearDownModule():
    if USERS is not None:
        USERS.stop()


class PolkitCase(h.unittest.TestCase):
    with_polkit = True

    @classmethod
    def setUpClass(cls):
        cls.bus = h.PrivateBus().start()
        cls.addClassCleanup(cls.bus.stop)
        if cls.with_polkit:
            cls.polkit = h.Polkitd(cls.bus, rules=RULES).start()
            cls.addClassCleanup(cls.polkit.stop)
        # Under ASan (BUILD_ROOT=build-asan), freed memory waits in a quarantine that would read
        # as RSS growth in the flood test: keep it small. Other builds ignore the variable.
        cls.daemon = h.Daemon(cls.bus, env={"ASAN_OPTIONS": "quarantine_size_mb=1"}).start()
        cls.addClassCleanup(lambda: cls.daemon.stop(expect=0))
        cls.root = cls.bus.client
        cls.user = cls.root.as_user(TEST_USER)
        cls.admin = cls.root.as_user(ADMIN_USER)

    def setUp(self):
        # Every test starts from: sim:pk in running, sim:pkpre in pre-copy.
        for dev_id, _addr, path in self.list_devices():
            if self.root.dev_prop(path, "State") != "running":
                self.root.device(path, "Reset")
            self.root.manager("DetachDevice", "s", dev_id)
        self.pk = self.attach(self.root, "sim:pk")
        self.pkpre = self.attach(self.root, "sim:pkpre")
        self.root.call(self.pkpre, DEVICE_IFACE, "SetState", "sa{sv}", "pre-copy", {})

    def list_devices(self, client=None):
        return sorted(tuple(d) for d in (client or self.root).manager("ListDevices")[0])

    @staticmethod
    def attach(client, address):
        return client.call1(MANAGER_PATH, MANAGER_IFACE, "AttachDevice", "sa{sv}", address, {})

    def snapshot(self):
        devices = self.list_devices()
        return devices, {p: self.root.dev_prop(p, "State") for _i, _a, p in devices}

    @contextlib.contextmanager
    def unchanged(self):
        before = self.snapshot()
        yield
        self.assertEqual(self.snapshot(), before, "a refused call changed the daemon's state")

    def mutations(self, client):
        """Every mutating method, as (label, callable)."""
        return [
            ("AttachDevice", lambda: self.attach(client, "sim:new")),
            ("DetachDevice", lambda: client.manager("DetachDevice", "s", "sim_pk")),
            ("SetState", lambda: client.call(self.pk, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})),
            ("SetStates", lambda: client.call(MANAGER_PATH, MANAGER_IFACE, "SetStates", "aosa{sv}",
                                              [self.pk], "stop", {})),
            ("Reset", lambda: client.device(self.pk, "Reset")),
        ]

    def assertRefused(self, client, message_part=None):
        for label, fn in self.mutations(client):
            with self.subTest(method=label, user=client.user):
                with self.unchanged():
                    with self.assertRaises(DBusError) as cm:
                        fn()
                self.assertEqual(cm.exception.name, h.E_ACCESS_DENIED, cm.exception.message)
                if message_part:
                    self.assertIn(message_part, cm.exception.message)

    def assertAllowed(self, client):
        path = self.attach(client, "sim:new")
        self.assertEqual(path, "/org/vfiomig1/device/sim_new")
        self.assertEqual(client.call1(self.pk, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {}), "stop")
        self.assertEqual(self.root.dev_prop(self.pk, "State"), "stop")
        client.device(self.pk, "Reset")
        self.assertEqual(self.root.dev_prop(self.pk, "State"), "running")
        results = client.call1(MANAGER_PATH, MANAGER_IFACE, "SetStates", "aosa{sv}", [self.pk, path], "stop", {})
        self.assertEqual([tuple(r) for r in results], [(self.pk, "stop"), (path, "stop")])
        client.call1(MANAGER_PATH, MANAGER_IFACE, "SetStates", "aosa{sv}", [self.pk, path], "running", {})
        client.manager("DetachDevice", "s", "sim:new")
        self.assertNotIn(path, [p for _i, _a, p in self.list_devices()])


class WithPolkit(PolkitCase):

    def test_unprivileged_user_refused(self):
        self.assertRefused(self.user, "org.vfiomig1.")

    def test_unprivileged_user_reads(self):
        u = self.user
        self.assertEqual(self.list_devices(u), self.list_devices())
        self.assertEqual(u.call1(MANAGER_PATH, MANAGER_IFACE, "GetDevice", "s", "sim:pk"), self.pk)
        self.assertEqual(u.dev_prop(self.pk, "State"), "running")
        self.assertEqual(u.get_all(self.pk, DEVICE_IFACE)["Address"], ("s", "sim:pk"))
        self.assertEqual(u.mgr_prop("DeviceCount"), 2)
        self.assertIn("MaxDevices", u.get_all(MANAGER_PATH, MANAGER_IFACE))
        initial, _dirty = u.device(self.pkpre, "GetPrecopyInfo")
        self.assertGreater(initial, 0)
        self.assertIn("org.vfiomig1.Device", u.introspect_xml(self.pk))
        self.assertIn("org.vfiomig1.Manager", u.introspect_xml(MANAGER_PATH))
        objs = u.call1(MANAGER_PATH, h.OM_IFACE, "GetManagedObjects")
        self.assertEqual(sorted(objs), sorted([self.pk, self.pkpre]))
        # A read that fails says why, not AccessDenied.
        with self.assertRaises(DBusError) as cm:
            u.device(self.pk, "GetPrecopyInfo")
        self.assertEqual(cm.exception.name, h.E_NO_PRECOPY_SESSION)

    def test_admin_group_allowed(self):
        self.assertAllowed(self.admin)

    def test_root_allowed(self):
        self.assertAllowed(self.root)

    def test_device_detail_reaches_polkit(self):
        narrow = self.attach(self.root, "sim:narrow")
        self.assertEqual(self.user.call1(narrow, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {}), "stop")
        self.user.device(narrow, "Reset")
        with self.unchanged():
            with self.assertRaises(DBusError) as cm:
                self.user.call(self.pk, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
        self.assertEqual(cm.exception.name, h.E_ACCESS_DENIED)
        # set-state on one device is not manage-devices.
        with self.unchanged():
            with self.assertRaises(DBusError) as cm:
                self.user.manager("DetachDevice", "s", "sim_narrow")
        self.assertEqual(cm.exception.name, h.E_ACCESS_DENIED)

    def ctl_as_user(self, *args, terminal_input=None):
        """vfiomigctl as vfmtest; with terminal_input, on a terminal (script(1) makes the pty)
        whose keyboard sends terminal_input once the password prompt shows."""
        cmd = h.user_cmd(TEST_USER, [str(h.CLI), f"--address={self.bus.address}", *args])
        if terminal_input is None:
            return subprocess.run(cmd, capture_output=True, text=True, env=h.clean_env(), timeout=60,
                                  stdin=subprocess.DEVNULL)
        # polkit-agent-helper-1, which checks the password, is setuid and so ignores
        # DBUS_SYSTEM_BUS_ADDRESS: it reaches polkitd at the standard socket path only. In a mount
        # namespace of the client's own, the private bus is bound there.
        bind = ("{ if [ -d /run/dbus ]; then mount -t tmpfs tmpfs /run/dbus; "
                "else mount -t tmpfs tmpfs /run && mkdir /run/dbus; fi; } && touch /run/dbus/system_bus_socket && "
                f"mount --bind {shlex.quote(str(self.bus.socket))} /run/dbus/system_bus_socket && "
                f"exec {' '.join(shlex.quote(c) for c in cmd)}")
        inner = ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind]
        proc = subprocess.Popen(["script", "-qefc", " ".join(shlex.quote(c) for c in inner), "/dev/null"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=h.clean_env())
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        seen = b""
        deadline = time.monotonic() + 60
        while b"Password:" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
        self.assertIn(b"Password:", seen, "pkttyagent never asked for the password on the terminal")
        proc.stdin.write(terminal_input.encode() + b"\n")
        proc.stdin.flush()
        rest, _ = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(cmd, proc.returncode, (seen + rest).decode(errors="replace"), "")

    def test_no_ask_password_names_the_action(self):
        dev = self.attach(self.root, "sim:interactive")
        with self.unchanged():
            r = self.ctl_as_user("--no-ask-password", "set-state", "sim_interactive", "stop")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("Not authorized to perform org.vfiomig1.set-state: interactive authentication is required",
                      r.stderr)
        self.assertEqual(self.root.dev_prop(dev, "State"), "running")

    def test_interactive_authorization_on_a_terminal(self):
        """Without a terminal nobody can be asked: refused. On one, vfiomigctl starts pkttyagent,
        polkit has it ask for vfmtest's password, and the call goes through."""
        for tool in ("pkttyagent", "script", "unshare"):
            if not shutil.which(tool):
                self.skipTest(f"{tool} is not installed")
        subprocess.run(["chpasswd"], input=f"{TEST_USER}:{TEST_USER_PASSWORD}\n", text=True, check=True)
        self.addCleanup(subprocess.run, ["passwd", "-d", TEST_USER], capture_output=True)
        dev = self.attach(self.root, "sim:interactive")
        with self.unchanged():
            r = self.ctl_as_user("set-state", "sim_interactive", "stop")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("interactive authentication is required", r.stderr)
        # A wrong password: polkit refuses, nothing changes.
        with self.unchanged():
            r = self.ctl_as_user("set-state", "sim_interactive", "stop", terminal_input="wrong-password")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("Not authorized to perform org.vfiomig1.set-state", r.stdout)
        r = self.ctl_as_user("set-state", "sim_interactive", "stop", terminal_input=TEST_USER_PASSWORD)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("AUTHENTICATING FOR org.vfiomig1.set-state", r.stdout)
        self.assertEqual(self.root.dev_prop(dev, "State"), "stop")

    def test_polkit_flood_as_nobody(self):
        space = self.root.manager("CreateAddressSpace", "a{sv}", {"backend": ("s", "sim")})[0]
        self.addCleanup(self.root.manager, "DestroyAddressSpace", "o", space)
        pid = self.daemon.pid
        flood = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "polkit_flood.py"),
                 self.bus.address, space]

        def run(rounds, batch, conns):
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + flood + \
                [str(rounds), str(batch), str(conns)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            self.assertEqual(out.returncode, 0, out.stderr)
            return json.loads(out.stdout)

        def settled():
            # Pending queries end when polkit answers; the last replies may race our reading.
            with contextlib.suppress(TimeoutError):
                h.wait_until(lambda: len(h.open_fds(pid)) <= fds_before + 2, 10,
                             what="the daemon's descriptors back to their count before the flood")
            return len(h.open_fds(pid)), rss()

        def rss():
            with open(f"/proc/{pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

        run(2, 50, 2)  # warm up the daemon's allocator and polkitd
        fds_before, rss_before = len(h.open_fds(pid)), rss()
        with self.unchanged():
            result = run(40, 30, 10)  # 6,000 calls in 20 fast rounds (300 each), 1,280 in 20 slow ones
        fds_after, rss_after = settled()
        h.log(f"polkit flood: {result}; fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB")
        replies, examples = result["replies"], result["examples"]
        self.assertEqual(result["sent"], 7280)
        self.assertEqual(sum(replies.values()), 7280, replies)
        # Shrunk memfds fail validation on the second dispatch, the rest are over the caps or
        # denied: each by the daemon's own named error, and no Map ever succeeds. A slow daemon
        # (the ASan build) may also see the bus itself refuse calls queued for it past the bus's
        # own limits on a connection's incoming messages and fds: that refusal is the bus's.
        self.assertLessEqual(set(replies), {h.E_INVALID_ARGS, h.E_LIMIT_EXCEEDED, h.E_ACCESS_DENIED,
                                            "org.freedesktop.DBus.Error.LimitsExceeded"}, replies)
        self.assertGreater(replies.get(h.E_INVALID_ARGS, 0), 0, replies)
        self.assertGreater(replies.get(h.E_LIMIT_EXCEEDED, 0), 0, replies)
        self.assertTrue(all("beyond the file" in e for e in examples[h.E_INVALID_ARGS]), examples)
        self.assertIn("Too many calls pending authorization on this connection (at most 16): wait for their replies",
                      examples[h.E_LIMIT_EXCEEDED])
        self.assertIn("Too many calls pending authorization for user 65534 (at most 64): wait for their replies",
                      examples[h.E_LIMIT_EXCEEDED])
        self.assertLessEqual(fds_after, fds_before + 2, "the flood left descriptors in the daemon")
        self.assertLess(rss_after - rss_before, 8 * 1024, "the flood grew the daemon's RSS by 8 MiB or more")
        self.assertEqual(self.root.call1(space, h.SPACE_IFACE, "ListMappings"), [])

    def test_validation_before_authorization(self):
        # Malformed requests get their precise error whoever asks (no polkit round trip needed).
        with self.unchanged():
            with self.assertRaises(DBusError) as cm:
                self.user.manager("GetDevice", "s", "sim:nope")
        self.assertEqual(cm.exception.name, h.E_NO_SUCH_DEVICE)

    def test_bus_policy_name_ownership(self):
        for client in (self.user, self.admin):
            with self.subTest(user=client.user):
                with self.assertRaises(DBusError) as cm:
                    client.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "RequestName", "su",
                                h.BUS_NAME, 0, dest="org.freedesktop.DBus")
                self.assertEqual(cm.exception.name, h.E_ACCESS_DENIED)
        self.assertEqual(self.root.name_owner_pid(h.BUS_NAME), self.daemon.pid)

    def test_bus_policy_no_property_set(self):
        with self.unchanged():
            with self.assertRaises(DBusError) as cm:
                self.user.call(self.pk, h.PROPS_IFACE, "Set", "ssv", DEVICE_IFACE, "State", ("s", "stop"))
        self.assertEqual(cm.exception.name, h.E_ACCESS_DENIED)

    def test_daemon_as_unprivileged_user_cannot_own_name(self):
        d = h.Daemon(self.bus, user=TEST_USER).start(wait=False)
        self.addCleanup(d.stop, None)
        try:
            rc = d.proc.wait(10)
        except h.subprocess.TimeoutExpired:
            self.fail("vfiomigd as vfmtest neither owned the name nor exited:\n" + d.log())
        self.assertNotEqual(rc, 0)
        self.assertIn("org.vfiomig1", d.log())
        self.assertEqual(self.root.name_owner_pid(h.BUS_NAME), self.daemon.pid)


class WithoutPolkit(PolkitCase):
    with_polkit = False

    def test_polkit_absent(self):
        self.assertFalse(self.root.name_has_owner(h.POLKIT_NAME))

    def test_unprivileged_user_refused(self):
        self.assertRefused(self.user, "polkit")

    def test_admin_group_refused(self):
        self.assertRefused(self.admin, "polkit")

    def test_unprivileged_user_reads(self):
        self.assertEqual(self.list_devices(self.user), self.list_devices())
        self.assertEqual(self.user.dev_prop(self.pk, "State"), "running")

    def test_root_allowed(self):
        self.assertAllowed(self.root)


if __name__ == "__main__":
    h.main([h.require_root,
            lambda: h.require_programs("dbus-daemon", "busctl", "setpriv", "unshare", "useradd", "userdel",
                                       "groupadd", "groupdel", h.Polkitd.POLKITD),
            lambda: h.require_files(h.BUS_POLICY, h.POLKIT_POLICY),
            h.require_mount_namespaces, h.require_daemon])
