#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The VM tier's tests, run inside the guest that tests/vm/vm.py boots (guest-init.sh starts this
as root, with the host's root file system as /, so the build tree's binaries run unchanged).

The real vfiomigd and vfiomigctl of the build tree on a private dbus-daemon system bus (the
integration tier's harness.py: PrivateBus, Daemon, SystemdUserManager), against real VFIO:

* kernel    what this kernel offers, and Manager.KernelFeatures as the daemon detected it.
* mtty      two mtty-2 mdev instances (the kernel's sample driver: a real migration v2 state
            machine) in legacy type1 containers, attached by UUID: every (current, target) pair
            of the contract, with a kernel-side count of the driver's migration_set_state calls
            (ftrace) proving that refused pairs never reached the kernel; pre-copy info,
            stop-copy size, reset from every state; SaveState/LoadState between the two
            devices, and a truncated and a corrupted stream refused with the device reset.
* migration A to B through two vfiomigd instances, each on a private bus of its own, streaming
            over loopback TCP (io_uring): distinctive UART registers and FIFO contents written
            into A through its VMM's fd arrive on B, with pre-copy and without (precopy=false),
            with run=false and run=true; and a destination that cancels during pre-copy: B is
            reset (its own UART state intact, running), A runs again with its state intact.
* edu       QEMU's edu DMA device on vfio-pci behind an emulated VT-d IOMMU, owned by vfiomigd
            running as a Type=notify service of a systemd --user manager (the project's unit,
            adapted as tests/integration/test_systemd.py does): a tmpfs file mapped into a
            legacy address space, a VMM stand-in (vmm-standin) holding the device fd from
            Device.OpenFd and making edu DMA into that file, across a planned restart and a
            kill -9 of the daemon (the fd store brings everything back; the VADDR of the
            mapping is invalidated and registered again while DMA goes on), and DMA to an
            unmapped IOVA faulting in the IOMMU.
* tls       kernel TLS (tls.ko) against user-space TLS and cleartext: mtty A to B with the job's
            Transport "tls-kernel", then "tls-user" with kernel-tls false, and a throughput
            comparison of the three in this guest (tests/vm/guest_tls.py).

The same tests run on every kernel vm.py boots, held to what that kernel is (VM_EXPECT; see
guest_common.py): on Debian's 6.12 devices and spaces are legacy (groups, type1 containers), on
the tier's 7.2 they are iommufd + VFIO cdev (mappings by IOMMU_IOAS_MAP_FILE of a memfd, restarts
through IOMMU_IOAS_CHANGE_PROCESS with the pinned-page charge moving to the successor), with the
kernel's own CHANGE_PROCESS rule and the legacy path ("vfio-backend": "legacy") checked there too
(guest_kernel.py: the kernel's facts; guest_parts.py: the bus client, vfiomigctl, the VMM
stand-in, the ftrace counter).

Every check prints one line ("ok" or "FAIL"); the last line is "vm: N passed, N failed". A check
that fails never stops the run; an exception ends only its own section (counted as a failure).
Exit status 0 when nothing failed, 1 otherwise.
"""

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

SOURCE_ROOT = Path(os.environ["SOURCE_ROOT"])
BUILD_ROOT = Path(os.environ["BUILD_ROOT"])
sys.path.insert(0, str(SOURCE_ROOT / "tests" / "integration"))

import dbus_wire  # noqa: E402
import harness as h  # noqa: E402
import test_systemd  # noqa: E402  (adapt_unit: the project's unit made fit for a user manager)
from guest_common import (BACKEND, EDU, IOMMUFD, KERNEL_NAME, MDEV_A, MDEV_B, C, dmesg, expect_error,  # noqa: E402,F401
                          section)
from guest_parts import WORK, SetStateTrace, Vmm, WireClient, ctl, ctl_json  # noqa: E402,F401
from guest_kernel import (check_vfio_nodes, proc_status_kb, vfio_nodes_held, test_change_process_rule, test_features,  # noqa: E402
                          test_kernel)


STATES = ["error", "stop", "running", "stop-copy", "resuming", "running-p2p", "pre-copy", "pre-copy-p2p"]
STATE_NUM = {s: i for i, s in enumerate(STATES)}
SAVING = {"stop-copy", "pre-copy", "pre-copy-p2p"}
E_STREAM_REJECTED = "org.vfiomig1.Error.StreamRejected"
MTTY2_STREAM = 96        # mtty-2: 24-byte header + 2 x 36-byte port state (mtty-harness.md)
MTTY_HEADER = 24
MTTY_SCR = 7             # 16550 scratch register: I/O offset 7 of each port's BAR


# --------------------------------------------------------------------------------------------
# mtty: the migration state machine on a real driver


class Mtty:
    """Both mdev instances as vfiomigd devices, each with a VMM stand-in holding its fd (as a VMM
    would while the daemon drives its migration)."""

    def __init__(self, bus, a, b):
        self.bus = bus
        self.client = WireClient(bus.address)
        self.a, self.b = a, b
        self.vmm = {a: Vmm(bus, a, "mtty"), b: Vmm(bus, b, "mtty")}
        self.reset_failures = 0

    def stop(self):
        for v in self.vmm.values():
            v.stop()
        self.client.close()

    def state(self, dev):
        return self.client.dev_prop(dev, "State")

    def set_state(self, dev, target):
        return self.client.call1(dev, h.DEVICE_IFACE, "SetState", "sa{sv}", target, {})

    def daemon_reset(self, dev):
        """Device.Reset; (error name, message) or None."""
        err, value = expect_error(self.client.device, dev, "Reset")
        return None if err is None else (err, value)

    def reset(self, dev):
        """Back to running before a test step: Device.Reset, or -- where the daemon cannot (its
        failure is a check of its own in "Reset from every state") -- VFIO_DEVICE_RESET on the
        VMM's fd, so that the remaining checks still run."""
        failure = self.daemon_reset(dev)
        if failure is None:
            return
        self.reset_failures += 1
        if self.reset_failures == 1:
            C.note(f"Device.Reset failed ({failure[0]}: {failure[1]}); resetting through the VMM's fd to go on")
        answer = self.vmm[dev].cmd("reset")
        if answer != "ok":
            raise RuntimeError(f"neither Device.Reset nor the VMM could reset {dev}: {answer}")

    def scr(self, dev, port=0):
        return self.vmm[dev].value(f"reg-read {port} {MTTY_SCR}")

    def set_scr(self, dev, value, port=0):
        return self.vmm[dev].value(f"reg-write {port} {MTTY_SCR} {value:#x}")


KERNEL_RELEASE = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])


def mtty_tests(bus, daemon_pid=None):
    client = bus.client
    paths = {}
    with section("mtty: attach two mdev instances by UUID"):
        for uuid in (MDEV_A, MDEV_B):
            out = ctl_json(bus, "attach", uuid)
            path = out.get("object") or client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "GetDevice", "s", uuid)
            paths[uuid] = path
            props = {k: v for k, (_, v) in client.get_all(path, h.DEVICE_IFACE).items()}
            C.equal(props["Backend"], BACKEND, f"{uuid[-2:]}: Backend")
            if daemon_pid:
                check_vfio_nodes(daemon_pid, uuid, f"/sys/bus/mdev/devices/{uuid}")
            C.equal(props["Driver"], "mtty", f"{uuid[-2:]}: Driver")
            C.equal(props["Migratable"], True, f"{uuid[-2:]}: Migratable")
            C.equal(props["MigrationFlags"], ["stop-copy", "p2p", "pre-copy"], f"{uuid[-2:]}: MigrationFlags")
            # PRECOPY_INFOv2 (feature 12) is in vfio's core from 7.2 on, for every PRE_COPY driver;
            # before, the opt-in is refused (ENOTTY) and the daemon falls back to PRECOPY_INFO.
            C.equal(props["PrecopyInfo"], "v2" if KERNEL_RELEASE >= (7, 2) else "v1",
                    f"{uuid[-2:]}: PrecopyInfo on {'.'.join(map(str, KERNEL_RELEASE))}")
            C.equal(props["StopCopySize"], MTTY2_STREAM, f"{uuid[-2:]}: StopCopySize (mtty-2: 24 + 2 x 36)")
            C.equal(props["State"], "running", f"{uuid[-2:]}: State")
    if len(paths) != 2:
        return
    m = Mtty(bus, paths[MDEV_A], paths[MDEV_B])
    try:
        C.equal(client.dev_prop(m.a, "Clients"), 1, "A: Device.Clients counts the VMM holding its fd")
        mtty_with_vmms(m)
    finally:
        m.stop()
    try:  # the daemon learns of it from the bus (NameOwnerChanged), a moment later
        h.wait_until(lambda: client.dev_prop(m.a, "Clients") == 0, 10, 0.1, "Clients to drop to 0")
    except TimeoutError:
        pass
    C.equal(client.dev_prop(m.a, "Clients"), 0, "A: Device.Clients is 0 once the VMM is gone")
    with section("mtty: detach"):
        for uuid in (MDEV_A, MDEV_B):
            C.equal(ctl(bus, "detach", uuid, check=False).returncode, 0, f"vfiomigctl detach {uuid}")


def mtty_with_vmms(m):
    client, a, b = m.client, m.a, m.b
    stream = WORK / "mtty-a.state"

    with section("mtty: Reset from every state"):
        for cur in STATES[1:]:
            m.reset(a)
            if cur != "running":
                m.set_state(a, cur)
            before = m.state(a)
            failure = m.daemon_reset(a)
            after = m.state(a)
            C.check(before == cur and failure is None and after == "running", f"Device.Reset from {cur} -> running",
                    f"was {before}, now {after}" + (f"; {failure[0]}: {failure[1]}" if failure else ""))
            if after != "running":
                m.reset(a)

    with section("mtty: a valid stream of A (vfiomigctl save-state)"):
        m.reset(a)
        m.set_scr(a, 0x5A, 0)
        m.set_scr(a, 0xA5, 1)
        C.equal(m.set_state(a, "stop"), "stop", "A: running -> stop")
        r = ctl(m.bus, "save-state", MDEV_A, stream, check=False)
        C.equal(r.returncode, 0, "vfiomigctl save-state A FILE", (r.stdout + r.stderr).strip())
        data = stream.read_bytes() if stream.exists() else b""
        C.equal(len(data), MTTY2_STREAM, "the saved stream is 96 bytes (StopCopySize)")
        C.equal(data[:8][::-1].hex(), "7e9d09898c3e2c4e", "the stream starts with mtty's magic")
        C.equal(m.state(a), "stop", "A is back in stop after saving")
        m.reset(a)

    trace = SetStateTrace()
    C.check(trace.available, "ftrace counts the driver's mtty_set_state calls", getattr(trace, "error", ""))
    with section("mtty: every (current, target) pair on the real driver"):
        C.note("each pair: reset, SetState(current), then SetState(target), counted by ftrace on mtty_set_state;")
        C.note("refused by the daemon: error as a target, stop-copy -> pre-copy(-p2p); no driver call may follow")
        for cur in STATES[1:]:              # mtty never enters error: no pair starts there
            variants = [("", False)]
            if cur == "resuming":
                variants = [(" (empty load session)", False), (" (the VMM wrote a complete stream)", True)]
            for label, loaded in variants:
                for target in STATES:
                    matrix_pair(m, trace, cur, target, label, stream if loaded else None)
        m.reset(a)
        # Control: this kernel (6.12.117) has the fix for the stop-copy -> pre-copy soft lockup
        # (vfio_mig_get_next_state stops at ERROR), so it refuses the arc itself with EINVAL; the
        # daemon's refusal is proven by the driver call count above, not by the VM surviving.
        m.set_state(a, "stop-copy")
        trace.clear()
        answer = m.vmm[a].cmd(f"mig-set {STATE_NUM['pre-copy']}")
        C.check(answer.startswith("fail errno=22") and trace.count() == 1 and m.state(a) == "stop-copy",
                "control: stop-copy -> pre-copy on the VMM's own fd reaches the driver, which refuses it (EINVAL)",
                f"{answer}; driver calls {trace.count()}")
        m.reset(a)
    trace.stop()


    with section("mtty: pre-copy info and stop-copy size"):
        for cur in STATES[1:]:
            m.reset(a)
            if cur != "running":
                m.set_state(a, cur)
            err, value = expect_error(client.device, a, "GetPrecopyInfo")
            if cur in ("pre-copy", "pre-copy-p2p"):
                C.equal(value if err is None else err, [24, 0], f"GetPrecopyInfo in {cur}",
                        "mtty: initial = the unread 24-byte header, dirty always 0")
            else:
                C.equal(err, h.E_NO_PRECOPY_SESSION, f"GetPrecopyInfo in {cur}", value if err else "")
            C.equal(client.dev_prop(a, "StopCopySize"), MTTY2_STREAM, f"StopCopySize in {cur}")
        m.reset(a)

    with section("mtty: both devices moved together (Manager.SetStates)"):
        m.reset(a)
        m.reset(b)
        for target in ("pre-copy-p2p", "stop-copy", "stop", "running"):
            results = client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "SetStates", "aosa{sv}", [a, b], target, {})
            C.equal(sorted(tuple(r) for r in results), sorted([(a, target), (b, target)]),
                    f"SetStates([A, B], {target})", f"states now {m.state(a)}, {m.state(b)}")

    mtty_state_transfer(m, stream)


def matrix_pair(m, trace, cur, target, label, loaded):
    a = m.a
    name = f"{cur}{label} -> {target}"
    m.reset(a)
    if loaded:
        answer = m.vmm[a].cmd(f"resume-load {loaded}")
        if not C.equal(answer, f"ok wrote={MTTY2_STREAM}", f"{name}: set-up (the VMM enters resuming, writes 96 bytes)"):
            return
    elif cur != "running":
        got = m.set_state(a, cur)
        if got != cur:
            C.check(False, f"{name}: set-up", f"SetState({cur}) reached {got}")
            return
    trace.clear()
    refused = target == "error" or (cur == "stop-copy" and target in ("pre-copy", "pre-copy-p2p"))
    err, value = expect_error(m.set_state, a, target)
    calls = trace.count()
    now = m.state(a)
    if loaded:
        m.vmm[a].cmd("close-data")
    if refused:
        C.check(err == h.E_INVALID_TRANSITION and calls == 0 and now == cur, name,
                f"refused with {err} ({value}); driver calls: {calls}; state {now}")
    elif cur == "resuming" and not loaded and target != "resuming":
        # The driver refuses to leave RESUMING without a complete stream (EINVAL); the daemon
        # says so and, with no recover state asked for, leaves the device where it is.
        C.check(err == h.E_TRANSITION_FAILED and (calls is None or calls >= 1) and now == "resuming", name,
                f"the kernel refused: {err}; driver calls: {calls}; state {now}")
    else:
        want_calls = 0 if cur == target else 1
        C.check(err is None and value == target and now == target and (calls is None or calls >= want_calls), name,
                f"reached {value if err is None else err + ': ' + value}; State {now}; driver calls: {calls}")


def mtty_state_transfer(m, good):
    client, a, b = m.client, m.a, m.b
    truncated = WORK / "mtty-a.truncated"
    corrupted = WORK / "mtty-a.corrupted"
    data = good.read_bytes() if good.exists() else b""
    truncated.write_bytes(data[:50])
    bad = bytearray(data)
    if bad:
        bad[3] ^= 0xFF                       # inside the 8-byte magic of the 24-byte header
    corrupted.write_bytes(bytes(bad))

    with section("mtty: LoadState into B carries A's UART state"):
        m.reset(b)
        m.set_scr(b, 0x11, 0)
        m.set_scr(b, 0x22, 1)
        answer = m.vmm[b].cmd(f"load-state {good}")
        C.check(answer.startswith("fail error=org.vfiomig1.Error."), "LoadState into a running device is refused",
                answer)
        C.equal(m.set_state(b, "stop"), "stop", "B: running -> stop")
        r = ctl(m.bus, "load-state", MDEV_B, good, check=False)
        C.check(r.returncode == 0 and str(MTTY2_STREAM) in r.stdout, "vfiomigctl load-state B FILE",
                (r.stdout + r.stderr).strip())
        C.equal(m.state(b), "stop", "B is in stop after LoadState")
        C.equal(m.set_state(b, "running"), "running", "B: stop -> running")
        C.equal((m.scr(b, 0), m.scr(b, 1)), (0x5A, 0xA5), "B's scratch registers (ports 0, 1) hold A's values")

    for label, path in (("truncated", truncated), ("corrupted", corrupted)):
        what = "50 of 96 bytes" if label == "truncated" else "a flipped byte in the header magic"
        with section(f"mtty: a {label} stream ({what}) is refused and not loaded"):
            m.reset(b)
            m.set_scr(b, 0x33)
            m.set_state(b, "stop")
            answer = m.vmm[b].cmd(f"load-state {path}")
            C.check(answer.startswith(f"fail error={E_STREAM_REJECTED}"), "LoadState: StreamRejected", answer)
            C.equal(m.state(b), "running", "B was reset (running)")
            C.equal(m.scr(b), 0x33, "B's SCR is still its own: nothing was loaded")
            # Whatever state B was left in, moving it on must not commit the refused stream.
            err, value = expect_error(m.set_state, b, "stop")
            C.equal(m.scr(b), 0x33, "SetState(stop) afterwards does not load the refused stream either",
                    f"SetState(stop): {err or value}")
            m.reset(b)
            m.set_scr(b, 0x33)
            m.set_state(b, "stop")
            r = ctl(m.bus, "load-state", MDEV_B, path, check=False)
            C.check(r.returncode != 0, f"vfiomigctl load-state of the {label} stream fails",
                    f"rc={r.returncode}: {r.stderr.strip()}")
            C.equal(m.scr(b), 0x33, "... and loads nothing")
            m.reset(b)

    with section("mtty: control: the driver alone commits a corrupted stream"):
        m.reset(b)
        m.set_scr(b, 0x44)
        answer = m.vmm[b].cmd(f"resume-load {corrupted}")
        C.check(answer.startswith("fail write errno=14"), "mtty's write() of the corrupted stream fails (EFAULT)",
                answer)
        answer = m.vmm[b].cmd(f"mig-set {STATE_NUM['stop']}")
        scr = m.scr(b)
        C.check(answer == f"ok state={STATE_NUM['stop']}" and scr == 0x5A,
                "yet RESUMING -> STOP on the VMM's own fd succeeds and loads it: what the daemon must prevent",
                f"{answer}; SCR 0x44 -> {scr:#x}")
        m.vmm[b].cmd("close-data")
        m.reset(b)


# --------------------------------------------------------------------------------------------
# mtty: device state streamed between two vfiomigd instances


MIGRATION_IFACE = "org.vfiomig1.Migration"
E_CANCELLED = "org.vfiomig1.Error.Cancelled"
E_PEER_ABORTED = "org.vfiomig1.Error.PeerAborted"
FINAL_PHASES = ("completed", "failed", "cancelled")
UART_RX, UART_FCR, UART_LCR, UART_MCR, UART_LSR = 0, 2, 3, 4, 5
LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40
FCR_FIFO_ON, FCR_FIFO_OFF = 0xC7, 0x06   # both clear the FIFO; on: 16 bytes (trigger 14), off: 1 byte


class UartState:
    """Distinctive UART state for both ports of an mtty-2, made from a seed, written through a
    VMM's fd and read back: LCR, MCR and SCR, and the loop-back FIFO. Port 0 has its FIFO on and
    holds 15 bytes (mtty's 16-byte ring cannot show a 16th: full looks empty); port 1 has it off
    (FCR: one byte deep) and got two, so it holds the first and the overrun flag (LSR.OE) is set.
    Reading it back drains the FIFOs."""

    def __init__(self, seed):
        self.seed = seed
        self.ports = []
        for port in range(2):
            self.ports.append({
                "fcr": FCR_FIFO_ON if port == 0 else FCR_FIFO_OFF,
                "lcr": 0x03 | port << 2 | (seed % 4) << 3,   # word length, stop bits, parity; never DLAB
                "mcr": (0x01 + 3 * seed + 5 * port) & 0x1f,
                "scr": (0x5A + 0x11 * seed + 0x40 * port) & 0xff,
                "fifo": [(0x30 + 0x20 * port + 7 * seed + 3 * i) & 0xff for i in range(15 if port == 0 else 2)],
            })

    def write(self, vmm):
        for port, p in enumerate(self.ports):
            for off, value in ((UART_FCR, p["fcr"]), (UART_LCR, p["lcr"]), (UART_MCR, p["mcr"]),
                               (MTTY_SCR, p["scr"])):
                vmm.value(f"reg-write {port} {off} {value:#x}")
            for byte in p["fifo"]:
                vmm.value(f"reg-write {port} {UART_RX} {byte:#x}")

    def expected(self):
        out = []
        for p in self.ports:
            depth = 16 if p["fcr"] == FCR_FIFO_ON else 1
            overrun = LSR_OE if len(p["fifo"]) > depth else 0
            out.append({"lcr": p["lcr"], "mcr": p["mcr"], "scr": p["scr"], "lsr": LSR_DR | overrun,
                        "fifo": p["fifo"][:depth], "lsr-drained": LSR_THRE | LSR_TEMT | overrun})
        return out

    @staticmethod
    def read(vmm):
        out = []
        for port in range(2):
            got = {name: vmm.value(f"reg-read {port} {off}")
                   for name, off in (("lcr", UART_LCR), ("mcr", UART_MCR), ("scr", MTTY_SCR), ("lsr", UART_LSR))}
            fifo = []
            while len(fifo) < 16 and vmm.value(f"reg-read {port} {UART_LSR}") & LSR_DR:
                fifo.append(vmm.value(f"reg-read {port} {UART_RX}"))
            got["fifo"] = fifo
            got["lsr-drained"] = vmm.value(f"reg-read {port} {UART_LSR}")
            out.append(got)
        return out


class MttyPair:
    """mtty A attached to the source vfiomigd, B to the destination's, each daemon on a private
    bus of its own (the bus name is fixed), each device with a VMM stand-in holding its fd."""

    def __init__(self, src_bus, dst_bus, src_daemon, dst_daemon, a, b):
        self.src_daemon, self.dst_daemon = src_daemon, dst_daemon
        self.src = WireClient(src_bus.address)
        self.dst = WireClient(dst_bus.address)
        self.a, self.b = a, b
        self.vmm_a = Vmm(src_bus, a, "mtty")
        self.vmm_b = Vmm(dst_bus, b, "mtty")

    def stop(self):
        for v in (self.vmm_a, self.vmm_b):
            v.stop()
        self.src.close()
        self.dst.close()

    def fresh(self, seed_a, seed_b):
        """Both devices reset (running) and holding distinctive state of their own."""
        for client, dev in ((self.src, self.a), (self.dst, self.b)):
            client.device(dev, "Reset")
        state_a, state_b = UartState(seed_a), UartState(seed_b)
        state_a.write(self.vmm_a)
        state_b.write(self.vmm_b)
        return state_a, state_b

    def prepare(self, options):
        """PrepareIncoming(B): (job, token, addresses)."""
        return self.dst.call(h.MANAGER_PATH, h.MANAGER_IFACE, "PrepareIncoming", "aoa{sv}", [self.b], options)

    def start(self, address, token, options):
        return self.src.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "StartMigration", "aossa{sv}", [self.a], address,
                              token, options)

    @staticmethod
    def job(client, path):
        return {k: v for k, (_, v) in client.call1(path, h.PROPS_IFACE, "GetAll", "s", MIGRATION_IFACE).items()}

    def wait(self, out_job, in_job, timeout=60):
        """Both jobs' properties once both have ended, and the source phases seen on the way."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            out, inc = self.job(self.src, out_job), self.job(self.dst, in_job)
            if not seen or seen[-1] != out["Phase"]:
                seen.append(out["Phase"])
            if out["Phase"] in FINAL_PHASES and inc["Phase"] in FINAL_PHASES:
                return out, inc, seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"the jobs did not end within {timeout}s: source {out['Phase']}, "
                                   f"destination {inc['Phase']}")
            time.sleep(0.05)


def reset_calls():
    """How often mtty's VFIO_DEVICE_RESET handler ran (it logs "mtty_reset: called")."""
    return dmesg().count("mtty_reset: called")


def run_mtty_migration():
    src_bus = h.PrivateBus().start()
    dst_bus = h.PrivateBus().start()
    src = h.Daemon(src_bus, allow_simulated=False)
    dst = h.Daemon(dst_bus, allow_simulated=False, args=["--stream-listen=127.0.0.1:0"])
    pair = None
    try:
        with section("mtty migration: two vfiomigd instances on two private buses, A on one, B on the other"):
            src.start()
            dst.start()
            paths = {}
            for bus, uuid in ((src_bus, MDEV_A), (dst_bus, MDEV_B)):
                out = ctl_json(bus, "attach", uuid)
                paths[uuid] = out.get("object") or bus.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "GetDevice",
                                                                    "s", uuid)
            C.check(len(paths) == 2, "A attached to the source daemon, B to the destination daemon", str(paths))
            C.equal([bus.client.dev_prop(paths[u], "Backend") for bus, u in ((src_bus, MDEV_A), (dst_bus, MDEV_B))],
                    [BACKEND, BACKEND], f"both through the {BACKEND} backend")
            # A device the other daemon holds: the kernel refuses the second open (legacy: the group
            # is open elsewhere, EBUSY) or the second bind (cdev: EINVAL); either way the answer must
            # say the device is in use, not that an argument was wrong.
            r = ctl(dst_bus, "attach", MDEV_A, check=False)
            out = (r.stdout + r.stderr).strip()
            C.check(r.returncode != 0 and ("in use" in out or "already open" in out),
                    "the destination daemon cannot attach A, which the source daemon holds: 'in use'", out)
            C.check("rejected an argument" not in out and "InvalidArgs" not in out,
                    "... and not blamed on an argument")
            pair = MttyPair(src_bus, dst_bus, src, dst, paths[MDEV_A], paths[MDEV_B])
        if pair is None:
            return
        mtty_migration_cancelled(pair)
        mtty_migration(pair, precopy=True, run=False, seeds=(1, 2))
        mtty_migration(pair, precopy=False, run=True, seeds=(3, 4))
        with section("mtty migration: the devices back as they were found"):
            # A migrated away is left stopped, and mtty keeps that across a close of its fd.
            for client, dev in ((pair.src, pair.a), (pair.dst, pair.b)):
                client.device(dev, "Reset")
            for bus, uuid in ((src_bus, MDEV_A), (dst_bus, MDEV_B)):
                r = ctl(bus, "detach", uuid, check=False)
                C.equal(r.returncode, 0, f"reset, vfiomigctl detach {uuid}", r.stderr.strip())
    finally:
        if pair is not None:
            pair.stop()
        for name, daemon in (("source", src), ("destination", dst)):
            if daemon.alive():
                C.equal(daemon.terminate(), 0, f"the {name} vfiomigd exits 0 on SIGTERM")
            (WORK / f"vfiomigd-migration-{name}.log").write_text(daemon.log())
            daemon.stop(expect=None)
        src_bus.stop()
        dst_bus.stop()


def mtty_migration(pair, precopy, run, seeds):
    src, dst, a, b = pair.src, pair.dst, pair.a, pair.b
    how = "with pre-copy" if precopy else "without pre-copy (precopy=false)"
    with section(f"mtty migration: A -> B over loopback TCP {how}, run={str(run).lower()}"):
        state_a, state_b = pair.fresh(*seeds)
        blob = f"config space of A, run {seeds[0]}".encode()
        if precopy:
            src.device(a, "SetMigrationBlob", "ay", blob)
        in_job, token, addresses = pair.prepare({"run": ("b", run)})
        C.check(len(addresses) == 1 and re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", addresses[0]),
                "PrepareIncoming(B) on the destination: a job, a token and the listener's real address",
                f"{in_job} token={token[:8]}... addresses={addresses}")
        C.equal(dst.dev_prop(b, "State"), "resuming", "B waits in resuming")
        options = {} if precopy else {"precopy": ("b", False)}
        t = time.monotonic()
        out_job = pair.start(addresses[0], token, options)
        out, inc, seen = pair.wait(out_job, in_job)
        C.note(f"source phases seen: {' -> '.join(seen)}; {time.monotonic() - t:.2f}s")
        C.equal((out["Phase"], inc["Phase"]), ("completed", "completed"), "both jobs completed",
                f"source error {out['Error']!r}, destination error {inc['Error']!r}")
        C.equal(out["Precopy"], precopy, "source job: Precopy" + ("" if precopy else " (as asked)"))
        if precopy:
            C.equal((out["InitialDataLoaded"], inc["InitialDataLoaded"]), (True, True),
                    "InitialDataLoaded on both sides: B took mtty's pre-copy header before the switchover")
        C.check(out["BytesTransferred"] >= MTTY2_STREAM and inc["BytesTransferred"] >= MTTY2_STREAM,
                "BytesTransferred on both sides covers mtty's 96-byte stream",
                f"source {out['BytesTransferred']}, destination {inc['BytesTransferred']}, "
                f"downtime {out['Downtime']} ms (source), {inc['Downtime']} ms (destination)")
        C.equal((out["ErrorName"], inc["ErrorName"]), ("", ""), "no ErrorName on either job")
        ups = [[line for line in d.log().splitlines() if "channels up" in line][-1:] or ["no 'channels up' line"]
               for d in (pair.src_daemon, pair.dst_daemon)]
        C.check(all(", io_uring" in up[0] for up in ups), "both sides streamed through io_uring (the daemons' logs)",
                " / ".join(up[0] for up in ups))
        C.equal(src.dev_prop(a, "State"), "stop", "A is stopped")
        C.equal(dst.dev_prop(b, "State"), "running" if run else "stop",
                "B is running (run=true)" if run else "B is stopped (run=false)")
        C.equal((src.dev_prop(a, "Migration"), dst.dev_prop(b, "Migration")), ("/", "/"),
                "neither device belongs to a job any more")
        C.equal(UartState.read(pair.vmm_b), state_a.expected(),
                "B's UART registers (LCR, MCR, SCR, LSR) and FIFOs on both ports are A's, in order, overrun included")
        if precopy:
            got = dst.device(b, "GetMigrationBlob")[0]
            C.equal(bytes(got), blob, "the blob set on A arrived on B (GetMigrationBlob)")


def mtty_migration_cancelled(pair, how=""):
    src, dst, a, b = pair.src, pair.dst, pair.a, pair.b
    with section(f"mtty migration{how}: the destination cancels during pre-copy"):
        state_a, state_b = pair.fresh(5, 6)
        in_job, token, addresses = pair.prepare({})
        # Manual switchover: the source stays in pre-copy until the cancel comes.
        out_job = pair.start(addresses[0], token, {"switchover": ("s", "manual")})
        h.wait_until(lambda: pair.job(dst, in_job)["InitialDataLoaded"] and pair.job(src, out_job)["Phase"] ==
                     "precopy", 30, 0.05, "B to load the pre-copy data")
        C.equal((src.dev_prop(a, "State"), dst.dev_prop(b, "State")), ("pre-copy", "resuming"),
                "in pre-copy: A in pre-copy, B in resuming holding A's header")
        resets = reset_calls()
        dst.call(in_job, MIGRATION_IFACE, "Cancel")
        out, inc, seen = pair.wait(out_job, in_job)
        C.equal((inc["Phase"], inc["ErrorName"]), ("cancelled", E_CANCELLED), "destination job: cancelled",
                inc["Error"])
        C.equal((out["Phase"], out["ErrorName"]), ("failed", E_PEER_ABORTED), "source job: failed, the peer aborted",
                out["Error"])
        C.check(reset_calls() > resets, "B was reset: mtty's VFIO_DEVICE_RESET handler ran",
                f"{reset_calls() - resets} reset(s)")
        C.equal(dst.dev_prop(b, "State"), "running", "B is running")
        C.equal(src.dev_prop(a, "State"), "running", "A runs again")
        C.equal((src.dev_prop(a, "Migration"), dst.dev_prop(b, "Migration")), ("/", "/"),
                "neither device belongs to a job any more")
        C.equal(UartState.read(pair.vmm_b), state_b.expected(),
                "B's UART registers and FIFOs are its own: nothing of A's was loaded")
        C.equal(UartState.read(pair.vmm_a), state_a.expected(), "A's UART registers and FIFOs are intact")


# --------------------------------------------------------------------------------------------
# edu: DMA through the IOMMU, across daemon restarts


MEM_SIZE = 2 * 1024 * 1024
IOVA = 0x100000          # below 256 MiB: edu's default DMA mask is 28 bits
DMA_LEN = 2048           # below 4096: QEMU 7.2's edu aborts the VM on a full 4 KiB transfer
UNIT = "vfiomigd.service"


def journal_entries(manager):
    """[(monotonic seconds, pid, message)] of the vfiomigd unit, oldest first."""
    text = manager.journal("-o", "json", f"_SYSTEMD_CGROUP={manager.unit_cgroup(UNIT)}", check=False)
    out = []
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        msg = e.get("MESSAGE")
        if isinstance(msg, list):
            msg = bytes(msg).decode(errors="replace")
        out.append((int(e.get("__MONOTONIC_TIMESTAMP", 0)) / 1e6, int(e.get("_PID", 0)), msg or ""))
    return out


def find_log(entries, pattern, pid=None, after=0.0):
    rx = re.compile(pattern)
    for t, p, msg in entries:
        if t >= after and (pid is None or p == pid) and rx.search(msg):
            return t
    return None


def iterations_between(vmm, start, end):
    inside = [i for i in vmm.iterations if i["t0"] >= start and i["t1"] <= end]
    overlapping = [i for i in vmm.iterations if i["t1"] >= start and i["t0"] <= end]
    return inside, overlapping


def edu_tests():
    rundir = h.TempDir("vfm-vm-", parent="/run")
    bus = h.PrivateBus(base_dir=rundir.path).start()
    config = rundir / "vfiomigd.json"
    config.write_text(json.dumps({"devices": []}))
    os.chmod(config, 0o644)
    manager = None
    vmm = None
    client = bus.client
    # Guest RAM as a VMM has it: a memfd. vfiomigctl and the VMM stand-in open it by its /proc
    # path, each getting an open file description of its own on the same pages.
    memfd = os.memfd_create("vfm-vm-guest-memory")
    os.ftruncate(memfd, MEM_SIZE)
    mem = Path(f"/proc/{os.getpid()}/fd/{memfd}")
    try:
        with section("edu: vfiomigd as a Type=notify service of systemd --user"):
            t = time.monotonic()
            manager = h.SystemdUserManager().start(timeout=60)
            C.note(f"systemd --user up in {time.monotonic() - t:.1f}s")
            text, _ = test_systemd.adapt_unit(test_systemd.unit_source().read_text(), bus.address, config)
            # A successor that takes a second to start (a big state, a slow host): the window in
            # which the mapping's host address is invalid lasts at least that long, so that the
            # VMM's DMA (~0.2 s a copy) certainly runs inside it, whatever the restart's speed.
            text = re.sub(r"(?m)^(ExecStart=.*)$", "# test: a slow start, to widen the handover window\n"
                          "ExecStartPre=/bin/sleep 1\n\\1", text, count=1)
            if IOMMUFD:
                # With CAP_IPC_LOCK (the unit's only capability) iommufd charges pinned pages to
                # nobody (IOPT_PAGES_ACCOUNT_NONE), so CHANGE_PROCESS would have no charge to move.
                # Narrowed as the unit's comment allows (LimitMEMLOCK=infinity keeps pinning
                # working), iommufd charges the mapping process (ACCOUNT_USER: its VmPin), and
                # the successor's VmPin shows the charge arriving.
                text = re.sub(r"(?m)^(CapabilityBoundingSet=.*)$", "\\1\n# test: no CAP_IPC_LOCK, so that iommufd "
                              "charges the pinned pages and CHANGE_PROCESS visibly moves them\n"
                              "CapabilityBoundingSet=", text, count=1)
                C.check("\nCapabilityBoundingSet=\n" in text, "the test unit drops CAP_IPC_LOCK (a drop-in's narrowing)")
            manager.install_unit(UNIT, text)
            t = time.monotonic()
            r = manager.systemctl("start", UNIT, check=False, timeout=120)
            C.check(r.returncode == 0, "systemctl --user start vfiomigd.service", r.stderr.strip())
            C.note(f"started in {time.monotonic() - t:.1f}s")
            C.equal(client.mgr_prop("FileDescriptorStore"), True, "Manager.FileDescriptorStore")
            if IOMMUFD:
                cap = re.search(r"(?m)^CapEff:\s*(\S+)", Path(f"/proc/{manager.show(UNIT, 'MainPID')['MainPID']}/status")
                                .read_text())
                C.equal(cap and int(cap.group(1), 16), 0, "vfiomigd runs with no capability (CapEff)")

        with section("edu: attach, address space, mapping"):
            out = ctl_json(bus, "attach", EDU)
            dev = out.get("object") or client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "GetDevice", "s", EDU)
            props = {k: v for k, (_, v) in client.get_all(dev, h.DEVICE_IFACE).items()}
            C.equal(props["Backend"], BACKEND, "edu: Backend" + (" (VFIO cdev + iommufd)" if IOMMUFD else
                                                                  " (no iommufd on this kernel)"))
            check_vfio_nodes(int(manager.show(UNIT, "MainPID")["MainPID"]), "edu", f"/sys/bus/pci/devices/{EDU}")
            C.equal(props["Driver"], "vfio-pci", "edu: Driver")
            C.equal(props["Migratable"], False, "edu: Migratable")
            C.check("ENOTTY" in props["MigratableReason"] or "migration" in props["MigratableReason"],
                    "edu: MigratableReason says why", props["MigratableReason"])
            space_out = ctl_json(bus, "space", "create")
            space = space_out.get("object") or h.SPACE_PATH_PREFIX + space_out["id"]
            space_id = space.rsplit("/", 1)[1]
            C.equal(client.get_property(space, h.SPACE_IFACE, "Backend"), BACKEND,
                    f"CreateAddressSpace with no backend picks {BACKEND}")
            r = ctl(bus, "attach-space", EDU, space_id, check=False)
            C.equal(r.returncode, 0, "vfiomigctl attach-space edu SPACE", r.stderr.strip())
            C.equal(client.dev_prop(dev, "AddressSpace"), space, "edu: AddressSpace")
            pid = int(manager.show(UNIT, "MainPID")["MainPID"])
            pinned_before = proc_status_kb(pid, "VmPin")
            half = MEM_SIZE // 2
            r = ctl(bus, "map", space_id, f"--file={mem}", f"--length={half}", f"--iova={IOVA:#x}", check=False)
            C.equal(r.returncode, 0, f"vfiomigctl map SPACE --file={mem} (a memfd) at IOVA {IOVA:#x}", r.stderr.strip())
            # The rest of guest RAM in two ranges through ONE open of the memfd, as a VMM maps the
            # regions of its RAM: systemd's fd store folds a second FDSTORE of one open file
            # description, so the daemon must keep that description once for both mappings, or a
            # restart loses one of them (what the 7.2 probe found).
            with dbus_wire.WireConnection(bus.address) as wire:
                for offset in (half, half + half // 2):
                    wire.call(h.BUS_NAME, space, h.SPACE_IFACE, "Map", "htttas",
                              [0, offset, half // 2, IOVA + offset, ["read", "write"]], fds=[memfd])
            mappings = client.call1(space, h.SPACE_IFACE, "ListMappings")
            C.equal([tuple(m[:3]) for m in mappings],
                    [(IOVA, half, 0), (IOVA + half, half // 2, half), (IOVA + half + half // 2, half // 2, half + half // 2)],
                    "ListMappings: three ranges of the memfd, two of them through one open file description")
            C.equal(client.get_property(space, h.SPACE_IFACE, "PinnedBytes"), MEM_SIZE, "PinnedBytes")
            live = client.get_property(space, h.SPACE_IFACE, "LiveUpdate")
            C.check(live.startswith("survives"), "LiveUpdate: the mapping survives restarts", live)
            if IOMMUFD:
                C.check("IOMMU_IOAS_MAP_FILE" in live and "IOMMU_IOAS_CHANGE_PROCESS" in live,
                        "LiveUpdate: mapped by file (IOMMU_IOAS_MAP_FILE), to change owner with CHANGE_PROCESS", live)
                pinned = proc_status_kb(pid, "VmPin")
                C.equal((pinned or 0) - (pinned_before or 0), MEM_SIZE // 1024,
                        "the memfd's 2 MiB are pinned and charged to vfiomigd (its VmPin grew by 2048 kB)",
                        f"pid {pid} VmPin {pinned_before} -> {pinned} kB")

        with section("edu: a VMM holding the device fd makes DMA into the mapped file"):
            vmm = Vmm(bus, dev, "edu", f"--file={mem}", f"--iova={IOVA:#x}")
            C.note(vmm.ready)
            edu = vmm.next_answer(30)
            C.check(edu.startswith("ready-edu id=0x010000ed"), "edu answers through BAR0 (mmap of the device fd)", edu)
            m = re.search(r"command=(0x[0-9a-f]+)->(0x[0-9a-f]+)", edu)
            C.check(m is not None and int(m.group(2), 16) & 0x4, "bus mastering set through the config region",
                    f"PCI_COMMAND {m.group(1)} -> {m.group(2)}" if m else edu)
            C.equal(client.dev_prop(dev, "Clients"), 1, "Device.Clients counts the VMM")
            for i, (src, dst) in enumerate(((0x0, 0x1000), (0x10000, 0x1ff000), (0x1fe000, 0x2000))):
                answer = vmm.cmd(f"copy {src:#x} {dst:#x} {DMA_LEN} {i + 1}")
                C.check(answer.startswith("ok"), f"edu DMA IOVA+{src:#x} -> edu -> IOVA+{dst:#x} lands in the file",
                        answer)
            answer = vmm.cmd(f"to-ram 0x3000 {DMA_LEN} 0xaa")
            C.check(answer.startswith("ok changed=") and "changed=0 " not in answer,
                    "control: an edu -> RAM DMA to a mapped IOVA changes the file", answer)

        restart_under_dma(manager, bus, vmm, dev, space, "planned restart (systemctl --user restart)", planned=True)
        restart_under_dma(manager, bus, vmm, dev, space, "crash (kill -9 of the main process)", planned=False)

        with section("edu: DMA to an unmapped IOVA faults"):
            before = dmesg()
            r = ctl(bus, "unmap", space_id, f"--iova={IOVA:#x}", f"--length={MEM_SIZE}", check=False)
            C.equal(r.returncode, 0, "vfiomigctl unmap", r.stderr.strip())
            C.equal(client.call1(space, h.SPACE_IFACE, "ListMappings"), [], "ListMappings is empty")
            answer = vmm.cmd(f"to-ram 0x3000 {DMA_LEN} 0xaa")
            C.check(answer.startswith("ok changed=0 "), "edu -> RAM DMA to the unmapped IOVA does not land", answer)
            answer = vmm.cmd(f"copy 0x4000 0x5000 {DMA_LEN} 99")
            C.check(answer.startswith("fail"), "RAM -> edu -> RAM through unmapped IOVAs does not work", answer)
            new = dmesg()[len(before):]
            faults = [line for line in new.splitlines() if "DMAR" in line and "fault" in line.lower()]
            C.check(any(f"{IOVA + 0x3000:x}" in line for line in new.splitlines()),
                    f"the IOMMU reported a DMA fault at IOVA {IOVA + 0x3000:#x}",
                    "; ".join(faults[:3]) or new.strip()[-300:])
            C.note(f"{len(faults)} DMAR fault lines")
        with section(f"mtty under the service manager: an mdev in a{'n' if IOMMUFD else ''} {BACKEND} address space"):
            out = ctl_json(bus, "attach", MDEV_A)
            mdev = out.get("object") or client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "GetDevice", "s", MDEV_A)
            space2 = ctl_json(bus, "space", "create")["id"]
            C.equal(ctl(bus, "attach-space", MDEV_A, space2, check=False).returncode, 0, "vfiomigctl attach-space")
            mem2 = Path("/dev/shm/vfm-vm-mtty-memory")
            with open(mem2, "wb") as f:
                f.truncate(65536)
            r = ctl(bus, "map", space2, f"--file={mem2}", "--length=65536", "--iova=0x100000", check=False)
            C.equal(r.returncode, 0, "vfiomigctl map into the space of an mdev" +
                    (" (an iommufd access for the emulated device)" if IOMMUFD else
                     " (type1 pins for an emulated group)"), r.stderr.strip())
            live = client.get_property(h.SPACE_PATH_PREFIX + space2, h.SPACE_IFACE, "LiveUpdate")
            if IOMMUFD:
                C.check(live.startswith("survives"), "LiveUpdate: by file, an mdev in the IOAS does not stop "
                        "CHANGE_PROCESS", live)
            else:
                C.check("mdev" in live and not live.startswith("survives"),
                        "LiveUpdate: type1 offers no VFIO_UPDATE_VADDR with an mdev group in the container", live)
            # B's group has a container of its own: joining the space moves it into the space's
            # container (device fds closed, GROUP_UNSET_CONTAINER, GROUP_SET_CONTAINER, reopened).
            out = ctl_json(bus, "attach", MDEV_B)
            mdev_b = out.get("object") or client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "GetDevice", "s", MDEV_B)
            r = ctl(bus, "attach-space", MDEV_B, space2, check=False)
            C.equal(r.returncode, 0, "a second mdev joins the space" + (
                    ": attached to the same IOAS" if IOMMUFD else
                    ": its IOMMU group moves into the space's container"), r.stderr.strip())
            C.equal(client.dev_prop(mdev_b, "AddressSpace"), h.SPACE_PATH_PREFIX + space2, "B: AddressSpace")
            err, value = expect_error(client.call1, mdev_b, h.DEVICE_IFACE, "SetState", "sa{sv}", "stop", {})
            C.equal(value if err is None else err, "stop", "B works through its " + ("device fd" if IOMMUFD else
                                                                            "reopened device fd") + " (SetState stop)")
            expect_error(client.call1, mdev_b, h.DEVICE_IFACE, "SetState", "sa{sv}", "running", {})
            r = ctl(bus, "unmap", space2, "--length=65536", "--iova=0x100000", check=False)
            C.equal(r.returncode, 0, "vfiomigctl unmap", r.stderr.strip())
            for uuid in (MDEV_A, MDEV_B):
                r = ctl(bus, "detach", uuid, check=False)
                C.equal(r.returncode, 0, f"vfiomigctl detach {uuid}", r.stderr.strip())
            mem2.unlink()
    finally:
        if vmm is not None:
            vmm.stop()
        if manager is not None:
            try:
                C.note("journal of vfiomigd.service (end):")
                for t, pid, msg in journal_entries(manager)[-25:]:
                    print(f"        [{t:9.3f}] {pid}: {msg}")
            except Exception as e:  # diagnostics only
                C.note(f"(journal unavailable: {e})")
            manager.systemctl("stop", UNIT, check=False)
            manager.stop()
        bus.stop()
        rundir.stop()
        os.close(memfd)


def legacy_on_iommufd():
    """Where iommufd exists, the legacy path stays selectable ("vfio-backend": "legacy" in
    vfiomigd.conf): groups, a type1 container, MAP_DMA of the daemon's view of a memfd, edu DMA."""
    bus = h.PrivateBus().start()
    daemon = h.Daemon(bus, allow_simulated=False, config={"vfio-backend": "legacy"})
    memfd = os.memfd_create("vfm-vm-legacy-memory")
    os.ftruncate(memfd, MEM_SIZE)
    mem = Path(f"/proc/{os.getpid()}/fd/{memfd}")
    vmm = None
    client = bus.client
    try:
        with section('the legacy path on an iommufd kernel: "vfio-backend": "legacy" in vfiomigd.conf'):
            daemon.start()
            features = client.mgr_prop("KernelFeatures")
            C.check("iommufd" in features and "vfio-container" in features,
                    "KernelFeatures still lists both (the choice is the configuration's)", str(features))
            paths = {}
            for addr in (EDU, MDEV_A):
                out = ctl_json(bus, "attach", addr)
                paths[addr] = out.get("object") or client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "GetDevice", "s",
                                                                addr)
                C.equal(client.dev_prop(paths[addr], "Backend"), "legacy", f"{addr}: Backend")
            held = vfio_nodes_held(daemon.pid)
            C.check("/dev/vfio/vfio" in held and "/dev/iommu" not in held
                    and not any(p.startswith("/dev/vfio/devices/") for p in held),
                    "vfiomigd holds groups and a container, no cdev and no /dev/iommu", str(sorted(held)))
            space = ctl_json(bus, "space", "create")
            space_path = space.get("object") or h.SPACE_PATH_PREFIX + space["id"]
            C.equal(client.get_property(space_path, h.SPACE_IFACE, "Backend"), "legacy",
                    "CreateAddressSpace with no backend picks legacy")
            r = ctl(bus, "attach-space", EDU, space["id"], check=False)
            C.equal(r.returncode, 0, "vfiomigctl attach-space edu SPACE", r.stderr.strip())
            r = ctl(bus, "map", space["id"], f"--file={mem}", f"--length={MEM_SIZE}", f"--iova={IOVA:#x}", check=False)
            C.equal(r.returncode, 0, "vfiomigctl map of a memfd (MAP_DMA)", r.stderr.strip())
            live = client.get_property(space_path, h.SPACE_IFACE, "LiveUpdate")
            C.check("service manager" in live, "LiveUpdate: lost on restart, for want of a file descriptor store "
                    "(this daemon runs without a service manager)", live)
            vmm = Vmm(bus, paths[EDU], "edu", f"--file={mem}", f"--iova={IOVA:#x}")
            edu = vmm.next_answer(30)
            C.check(edu.startswith("ready-edu id=0x010000ed"), "edu answers through the legacy device fd's BAR0", edu)
            answer = vmm.cmd(f"copy 0x0 0x1000 {DMA_LEN} 5")
            C.check(answer.startswith("ok"), "edu DMA through the type1 container lands in the memfd", answer)
            r = ctl(bus, "unmap", space["id"], f"--iova={IOVA:#x}", f"--length={MEM_SIZE}", check=False)
            C.equal(r.returncode, 0, "vfiomigctl unmap", r.stderr.strip())
            answer = vmm.cmd(f"to-ram 0x3000 {DMA_LEN} 0xaa")
            C.check(answer.startswith("ok changed=0 "), "after unmap, edu -> RAM DMA does not land", answer)
            vmm.stop()
            vmm = None
            for addr in (EDU, MDEV_A):
                r = ctl(bus, "detach", addr, check=False)
                C.equal(r.returncode, 0, f"vfiomigctl detach {addr}", r.stderr.strip())
    finally:
        if vmm is not None:
            vmm.stop()
        if daemon.alive():
            C.equal(daemon.terminate(), 0, "the legacy vfiomigd exits 0 on SIGTERM")
        (WORK / "vfiomigd-legacy.log").write_text(daemon.log())
        daemon.stop(expect=None)
        bus.stop()
        os.close(memfd)


def restart_under_dma(manager, bus, vmm, dev, space, what, planned):
    client = bus.client
    with section(f"edu: {what} while the VMM keeps making DMA"):
        before = {k: v for k, (_, v) in client.get_all(space, h.SPACE_IFACE).items()}
        mappings_before = [tuple(m[:3]) for m in client.call1(space, h.SPACE_IFACE, "ListMappings")]
        devices_before = client.manager("ListDevices")[0]
        old_pid = int(manager.show(UNIT, "MainPID")["MainPID"])
        old_pinned = proc_status_kb(old_pid, "VmPin")
        n_restarts = int(manager.show(UNIT, "NRestarts")["NRestarts"])
        answer = vmm.cmd(f"loop {DMA_LEN}")
        C.equal(answer, "ok looping", "the VMM starts a DMA loop")
        time.sleep(1.0)
        first = len(vmm.iterations)
        t_start = time.monotonic()
        if planned:
            r = manager.systemctl("restart", UNIT, check=False, timeout=120)
            C.check(r.returncode == 0, "systemctl --user restart", r.stderr.strip())
        else:
            os.kill(old_pid, signal.SIGKILL)

            def running_again():
                p = manager.show(UNIT, "MainPID", "ActiveState", "SubState")
                return p["MainPID"] not in ("0", str(old_pid)) and (p["ActiveState"], p["SubState"]) == \
                    ("active", "running")
            h.wait_until(running_again, 120, 0.1, "the unit to run again with a new main process")
        t_done = time.monotonic()
        time.sleep(1.5)
        answer = vmm.cmd("stop", timeout=30)
        C.check(answer.startswith("ok iterations="), "the VMM stops its loop", answer)
        props = manager.show(UNIT, "MainPID", "ActiveState", "NRestarts")
        new_pid = int(props["MainPID"])
        C.check(new_pid not in (0, old_pid) and props["ActiveState"] == "active",
                f"a new vfiomigd runs (pid {old_pid} -> {new_pid})", str(props))
        C.equal(int(props["NRestarts"]), n_restarts + (0 if planned else 1),
                "NRestarts" + (" (a restart job is no failure)" if planned else " (Restart=on-failure did it)"))
        C.note(f"restart took {t_done - t_start:.2f}s of guest time")

        entries = journal_entries(manager)
        t_invalid = (find_log(entries, r"ready for a successor", pid=old_pid) if planned else t_start)
        t_taken = find_log(entries, r"took over \d+ mapping", pid=new_pid)
        if planned:
            C.check(t_invalid is not None, "the old daemon prepared the mapping for a successor at SIGTERM "
                    + ("(IOMMU_IOAS_CHANGE_PROCESS checked early)" if IOMMUFD else "(UNMAP_DMA VADDR|ALL)"),
                    f"at {t_invalid:.3f}" if t_invalid else "no 'ready for a successor' line")
        C.check(t_taken is not None, "the successor took the mapping over "
                + ("(IOMMU_IOAS_CHANGE_PROCESS)" if IOMMUFD else "(MAP_DMA VADDR)") + " before READY",
                f"at {t_taken}" if t_taken else "no 'took over' log line")
        if IOMMUFD:
            t_change = find_log(entries, r"IOMMU_IOAS_CHANGE_PROCESS: the iommufd's mappings are charged to this "
                                r"process now", pid=new_pid)
            C.check(t_change is not None, "the successor called IOMMU_IOAS_CHANGE_PROCESS on the adopted iommufd "
                    "(its journal)", f"at {t_change:.3f}" if t_change else "no CHANGE_PROCESS line from the new pid")
            new_pinned = proc_status_kb(new_pid, "VmPin")
            C.check(old_pinned == MEM_SIZE // 1024 and new_pinned == MEM_SIZE // 1024,
                    "the pinned-page accounting moved to the successor: its VmPin is the memfd's 2048 kB",
                    f"old pid {old_pid} VmPin {old_pinned} kB before, new pid {new_pid} VmPin {new_pinned} kB")
        iters = vmm.iterations[first:]
        failed = [i for i in iters if not i["ok"]]
        C.check(len(iters) >= 5 and not failed, "every DMA of the loop landed in the file",
                f"{len(iters)} copies, {len(failed)} failed" + (f": {failed[:3]}" if failed else ""))
        if t_invalid is not None and t_taken is not None:
            inside, overlapping = iterations_between(vmm, t_invalid, t_taken)
            window = ("from SIGTERM's preparation to the successor's take-over" if planned else
                      "from the kill to the successor's take-over")
            C.note(f"{window} {t_invalid:.3f} .. {t_taken:.3f} ({t_taken - t_invalid:.2f}s): "
                   f"{len(inside)} copies entirely inside, {len(overlapping)} overlapping")
            C.check(inside and all(i["ok"] for i in overlapping),
                    "DMA kept landing in the same pages while no daemon " + ("owned the mapping" if IOMMUFD else
                                                                          "held a valid host address"),
                    f"{len(inside)} copies inside the window, all ok")
            after = [i for i in iters if i["t0"] > t_taken]
            C.check(after and all(i["ok"] for i in after), "... and after the successor registered its own",
                    f"{len(after)} copies after")
        after_props = {k: v for k, (_, v) in client.get_all(space, h.SPACE_IFACE).items()}
        C.equal(client.manager("ListDevices")[0], devices_before, "the same devices, at the same objects")
        C.equal(client.dev_prop(dev, "AddressSpace"), space, "edu is still attached to the same space")
        C.equal(client.dev_prop(dev, "Clients"), 1, "the VMM (still connected, still holding its fd) is still "
                "counted as a client")
        C.equal([tuple(m[:3]) for m in client.call1(space, h.SPACE_IFACE, "ListMappings")], mappings_before,
                f"every mapping is back (ListMappings: {len(mappings_before)}, two sharing one open file description)")
        C.equal((after_props["MappingCount"], after_props["PinnedBytes"]),
                (before["MappingCount"], before["PinnedBytes"]), "MappingCount and PinnedBytes unchanged")
        C.check(after_props["LiveUpdate"].startswith("survives"), "LiveUpdate still says the mapping survives",
                after_props["LiveUpdate"])
        answer = vmm.cmd(f"copy 0x6000 0x7000 {DMA_LEN} 77")
        C.check(answer.startswith("ok"), "a fresh DMA after the restart lands", answer)


# --------------------------------------------------------------------------------------------


def main():
    print(f"vfiomigd VM tier: kernel {os.uname().release}, guest tests in {SOURCE_ROOT}", flush=True)
    only = set(filter(None, os.environ.get("VM_ONLY", "").split(",")))   # VFIOMIGD_VM_ONLY=mtty,migration,tls,edu
    test_kernel()
    if IOMMUFD and (not only or "edu" in only):
        test_change_process_rule()
    if not only or "mtty" in only:
        run_mtty()
    if not only or "mtty" in only or "migration" in only:
        run_mtty_migration()
    if not only or "tls" in only:
        import guest_tls
        guest_tls.run(sys.modules[__name__])
    if not only or "edu" in only:
        edu_tests()
        if IOMMUFD:
            legacy_on_iommufd()
    h.run_all_cleanups()
    if C.failures:
        print("\nFailures:")
        for f in C.failures:
            print(f"  {f}")
    print(f"\nvm: {C.passed} passed, {C.failed} failed", flush=True)
    return 0 if C.failed == 0 else 1


def run_mtty():
    bus = h.PrivateBus().start()
    daemon = h.Daemon(bus, allow_simulated=False)
    try:
        with section("vfiomigd on a private bus (no service manager)"):
            daemon.start()
            C.equal(bus.client.mgr_prop("FileDescriptorStore"), False, "Manager.FileDescriptorStore",
                    "not started by a service manager")
            C.equal(bus.client.mgr_prop("SimulationAllowed"), False, "Manager.SimulationAllowed")
        test_features(bus)
        mtty_tests(bus, daemon.pid)
    finally:
        if daemon.alive():
            rc = daemon.terminate()
            C.equal(rc, 0, "vfiomigd exits 0 on SIGTERM")
        log = daemon.log()
        (WORK / "vfiomigd-mtty.log").write_text(log)
        daemon.stop(expect=None)
        bus.stop()


if __name__ == "__main__":
    sys.exit(main())
