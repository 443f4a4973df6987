# SPDX-License-Identifier: GPL-2.0-or-later
"""What every part of the VM tier's guest tests shares: the check counter, sections, and what
kernel vm.py booted and what the tests hold it to (guest_tests.py, guest_kernel.py, guest_tls.py)."""

import os
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager

import harness as h

EDU = os.environ.get("VM_EDU", "0000:00:03.0")
MDEV_A = os.environ["VM_MDEV_A"]
MDEV_B = os.environ["VM_MDEV_B"]

# What vm.py booted and what the tests hold it to: "legacy" (Debian's 6.12: no iommufd, devices
# through groups and type1 containers), "iommufd" (the tier's own 7.2: iommufd and the VFIO cdev
# by default, the legacy container beside them) or "detect" (an operator's kernel: whatever is
# there, reported and held to consistency).
KERNEL_NAME = os.environ.get("VM_KERNEL_NAME") or "6.12"
EXPECT = os.environ.get("VM_EXPECT") or "legacy"
HAS_IOMMUFD = os.path.exists("/dev/iommu") and os.path.isdir("/dev/vfio/devices")
IOMMUFD = HAS_IOMMUFD if EXPECT == "detect" else EXPECT == "iommufd"
BACKEND = "iommufd" if IOMMUFD else "legacy"     # what AttachDevice and CreateAddressSpace pick


# --------------------------------------------------------------------------------------------
# Checks


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []
        self.section = ""

    def check(self, ok, name, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok    {name}{': ' + detail if detail else ''}", flush=True)
        else:
            self.failed += 1
            self.failures.append(f"[{self.section}] {name}: {detail}")
            print(f"  FAIL  {name}: {detail}", flush=True)
        return bool(ok)

    def equal(self, got, want, name, detail=""):
        return self.check(got == want, name, f"{detail + '; ' if detail else ''}got {got!r}"
                          + ("" if got == want else f", want {want!r}"))

    def note(self, text):
        print(f"  ..    {text}", flush=True)


C = Checks()
T0 = time.monotonic()


@contextmanager
def section(name):
    C.section = name
    print(f"\n== {name} [{time.monotonic() - T0:.1f}s]", flush=True)
    try:
        yield
    except Exception as e:  # one section's breakage must not hide the others' results
        C.check(False, f"{name}: section aborted", f"{type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()


def expect_error(fn, *args):
    """(None, value) if fn succeeded, else (error name, message)."""
    try:
        return None, fn(*args)
    except h.DBusError as e:
        return e.name, e.message


def sysfs_link_name(path):
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def dmesg():
    return subprocess.run(["dmesg"], capture_output=True, text=True).stdout
