#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vfiomigctl (build/client/vfiomigctl) against the real vfiomigd on a private bus (--address).

Every command (list, status, attach --option, detach, set-state [--recover], set-states
[--force-without-p2p], reset, precopy-info) in human, --json=short and --json=pretty output, checked
against what busctl reads from the daemon; exit codes (0 success, 1 refused or failed, 2 usage);
error messages are one human line prefixed with the program name, and nothing goes to stdout on
failure.

The token off the command line: 'incoming --token-file FILE' creates FILE 0600 (never replacing
anything, never following a symlink) and prints everything but the token; '-q incoming' prints the
token alone; 'migrate --token-file FILE' and '--token -' (standard input) carry a real migration
(the daemon migrating between two of its own devices over loopback); an unreadable, short, long
or non-hex token is a usage error (exit 2) before any bus is contacted, and never echoed.

Step 6: 'migrate' to a raw destination (test_hostile_destination.RawDestination) that closes
right after the last byte exits 3 with what to do; 'job', 'jobs' (human and JSON) show the phase,
Committed and Transport; 'wait' on it exits 3 at once; 'cancel' is refused (Busy), a bad outcome
is a usage error; 'resolve JOB not-committed' runs the devices again with their state, 'resolve
JOB committed' leaves them stopped and completes the job, and a second resolve is refused.
'migrate --stall-timeout=' reaches the daemon (its InvalidArgs under 1 s; a destination that stops
reading fails the job with PeerLost, devices running, state intact); 'incoming --setup-timeout='
(InvalidArgs under 1 s; a job nobody joins fails with Timeout); 'save-state --timeout=' against a
FIFO nobody reads ends in the daemon's Timeout with the device back in stop; 'cancel-transfer'
ends a running save-state (Cancelled there) and is refused with NoTransfer when none runs.
"""

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
from test_hostile_destination import RawDestination  # noqa: E402
from test_migration import DEVICE_IFACE, MiB, P2P, PRE, SC, Side  # noqa: E402

V = lambda sig, value: (sig, value)  # noqa: E731


class CliCase(h.DaemonTestCase):

    def ctl(self, *args, address=None, expect=0, stdin=None):
        cmd = [str(h.CLI), f"--address={address or self.bus.address}"] + [str(a) for a in args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=h.clean_env(), timeout=60,
                           **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))
        if expect is not None:
            self.assertEqual(r.returncode, expect,
                             f"{' '.join(cmd)}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def ctl_json(self, *args, mode="short"):
        r = self.ctl(f"--json={mode}", *args)
        if mode == "short":
            self.assertEqual(len(r.stdout.strip().splitlines()), 1, f"--json=short is not one line: {r.stdout!r}")
        try:
            return json.loads(r.stdout)
        except ValueError as e:
            self.fail(f"--json={mode} output is no JSON ({e}): {r.stdout!r}")

    def assertHumanError(self, r, *fragments, code=1):
        self.assertEqual(r.returncode, code, f"stdout: {r.stdout}\nstderr: {r.stderr}")
        self.assertEqual(r.stdout, "", "output on stdout despite the failure")
        lines = r.stderr.strip().splitlines()
        self.assertTrue(lines, "no error message")
        self.assertTrue(lines[0].startswith("vfiomigctl: "), f"message not prefixed with the program: {lines[0]!r}")
        text = r.stderr
        for bad in ("(null)", "%m", "Unknown error", "Traceback"):
            self.assertNotIn(bad, text)
        # A human message, not a bare D-Bus error name.
        self.assertNotRegex(lines[0], r"^vfiomigctl: (org\.freedesktop\.DBus|org\.vfiomig1)\.Error\.\w+$")
        self.assertLessEqual(len(lines), 3, f"error too long: {text}")
        for f in fragments:
            self.assertIn(f.lower(), text.lower())

    def state(self, path):
        return self.client.dev_prop(path, "State")


class Usage(CliCase):

    def test_help_and_version(self):
        r = self.ctl("--help")
        self.assertIn("set-states STATE DEV...", r.stdout)
        for text in ("resolve JOB committed|not-committed", "cancel-transfer DEV", "--setup-timeout=MS",
                     "[--stall-timeout=MS] [--no-io-uring] [--no-wait]"):
            self.assertIn(text, r.stdout)
        r = self.ctl("--version")
        self.assertRegex(r.stdout, r"^vfiomigctl \d+\.\d+")

    def test_verb_help(self):
        # A verb's own lines of the help: its synopsis, the options every verb takes and its own.
        r = self.ctl("migrate", "--help")
        self.assertTrue(r.stdout.startswith("vfiomigctl [OPTIONS...] migrate ...\n"), r.stdout)
        for text in ("  migrate DEV... --to=HOST[:PORT]", "--address=ADDRESS", "--to=HOST[:PORT]", "--no-wait",
                     "--token-file=FILE", "--stall-timeout=MS", "JOB is a migration id"):
            self.assertIn(text, r.stdout)
        for text in ("Commands:", "  incoming DEV", "--backend=", "--run ", "--setup-timeout", "sim-dma"):
            self.assertNotIn(text, r.stdout)
        r = self.ctl("space", "create", "--help")
        self.assertIn("  space create ", r.stdout)
        self.assertIn("--backend=iommufd|legacy|sim", r.stdout)
        self.assertNotIn("  space list", r.stdout)
        self.assertNotIn("--to=", r.stdout)
        # --help alone or after an unknown word: the whole help, exit 0; -h before the verb works too.
        for args in (["--help"], ["bogus", "--help"]):
            with self.subTest(args=args):
                self.assertIn("Commands:", self.ctl(*args).stdout)
        r = self.ctl("-h", "list")
        self.assertIn("  list ", r.stdout)
        self.assertNotIn("Commands:", r.stdout)

    def test_usage_errors_exit_2(self):
        cases = [
            ([], "missing command"),
            (["bogus"], "unknown command"),
            (["attach"], "too few"),
            (["list", "extra"], "too many"),
            (["--json=bogus", "list"], "bogus"),
            (["--timeout=abc", "list"], "timeout"),
            (["--no-such-option", "list"], "no-such-option"),
            (["attach", ""], "empty"),
            (["attach", "sim:x", "--option", "novalue"], "key=value"),
            (["attach", "sim:x", "--option", "nosuchkey=1"], "nosuchkey"),
            (["attach", "sim:x", "--option", "state-size=abc"], "state-size"),
            (["attach", "sim:x", "--option", "mtty-quirks=maybe"], "mtty-quirks"),
            (["attach", "sim:x", "--option", "seed=1", "--option", "seed=2"], "more than once"),
            (["list", "--option", "seed=1"], "only valid with 'attach'"),
            (["list", "--recover=running"], "only valid with 'set-state'"),
            (["list", "--force-without-p2p"], "only valid with 'set-states'"),
            (["set-state", "sim_a", "bogus"], "bogus"),
            (["set-state", "sim_a", "error"], "error"),
            (["set-state", "sim_a", "stop", "--recover=bogus"], "bogus"),
            (["set-states", "stop"], "too few"),
            (["set-states", "bogus", "sim_a"], "bogus"),
            (["resolve", "1"], "too few"),
            (["resolve", "1", "Committed"], "invalid outcome 'committed'"),
            (["resolve", "1", "yes"], "invalid outcome 'yes'"),
            (["resolve", "x", "committed"], "x"),
            (["resolve", "1", "committed", "--stall-timeout=1s"], "only valid with"),
            (["cancel-transfer"], "too few"),
            (["cancel-transfer", "sim_a", "--setup-timeout=1s"], "only valid with 'incoming'"),
            (["incoming", "sim_a", "--setup-timeout=0"], "--setup-timeout="),
            (["incoming", "sim_a", "--setup-timeout=1fortnight"], "--setup-timeout="),
            (["migrate", "sim_a", "--to=h", "--token=-", "--stall-timeout=-1"], "--stall-timeout="),
            (["migrate", "sim_a", "--to=h", "--token=-", "--setup-timeout=1s"], "only valid with 'incoming'"),
            (["--timeout=86400.001", "save-state", "sim_a", "/dev/null"], "at most a day"),
            (["--timeout=100000", "load-state", "sim_a", "/dev/null"], "at most a day"),
        ]
        for args, fragment in cases:
            with self.subTest(args=args):
                r = self.ctl(*args, expect=None)
                self.assertHumanError(r, fragment, code=2)

    def test_usage_errors_need_no_bus(self):
        r = self.ctl("set-state", "sim_a", "bogus", address="unix:path=/nonexistent/socket", expect=None)
        self.assertHumanError(r, "bogus", code=2)

    def test_no_bus(self):
        r = self.ctl("list", address="unix:path=/nonexistent/socket", expect=None)
        self.assertHumanError(r, "/nonexistent/socket")

    def test_no_daemon_on_bus(self):
        empty = h.PrivateBus().start()
        self.addCleanup(empty.stop)
        r = self.ctl("list", address=empty.address, expect=None)
        self.assertHumanError(r)
        self.assertIn("Hint:", r.stderr)


class Commands(CliCase):

    def test_list_empty(self):
        self.assertEqual(self.ctl("list").stdout, "No devices attached.\n")
        self.assertEqual(self.ctl_json("list"), [])

    def test_attach_human(self):
        r = self.ctl("attach", "sim:c1")
        self.assertEqual(r.stdout, "Attached sim:c1 as sim_c1 (/org/vfiomig1/device/sim_c1)\n")
        self.assertEqual(self.list_devices(), [("sim_c1", "sim:c1", "/org/vfiomig1/device/sim_c1")])

    def test_attach_json(self):
        self.assertEqual(self.ctl_json("attach", "sim:c2"), {"id": "sim_c2", "object": "/org/vfiomig1/device/sim_c2"})
        self.assertEqual(self.ctl_json("attach", "sim:c3", mode="pretty"),
                         {"id": "sim_c3", "object": "/org/vfiomig1/device/sim_c3"})

    def test_attach_options(self):
        self.ctl("attach", "sim:opt", "--option", "state-size=512K", "--option", "flags=stop-copy,p2p",
                 "--option", "precopy-size=0", "--option", "seed=0x10", "--option", "mtty-quirks=yes",
                 "--option", "fail-arcs=stop>stop-copy")
        path = "/org/vfiomig1/device/sim_opt"
        self.assertEqual(self.client.dev_prop(path, "MigrationFlags"), ["stop-copy", "p2p"])
        self.assertEqual(self.client.dev_prop(path, "StopCopySize"), h.sim_stream_size(512 * 1024))
        # fail-arcs arrived: stop -> stop-copy fails.
        r = self.ctl("set-state", "sim_opt", "stop-copy", expect=None)
        self.assertHumanError(r)

    def test_attach_errors(self):
        self.ctl("attach", "sim:dup")
        before = self.list_devices()
        for args, fragment in ((["attach", "sim:dup"], "sim"), (["attach", "sim:bad-name"], "sim:bad-name"),
                               (["attach", "0000:fe:1f.7"], "0000:fe:1f.7"),
                               (["attach", "sim:big", "--option", "state-size=1T"], "state-size")):
            with self.subTest(args=args):
                self.assertHumanError(self.ctl(*args, expect=None), fragment)
                self.assertEqual(self.list_devices(), before)

    def test_list_human_and_json(self):
        self.attach("sim:l1")
        self.attach("sim:l2", {"flags": V("as", ["stop-copy"])})
        self.client.call(h.DEVICE_PATH_PREFIX + "sim_l1", h.DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
        out = self.ctl("list").stdout.splitlines()
        self.assertEqual(out[0].split(), ["ID", "ADDRESS", "DRIVER", "BACKEND", "STATE", "MIGRATABLE"])
        rows = sorted(line.split() for line in out[1:])
        self.assertEqual(rows, [["sim_l1", "sim:l1", "sim", "sim", "stop", "yes"],
                                ["sim_l2", "sim:l2", "sim", "sim", "running", "yes"]])
        for mode in ("short", "pretty"):
            data = self.ctl_json("list", mode=mode)
            self.assertEqual(sorted((d["id"], d["address"], d["object"], d["state"], d["migratable"],
                                     d["driver"], d["backend"]) for d in data),
                             [("sim_l1", "sim:l1", "/org/vfiomig1/device/sim_l1", "stop", True, "sim", "sim"),
                              ("sim_l2", "sim:l2", "/org/vfiomig1/device/sim_l2", "running", True, "sim", "sim")])

    def test_status_manager(self):
        self.attach("sim:s1")
        out = self.ctl("status").stdout
        fields = dict(re.findall(r"(?m)^(\w+): (.*)$", out))
        self.assertEqual(fields["SimulationAllowed"], "yes")
        self.assertEqual(fields["DeviceCount"], "1")
        self.assertEqual(fields["Version"], self.client.mgr_prop("Version"))
        self.assertEqual(fields["MaxDevices"], str(self.client.mgr_prop("MaxDevices")))
        self.assertIn("sim_s1", out)
        j = self.ctl_json("status")
        self.assertEqual(j["device_count"], 1)
        self.assertTrue(j["simulation_allowed"])
        self.assertEqual(j["kernel_features"], self.client.mgr_prop("KernelFeatures"))
        self.assertEqual(j["max_devices"], self.client.mgr_prop("MaxDevices"))
        self.assertEqual([d["id"] for d in j["devices"]], ["sim_s1"])
        self.assertEqual(self.ctl_json("status", mode="pretty"), j)

    def test_status_device(self):
        size = 3 * 65536 + 5
        self.attach("sim:s2", {"state-size": V("t", size), "precopy-size": V("t", 0)})
        path = "/org/vfiomig1/device/sim_s2"
        for dev in ("sim_s2", "sim:s2", path):
            with self.subTest(dev=dev):
                out = self.ctl("status", dev).stdout
                fields = dict(re.findall(r"(?m)^(\w+): (.*)$", out))
                self.assertEqual(fields["Id"], "sim_s2")
                self.assertEqual(fields["Object"], path)
                self.assertEqual(fields["Address"], "sim:s2")
                self.assertEqual(fields["Driver"], "sim")
                self.assertEqual(fields["Backend"], "sim")
                self.assertEqual(fields["MigrationFlags"], "stop-copy p2p pre-copy")
                self.assertEqual(fields["Migratable"], "yes")
                self.assertEqual(fields["State"], "running")
                self.assertTrue(fields["StopCopySize"].startswith(str(h.sim_stream_size(size)) + " "))
                self.assertIn("LastTransition", fields)
        j = self.ctl_json("status", "sim_s2")
        self.assertEqual(j["stop_copy_size"], h.sim_stream_size(size))
        self.assertEqual(j["migration_flags"], ["stop-copy", "p2p", "pre-copy"])
        self.assertEqual((j["id"], j["address"], j["object"], j["state"], j["migratable"]),
                         ("sim_s2", "sim:s2", path, "running", True))
        self.assertEqual(j["migratable_reason"], "")
        self.assertHumanError(self.ctl("status", "sim_nope", expect=None), "sim_nope")

    def test_migration_sequence(self):
        self.attach("sim:m")
        path = "/org/vfiomig1/device/sim_m"
        self.assertEqual(self.ctl("set-state", "sim_m", "pre-copy").stdout, "pre-copy\n")
        self.assertEqual(self.state(path), "pre-copy")
        m = re.fullmatch(r"initial: (\d+) bytes, dirty: (\d+) bytes\n", self.ctl("precopy-info", "sim:m").stdout)
        self.assertIsNotNone(m)
        self.assertGreater(int(m.group(1)), 0)
        j = self.ctl_json("precopy-info", path)
        self.assertEqual(sorted(j), ["dirty_bytes", "initial_bytes"])
        self.assertGreater(j["initial_bytes"], 0)
        self.assertEqual(self.ctl_json("set-state", "sim:m", "stop-copy"),
                         {"id": "sim_m", "object": path, "state": "stop-copy"})
        self.assertEqual(self.ctl("-q", "set-state", path, "stop").stdout, "")
        self.assertEqual(self.state(path), "stop")
        self.assertEqual(self.ctl("set-state", "sim_m", "running").stdout, "running\n")

    def test_set_state_errors(self):
        self.attach("sim:e")
        path = "/org/vfiomig1/device/sim_e"
        self.ctl("set-state", "sim_e", "stop-copy")
        self.assertHumanError(self.ctl("set-state", "sim_e", "pre-copy", expect=None), "pre-copy")
        self.assertEqual(self.state(path), "stop-copy")
        self.assertHumanError(self.ctl("precopy-info", "sim_e", expect=None))
        self.assertHumanError(self.ctl("set-state", "sim_nope", "stop", expect=None), "sim_nope")

    def test_set_state_recover(self):
        self.attach("sim:r", {"fail-arcs": V("as", ["stop>stop-copy"])})
        r = self.ctl("set-state", "sim_r", "stop-copy", "--recover=running", expect=None)
        self.assertHumanError(r, "stop-copy")
        self.assertEqual(self.state("/org/vfiomig1/device/sim_r"), "running")

    def test_set_states(self):
        self.attach("sim:g1")
        self.attach("sim:g2")
        out = self.ctl("set-states", "stop", "sim_g1", "sim:g2").stdout.splitlines()
        self.assertEqual(out[0].split(), ["ID", "STATE"])
        self.assertEqual([line.split() for line in out[1:]], [["sim_g1", "stop"], ["sim_g2", "stop"]])
        self.assertEqual(self.ctl_json("set-states", "running", "sim_g1", "/org/vfiomig1/device/sim_g2"),
                         [{"id": "sim_g1", "object": "/org/vfiomig1/device/sim_g1", "state": "running"},
                          {"id": "sim_g2", "object": "/org/vfiomig1/device/sim_g2", "state": "running"}])

    def test_set_states_p2p(self):
        self.attach("sim:p1")
        self.attach("sim:p2", {"flags": V("as", ["stop-copy", "pre-copy"])})
        self.assertHumanError(self.ctl("set-states", "stop", "sim_p1", "sim_p2", expect=None), "p2p")
        self.assertEqual(self.state("/org/vfiomig1/device/sim_p1"), "running")
        self.ctl("set-states", "stop", "sim_p1", "sim_p2", "--force-without-p2p")
        self.assertEqual(self.state("/org/vfiomig1/device/sim_p2"), "stop")
        self.assertHumanError(self.ctl("set-states", "stop", "sim_p1", "sim_nope", expect=None), "sim_nope")

    def test_reset(self):
        self.attach("sim:rs")
        self.ctl("set-state", "sim_rs", "stop-copy")
        r = self.ctl("reset", "sim_rs")
        self.assertEqual(r.stdout, "")
        self.assertEqual(self.state("/org/vfiomig1/device/sim_rs"), "running")
        self.assertHumanError(self.ctl("reset", "sim_nope", expect=None), "sim_nope")

    def test_detach(self):
        self.attach("sim:d1")
        self.attach("sim:d2")
        self.attach("sim:d3")
        self.ctl("set-state", "sim_d2", "stop")
        self.assertHumanError(self.ctl("detach", "sim_d2", expect=None), "sim_d2")
        self.assertEqual(len(self.list_devices()), 3)
        self.ctl("detach", "sim_d1")
        self.ctl("detach", "sim:d3")
        self.ctl("reset", "sim_d2")
        self.ctl("detach", "/org/vfiomig1/device/sim_d2")
        self.assertEqual(self.list_devices(), [])
        self.assertHumanError(self.ctl("detach", "sim_d1", expect=None), "sim_d1")

    def test_unknown_objects_are_named(self):
        # The daemon's named errors, not the bus's UnknownObject, with the client's hint.
        r = self.ctl("cancel", "999", expect=None)
        self.assertHumanError(r, "No migration job 999", "vfiomigctl jobs")
        r = self.ctl("space", "show", "s999", expect=None)
        self.assertHumanError(r, "No address space at /org/vfiomig1/space/s999", "vfiomigctl space list")

    def test_quiet(self):
        for args in (["attach", "sim:q"], ["list"], ["status"], ["status", "sim_q"], ["set-state", "sim_q", "stop"],
                     ["set-states", "running", "sim_q"], ["reset", "sim_q"]):
            with self.subTest(args=args):
                self.assertEqual(self.ctl("-q", *args).stdout, "")
        self.assertEqual(self.state("/org/vfiomig1/device/sim_q"), "running")


class Spaces(CliCase):
    """The address space verbs and sim-dma, end to end: what a device writes by DMA lands in the
    mapped file at the right offset, and reads come back in each output form."""

    def test_space_map_and_sim_dma(self):
        tmp = h.TempDir("vfm-ctl-space-")
        self.addCleanup(tmp.stop)
        ram = tmp / "ram"
        ram.write_bytes(bytes(2 * MiB))
        self.attach("sim:dma")
        r = self.ctl("space", "create", "--backend=sim")
        space = re.fullmatch(r"Created sim address space (\S+) \(/org/vfiomig1/space/\S+\)\n", r.stdout)
        self.assertIsNotNone(space, r.stdout)
        space = space.group(1)
        self.addCleanup(lambda: self.ctl("space", "destroy", space, expect=None))
        # The second MiB of the file at IOVA 1 MiB.
        self.assertEqual(self.ctl("map", space, f"--file={ram}", "--length=1M", "--iova=0x100000",
                                  "--offset=1M").stdout, "")
        self.ctl("attach-space", "sim_dma", space)
        self.ctl("sim-dma", "write", "sim_dma", "--iova=0x100010", "--data=hello")
        self.assertEqual(ram.read_bytes()[1 * MiB + 0x10:1 * MiB + 0x15], b"hello")
        self.assertEqual(ram.read_bytes().count(b"\0"), 2 * MiB - 5)
        self.assertRegex(self.ctl("sim-dma", "read", "sim_dma", "--iova=0x100010", "--length=5").stdout,
                         r"^00100010  68 65 6c 6c 6f +\|hello\|\n$")
        self.ctl("sim-dma", "read", "sim_dma", "--iova=0x100010", "--length=5", f"--output={tmp / 'out'}")
        self.assertEqual((tmp / "out").read_bytes(), b"hello")
        raw = subprocess.run([str(h.CLI), f"--address={self.bus.address}", "sim-dma", "read", "sim_dma",
                              "--iova=0x100010", "--length=5", "--output=-"],
                             capture_output=True, env=h.clean_env(), timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual((raw.returncode, raw.stdout), (0, b"hello"), raw.stderr)
        self.assertEqual(self.ctl_json("sim-dma", "read", "sim_dma", "--iova=0x100010", "--length=5"),
                         {"iova": 0x100010, "length": 5, "data": "aGVsbG8="})
        shown = self.ctl("space", "show", space).stdout
        self.assertIn("MappingCount: 1\n", shown)
        self.assertRegex(shown, r"\n0x100000 +0x100000 +0x100000 +rw\n")
        # The daemon refuses DMA outside the mappings, and says where.
        self.assertHumanError(self.ctl("sim-dma", "read", "sim_dma", "--iova=0x300000", "--length=5", expect=None),
                              "IOMMU fault", "0x300000", "not mapped")
        self.ctl("unmap", space, "--iova=0x100000", "--length=1M")
        self.assertHumanError(self.ctl("sim-dma", "write", "sim_dma", "--iova=0x100010", "--data=x", expect=None),
                              "IOMMU fault", "0x100010")
        self.assertEqual(ram.read_bytes()[1 * MiB + 0x10:1 * MiB + 0x15], b"hello")
        self.assertIn("MappingCount: 0\n", self.ctl("space", "show", space).stdout)
        # A device that does not exist is named as such.
        self.assertHumanError(self.ctl("sim-dma", "read", "sim_nope", "--iova=0", "--length=1", expect=None),
                              "sim_nope")


class JsonAfterChanges(CliCase):
    """Every verb that changes something prints, with --json, the object as it is afterwards, in
    the form status, space list and job use (or {id, object} of what it removed); without --json,
    nothing."""

    daemon_kwargs = {"args": ["--stream-listen=127.0.0.1:0"]}

    def test_every_changing_verb(self):
        tmp = h.TempDir("vfm-ctl-json-")
        self.addCleanup(tmp.stop)
        (tmp / "ram").write_bytes(bytes(1 << 20))
        (tmp / "blob").write_bytes(b"x" * 100)
        self.attach("sim:js")
        dev = "/org/vfiomig1/device/sim_js"
        self.ctl("set-state", "sim_js", "stop")
        out = self.ctl_json("reset", "sim_js")
        self.assertEqual((out["id"], out["object"], out["state"]), ("sim_js", dev, "running"))
        self.assertEqual(self.ctl_json("revoke-clients", "sim_js")["clients"], 0)
        self.assertEqual(self.ctl_json("blob", "set", "sim_js", tmp / "blob")["id"], "sim_js")
        space = self.ctl_json("space", "create", "--backend=sim")["id"]
        out = self.ctl_json("map", space, f"--file={tmp / 'ram'}", "--length=64K", "--iova=0x10000")
        self.assertEqual((out["id"], out["mapping_count"], out["pinned_bytes"]), (space, 1, 65536))
        out = self.ctl_json("attach-space", "sim_js", space)
        self.assertEqual(out["address_space"], f"/org/vfiomig1/space/{space}")
        self.assertEqual(self.ctl_json("unmap", space, "--iova=0x10000", "--length=64K")["mapping_count"], 0)
        self.assertEqual(self.ctl_json("detach", "sim_js"), {"id": "sim_js", "object": dev})
        self.assertEqual(self.ctl_json("space", "destroy", space),
                         {"id": space, "object": f"/org/vfiomig1/space/{space}"})
        self.attach("sim:js2")
        job = self.ctl_json("incoming", "sim_js2")["id"]
        out = self.ctl_json("cancel", str(job))
        self.assertEqual((out["id"], out["phase"]), (job, "cancelled"))
        # Text mode stays silent on success.
        self.assertEqual(self.ctl("reset", "sim_js2").stdout, "")


COMPLETION = h.SOURCE_ROOT / "client" / "completion" / "vfiomigctl.bash"


class Completion(CliCase):
    """The bash completion, sourced into a real bash and asked as bash asks it."""

    daemon_kwargs = {"args": ["--stream-listen=127.0.0.1:0"]}

    def complete(self, *words):
        line = ["vfiomigctl", f"--address={self.bus.address}", *words]
        script = (f"source {COMPLETION}\n"
                  f"COMP_WORDS=({' '.join(shlex.quote(w) for w in line)})\n"
                  f"COMP_CWORD={len(line) - 1}\n"
                  "_vfiomigctl\n"
                  'printf "%s\\n" "${COMPREPLY[@]}"\n')
        env = h.clean_env(PATH=f"{h.CLI.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                           env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [x for x in r.stdout.splitlines() if x]

    def test_every_command_and_option_of_the_help(self):
        text = self.ctl("--help").stdout
        commands = set(re.findall(r"^  ([a-z][a-z-]*)", text, re.M))
        options = set(re.findall(r"^(?:  -\w |     )(--[a-z0-9-]+=?)", text, re.M))
        self.assertGreater(len(commands), 20)
        self.assertGreater(len(options), 25)
        self.assertEqual(set(self.complete("")), commands)
        self.assertEqual(set(self.complete("--")), options)
        self.assertEqual(self.complete("mig"), ["migrate"])
        self.assertEqual(self.complete("space", ""), ["create", "list", "show", "destroy"])

    def test_values_and_the_daemons_objects(self):
        self.attach("sim:comp1")
        self.attach("sim:comp2")
        self.assertEqual(sorted(self.complete("reset", "")), ["sim_comp1", "sim_comp2"])
        self.assertEqual(self.complete("set-state", "sim_comp1", "stop-"), ["stop-copy"])
        self.assertEqual(sorted(self.complete("set-states", "running", "sim_comp")), ["sim_comp1", "sim_comp2"])
        self.assertEqual(self.complete("--json="), ["--json=short", "--json=pretty", "--json=off"])
        self.assertEqual(self.complete("map", "s0", "--access=r"), ["--access=rw", "--access=r"])
        space = self.ctl_json("space", "create", "--backend=sim")["id"]
        self.addCleanup(self.ctl, "space", "destroy", space, expect=None)
        self.assertEqual(self.complete("space", "show", ""), [space])
        job = self.ctl_json("incoming", "sim_comp2")["id"]
        self.assertIn(str(job), self.complete("cancel", ""))
        self.assertEqual(self.complete("resolve", str(job), "n"), ["not-committed"])
        self.ctl("cancel", str(job))


TOKEN_RE = r"^[0-9a-f]{64}$"
NO_BUS = "unix:path=/nonexistent/socket"


class Token(CliCase):
    """The migration token never needs to be on a command line."""

    daemon_kwargs = {"args": ["--stream-listen=127.0.0.1:0"]}

    def setUp(self):
        self.tmp = h.TempDir("vfm-token-", mode=0o700)
        self.addCleanup(self.tmp.stop)
        for name in ("src", "dst"):
            self.attach(f"sim:{name}", {"state-size": ("t", 256 * 1024)})

    def tearDown(self):
        for jid, direction, phase, _, path in self.client.manager("ListMigrations")[0]:
            if phase not in ("completed", "failed", "cancelled"):
                self.client.call(path, "org.vfiomig1.Migration", "Cancel")
        super().tearDown()

    def jobs(self):
        return self.client.manager("ListMigrations")[0]

    def test_incoming_token_file(self):
        path = self.tmp / "token"
        r = self.ctl("incoming", "sim_dst", f"--token-file={path}")
        st = os.lstat(path)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        token = path.read_text()
        self.assertRegex(token, r"^[0-9a-f]{64}\n$")
        self.assertNotIn(token.strip(), r.stdout + r.stderr, "the token was printed despite --token-file")
        self.assertIn(f"Token: written to {path}", r.stdout)
        self.assertIn("--token-file", r.stderr)  # the hint for the source host
        # -q with --token-file prints nothing at all; an existing file is never replaced.
        job_count = len(self.jobs())
        r = self.ctl("incoming", "sim_dst", f"--token-file={path}", expect=None)
        self.assertHumanError(r, "exists", code=2)
        self.assertEqual(path.read_text(), token)
        self.assertEqual(len(self.jobs()), job_count, "a refused --token-file still prepared a job")

    def test_incoming_token_file_symlink_and_cleanup(self):
        target = self.tmp / "target"
        link = self.tmp / "link"
        os.symlink(target, link)
        r = self.ctl("incoming", "sim_dst", f"--token-file={link}", expect=None)
        self.assertHumanError(r, "exists", code=2)
        self.assertFalse(os.path.exists(target), "a symlink was followed")
        # A call the daemon refuses leaves no empty token file behind.
        path = self.tmp / "token"
        r = self.ctl("incoming", "sim_nosuch", f"--token-file={path}", expect=None)
        self.assertHumanError(r, "sim_nosuch")
        self.assertFalse(os.path.exists(path))

    def test_quiet_incoming_prints_the_token_only(self):
        r = self.ctl("-q", "incoming", "sim_dst")
        self.assertRegex(r.stdout.strip(), TOKEN_RE)
        self.assertEqual(r.stdout.count("\n"), 1, r.stdout)
        self.assertEqual(r.stderr, "")
        self.client.call(self.jobs()[-1][4], "org.vfiomig1.Migration", "Cancel")
        r = self.ctl("-q", "incoming", "sim_dst", f"--token-file={self.tmp / 'q'}")
        self.assertEqual((r.stdout, r.stderr), ("", ""))
        self.assertRegex((self.tmp / "q").read_text().strip(), TOKEN_RE)

    def prepare(self):
        out = self.ctl_json("incoming", "sim_dst", f"--token-file={self.tmp / 'token'}")
        self.assertEqual(sorted(out), ["addresses", "id", "migration", "token_file"])
        self.assertEqual(out["token_file"], str(self.tmp / "token"))
        return out["migration"], out["addresses"][0]

    def test_migrate_token_file(self):
        djob, address = self.prepare()
        r = self.ctl("migrate", "sim_src", f"--to={address}", f"--token-file={self.tmp / 'token'}")
        self.assertNotIn((self.tmp / "token").read_text().strip(), r.stdout + r.stderr)
        self.assertEqual(self.client.get_property(djob, "org.vfiomig1.Migration", "Phase"), "completed")
        # What an operator resolving an indeterminate source reads on the destination: Committed.
        out = self.ctl("job", djob).stdout
        self.assertIn("Direction: incoming\n", out)
        self.assertIn("Committed: yes\n", out)
        self.assertIn("Transport: cleartext\n", out)  # loopback, no credentials configured
        rows = {l.split()[-1]: l.split() for l in self.ctl("jobs").stdout.splitlines()[1:]}
        sjob = [j[4] for j in self.jobs() if j[1] == "outgoing"][-1]
        for job in (djob, sjob):
            self.assertEqual((rows[job][2], rows[job][-3], rows[job][-2]), ("completed", "yes", "cleartext"), rows)

    def test_migrate_token_stdin(self):
        djob, address = self.prepare()
        token = (self.tmp / "token").read_text()
        self.ctl("migrate", "sim_src", f"--to={address}", "--token", "-", stdin=token.upper())
        self.assertEqual(self.client.get_property(djob, "org.vfiomig1.Migration", "Phase"), "completed")

    def test_bad_tokens_are_usage_errors_before_the_bus(self):
        secret = "c0ffee" * 10
        files = {
            "empty": "",
            "short": "ab" * 31 + "\n",
            "long": "ab" * 33 + "\n",
            "nonhex": secret + "zzzz\n",
            "two lines": "ab" * 32 + "\nab\n",
            "NUL": "ab" * 32 + "\0",
        }
        for what, content in files.items():
            with self.subTest(file=what):
                f = self.tmp / what.replace(" ", "_")
                f.write_text(content)
                r = self.ctl("migrate", "sim_src", "--to=127.0.0.1", f"--token-file={f}", address=NO_BUS,
                             expect=None)
                self.assertHumanError(r, "--token-file", code=2)
                self.assertNotIn(secret, r.stderr, "the file's content was echoed")
            with self.subTest(stdin=what):
                r = self.ctl("migrate", "sim_src", "--to=127.0.0.1", "--token=-", address=NO_BUS, stdin=content,
                             expect=None)
                self.assertHumanError(r, "standard input", code=2)
                self.assertNotIn(secret, r.stderr)
        unreadable = [(self.tmp / "missing", "no such file"), (self.tmp, "is a directory")]
        for path, fragment in unreadable:
            with self.subTest(path=str(path)):
                r = self.ctl("migrate", "sim_src", "--to=127.0.0.1", f"--token-file={path}", address=NO_BUS,
                             expect=None)
                self.assertHumanError(r, fragment, code=2)
        for args, fragment in ((["--token-file=x", "--token=-"], "give one"),
                               (["--token-file=-"], "--token -"),
                               ([], "--token-file")):
            with self.subTest(args=args):
                r = self.ctl("migrate", "sim_src", "--to=127.0.0.1", *args, address=NO_BUS, expect=None)
                self.assertHumanError(r, fragment, code=2)
        r = self.ctl("list", "--token-file=x", address=NO_BUS, expect=None)
        self.assertHumanError(r, "only valid with 'incoming' and 'migrate'", code=2)

    def test_world_readable_token_file_warns(self):
        djob, address = self.prepare()
        os.chmod(self.tmp / "token", 0o644)
        r = self.ctl("migrate", "sim_src", f"--to={address}", f"--token-file={self.tmp / 'token'}")
        self.assertIn("readable by users other than its owner", r.stderr)


# ---- Step 6: an unknown outcome, timeouts, transfers ----

def _ctl(test, address, *args, expect=0, stdin=None, timeout=60):
    cmd = [str(h.CLI), f"--address={address}"] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=h.clean_env(), timeout=timeout,
                       **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))
    if expect is not None:
        test.assertEqual(r.returncode, expect, f"{' '.join(cmd)}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


class StepSixCase(unittest.TestCase):
    """One source daemon (test_migration.Side) for the class."""

    @classmethod
    def setUpClass(cls):
        cls.src = Side("cli", listen=None)
        cls.addClassCleanup(cls.src.stop)
        cls.src.start()

    def ctl(self, *args, **kw):
        return _ctl(self, self.src.bus.address, *args, **kw)

    def spawn(self, *args, stdin_text=None):
        cmd = [str(h.CLI), f"--address={self.src.bus.address}"] + [str(a) for a in args]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=h.clean_env())

        def reap():
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)
        self.addCleanup(reap)
        if stdin_text is not None:
            p.stdin.write(stdin_text)
            p.stdin.close()
            p.stdin = None  # so that communicate() does not flush it
        return p


class Indeterminate(StepSixCase):
    """migrate to a raw destination that closes right after the last byte (as
    test_hostile_destination does): migrate and wait exit 3 with what to do, job and jobs show
    it, resolve ends it either way."""

    def setUp(self):
        self.dev = self.src.attach(size=2 * MiB, flags=(SC, P2P, PRE))
        self.digest = self.src.digest(self.dev)

    def indeterminate(self):
        dest = RawDestination(channels=2)
        self.addCleanup(dest.close)
        p = self.spawn("migrate", self.dev, f"--to={dest.address}", "--token=-", "--channels=2", "--no-precopy",
                       stdin_text=dest.token.hex() + "\n")
        dest.handshake()
        dest.start_reading()
        dest.wait_blobs(1)
        dest.close()
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 3, f"stdout: {out}\nstderr: {err}")
        m = re.match(r"^Migration (\d+) \(outgoing\) indeterminate", out)
        self.assertTrue(m, out)
        jid = int(m.group(1))
        self.assertIn(f"Migration {jid} is indeterminate", err)
        self.assertIn(", org.vfiomig1.Error.PeerLost)", err)  # the daemon's error, named
        self.assertIn("'vfiomigctl job N' on the destination", err)
        self.assertIn(f"'vfiomigctl resolve {jid} committed'", err)
        self.assertIn(f"'vfiomigctl resolve {jid} not-committed'", err)
        # kept stopped, owned by the job
        self.assertEqual(self.src.state(self.dev), "stop-copy")
        job = f"/org/vfiomig1/migration/_{jid}"
        self.assertEqual(self.src.phase(job), "indeterminate")
        return jid, job

    def test_show_wait_and_resolve_not_committed(self):
        jid, job = self.indeterminate()
        r = self.ctl("job", jid)
        self.assertIn("Phase: indeterminate (outcome unknown, devices stopped: resolve it)\n", r.stdout)
        self.assertIn("Committed: no\n", r.stdout)
        self.assertIn("Transport: cleartext\n", r.stdout)
        self.assertIn(f"'vfiomigctl resolve {jid} committed'", r.stderr)
        j = json.loads(self.ctl("--json=short", "job", jid).stdout)
        self.assertEqual((j["phase"], j["committed"], j["transport"]), ("indeterminate", False, "cleartext"))
        rows = [l.split() for l in self.ctl("jobs").stdout.splitlines()]
        self.assertEqual(rows[0], ["ID", "DIRECTION", "PHASE", "BYTES", "COMMITTED", "TRANSPORT", "OBJECT"])
        row = [x for x in rows[1:] if x[0] == str(jid)][0]
        self.assertEqual((row[2], row[-3], row[-2], row[-1]), ("indeterminate", "no", "cleartext", job))
        entry = [e for e in json.loads(self.ctl("--json=short", "jobs").stdout) if e["id"] == jid][0]
        self.assertEqual((entry["phase"], entry["committed"], entry["transport"]), ("indeterminate", False, "cleartext"))
        # wait returns at once with the same verdict: no Completed will come until resolve
        r = self.ctl("wait", jid, expect=3, timeout=10)
        self.assertIn(f"Migration {jid} is indeterminate", r.stderr)
        # cancel is refused by the daemon (Busy); a bad outcome never reaches it
        r = self.ctl("cancel", jid, expect=1)
        self.assertIn("resolve", r.stderr.lower())
        r = self.ctl("resolve", jid, "maybe", expect=2)
        self.assertIn("Invalid outcome 'maybe'", r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertEqual(self.src.phase(job), "indeterminate")
        self.assertEqual(self.src.state(self.dev), "stop-copy")

        r = self.ctl("resolve", jid, "not-committed")
        self.assertEqual(r.stdout, f"Migration {jid} resolved as not committed: the source devices run again with "
                                   "their state and the job is failed.\n")
        self.assertEqual(self.src.phase(job), "failed")
        self.assertEqual(self.src.state(self.dev), "running")
        self.assertEqual(self.src.digest(self.dev), self.digest)
        # the daemon's Busy: it is not indeterminate any more, and nothing changes
        r = self.ctl("resolve", jid, "committed", expect=1)
        self.assertTrue(r.stderr.startswith("vfiomigctl: "), r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertEqual(self.src.phase(job), "failed")
        self.assertEqual(self.src.state(self.dev), "running")
        self.assertIn("Committed: no\n", self.ctl("job", jid).stdout)

    def test_resolve_committed(self):
        jid, job = self.indeterminate()
        r = self.ctl("resolve", f"_{jid}", "committed")
        self.assertIn(f"Migration {jid} resolved as committed", r.stdout)
        self.assertEqual(self.src.phase(job), "completed")
        self.assertEqual(self.src.state(self.dev), "stop")
        self.assertEqual(self.src.digest(self.dev), self.digest)
        r = self.ctl("job", jid)
        self.assertIn("Phase: completed\n", r.stdout)
        self.assertIn("Committed: yes\n", r.stdout)
        self.ctl("wait", jid, expect=0, timeout=10)
        self.src.call(self.dev, DEVICE_IFACE, "SetState", "sa{sv}", "running", {})


class Timeouts(StepSixCase):

    def test_migrate_stall_timeout_reaches_the_daemon(self):
        dev = self.src.attach(size=1 * MiB, flags=(SC, P2P, PRE))
        dest = RawDestination(channels=1)
        self.addCleanup(dest.close)
        jobs = len(self.src.manager("ListMigrations")[0])
        # under a second: the daemon's InvalidArgs, so the option did reach it
        r = self.ctl("migrate", dev, f"--to={dest.address}", "--token=-", "--stall-timeout=500ms",
                     stdin=dest.token.hex(), expect=1)
        self.assertIn("stall", r.stderr.lower())
        self.assertIn("vfiomigd rejected an argument", r.stderr)  # the hint of InvalidArgs
        self.assertEqual(len(self.src.manager("ListMigrations")[0]), jobs, "a refused StartMigration made a job")
        self.assertEqual(self.src.state(dev), "running")
        r = self.ctl("migrate", dev, f"--to={dest.address}", "--token=-", "--stall-timeout=0", expect=2)
        self.assertIn("--stall-timeout=", r.stderr)

    def test_migrate_stall_timeout_gives_up_on_a_destination_that_stops_reading(self):
        dev = self.src.attach(size=48 * MiB, flags=(SC, P2P, PRE))
        digest = self.src.digest(dev)
        dest = RawDestination(channels=1)
        self.addCleanup(dest.close)
        p = self.spawn("migrate", dev, f"--to={dest.address}", "--token=-", "--channels=1", "--no-precopy",
                       "--stall-timeout=2s", stdin_text=dest.token.hex())
        dest.handshake()
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 1, f"stdout: {out}\nstderr: {err}")
        self.assertRegex(out, r"^Migration \d+ \(outgoing\) failed")
        self.assertIn("(org.vfiomig1.Error.PeerLost)", err)
        self.assertIn("stalled", err)
        self.assertEqual(self.src.state(dev), "running")
        self.assertEqual(self.src.digest(dev), digest)

    def test_incoming_setup_timeout(self):
        side = Side("clin", listen="127.0.0.1:0")
        self.addCleanup(side.stop)
        side.start()
        dev = side.attach(size=1 * MiB, flags=(SC, P2P, PRE))
        r = _ctl(self, side.bus.address, "incoming", dev, "--setup-timeout=999", expect=1)
        self.assertIn("setup", r.stderr.lower())
        self.assertEqual(side.manager("ListMigrations")[0], [])
        r = _ctl(self, side.bus.address, "--json=short", "incoming", dev, "--setup-timeout=1s")
        job = json.loads(r.stdout)["migration"]
        r = _ctl(self, side.bus.address, "wait", job, expect=1, timeout=20)
        self.assertIn("(org.vfiomig1.Error.Timeout)", r.stderr)
        self.assertEqual(side.phase(job), "failed")
        r = _ctl(self, side.bus.address, "migrate", dev, "--to=127.0.0.1", "--token=-", "--setup-timeout=1s",
                 stdin="00" * 32, expect=2)
        self.assertIn("--setup-timeout= is only valid with 'incoming'", r.stderr)


class Transfers(StepSixCase):
    """save-state --timeout= and cancel-transfer against a reader that never reads (a FIFO this
    test holds open)."""

    def setUp(self):
        self.tmp = h.TempDir("vfm-xfer-", mode=0o700)
        self.addCleanup(self.tmp.stop)
        self.dev = self.src.attach(size=16 * MiB, flags=(SC, P2P, PRE))
        self.src.call(self.dev, DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
        self.fifo = self.tmp / "fifo"
        os.mkfifo(self.fifo, 0o600)
        self.reader = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.addCleanup(os.close, self.reader)

    def test_save_state_timeout(self):
        r = self.ctl("--timeout=1", "save-state", self.dev, self.fifo, expect=1, timeout=30)
        # the daemon's Timeout (its text, and the hint kept for that name), not the client's own
        self.assertIn("timed out after 1000 ms", r.stderr)
        self.assertIn("vfiomigd gave up waiting", r.stderr)
        self.assertEqual(self.src.state(self.dev), "stop")
        r = self.ctl("--timeout=86401", "save-state", self.dev, self.fifo, expect=2)
        self.assertIn("at most a day", r.stderr)

    def test_load_state_timeout(self):
        # a writer (this test) that never writes: the daemon's deadline ends the load, which resets
        writer = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.addCleanup(os.close, writer)
        r = self.ctl("--timeout=1", "load-state", self.dev, self.fifo, expect=1, timeout=30)
        self.assertIn("timed out after 1000 ms", r.stderr)
        self.assertIn("vfiomigd gave up waiting", r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertEqual(self.src.state(self.dev), "running")

    def test_cancel_transfer(self):
        r = self.ctl("cancel-transfer", self.dev, expect=1)
        self.assertIn("no save-state or load-state runs", r.stderr)
        p = self.spawn("save-state", self.dev, self.fifo)
        self.src.wait_prop(self.dev, DEVICE_IFACE, "State", lambda s: s == "stop-copy", timeout=10)
        r = self.ctl("cancel-transfer", self.dev)
        self.assertEqual(r.stdout, f"The transfer of {self.dev} was cancelled; the device is idle again.\n")
        out, err = p.communicate(timeout=15)
        self.assertEqual(p.returncode, 1, err)
        self.assertIn("cancel", err.lower())
        self.assertEqual(out, "")
        self.assertEqual(self.src.state(self.dev), "stop")



if __name__ == "__main__":
    h.main([h.require_root, lambda: h.require_programs("dbus-daemon", "busctl"), h.require_daemon,
            lambda: h.require_files(h.BUS_POLICY),
            h.require_cli])
