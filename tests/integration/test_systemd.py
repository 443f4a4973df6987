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

Without a service manager, the notification protocol played by the test itself (FakeServiceManager:
a $NOTIFY_SOCKET it reads, and an fd store it hands back as $LISTEN_FDS):

* A second vfiomigd on a bus where org.vfiomig1 is owned exits non-zero, saying so, without
  "Serving org.vfiomig1." and without READY=1; the first keeps the name and keeps answering.
* A saved state record that is wrong -- every field in turn given a value of the wrong type,
  values out of range, an array past its cap, nesting past the parser's depth, text that is no
  JSON, no intact state at all -- is refused with one log line naming the field: the daemon does
  not crash, reports READY=1 with nothing restored and a STATUS= that says so, sends no
  FDSTOREREMOVE and no FDSTORE (the store keeps every descriptor: no crash loop can end in the
  service manager releasing it), and exits 0 on SIGTERM. The same store with the good record
  then restores every device, space and mapping.
"""

import array
import json
import os
import re
import select
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dbus_wire as w  # noqa: E402
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


class FakeServiceManager:
    """The service manager's side of sd_notify(3) and the fd store, as far as vfiomigd uses them:
    a datagram socket for $NOTIFY_SOCKET whose messages (and the descriptors they carry) are kept
    in order, and a store of named descriptors that FDSTORE=1 fills and FDSTOREREMOVE=1 empties,
    handed to the next daemon as $LISTEN_FDS/$LISTEN_FDNAMES at 3, 4, ... Like systemd
    (service_add_fd_store()), a descriptor of an open file description the store already holds is
    dropped, name and all (self.folded counts them)."""

    def __init__(self):
        self.dir = h.TempDir("vfm-notify-")
        self.path = str(self.dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.messages = []      # [(dict of KEY=VALUE, [fds])], in arrival order
        self.store = {}         # name -> fd, ours
        self.folded = []        # names whose descriptor was dropped as a duplicate
        self.lock = threading.Lock()
        self.done = False
        # Read all along, as a service manager does: a datagram queue that fills up blocks the
        # daemon's sd_notify() (net.unix.max_dgram_qlen is 10 by default).
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    def stop(self):
        self.done = True
        self.thread.join()
        self.sock.close()
        for fd in self.store.values():
            os.close(fd)
        self.store = {}
        self.dir.stop()

    def _reader(self):
        while not self.done:
            if not select.select([self.sock], [], [], 0.05)[0]:
                continue
            data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(253 * 4))
            fds = []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(payload[:len(payload) - len(payload) % a.itemsize])
                    fds.extend(a)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.lock:
                self.messages.append((fields, fds))
                if fields.get("FDSTORE") == "1":
                    for fd in fds:
                        if any(h.same_store_entry(fd, held) for held in self.store.values()):
                            self.folded.append(fields["FDNAME"])
                            os.close(fd)
                            continue
                        old = self.store.pop(fields["FDNAME"], None)
                        if old is not None:
                            os.close(old)
                        self.store[fields["FDNAME"]] = fd
                else:
                    for fd in fds:  # e.g. sd_notify_barrier()'s pipe: closing it answers
                        os.close(fd)
                if fields.get("FDSTOREREMOVE") == "1":
                    old = self.store.pop(fields.get("FDNAME"), None)
                    if old is not None:
                        os.close(old)

    def drain(self, timeout=0.0):
        """Lets messages that are on their way arrive."""
        time.sleep(timeout + 0.06)

    def wait_for(self, key, value=None, timeout=10.0, proc=None):
        """The first message with key (=value); None if the daemon exited or time ran out first."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [f for f in self.sent(key) if value is None or f[key] == value]
            if hits:
                return hits[0]
            if time.monotonic() >= deadline or (proc is not None and proc.poll() is not None):
                self.drain(0.1)
                hits = [f for f in self.sent(key) if value is None or f[key] == value]
                return hits[0] if hits else None
            time.sleep(0.02)

    def sent(self, key):
        with self.lock:
            return [fields for fields, _ in self.messages if key in fields]

    def daemon(self, bus, store=None, **kw):
        """A vfiomigd (not started) that notifies us and receives store (name -> fd) as its
        $LISTEN_FDS, in that order from fd 3 on."""
        store = dict(self.store if store is None else store)
        env = {"NOTIFY_SOCKET": self.path}
        wrapper = []
        if store:
            names = list(store)
            env.update(LISTEN_FDS=str(len(names)), LISTEN_FDNAMES=":".join(names))
            # $LISTEN_PID must be the daemon's own: set by the exec'ing wrapper, which also moves the
            # descriptors to 3, 4, ... (through numbers above all of them, so none is overwritten).
            wrapper = [sys.executable, "-S", "-c", (
                "import os, sys\n"
                "src = [int(x) for x in sys.argv[1].split(',')]\n"
                "hi = [os.dup(s) for s in src]\n"
                "for i, fd in enumerate(hi):\n"
                "    os.dup2(fd, 1000 + i)\n"
                "for fd in hi:\n"
                "    os.close(fd)\n"
                "for i in range(len(src)):\n"
                "    os.dup2(1000 + i, 3 + i)\n"
                "    os.close(1000 + i)\n"
                "os.environ['LISTEN_PID'] = str(os.getpid())\n"
                "os.execv(sys.argv[2], sys.argv[2:])\n"), ",".join(str(store[n]) for n in names)]
            kw["pass_fds"] = tuple(store.values())
        return h.Daemon(bus, wrapper=wrapper, env=env, **kw)


class SecondDaemon(h.unittest.TestCase):
    """Two vfiomigd on one bus: only the one that owns org.vfiomig1 may say it serves."""

    def setUp(self):
        self.bus = h.PrivateBus().start()
        self.addCleanup(self.bus.stop)
        self.first = h.Daemon(self.bus).start()
        self.addCleanup(self.first.stop)
        self.notify = FakeServiceManager()
        self.addCleanup(self.notify.stop)

    def test_second_daemon_exits_before_ready(self):
        self.bus.client.manager("AttachDevice", "sa{sv}", "sim:first", {})
        second = self.notify.daemon(self.bus).start(wait=False)
        self.addCleanup(second.stop, expect=None)
        try:
            rc = second.proc.wait(timeout=15)
        except h.subprocess.TimeoutExpired:
            rc = None
        log_text = second.log()
        self.notify.drain(0.2)
        self.assertIsNotNone(rc, f"the second vfiomigd is still running without the name\n{log_text}")
        self.assertEqual(rc, 1, log_text)
        self.assertRegex(log_text, r"org\.vfiomig1 is owned by another process", log_text)
        self.assertNotIn("Serving org.vfiomig1.", log_text)
        self.assertEqual(self.notify.sent("READY"), [], "READY=1 from a daemon that does not own the name")
        # The first one still has the name and still answers.
        self.assertEqual(self.bus.client.name_owner_pid(h.BUS_NAME), self.first.pid)
        self.assertEqual([tuple(d)[0] for d in self.bus.client.manager("ListDevices")[0]], ["sim_first"])
        self.assertTrue(self.first.alive())


crc32c, state_memfd, read_state = h.crc32c, h.state_memfd, h.read_state


def wrong_value(v):
    """A value of another JSON type than v."""
    if isinstance(v, bool):
        return 1
    if isinstance(v, int):
        return "1"
    if isinstance(v, str):
        return 7
    if isinstance(v, list):
        return {"x": 1}
    if isinstance(v, dict):
        return [1]
    return "x"


def leaf_paths(v, path=()):
    """Every field of the record, by path (lists: their first entry only)."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield path + (k,)
            yield from leaf_paths(x, path + (k,))
    elif isinstance(v, list) and v:
        yield path + (0,)
        yield from leaf_paths(v[0], path + (0,))


def path_text(path):
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + p)
    return out


def with_value(record, path, value):
    copy = json.loads(json.dumps(record))
    target = copy
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return copy


NULL_PATHS = {("version",), ("devices", 0, "sim"), ("spaces", 0, "mappings", 0, "iova"), ("kernel", "containers")}


class RefusedState(h.unittest.TestCase):
    """A bad saved state is refused, the fd store kept whole, and the daemon never crashes."""

    @classmethod
    def setUpClass(cls):
        cls.bus = h.PrivateBus().start()
        cls.addClassCleanup(cls.bus.stop)
        cls.client = cls.bus.client
        # The predecessor: two devices, one in an address space with a mapping, the other stopped.
        fake = FakeServiceManager()
        cls.addClassCleanup(fake.stop)
        first = fake.daemon(cls.bus).start()
        try:
            space = cls.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "CreateAddressSpace", "a{sv}",
                                     {"backend": ("s", "sim"), "sim-mapping": ("s", "by-file")})
            gpu = cls.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "AttachDevice", "sa{sv}", "sim:gpu",
                                   {"state-size": ("t", 1 << 20), "dirty-rate": ("t", 1 << 20)})
            nic = cls.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "AttachDevice", "sa{sv}", "sim:nic", {})
            cls.client.call(gpu, h.DEVICE_IFACE, "AttachAddressSpace", "o", space)
            time.sleep(0.3)  # the running gpu rewrites blocks: "gens" gets entries
            cls.client.device(nic, "SetState", "sa{sv}", "stop", {})
            guest = os.memfd_create("vfm-guest", os.MFD_CLOEXEC)
            os.ftruncate(guest, 1 << 20)
            with w.WireConnection(cls.bus.address) as wire:
                wire.call(h.BUS_NAME, space, h.SPACE_IFACE, "Map", "htttas",
                          [0, 0, 1 << 20, 1 << 30, ["read", "write"]], [guest])
            os.close(guest)
        finally:
            first.stop()
        fake.drain(0.2)
        states = [n for n in fake.store if n.startswith("state-")]
        assert len(states) == 1, fake.store
        cls.seq, cls.record = read_state(fake.store[states[0]])
        # Everything else, as the service manager would hand it back.
        cls.fds = {n: os.dup(fd) for n, fd in fake.store.items() if not n.startswith("state-")}
        cls.addClassCleanup(lambda: [os.close(fd) for fd in cls.fds.values()])
        # One entry per open file description (fd-table.h): three files, three entries.
        users = sorted(u for name in cls.fds for u in h.entry_users(cls.record)[name])
        assert users == ["map-s0-0", "sim-device-gpu", "sim-device-nic"], (sorted(cls.fds), cls.record)
        assert not fake.folded, fake.folded
        assert cls.record["devices"][0]["sim"].get("gens"), cls.record

    def start(self, state_fds):
        """A daemon receiving our descriptors plus state_fds ({name: fd}, closed here)."""
        fake = FakeServiceManager()
        self.addCleanup(fake.stop)
        for name, fd in self.fds.items():
            fake.store[name] = os.dup(fd)
        fake.store.update(state_fds)
        handed = {n: os.fstat(fd).st_ino for n, fd in fake.store.items()}
        daemon = fake.daemon(self.bus).start(wait=False)
        self.addCleanup(daemon.stop, expect=None)
        ready = fake.wait_for("READY", "1", timeout=15, proc=daemon.proc)
        return fake, daemon, handed, ready

    def assertRefused(self, state_fds, fragment):
        fake, daemon, handed, ready = self.start(state_fds)
        alive = daemon.alive()
        listed = (self.client.manager("ListDevices"), self.client.manager("ListAddressSpaces")) if ready else None
        rc = daemon.terminate()
        log_text = daemon.log()
        daemon.stop(expect=None)
        self.assertTrue(alive, f"vfiomigd died\n{log_text}")
        self.assertIsNotNone(ready, f"no READY=1\n{log_text}")
        self.assertEqual(rc, 0, "SIGTERM did not end it cleanly")
        refusals = [line for line in log_text.splitlines() if "Refusing the saved state" in line]
        self.assertEqual(len(refusals), 1, log_text)
        self.assertIn(fragment, refusals[0])
        self.assertIn("the fd store keeps all 4 descriptors untouched", refusals[0])
        # What it said while serving (the last ones are about stopping).
        status = [f["STATUS"] for f in fake.sent("STATUS")]
        self.assertTrue(any("saved state was refused" in st for st in status), status)
        self.assertEqual(listed, ([[]], [[]]))
        fake.drain(0.05)  # it has exited: what it sent is queued, the reader takes it within 50 ms
        # Nothing removed, nothing replaced: the store holds exactly what it handed over.
        self.assertEqual(fake.sent("FDSTOREREMOVE"), [])
        self.assertEqual(fake.sent("FDSTORE"), [])
        self.assertEqual({n: os.fstat(fd).st_ino for n, fd in fake.store.items()}, handed)
        return refusals[0]

    def refuse_record(self, record, fragment):
        body = record if isinstance(record, bytes) else json.dumps(record).encode()
        return self.assertRefused({f"state-{self.seq + 1}": state_memfd(self.seq + 1, body)}, fragment)

    def test_every_field_of_the_wrong_type(self):
        paths = list(leaf_paths(self.record))
        self.assertGreater(len(paths), 35, paths)
        for path in paths:
            original = self.record
            for p in path:
                original = original[p]
            # Every field once with a value of another type (test-persist-state.c tries every
            # type on every field without a daemon); null on a few.
            for bad in (wrong_value(original),) + ((None,) if path in NULL_PATHS else ()):
                with self.subTest(field=path_text(path), value=bad):
                    line = self.refuse_record(with_value(self.record, path, bad), path_text(path))
                    self.assertRegex(line, r"must be|outside|is missing|does not match|exactly one")

    def test_out_of_range(self):
        # A sample with a daemon behind it; test-persist-state.c has them all.
        cases = [
            (("version",), 3, "version is 3"),
            (("version",), 0, "version is 0"),
            (("fds", 0, "name"), "state-1", "fds[0].name 'state-1' is the name of a state"),
            (("fds", 0, "users"), [], "fds[0].users lists no users"),
            (("fds",), [], "spaces[0].mappings[0] names the descriptor 'map-s0-0', which no entry of fds lists"),
            (("version",), -1, "version must be an unsigned integer, not negative"),
            (("next-space",), 1 << 32, "next-space is 4294967296"),
            (("devices", 0, "sim", "state-size"), 0, "devices[0].sim.state-size is 0"),
            (("devices", 0, "sim", "state-size"), 1.5, "devices[0].sim.state-size must be an unsigned integer"),
            (("devices", 0, "sim", "flags"), 0, "devices[0].sim"),
            (("devices", 0, "sim", "state"), "bogus", "devices[0].sim.state 'bogus'"),
            (("devices", 0, "sim", "gens", 0), [1 << 20, 1], "devices[0].sim.gens[0][0] is 1048576"),
            (("devices", 0, "sim", "gens", 0, 1), 1 << 32, "devices[0].sim.gens[0][1] is 4294967296"),
            (("devices", 0, "address"), "sim:no/such", "devices[0].sim is a simulated device's record"),
            (("devices", 0, "clients"), [":1.%d" % i for i in range(17)], "devices[0].clients has 17 entries"),
            (("devices", 0, "backend"), "iommufd", "devices[0].backend 'iommufd' does not match its sim record"),
            (("spaces", 0, "mappings", 0, "access"), 0, "spaces[0].mappings[0].access is 0"),
            (("spaces", 0, "mappings", 0, "iova"), (1 << 64) - 1, "spaces[0].mappings[0] ends past 2^64"),
            (("spaces", 0, "mappings", 0, "serial"), 1 << 20, "spaces[0].mappings[0].serial is 1048576"),
            (("spaces", 1), {"id": "s0", "backend": "sim", "prepared": False, "next-serial": 0,
                             "sim-mapping": "by-file"}, "spaces[1].id 's0' is also the id of spaces[0]"),
        ]
        for path, value, fragment in cases:
            with self.subTest(field=path_text(path), value=str(value)[:40]):
                record = json.loads(json.dumps(self.record))
                target = record
                for p in path[:-1]:
                    target = target[p]
                if isinstance(target, list) and path[-1] == len(target):
                    target.append(value)
                else:
                    target[path[-1]] = value
                self.refuse_record(record, fragment)

    def test_huge_and_deep(self):
        # Records of several MiB (70000 mappings, 5 million values) are in test-persist-state.c:
        # this file's CRC32C in Python takes seconds per MiB.
        cases = [
            ("5000 devices", with_value(self.record, ("devices",), [self.record["devices"][1]] * 5000),
             "devices has 5000 entries, more than the 4096 allowed"),
        ]
        for what, record, fragment in cases:
            with self.subTest(what):
                self.refuse_record(record, fragment)
        deep = b'{"version": 1, "next-space": 1, "devices": ' + b"[" * 100000 + b"]" * 100000 + b"}"
        for what, body, fragment in (
                ("nesting 100000 deep", deep, "the state is not JSON: nesting too deep"),
                ("not JSON", b"{version: 1}", "the state is not JSON"),
                ("a NUL byte", json.dumps(self.record).encode()[:-1] + b"\0}", "the state contains a NUL byte"),
                ("null", b"null", "the state must be an object, not null")):
            with self.subTest(what):
                self.refuse_record(body, fragment)

    def test_no_intact_state(self):
        body = json.dumps(self.record).encode()
        self.assertRefused({f"state-{self.seq}": state_memfd(self.seq, body, crc=crc32c(body) ^ 1)},
                           "no saved state is intact")

    def test_good_record_restores_everything(self):
        """The control: the very same descriptors with the record as it was saved."""
        fake, daemon, _, ready = self.start({f"state-{self.seq}": state_memfd(self.seq,
                                                                              json.dumps(self.record).encode())})
        self.assertIsNotNone(ready, daemon.log())
        self.assertNotIn("Refusing", daemon.log())
        self.assertEqual(sorted(tuple(d)[0] for d in self.client.manager("ListDevices")[0]), ["sim_gpu", "sim_nic"])
        self.assertEqual(self.client.dev_prop("/org/vfiomig1/device/sim_nic", "State"), "stop")
        self.assertEqual(self.client.call1("/org/vfiomig1/space/s0", h.SPACE_IFACE, "ListMappings"),
                         [[1 << 30, 1 << 20, 0, ["read", "write"]]])
        self.assertNotIn("saved state was refused", fake.sent("STATUS")[-1]["STATUS"])
        self.assertEqual(daemon.stop(expect=None), 0, daemon.log())


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

    def test_quick_restarts_within_the_start_limit(self):
        """A rolling upgrade restarts the daemon several times within seconds: more than
        systemd's default start limit (5 starts in 10 s) allows. The unit's own limit lets 12 quick
        restarts through, each one serving."""
        self.install()
        self.start_unit()
        props = self.manager.show(UNIT, "StartLimitBurst", "StartLimitIntervalUSec")
        self.assertEqual(props, {"StartLimitBurst": "30", "StartLimitIntervalUSec": "1min"})
        pid = int(self.manager.show(UNIT, "MainPID")["MainPID"])
        for i in range(12):
            r = self.manager.systemctl("restart", UNIT, check=False, timeout=20)
            self.assertEqual(r.returncode, 0, f"restart {i + 1}: {r.stderr.strip()}{self.diagnostics()}")
            props = self.manager.show(UNIT, "ActiveState", "MainPID")
            self.assertEqual(props["ActiveState"], "active", f"restart {i + 1}{self.diagnostics()}")
            self.assertNotEqual(int(props["MainPID"]), pid)
            pid = int(props["MainPID"])
            self.assertEqual(self.client.name_owner_pid(h.BUS_NAME), pid)

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
