#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The VM tier's host side: boots a kernel under QEMU (TCG, no KVM) with an emulated Intel VT-d
IOMMU and QEMU's edu DMA device, plus the kernel's mtty sample driver, and runs
tests/vm/guest_tests.py in the guest against the real vfiomigd and vfiomigctl of the build tree.
Recipe: /work/shared/reference/kernel-harness.md and mtty-harness.md. Two kernels (--kernel):

* 6.12  Debian bookworm's 6.12 LTS (no CONFIG_IOMMUFD: the legacy container only), from Debian
        packages fetched by name (`apt-get download`, never installed): the kernel image, its
        headers and kbuild (for mtty.ko) and linux-source-6.12 (for mtty.c), the version pinned
        in tests/vm/kernel-version. Downloads are turned into a few artefacts (an uncompressed
        vmlinux booted through its PVH entry, the handful of modules the guest loads, mtty.c and
        mtty.ko) cached under CACHE / DEB_VERSION /, and the .debs are deleted again.
* 7.2   Linux 7.2 built here from Debian's linux-source-7.2 with tests/vm/linux-7.2.config:
        iommufd, the VFIO cdev, IOMMU_IOAS_MAP_FILE and IOMMU_IOAS_CHANGE_PROCESS, and the legacy
        container beside them; everything built in (tests/vm/linux_build.py), cached under
        CACHE / linux-DEB_VERSION / CONFIG_HASH /.

CACHE is $VFIOMIGD_VM_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/vfiomigd-vm). VFIOMIGD_VM_KERNEL=
PATH (a bzImage or vmlinux) runs the tier on an operator's kernel instead, with
VFIOMIGD_VM_KERNEL_MODULES=/lib/modules/RELEASE if its VFIO, 9p or TLS parts are modules; the guest
tests then detect what it offers and report it. The initramfs (busybox-static, the modules,
tests/vm/guest-init.sh as /init) is rebuilt whenever one of its inputs changes. A warm run needs
no network, no apt and no compiler.

The guest mounts the host's root file system read-only over 9p and chroots into it, so the
build tree's dynamically linked binaries, python3, dbus-daemon and systemd run unchanged; a
second, writable 9p share (the work directory, BUILD_ROOT/tests/vm/work-KERNEL) carries the
results back. The guest writes RESULT there last; no RESULT (a QEMU abort, a kernel panic, a hang
until the timeout) is a failure, exit 99.

Exit codes: the guest tests' (0 all passed, 1 some failed), 77 only when qemu-system-x86_64 is
not installed, 99 when the guest produced no result, 2 when the set-up on the host failed.

Environment: SOURCE_ROOT, BUILD_ROOT (meson sets both); VFIOMIGD_VM_CACHE; VFIOMIGD_VM_KERNEL and
VFIOMIGD_VM_KERNEL_MODULES; VFIOMIGD_VM_TIMEOUT (seconds the VM may run, default 900);
VFIOMIGD_VM_MEMORY (default 512M); VFIOMIGD_VM_STRICT_PIN=1 (a vanished pin is an error, not a
fallback); VFIOMIGD_VM_JOBS (make -j for the 7.2 build, default: the CPU count);
VFIOMIGD_VM_KEEP_BUILD=1 (keep the 7.2 source and build tree, for incremental rebuilds);
VFIOMIGD_VM_ONLY=mtty, migration, tls or edu (one part of the guest tests; mtty includes
migration); VFIOMIGD_VM_TLS_BENCH_MIB and _RUNS (the TLS throughput figures: device state per
migration, default 16, and migrations per row, default 1); VFIOMIGD_VM_SHELL=1 (interactive: a
shell on the console instead of the tests; /run/vmtest/run-tests in it runs them).
"""

import argparse
import fcntl
import gzip
import hashlib
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import linux_build

HERE = Path(__file__).resolve().parent
SOURCE_ROOT = Path(os.environ.get("SOURCE_ROOT") or HERE.parents[1]).resolve()
BUILD_ROOT = Path(os.environ.get("BUILD_ROOT") or SOURCE_ROOT / "build").resolve()
PIN_FILE = HERE / "kernel-version"
GUEST_INIT = HERE / "guest-init.sh"
GUEST_TESTS = HERE / "guest_tests.py"

SKIP = 77
NO_RESULT = 99
SETUP_FAILED = 2

# What the guest loads, in this order (dependencies first: busybox insmod neither resolves
# dependencies nor reads modules.dep, and the Debian packages ship no modules.dep -- generating
# one would cost ~20 s of depmod per cold run). The build checks every module's depends= against
# the modules before it. vfio_iommu_type1 is listed explicitly: vfio only soft-depends on it.
MODULES = [
    ("netfs", "fs/netfs/netfs.ko"),
    ("9pnet", "net/9p/9pnet.ko"),
    ("9pnet_virtio", "net/9p/9pnet_virtio.ko"),
    ("9p", "fs/9p/9p.ko"),
    ("vfio", "drivers/vfio/vfio.ko"),
    ("vfio_iommu_type1", "drivers/vfio/vfio_iommu_type1.ko"),
    ("irqbypass", "virt/lib/irqbypass.ko"),
    ("vfio-pci-core", "drivers/vfio/pci/vfio-pci-core.ko"),
    ("vfio-pci", "drivers/vfio/pci/vfio-pci.ko"),
    ("mdev", "drivers/vfio/mdev/mdev.ko"),
    # Kernel TLS (kTLS: TCP_ULP "tls", TLS_TX/TLS_RX) and the AEAD it instantiates for the ciphers
    # vfiomigd negotiates (AES-GCM): the crypto API would request_module() "gcm(aes)" and
    # "ghash" on first use, but the guest has no modprobe that can find these, so they are loaded
    # up front. The AES-NI and CLMUL versions are what user-space GnuTLS uses too (TCG's -cpu max
    # has both), so the throughput comparison sets like against like.
    ("gf128mul", "lib/crypto/gf128mul.ko"),
    ("crypto_null", "crypto/crypto_null.ko"),
    ("cryptd", "crypto/cryptd.ko"),
    ("crypto_simd", "crypto/crypto_simd.ko"),
    ("ghash-generic", "crypto/ghash-generic.ko"),
    ("gcm", "crypto/gcm.ko"),
    ("aesni-intel", "arch/x86/crypto/aesni-intel.ko"),
    ("ghash-clmulni-intel", "arch/x86/crypto/ghash-clmulni-intel.ko"),
    ("tls", "net/tls/tls.ko"),
]
# Built here from linux-source's samples/vfio-mdev/mtty.c; loaded last.
MTTY = "mtty"

_T0 = time.monotonic()
_children = []   # QEMU, stopped by its PID if we are told to stop (meson's timeout: SIGTERM)


def log(msg):
    print(f"vm [{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


class SetupError(Exception):
    pass


def run(cmd, cwd=None, check=True):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True)
    if check and r.returncode != 0:
        raise SetupError(f"{' '.join(map(str, cmd))} failed (rc={r.returncode}):\n"
                         f"{r.stdout.decode(errors='replace')[-3000:]}{r.stderr.decode(errors='replace')[-3000:]}")
    return r


def sh(script, cwd=None):
    """A shell pipeline, checked (pipefail)."""
    return run(["bash", "-o", "pipefail", "-ec", script], cwd=cwd)


# --------------------------------------------------------------------------------------------
# The pin and the package versions


def read_pin():
    values = {}
    for line in PIN_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    try:
        return values["DEB_VERSION"], values["KERNEL_ABI"]
    except KeyError as e:
        raise SetupError(f"{PIN_FILE}: no {e.args[0]}= line") from None


def series_of(abi):
    m = re.match(r"(\d+\.\d+)\.", abi)
    if not m:
        raise SetupError(f"cannot tell the kernel series from the ABI name {abi!r}")
    return m.group(1)


def packages(version, abi):
    """{role: (package, version)} of everything the tier downloads."""
    return {
        "image": (f"linux-image-{abi}-amd64-unsigned", version),
        "headers": (f"linux-headers-{abi}-amd64", version),
        "headers-common": (f"linux-headers-{abi}-common", version),
        "kbuild": (f"linux-kbuild-{abi}", version),
        "source": (f"linux-source-{series_of(abi)}", version),
    }


def apt_versions(pkgs):
    """{package: set of versions the archive has}, from one `apt-cache policy` (whose exit status,
    like apt-cache show's with several arguments, says nothing about unknown packages)."""
    r = subprocess.run(["apt-cache", "policy"] + list(pkgs), capture_output=True, text=True)
    out, current = {}, None
    for line in r.stdout.splitlines():
        m = re.match(r"^(\S+):$", line)
        if m:
            current = out.setdefault(m.group(1), set())
            continue
        m = re.match(r"^\s+(?:\*\*\* )?(\S+) \d+$", line)
        if m and current is not None:
            current.add(m.group(1))
    return out


def missing_packages(version, abi):
    wanted = packages(version, abi).values()
    have = apt_versions(p for p, _ in wanted)
    return [f"{p}={v}" for p, v in wanted if v not in have.get(p, ())]


_apt_updated = False


def apt_update():
    global _apt_updated
    if _apt_updated:
        return
    _apt_updated = True
    if os.geteuid() != 0:
        log("not root: cannot run apt-get update; using the package lists as they are")
        return
    log("apt-get update (the package lists do not know the kernel packages)")
    run(["apt-get", "update", "-qq"])


def all_available(version, abi):
    return not missing_packages(version, abi)


def current_of_series(abi):
    """The series' current version and ABI: what linux-image-SERIES-amd64 points at."""
    meta = f"linux-image-{series_of(abi)}-amd64"
    r = subprocess.run(["apt-cache", "policy", meta], capture_output=True, text=True)
    m = re.search(r"Candidate:\s*(\S+)", r.stdout)
    if not m or m.group(1) == "(none)":
        return None
    version = m.group(1)
    r = subprocess.run(["apt-cache", "depends", f"{meta}={version}"], capture_output=True, text=True)
    m = re.search(r"Depends:\s*linux-image-(\S+)-amd64\b", r.stdout)
    if not m:
        return None
    return version, m.group(1)


def resolve_kernel(cache_root):
    """(version, abi, note): the pin if it is cached or in the archive, else the fallback."""
    version, abi = read_pin()
    if (cache_root / version / "assets.ok").exists():
        return version, abi, None
    if not all_available(version, abi):
        apt_update()
    if all_available(version, abi):
        return version, abi, None
    missing = missing_packages(version, abi)
    problem = (f"the kernel pinned in {PIN_FILE} ({version}, ABI {abi}) is not in the archive any more "
               f"(missing: {', '.join(missing)})")
    if os.environ.get("VFIOMIGD_VM_STRICT_PIN") == "1":
        raise SetupError(problem + "; VFIOMIGD_VM_STRICT_PIN=1 forbids the fallback. Update the pin.")
    current = current_of_series(abi)
    if not current or not all_available(*current):
        raise SetupError(problem + f", and no current {series_of(abi)} kernel was found to fall back to")
    note = (f"WARNING: {problem}. FALLING BACK to the series' current kernel {current[0]} (ABI {current[1]}). "
            f"Update {PIN_FILE.relative_to(SOURCE_ROOT)} to DEB_VERSION={current[0]} KERNEL_ABI={current[1]}.")
    return current[0], current[1], note


# --------------------------------------------------------------------------------------------
# Cached artefacts


def decompress_module(data, name):
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".zst"):
        return subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
    if name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def module_depends(ko):
    """The depends= list of a module's .modinfo section."""
    data = ko.read_bytes()
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def extract_vmlinux(bzimage, out):
    """The uncompressed ELF inside a bzImage (what scripts/extract-vmlinux does): QEMU boots it
    through its PVH entry, which saves the in-guest decompression (1-4 s under TCG)."""
    data = bzimage.read_bytes()
    for magic, tool in ((b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]), (b"\xfd7zXZ\x00", ["xz", "-dcq"]),
                        (b"\x1f\x8b\x08", ["gzip", "-dcq"])):
        start = 0
        while True:
            i = data.find(magic, start)
            if i < 0:
                break
            start = i + 1
            r = subprocess.run(tool, input=data[i:], capture_output=True)
            if r.stdout[:4] == b"\x7fELF":
                out.write_bytes(r.stdout)
                return
    raise SetupError(f"no compressed ELF kernel found in {bzimage}")


class Assets:
    """Debian's 6.12: vmlinux out of the image package, its modules, mtty.ko built here."""

    name = "6.12"
    expect = "legacy"       # what the guest tests assert: the legacy container only, no iommufd

    def __init__(self, cache_root, version, abi, note=None):
        self.note = note
        self.version = version
        self.abi = abi
        self.release = f"{abi}-amd64"
        self.dir = cache_root / version
        self.vmlinux = self.dir / "vmlinux"
        self.config = self.dir / "config"
        self.moddir = self.dir / "modules"
        self.mtty_c = self.dir / "mtty" / "mtty.c"
        self.mtty_ko = self.dir / "mtty" / "mtty.ko"
        self.debs = self.dir / "debs"
        self.ok = self.dir / "assets.ok"

    def module_files(self):
        return [self.moddir / f"{name}.ko" for name, _ in MODULES] + [self.mtty_ko]

    def module_list(self):
        """[(name, .ko)] the guest loads, in this order."""
        return list(zip([name for name, _ in MODULES] + [MTTY], self.module_files()))

    def complete(self):
        return self.ok.exists() and self.vmlinux.exists() and all(p.exists() for p in self.module_files())

    def deb(self, role):
        pkg, version = packages(self.version, self.abi)[role]
        found = list(self.debs.glob(f"{pkg}_*.deb"))
        if found:
            return found[0]
        self.debs.mkdir(parents=True, exist_ok=True)
        log(f"apt-get download {pkg}={version}")
        # As root apt would drop to _apt for the download, which cannot write here.
        cmd = ["apt-get", "download"] + (["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else [])
        r = run(cmd + [f"{pkg}={version}"], cwd=self.debs, check=False)
        if r.returncode != 0:
            apt_update()
            run(cmd + [f"{pkg}={version}"], cwd=self.debs)
        found = list(self.debs.glob(f"{pkg}_*.deb"))
        if not found:
            raise SetupError(f"apt-get download {pkg}={version} left no .deb in {self.debs}")
        return found[0]

    def build_kernel(self):
        """vmlinux, config and the decompressed modules, from the image package."""
        tmp = self.dir / "tmp-image"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        deb = self.deb("image")
        log("extracting the kernel and its modules")
        wanted = [f"./boot/vmlinuz-{self.release}", f"./boot/config-{self.release}"]
        patterns = [f"./lib/modules/{self.release}/kernel/{path}*" for _, path in MODULES]
        sh(f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | tar -x -C {shlex.quote(str(tmp))} --wildcards "
           + " ".join(shlex.quote(p) for p in wanted + patterns))
        extract_vmlinux(tmp / "boot" / f"vmlinuz-{self.release}", tmp / "vmlinux")
        moddir = tmp / "modules"
        moddir.mkdir()
        loaded = set()
        for name, path in MODULES:
            base = tmp / "lib" / "modules" / self.release / "kernel" / path
            src = next((Path(str(base) + ext) for ext in ("", ".xz", ".zst", ".gz") if Path(str(base) + ext).exists()),
                       None)
            if src is None:
                raise SetupError(f"{self.release} has no module {path}: is the module list in {__file__} "
                                 f"still right for this kernel?")
            out = moddir / f"{name}.ko"
            out.write_bytes(decompress_module(src.read_bytes(), src.name))
            missing = [d for d in module_depends(out) if d.replace("-", "_") not in loaded]
            if missing:
                raise SetupError(f"module {name} depends on {missing}, which are not loaded before it: "
                                 f"fix the order in MODULES ({__file__})")
            loaded.add(name.replace("-", "_"))
        shutil.rmtree(self.moddir, ignore_errors=True)
        os.replace(moddir, self.moddir)
        os.replace(tmp / "boot" / f"config-{self.release}", self.config)
        os.replace(tmp / "vmlinux", self.vmlinux)
        shutil.rmtree(tmp)

    def build_mtty_source(self):
        """samples/vfio-mdev/mtty.c out of linux-source's tarball (the whole xz stream has to be
        decompressed for it: ~13 s, once per version)."""
        deb = self.deb("source")
        series = series_of(self.abi)
        log(f"extracting samples/vfio-mdev/mtty.c from linux-source-{series}")
        self.mtty_c.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.mtty_c.with_suffix(".c.tmp")
        sh(f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | tar -xO ./usr/src/linux-source-{series}.tar.xz"
           f" | tar -xJO linux-source-{series}/samples/vfio-mdev/mtty.c > {shlex.quote(str(tmp))}")
        if b"mtty" not in tmp.read_bytes()[:4096]:
            raise SetupError(f"{tmp} does not look like mtty.c")
        os.replace(tmp, self.mtty_c)

    def build_mtty_module(self):
        """mtty.ko against the package's headers and kbuild, unpacked (not installed: installing
        the headers would pull in the kernel image, initramfs-tools and pahole). BTF for modules
        is switched off on the make line, so pahole is not needed."""
        root = self.dir / "tmp-headers"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        log("unpacking the kernel headers and kbuild")
        for role in ("headers", "headers-common", "kbuild"):
            run(["dpkg-deb", "-x", str(self.deb(role)), str(root)])
        kdir = root / "usr" / "src" / f"linux-headers-{self.release}"
        # The compiler the kernel was built with (bookworm: gcc-12), as the headers name it.
        m = re.search(r"(?m)^CC = .*\)(\S*gcc-\d+)$", (kdir / ".kernelvariables").read_text())
        gcc = "x86_64-linux-gnu-" + m.group(1) if m else "gcc"
        for tool in ("make", gcc):
            if not shutil.which(tool):
                raise SetupError(f"building mtty.ko needs {tool} (tools/setup.sh installs make and gcc)")
        makefile = kdir / "Makefile"
        # The arch headers' Makefile includes the common ones by absolute path.
        makefile.write_text(makefile.read_text().replace("include /usr/src/", f"include {root}/usr/src/"))
        build = root / "mtty"
        build.mkdir()
        shutil.copy(self.mtty_c, build / "mtty.c")
        (build / "Kbuild").write_text("obj-m := mtty.o\n")
        log("building mtty.ko")
        run(["make", "-s", "-C", str(kdir), f"M={build}", "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"])
        vermagic = re.search(rb"vermagic=([^\0]*)", (build / "mtty.ko").read_bytes())
        if not vermagic or not vermagic.group(1).startswith(self.release.encode() + b" "):
            raise SetupError(f"mtty.ko was built for {vermagic.group(1) if vermagic else '?'}, not {self.release}")
        os.replace(build / "mtty.ko", self.mtty_ko)
        shutil.rmtree(root)

    def ensure(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.complete():
                return False
            t0 = time.monotonic()
            self.ok.unlink(missing_ok=True)
            if not self.vmlinux.exists() or not all((self.moddir / f"{n}.ko").exists() for n, _ in MODULES):
                self.build_kernel()
            if not self.mtty_c.exists():
                self.build_mtty_source()
            if not self.mtty_ko.exists():
                self.build_mtty_module()
            shutil.rmtree(self.debs, ignore_errors=True)
            self.ok.write_text(f"{self.version} {self.abi}\n")
            log(f"kernel assets for {self.version} ready in {time.monotonic() - t0:.1f}s ({self.dir})")
            return True


def kernel_release_of(image):
    """`uname -r` of a kernel image: from a bzImage's setup header (kernel_version, at 0x20e, points
    at the version string 0x200 bytes further), or from an ELF vmlinux's banner."""
    data = image.read_bytes()
    if data[0x202:0x206] == b"HdrS":
        at = int.from_bytes(data[0x20e:0x210], "little") + 0x200
        m = re.match(rb"(\S+)", data[at:at + 256])
    else:
        m = re.search(rb"Linux version (\S+) ", data)
    if not m:
        raise SetupError(f"{image} is neither a bzImage nor a vmlinux with a Linux version banner")
    return m.group(1).decode(errors="replace")


class OperatorKernel:
    """VFIOMIGD_VM_KERNEL=PATH (a bzImage or vmlinux: QEMU boots either) and, if its VFIO, 9p and
    TLS parts are modules, VFIOMIGD_VM_KERNEL_MODULES=/lib/modules/RELEASE. The guest loads those
    of MODULES (and samples/vfio-mdev/mtty.ko) that the directory has, in MODULES' order; what is
    not there must be built in. The guest tests detect iommufd and the cdev and report them."""

    name = "custom"
    expect = "detect"
    note = None

    def __init__(self, cache_root, image, moddir):
        if not image.is_file():
            raise SetupError(f"VFIOMIGD_VM_KERNEL={image}: no such file")
        self.vmlinux = image.resolve()
        self.release = kernel_release_of(self.vmlinux)
        self.version = f"VFIOMIGD_VM_KERNEL={image}"
        self.moddir_src = Path(moddir) if moddir else None
        key = hashlib.sha256(self.vmlinux.read_bytes() + str(self.moddir_src).encode()).hexdigest()[:16]
        self.dir = cache_root / "custom" / key
        self.modules = []

    def ensure(self):
        out = self.dir / "modules"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if self.moddir_src is None:
            log(f"{self.vmlinux}: no VFIOMIGD_VM_KERNEL_MODULES, so everything the guest needs must be built in")
            return
        if not (self.moddir_src / "kernel").is_dir():
            raise SetupError(f"VFIOMIGD_VM_KERNEL_MODULES={self.moddir_src} has no kernel/ directory")
        loaded = set()
        for name, path in MODULES + [(MTTY, "samples/vfio-mdev/mtty.ko")]:
            base = self.moddir_src / "kernel" / path
            src = next((Path(str(base) + ext) for ext in ("", ".xz", ".zst", ".gz") if Path(str(base) + ext).exists()),
                       None)
            if src is None:
                continue    # built in, or not needed by this kernel
            ko = out / f"{name}.ko"
            ko.write_bytes(decompress_module(src.read_bytes(), src.name))
            missing = [d for d in module_depends(ko) if d.replace("-", "_") not in loaded]
            if missing:
                raise SetupError(f"{src} depends on {missing}, which the tier does not load before it "
                                 f"(MODULES in {__file__})")
            loaded.add(name.replace("-", "_"))
            self.modules.append((name, ko))
        log(f"{self.vmlinux}: the guest loads {len(self.modules)} modules from {self.moddir_src}: "
            f"{' '.join(n for n, _ in self.modules) or 'none'}")

    def module_list(self):
        return list(self.modules)


# --------------------------------------------------------------------------------------------
# initramfs


def busybox_path():
    path = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(path):
        raise SetupError("busybox not found (apt-get install busybox-static; tools/setup.sh installs it)")
    r = subprocess.run(["readelf", "-l", path], capture_output=True, text=True)
    if "INTERP" in r.stdout:
        raise SetupError(f"{path} is dynamically linked (the 'busybox' package): the initramfs needs "
                         f"busybox-static (apt-get install busybox-static)")
    return Path(path)


def cpio_newc(entries):
    """A newc cpio archive: entries are (name, mode, data, rdev_major, rdev_minor); owner root,
    mtime 0, so the same inputs give the same bytes."""
    out = bytearray()

    def pad():
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, major, minor) in enumerate(entries + [("TRAILER!!!", 0, b"", 0, 0)], 1):
        namez = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 2 if mode & 0o170000 == 0o040000 else 1, 0, len(data), 0, 0, major, minor,
                  len(namez), 0]
        out.extend(b"070701" + "".join(f"{f:08x}" for f in fields).encode())
        out.extend(namez)
        pad()
        out.extend(data)
        pad()
    return bytes(out)


def build_initramfs(assets):
    busybox = busybox_path()
    modules = assets.module_list()
    order = [name for name, _ in modules]
    files = [file for _, file in modules]
    h = hashlib.sha256()
    for part in [GUEST_INIT.read_bytes(), busybox.read_bytes(), "\n".join(order).encode()] + \
            [f.read_bytes() for f in files]:
        h.update(hashlib.sha256(part).digest())
    path = assets.dir / f"initramfs-{h.hexdigest()[:16]}.cpio.gz"
    if path.exists():
        return path
    log(f"building the initramfs ({path.name}, {len(order)} modules)")
    assets.dir.mkdir(parents=True, exist_ok=True)
    d, f, x, c = 0o040755, 0o100644, 0o100755, 0o020600
    entries = [(p, d, b"", 0, 0) for p in ("bin", "sbin", "dev", "proc", "sys", "host", "tmp", "run", "modules",
                                           "usr", "usr/bin", "usr/sbin")]
    entries += [("dev/console", c, b"", 5, 1), ("dev/null", 0o020666, b"", 1, 3),
                ("init", x, GUEST_INIT.read_bytes(), 0, 0), ("bin/busybox", x, busybox.read_bytes(), 0, 0),
                ("bin/sh", 0o120777, b"busybox", 0, 0),
                ("modules/load-order", f, "".join(f"{n}\n" for n in order).encode(), 0, 0)]
    entries += [(f"modules/{name}.ko", f, file.read_bytes(), 0, 0) for name, file in zip(order, files)]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(cpio_newc(entries))
    os.replace(tmp, path)
    for old in assets.dir.glob("initramfs-*.cpio.gz"):
        if old != path:
            old.unlink()
    return path


# --------------------------------------------------------------------------------------------
# The VM


def qemu_command(assets, initramfs, work, memory, shell):
    append = ["console=ttyS0", "intel_iommu=on", "panic=-1", "quiet", f"vmtest.work={work}"]
    if shell:
        append.append("vmtest.shell=1")
    # 512M: dbus-daemon, vfiomigd, a systemd --user manager with its journald, python3 and the
    # tests; QEMU's own RSS is ~0.5 GB on top. One vCPU: TCG gains nothing from more.
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", memory,
           "-nodefaults", "-no-reboot", "-display", "none",
           # VT-d with interrupt remapping, and edu (DMA mask left at its default 28 bits: the tests
           # use IOVAs below 256 MiB).
           "-device", "intel-iommu,intremap=on", "-device", "edu,addr=03.0",
           # The host root, read-only. multidevs=remap: without it the inode numbers of different
           # host file systems collide in the guest (the roots of /proc and /sys are both inode 1),
           # and with cache=loose the guest then mounts sysfs over proc.
           "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot",
           "-virtfs", f"local,path={work},mount_tag=work,security_model=none,id=work",
           "-kernel", str(assets.vmlinux), "-initrd", str(initramfs), "-append", " ".join(append)]
    if shell:
        cmd += ["-serial", "mon:stdio"]
    else:
        cmd += ["-serial", f"file:{work}/console.log", "-monitor", "none"]
    return cmd


def write_guest_env(work, assets, note):
    env = {
        "SOURCE_ROOT": str(SOURCE_ROOT),
        "BUILD_ROOT": str(BUILD_ROOT),
        "VM_WORK": str(work),
        "VM_KERNEL_RELEASE": assets.release,
        "VM_KERNEL_VERSION": assets.version,
        "VM_KERNEL_NOTE": note or "",
        "VM_KERNEL_NAME": assets.name,
        "VM_EXPECT": assets.expect,
        "VM_GUEST_TESTS": str(GUEST_TESTS),
        "VM_ONLY": os.environ.get("VFIOMIGD_VM_ONLY", ""),
        "VM_TLS_BENCH_MIB": os.environ.get("VFIOMIGD_VM_TLS_BENCH_MIB", ""),
        "VM_TLS_BENCH_RUNS": os.environ.get("VFIOMIGD_VM_TLS_BENCH_RUNS", ""),
    }
    (work / "guest.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))


def print_file(path, title, tail=None):
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = "(none)"
    if tail is not None and len(text) > tail:
        text = "[...]\n" + text[-tail:]
    print(f"----- {title} -----\n{text.rstrip()}\n----- end of {title} -----", flush=True)


def run_vm(assets, initramfs, note, timeout, memory, shell):
    work = BUILD_ROOT / "tests" / "vm" / f"work-{assets.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    write_guest_env(work, assets, note)
    cmd = qemu_command(assets, initramfs, work, memory, shell)
    if shell:
        os.execvp(cmd[0], cmd)
    log(f"booting {assets.release} ({assets.version}) under TCG: {' '.join(cmd)}")
    guest_log = work / "guest.log"
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _children.append(proc)
    # Follow the guest's test log while the VM runs (it arrives over the 9p work share).
    printed = 0
    timed_out = False

    def follow():
        nonlocal printed
        try:
            with open(guest_log, "rb") as f:
                f.seek(printed)
                chunk = f.read()
        except OSError:
            return
        cut = chunk.rfind(b"\n") + 1
        if cut:
            sys.stdout.write(chunk[:cut].decode(errors="replace"))
            sys.stdout.flush()
            printed += cut

    while proc.poll() is None:
        follow()
        if time.monotonic() - t0 > timeout:
            timed_out = True
            log(f"the VM is still running after {timeout}s: killing QEMU (pid {proc.pid})")
            proc.kill()
            break
        time.sleep(0.2)
    proc.wait()
    qemu_out = proc.stdout.read().decode(errors="replace")
    follow()
    elapsed = time.monotonic() - t0
    result = work / "RESULT"
    rc = None
    if result.exists():
        m = re.match(r"rc=(\d+)", result.read_text())
        rc = int(m.group(1)) if m else None
    if rc is None:
        why = "timed out" if timed_out else f"QEMU exited with {proc.returncode}"
        log(f"NO RESULT from the guest ({why}, after {elapsed:.1f}s): failure")
        if qemu_out.strip():
            print(f"----- QEMU output -----\n{qemu_out.rstrip()}\n-----", flush=True)
        print_file(work / "console.log", "guest console", tail=20000)
        print("vm: 0 passed, 1 failed", flush=True)
        return NO_RESULT
    log(f"VM finished in {elapsed:.1f}s ({assets.release}), guest tests rc={rc}; the guest's logs are in {work}")
    if rc != 0:
        print_file(work / "console.log", "guest console", tail=20000)
    # The guest's summary line again, last, for whoever reads only the end.
    summary = [line for line in guest_log.read_text(errors="replace").splitlines() if line.startswith("vm: ")]
    if summary:
        print(f"{summary[-1]} (kernel {assets.name}: {assets.release}, {assets.version})", flush=True)
    return 0 if rc == 0 else 1


EXPECTATIONS = {
    "legacy": "the legacy VFIO container only (no iommufd)",
    "iommufd": "iommufd with the VFIO cdev as the default, and the legacy container",
    "detect": "whatever the kernel offers (an operator's kernel: detected and reported)",
}


def kernel_assets(which, cache_root):
    """The assets of the kernel to boot, built or downloaded if they are not cached yet."""
    custom = os.environ.get("VFIOMIGD_VM_KERNEL")
    if custom:
        assets = OperatorKernel(cache_root, Path(custom), os.environ.get("VFIOMIGD_VM_KERNEL_MODULES"))
        assets.ensure()
        return assets
    if which == "7.2":
        assets = linux_build.BuiltKernel(cache_root)
        if not assets.ensure():
            log(f"Linux {assets.release} ({assets.package} {assets.version}, config {assets.hash}) cached in "
                f"{assets.dir}: nothing to build")
        return assets
    version, abi, note = resolve_kernel(cache_root)
    if note:
        log(note)
    assets = Assets(cache_root, version, abi, note)
    if not assets.ensure():
        log(f"kernel assets for {version} cached in {assets.dir}")
    return assets


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", choices=("6.12", "7.2"), default="6.12",
                        help="Debian's 6.12 (legacy container only) or Linux 7.2 built from Debian's source "
                             "(iommufd + VFIO cdev); VFIOMIGD_VM_KERNEL=PATH overrides both")
    parser.add_argument("--assets-only", action="store_true", help="download and build, do not boot")
    parser.add_argument("--shell", action="store_true", default=os.environ.get("VFIOMIGD_VM_SHELL") == "1",
                        help="an interactive shell in the guest instead of the tests")
    args = parser.parse_args()

    def on_term(signum, frame):
        for child in _children:
            if child.poll() is None:
                child.kill()
                child.wait()
        print(f"vm: stopped by signal {signum}\nvm: 0 passed, 1 failed", flush=True)
        os._exit(NO_RESULT)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if not shutil.which("qemu-system-x86_64"):
        print("SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86; "
              "tools/setup.sh installs it)", flush=True)
        return SKIP
    cache_root = Path(os.environ.get("VFIOMIGD_VM_CACHE") or
                      Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vfiomigd-vm")
    timeout = float(os.environ.get("VFIOMIGD_VM_TIMEOUT") or 900)
    memory = os.environ.get("VFIOMIGD_VM_MEMORY") or "512M"
    try:
        assets = kernel_assets(args.kernel, cache_root)
        note = assets.note
        initramfs = build_initramfs(assets)
    except (SetupError, linux_build.BuildError) as e:
        log(f"SET-UP FAILED: {e}")
        print("vm: 0 passed, 1 failed", flush=True)
        return SETUP_FAILED
    if args.assets_only:
        return 0
    for what in (BUILD_ROOT / "daemon" / "vfiomigd", BUILD_ROOT / "client" / "vfiomigctl"):
        if not os.access(what, os.X_OK):
            log(f"{what} is not built (ninja -C {BUILD_ROOT})")
            return SETUP_FAILED
    log(f"kernel {assets.name}: {assets.release} ({assets.version}); the guest tests expect "
        f"{EXPECTATIONS[assets.expect]}")
    rc = run_vm(assets, initramfs, note, timeout, memory, args.shell)
    if note:
        log(note)
    return rc


if __name__ == "__main__":
    sys.exit(main())
