# SPDX-License-Identifier: GPL-2.0-or-later
"""The VM tier's own Linux 7.2 kernel, built from Debian's linux-source-7.2 (tests/vm/vm.py
--kernel=7.2). Debian builds every kernel it ships without CONFIG_IOMMUFD, so iommufd, the VFIO
cdev, IOMMU_IOAS_MAP_FILE and IOMMU_IOAS_CHANGE_PROCESS can only be proven on a kernel of our own.

1. The source package named in tests/vm/linux-7.2-version is fetched with a PRIVATE apt
   configuration: a sources.list of its own naming the archive URI the host's apt already uses
   with the pinned suite (sid), its own Dir::State::Lists and Dir::Cache, no SourceParts. The
   host's package lists, cache and state are never touched, and nothing is installed.
2. `make allnoconfig` with tests/vm/linux-7.2.config (scripts/kconfig/merge_config.sh -n), then
   olddefconfig; every option the fragment names must come out as the fragment says, or the build
   stops and names them (an option silently dropped by a missing dependency would otherwise show
   up as an obscure guest failure).
3. `nice -n 10 make -jN vmlinux` out of tree; only vmlinux, .config and the release name are kept:

       CACHE / linux-DEB_VERSION / CONFIG_HASH / {vmlinux, config, release, assets.ok}

   next to the .deb (kept, so that a changed fragment needs no new download). The unpacked source
   and the build tree are deleted afterwards (VFIOMIGD_VM_KEEP_BUILD=1 keeps them, for working on
   the fragment: a rebuild is then incremental). CONFIG_HASH covers the fragment and RECIPE below.

Everything is built in: the guest loads no modules, mtty included (CONFIG_SAMPLE_VFIO_MDEV_MTTY=y).
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIN_FILE = HERE / "linux-7.2-version"
FRAGMENT = HERE / "linux-7.2.config"
# Part of the cache key: change it when the way the kernel is built changes (not the fragment).
RECIPE = "allnoconfig+fragment, olddefconfig, ARCH=x86_64, make vmlinux, v1"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
SOURCES_LIST = Path("/etc/apt/sources.list")


class BuildError(Exception):
    pass


def _log(msg):
    print(f"vm [linux] {msg}", flush=True)


def _run(cmd, cwd=None, env=None, log=None):
    if log is None:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
        out = r.stdout + r.stderr
    else:
        with open(log, "ab") as f:
            r = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        out = Path(log).read_bytes()[-4000:]
    if r.returncode != 0:
        raise BuildError(f"{' '.join(map(str, cmd))} failed (rc={r.returncode}):\n"
                         f"{out.decode(errors='replace')[-4000:]}")
    return r


def read_pin():
    values = {}
    for line in PIN_FILE.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    try:
        return values["SOURCE_PACKAGE"], values["DEB_VERSION"], values["SUITE"]
    except KeyError as e:
        raise BuildError(f"{PIN_FILE}: no {e.args[0]}= line") from None


def config_hash():
    h = hashlib.sha256()
    h.update(RECIPE.encode() + b"\0" + FRAGMENT.read_bytes())
    return h.hexdigest()[:16]


def fragment_options():
    """{CONFIG_X: 'y' | 'n' | value} of every option the fragment sets."""
    out = {}
    for line in FRAGMENT.read_text().splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
        m = re.match(r"^# (CONFIG_\w+) is not set$", line)
        if m:
            out[m.group(1)] = "n"
    return out


def check_config(dot_config):
    """The options of the fragment that did not come out as asked, as 'NAME: wanted X, got Y'."""
    got = {}
    for line in Path(dot_config).read_text().splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            got[m.group(1)] = m.group(2)
    wrong = []
    for name, want in fragment_options().items():
        have = got.get(name, "n")
        if have != want:
            wrong.append(f"{name}: wanted {want}, got {'not set' if have == 'n' else have}")
    return wrong


def archive_uri():
    """The Debian archive the host's apt uses (its main, non-security entry)."""
    if DEBIAN_SOURCES.exists():
        for stanza in DEBIAN_SOURCES.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith("#"):
                    fields[key.strip().lower()] = value.strip()
            suites = fields.get("suites", "").split()
            if fields.get("uris") and "deb" in fields.get("types", "").split() and \
                    not any(s.endswith("-security") for s in suites):
                return fields["uris"].split()[0]
    if SOURCES_LIST.exists():
        for line in SOURCES_LIST.read_text().splitlines():
            m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and not m.group(2).endswith("-security"):
                return m.group(1)
    return "http://deb.debian.org/debian"


class PrivateApt:
    """apt-get and apt-cache on a configuration of their own: the archive URI the host uses, with
    the pinned suite, and lists and cache inside the tier's cache directory."""

    def __init__(self, root, suite):
        self.root = root
        self.suite = suite
        self.conf = root / "apt.conf"
        self.updated = False

    def setup(self):
        (self.root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text(f"deb {archive_uri()} {self.suite} main\n")
        self.conf.write_text(
            f'Dir::Etc::SourceList "{self.root}/sources.list";\n'
            'Dir::Etc::SourceParts "/dev/null";\n'
            f'Dir::State::Lists "{self.root}/lists";\n'
            f'Dir::Cache "{self.root}/cache";\n'
            # As root apt would drop to _apt for the download, which cannot write here.
            + ('APT::Sandbox::User "root";\n' if os.geteuid() == 0 else ""))

    def cmd(self, tool, *args):
        env = dict(os.environ, APT_CONFIG=str(self.conf))
        return subprocess.run([tool, *args], env=env, capture_output=True, text=True)

    def update(self):
        if self.updated:
            return
        self.setup()
        _log(f"apt-get update of a private {self.suite} list ({archive_uri()}, lists in {self.root})")
        r = self.cmd("apt-get", "update", "-qq")
        if r.returncode != 0:
            raise BuildError(f"apt-get update ({self.suite}, private configuration {self.conf}) failed:\n"
                             f"{r.stdout[-2000:]}{r.stderr[-2000:]}")
        self.updated = True

    def versions(self, package):
        """(candidate, {versions}) of a package in the private list."""
        r = self.cmd("apt-cache", "policy", package)
        m = re.search(r"Candidate:\s*(\S+)", r.stdout)
        candidate = m.group(1) if m and m.group(1) != "(none)" else None
        have = set(re.findall(r"(?m)^\s+(?:\*\*\* )?(\S+) \d+$", r.stdout))
        return candidate, have

    def fetch(self, package, version, dest):
        """The .deb, downloaded into dest (apt-get download writes into its working directory)."""
        dest.mkdir(parents=True, exist_ok=True)
        _log(f"apt-get download {package}={version} (private {self.suite} configuration)")
        env = dict(os.environ, APT_CONFIG=str(self.conf))
        r = subprocess.run(["apt-get", "download", f"{package}={version}"], env=env, cwd=dest,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"apt-get download {package}={version} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        found = sorted(dest.glob(f"{package}_*.deb"))
        if not found:
            raise BuildError(f"apt-get download {package}={version} left no .deb in {dest}")
        return found[0]


class BuiltKernel:
    """The assets vm.py boots: vmlinux, no modules (everything is built in)."""

    name = "7.2"
    expect = "iommufd"      # what the guest tests assert: iommufd + cdev + the legacy container

    def __init__(self, cache_root):
        self.cache_root = cache_root
        self.package, self.pinned, self.suite = read_pin()
        self.version = self.pinned
        self.note = None
        self.hash = config_hash()
        self._paths()

    def _paths(self):
        self.top = self.cache_root / f"linux-{self.version}"
        self.dir = self.top / self.hash
        self.vmlinux = self.dir / "vmlinux"
        self.config = self.dir / "config"
        self.ok = self.dir / "assets.ok"
        self.release = (self.dir / "release").read_text().strip() if (self.dir / "release").exists() else None

    def module_list(self):
        return []           # everything is built in

    def complete(self):
        return self.ok.exists() and self.vmlinux.exists() and self.release is not None

    def resolve(self, apt):
        """The pinned version if the archive has it, else (unless strict) the suite's current."""
        apt.update()
        candidate, have = apt.versions(self.package)
        if self.pinned in have:
            return
        problem = (f"{self.package} {self.pinned} (pinned in {PIN_FILE}) is not in {self.suite} any more "
                   f"(it has {', '.join(sorted(have)) or 'nothing'})")
        if os.environ.get("VFIOMIGD_VM_STRICT_PIN") == "1" or candidate is None:
            raise BuildError(problem + ("; VFIOMIGD_VM_STRICT_PIN=1 forbids the fallback" if candidate else "")
                             + ". Update the pin.")
        self.note = (f"WARNING: {problem}. FALLING BACK to {self.suite}'s current {candidate}. "
                     f"Update {PIN_FILE.name} to DEB_VERSION={candidate}.")
        _log(self.note)
        self.version = candidate
        self._paths()

    def ensure(self):
        """Builds what is missing; True if anything was built."""
        if self.complete():
            return False
        import fcntl
        self.cache_root.mkdir(parents=True, exist_ok=True)
        with open(self.cache_root / ".linux-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._paths()
            if self.complete():
                return False
            apt = PrivateApt(self.cache_root / "apt-private", self.suite)
            self.resolve(apt)
            if self.complete():
                return False
            t0 = time.monotonic()
            self.build(apt)
            _log(f"Linux {self.release} ({self.package} {self.version}, config {self.hash}) built in "
                 f"{time.monotonic() - t0:.0f}s: {self.vmlinux}")
            return True

    def build(self, apt):
        self.top.mkdir(parents=True, exist_ok=True)
        debs = sorted(self.top.glob(f"{self.package}_{self.version.replace(':', '%3a')}_*.deb"))
        deb = debs[0] if debs else apt.fetch(self.package, self.version, self.top)
        series = self.package.removeprefix("linux-source-")
        work = self.top / f"build-{self.hash}"
        src, out, log = work / "src", work / "out", work / "build.log"
        if not (src / "Makefile").exists():
            shutil.rmtree(work, ignore_errors=True)
            src.mkdir(parents=True)
            _log(f"unpacking {deb.name}")
            t = time.monotonic()
            _run(["bash", "-o", "pipefail", "-ec",
                  f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | tar -xO ./usr/src/linux-source-{series}.tar.xz"
                  f" | tar -xJ --strip-components=1 -C {shlex.quote(str(src))}"])
            _log(f"unpacked in {time.monotonic() - t:.0f}s")
        out.mkdir(parents=True, exist_ok=True)
        for tool in ("make", "gcc", "flex", "bison", "bc"):
            if not shutil.which(tool):
                raise BuildError(f"building the kernel needs {tool} (tools/setup.sh installs it)")
        env = dict(os.environ, ARCH="x86_64", KBUILD_BUILD_USER="vfiomigd", KBUILD_BUILD_HOST="vm-tier",
                   KBUILD_BUILD_TIMESTAMP="1970-01-01")
        env.pop("MAKEFLAGS", None)
        env.pop("MFLAGS", None)
        _log(f"configuring: allnoconfig + {FRAGMENT.name}, olddefconfig")
        _run([str(src / "scripts/kconfig/merge_config.sh"), "-n", "-O", str(out), str(FRAGMENT)], cwd=src, env=env,
             log=log)
        _run(["make", "-s", f"O={out}", "olddefconfig"], cwd=src, env=env, log=log)
        wrong = check_config(out / ".config")
        if wrong:
            raise BuildError(f"the kernel configuration lacks what {FRAGMENT.name} asks for (a dependency "
                             f"missing from the fragment?):\n  " + "\n  ".join(wrong))
        jobs = os.environ.get("VFIOMIGD_VM_JOBS") or str(os.cpu_count() or 1)
        _log(f"building vmlinux (nice -n 10 make -j{jobs}; output in {log})")
        t = time.monotonic()
        _run(["nice", "-n", "10", "make", f"O={out}", f"-j{jobs}", "vmlinux"], cwd=src, env=env, log=log)
        _log(f"vmlinux built in {time.monotonic() - t:.0f}s")
        release = (out / "include" / "config" / "kernel.release").read_text().strip()
        tmp = self.dir.with_name(self.dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy(out / "vmlinux", tmp / "vmlinux")
        shutil.copy(out / ".config", tmp / "config")
        (tmp / "release").write_text(release + "\n")
        (tmp / "assets.ok").write_text(f"{self.package} {self.version} {self.hash}\n")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.replace(tmp, self.dir)
        if os.environ.get("VFIOMIGD_VM_KEEP_BUILD") != "1":
            shutil.rmtree(work)
        self._paths()
