# SPDX-License-Identifier: GPL-2.0-or-later
"""The VM tier's guest tests of the kernel itself: what the booted kernel offers, what vfiomigd
detected (Manager.KernelFeatures), which VFIO nodes the daemon holds, the pinned-memory
accounting, and the kernel's own IOMMU_IOAS_CHANGE_PROCESS rule (run by guest_tests.py)."""

import os
import re
from pathlib import Path

from guest_common import (BACKEND, EDU, EXPECT, HAS_IOMMUFD, IOMMUFD, KERNEL_NAME, MDEV_A, MDEV_B, C, section,
                          sysfs_link_name)

MEM_SIZE = 2 * 1024 * 1024
IOVA = 0x100000


def test_kernel():
    with section("kernel: what the guest runs"):
        release = os.uname().release
        C.equal(release, os.environ.get("VM_KERNEL_RELEASE"), "uname -r is the pinned kernel",
                f"Debian package {os.environ.get('VM_KERNEL_VERSION')}")
        if os.environ.get("VM_KERNEL_NOTE"):
            C.note(os.environ["VM_KERNEL_NOTE"])
        edu = f"/sys/bus/pci/devices/{EDU}"
        C.equal(sysfs_link_name(f"{edu}/driver"), "vfio-pci", f"edu ({EDU}) is bound to vfio-pci")
        group = sysfs_link_name(f"{edu}/iommu_group")
        C.check(group is not None and os.path.exists(f"/dev/vfio/{group}"), "edu has an IOMMU group and its node",
                f"/dev/vfio/{group}")
        for uuid in (MDEV_A, MDEV_B):
            mg = sysfs_link_name(f"/sys/bus/mdev/devices/{uuid}/iommu_group")
            C.check(mg is not None and os.path.exists(f"/dev/vfio/{mg}"), f"mdev {uuid} has an emulated IOMMU group",
                    f"/dev/vfio/{mg}")
        if EXPECT == "detect":
            C.note(f"an operator's kernel: /dev/iommu and /dev/vfio/devices {'exist' if HAS_IOMMUFD else 'are absent'},"
                   f" so the tests expect the {BACKEND} backend")
        elif IOMMUFD:
            C.check(os.path.exists("/dev/iommu"), "/dev/iommu exists (CONFIG_IOMMUFD=y)")
            for what, sysfs in (("edu", f"{edu}/vfio-dev"),
                                *((f"mdev {u[-2:]}", f"/sys/bus/mdev/devices/{u}/vfio-dev") for u in (MDEV_A, MDEV_B))):
                nodes = sorted(os.listdir(sysfs)) if os.path.isdir(sysfs) else []
                C.check(len(nodes) == 1 and os.path.exists(f"/dev/vfio/devices/{nodes[0]}"),
                        f"{what} has a VFIO cdev (CONFIG_VFIO_DEVICE_CDEV=y)",
                        f"/dev/vfio/devices/{nodes[0]}" if nodes else f"nothing in {sysfs}")
            C.check(os.path.exists("/dev/vfio/vfio"), "/dev/vfio/vfio exists too: the legacy container stays "
                    "(CONFIG_VFIO_CONTAINER=y)")
        else:
            C.check(not os.path.exists("/dev/iommu"), "no /dev/iommu: Debian's 6.12 has CONFIG_IOMMUFD unset",
                    "so no iommufd, no IOAS_MAP_FILE, no IOAS_CHANGE_PROCESS on this kernel")
            C.check(not os.path.exists("/dev/vfio/devices"), "no /dev/vfio/devices: no VFIO cdev without iommufd")
        C.check(os.path.isdir("/sys/module/vfio_iommu_type1"), "the type1 IOMMU driver is loaded")
        C.note(f"tainted={Path('/proc/sys/kernel/tainted').read_text().strip()}"
               + (" (out-of-tree, unsigned mtty.ko)" if KERNEL_NAME == "6.12" else ""))


def test_features(bus):
    with section("KernelFeatures as vfiomigd detected them"):
        features = bus.client.mgr_prop("KernelFeatures")
        C.note(f"KernelFeatures = {features}")
        if IOMMUFD:
            expected = {
                "vfio-container": (True, "/dev/vfio/vfio with the type1 IOMMU (CONFIG_VFIO_CONTAINER=y)"),
                "type1-update-vaddr": (True, "type1 has VFIO_UPDATE_VADDR since 5.12"),
                "io_uring": (True, "CONFIG_IO_URING=y"),
                "iommufd": (True, "/dev/iommu answers IOMMU_IOAS_ALLOC"),
                "ioas-map-file": (True, "IOMMU_IOAS_MAP_FILE (Linux 6.13) probed on a scratch IOAS"),
                "ioas-change-process": (True, "IOMMU_IOAS_CHANGE_PROCESS (Linux 6.13) probed on a scratch iommufd"),
                "vfio-cdev": (True, "/dev/vfio/devices (CONFIG_VFIO_DEVICE_CDEV=y)"),
            }
        else:
            expected = {
                "vfio-container": (True, "/dev/vfio/vfio with the type1 IOMMU"),
                "type1-update-vaddr": (True, "type1 has VFIO_UPDATE_VADDR since 5.12"),
                "io_uring": (True, "CONFIG_IO_URING=y"),
                "iommufd": (False, "CONFIG_IOMMUFD is not set in Debian's 6.12"),
                "ioas-map-file": (False, "needs iommufd (and Linux 6.13)"),
                "ioas-change-process": (False, "needs iommufd (and Linux 6.13)"),
                "vfio-cdev": (False, "no /dev/vfio/devices: CONFIG_VFIO_DEVICE_CDEV needs iommufd"),
            }
        if EXPECT == "detect" and IOMMUFD:
            # An operator's iommufd kernel may predate 6.13: then it lacks these two, and says so.
            for name in ("ioas-map-file", "ioas-change-process"):
                C.note(f"KernelFeatures {'has' if name in features else 'lacks'} {name} (an operator's kernel: "
                       f"reported, not asserted)")
                expected.pop(name)
                features = [f for f in features if f != name]
        for name, (present, why) in expected.items():
            C.equal(name in features, present, f"KernelFeatures {'has' if present else 'lacks'} {name}", why)
        extra = sorted(set(features) - set(expected))
        C.equal(extra, [], "KernelFeatures names nothing else")


# The iommufd uAPI (include/uapi/linux/iommufd.h): _IO(';', nr), each struct led by its size.
IOMMU_IOAS_ALLOC = 0x3b81
IOMMU_IOAS_MAP = 0x3b85
IOMMU_IOAS_UNMAP = 0x3b86
IOMMU_IOAS_MAP_FILE = 0x3b8f
IOMMU_IOAS_CHANGE_PROCESS = 0x3b92
IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_MAP_READABLE = 1, 2, 4


def iommufd_ioctl(fd, request, fmt, *fields):
    """ioctl(fd, request, &struct); (0 or -errno, the struct's fields afterwards)."""
    import fcntl
    import struct
    buf = bytearray(struct.pack(fmt, struct.calcsize(fmt), *fields))
    try:
        fcntl.ioctl(fd, request, buf, True)
    except OSError as e:
        return -e.errno, None
    return 0, struct.unpack(fmt, buf)[1:]


def test_change_process_rule():
    """IOMMU_IOAS_CHANGE_PROCESS moves every mapping of an iommufd or none, and only mappings by
    file can move: one mapping by address (IOMMU_IOAS_MAP of a process's memory) makes the kernel
    refuse it with EINVAL. This is the rule AddressSpace.LiveUpdate states for iommufd spaces
    ("mappings by address: a restart of the daemon loses them"); vfiomigd itself maps by address
    only on kernels without IOMMU_IOAS_MAP_FILE, so the rule is checked here on a private iommufd,
    with the calls the daemon makes."""
    import ctypes
    import errno
    import mmap
    with section("iommufd: CHANGE_PROCESS refuses a space holding a mapping by address (the kernel's rule)"):
        fd = os.open("/dev/iommu", os.O_RDWR | os.O_CLOEXEC)
        memfd = os.memfd_create("vfm-vm-change-process")
        anon = mmap.mmap(-1, MEM_SIZE)
        try:
            os.ftruncate(memfd, MEM_SIZE)
            r, out = iommufd_ioctl(fd, IOMMU_IOAS_ALLOC, "=III", 0, 0)
            C.equal(r, 0, "IOMMU_IOAS_ALLOC")
            ioas = out[1]
            rw = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE
            addr = ctypes.addressof(ctypes.c_char.from_buffer(anon))
            r, _ = iommufd_ioctl(fd, IOMMU_IOAS_MAP_FILE, "=IIIiQQQ", rw, ioas, memfd, 0, MEM_SIZE, IOVA)
            C.equal(r, 0, f"IOMMU_IOAS_MAP_FILE of a memfd at IOVA {IOVA:#x}")
            r, _ = iommufd_ioctl(fd, IOMMU_IOAS_CHANGE_PROCESS, "=II", 0)
            C.equal(r, 0, "IOMMU_IOAS_CHANGE_PROCESS with mappings by file only: accepted")
            r, _ = iommufd_ioctl(fd, IOMMU_IOAS_MAP, "=IIIIQQQ", rw, ioas, 0, addr, MEM_SIZE, IOVA + MEM_SIZE)
            C.equal(r, 0, f"IOMMU_IOAS_MAP by address at IOVA {IOVA + MEM_SIZE:#x} beside it")
            r, _ = iommufd_ioctl(fd, IOMMU_IOAS_CHANGE_PROCESS, "=II", 0)
            C.equal(r, -errno.EINVAL, "IOMMU_IOAS_CHANGE_PROCESS with one mapping by address: refused (EINVAL), "
                    "the mapping by file does not move either")
            r, _ = iommufd_ioctl(fd, IOMMU_IOAS_UNMAP, "=IIQQ", ioas, IOVA + MEM_SIZE, MEM_SIZE)
            C.equal(r, 0, "IOMMU_IOAS_UNMAP of the mapping by address")
            r, _ = iommufd_ioctl(fd, IOMMU_IOAS_CHANGE_PROCESS, "=II", 0)
            C.equal(r, 0, "IOMMU_IOAS_CHANGE_PROCESS accepted again once it is gone")
        finally:
            os.close(fd)
            os.close(memfd)
            try:
                anon.close()
            except BufferError:
                pass


def vfio_nodes_held(pid):
    """The VFIO and iommufd nodes among a process's open files."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        # A process in another mount namespace (the service's sandbox) shows its files relative to
        # that namespace's root: the guest's initramfs, with this root at /host.
        m = re.search(r"(/dev/(?:vfio|iommu)\S*)$", target)
        if m:
            out.add(m.group(1))
    return out


def check_vfio_nodes(pid, name, sysfs):
    """On iommufd: the daemon opened the device's cdev and /dev/iommu, not its group's node."""
    held = vfio_nodes_held(pid)
    group = sysfs_link_name(f"{sysfs}/iommu_group")
    if IOMMUFD:
        cdev = sorted(os.listdir(f"{sysfs}/vfio-dev")) if os.path.isdir(f"{sysfs}/vfio-dev") else []
        C.check(cdev and f"/dev/vfio/devices/{cdev[0]}" in held and "/dev/iommu" in held
                and f"/dev/vfio/{group}" not in held,
                f"{name}: vfiomigd opened /dev/vfio/devices/{cdev[0] if cdev else '?'} and bound it through "
                f"/dev/iommu (not /dev/vfio/{group})", f"pid {pid} holds {sorted(held)}")
    else:
        C.check(f"/dev/vfio/{group}" in held and "/dev/vfio/vfio" in held,
                f"{name}: vfiomigd opened its group /dev/vfio/{group} and a container", f"pid {pid} holds {sorted(held)}")


def proc_status_kb(pid, field):
    """A kB field of /proc/PID/status (VmPin: pages pinned for DMA, iommufd's accounting; VmLck:
    locked_vm, type1's), or None."""
    try:
        m = re.search(rf"(?m)^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None
