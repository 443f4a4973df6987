# SPDX-License-Identifier: GPL-2.0-or-later
"""What the VM tier's guest tests drive the daemon and the devices with: a persistent bus
connection, vfiomigctl, the VMM stand-in (tests/vm/vmm-standin) and the ftrace counter of mtty's
migration_set_state calls (used by guest_tests.py and guest_tls.py)."""

import json
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import dbus_wire  # a persistent bus connection: hundreds of calls without a process each
import harness as h

VMM = Path(os.environ["BUILD_ROOT"]) / "tests" / "vm" / "vmm-standin"
CLI = str(h.CLI)
WORK = Path(os.environ["VM_WORK"])
TRACING = Path("/sys/kernel/tracing")


class WireClient:
    """harness.BusClient's calls over one persistent connection (dbus_wire): the state-machine
    matrix makes hundreds of calls, and a busctl process per call costs ~0.2 s under TCG."""

    def __init__(self, address):
        self.conn = dbus_wire.WireConnection(address, timeout=60)

    def call(self, path, iface, method, sig="", *args):
        try:
            return self.conn.call(h.BUS_NAME, path, iface, method, sig, args)
        except dbus_wire.WireError as e:
            raise h.DBusError(e.name, e.message) from None

    def call1(self, *a):
        data = self.call(*a)
        if len(data) != 1:
            raise AssertionError(f"expected one return value, got {data!r}")
        return data[0]

    def device(self, path, method, sig="", *args):
        return self.call(path, h.DEVICE_IFACE, method, sig, *args)

    def dev_prop(self, path, name):
        return self.call1(path, h.PROPS_IFACE, "Get", "ss", h.DEVICE_IFACE, name)[1]

    def close(self):
        self.conn.close()


def ctl(bus, *args, check=True, timeout=60):
    """vfiomigctl on the private bus; returns the CompletedProcess."""
    r = subprocess.run([CLI, f"--address={bus.address}"] + [str(a) for a in args], capture_output=True,
                       text=True, timeout=timeout, env=h.clean_env())
    if check and r.returncode != 0:
        raise RuntimeError(f"vfiomigctl {' '.join(map(str, args))}: rc={r.returncode}: {r.stderr.strip()}")
    return r


def ctl_json(bus, *args):
    return json.loads(ctl(bus, "--json=short", *args).stdout)


class Vmm:
    """tests/vm/vmm-standin as a child: a line per command on stdin, a line per answer; the edu
    loop's "iter" lines are collected on the side."""

    def __init__(self, bus, device_path, mode, *args):
        self.log_path = WORK / f"vmm-{mode}-{int(time.monotonic() * 1000)}.log"
        self.proc = subprocess.Popen([str(VMM), f"--address={bus.address}", f"--device={device_path}", mode]
                                     + list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log_path, "w"), text=True, bufsize=1, env=h.clean_env())
        h.track(self)
        self.answers = queue.Queue()
        self.iterations = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.ready = self.next_answer(30)
        if not self.ready.startswith("ready "):
            raise RuntimeError(f"vmm-standin did not start: {self.ready} {self.stderr()}")

    def __repr__(self):
        return f"Vmm(pid={self.proc.pid})"

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("iter "):
                m = re.match(r"iter (\d+) (ok|fail) t=([\d.]+),([\d.]+) src=(\S+) dst=(\S+) ?(.*)", line)
                if m:
                    self.iterations.append({"n": int(m.group(1)), "ok": m.group(2) == "ok",
                                            "t0": float(m.group(3)), "t1": float(m.group(4)),
                                            "src": m.group(5), "dst": m.group(6), "why": m.group(7)})
                continue
            self.answers.put(line)
        self.answers.put(None)

    def next_answer(self, timeout):
        try:
            line = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"vmm-standin gave no answer within {timeout}s") from None
        if line is None:
            raise RuntimeError(f"vmm-standin exited ({self.proc.poll()}): {self.stderr()}")
        return line

    def cmd(self, text, timeout=60):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.next_answer(timeout)

    def value(self, text):
        answer = self.cmd(text)
        m = re.match(r"ok value=(\S+)", answer)
        if not m:
            raise RuntimeError(f"{text}: {answer}")
        return int(m.group(1), 0)

    def stderr(self):
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return ""

    def stop(self):
        h.untrack(self)
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                h.stop_child(self.proc, 5)
        return self.proc.returncode


class SetStateTrace:
    """Counts the mtty driver's migration_set_state calls (mtty_set_state) with the function
    tracer: the kernel's own record of which requests reached the driver."""

    def __init__(self):
        self.available = False
        try:
            (TRACING / "tracing_on").write_text("0")
            (TRACING / "set_ftrace_filter").write_text("mtty_set_state\n")
            (TRACING / "current_tracer").write_text("function\n")
            (TRACING / "trace").write_text("")
            (TRACING / "tracing_on").write_text("1")
            self.available = True
        except OSError as e:
            self.error = str(e)

    def clear(self):
        if self.available:
            (TRACING / "trace").write_text("")

    def count(self):
        if not self.available:
            return None
        return sum(1 for line in (TRACING / "trace").read_text().splitlines()
                   if not line.startswith("#") and "mtty_set_state" in line)

    def stop(self):
        if self.available:
            (TRACING / "tracing_on").write_text("0")
            (TRACING / "current_tracer").write_text("nop\n")
