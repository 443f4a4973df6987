# SPDX-License-Identifier: GPL-2.0-or-later
"""The VM tier's TLS part, run inside the guest by guest_tests.py (run(g), g being guest_tests
itself: its checks, sections and the mtty helpers). The host's kernel has no CONFIG_TLS; the
guest's has it: Debian's 6.12 as tls.ko, which vm.py loads with the AES-GCM AEAD it needs, the
tier's own 7.2 built in, so this is
where kernel TLS (TCP_ULP "tls", TLS_TX/TLS_RX) meets vfiomigd for real:

* tls-kernel  two vfiomigd with certificates of a throwaway CA (tools/make-test-pki.sh, run in
              the guest) migrate mtty A to B; both jobs say Transport "tls-kernel", the source
              logs "records in the kernel (kTLS)", and the kernel's own counters
              (/proc/net/tls_stat) show a software TLS_TX and TLS_RX on both ends of every
              channel and no record that failed to authenticate. B ends up with A's UART state.
* tls-user    the same with "kernel-tls": false in both daemons' vfiomigd.conf(5) tls object:
              Transport "tls-user", and the kernel's counters do not move.
* throughput  the same migration size (simulated devices, --allow-simulated) over cleartext,
              kernel TLS and user-space TLS at 1 and 4 channels, in this guest, one after the
              other: MiB/s and CPU-s/GiB (both daemons' utime+stime) and the ratios against
              cleartext. Figures only, never asserted: TCG emulates the CPU (AES-NI and
              CLMUL included), is slow and noisy.

Environment (from vm.py's VFIOMIGD_VM_TLS_BENCH_MIB and _RUNS): VM_TLS_BENCH_MIB (device state
per migration, default 16), VM_TLS_BENCH_RUNS (migrations per row, the best is kept; default 1).
"""

import os
import re
import subprocess
import time
from pathlib import Path

import harness as h
import test_migration as tm  # Side: a private bus with a vfiomigd on it (simulated devices)

MiB = 1 << 20
TLS_STAT = Path("/proc/net/tls_stat")


def tls_stat():
    """The kernel's TLS counters of this network namespace ({} without tls.ko)."""
    try:
        text = TLS_STAT.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def stat_delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def make_pki(pki):
    script = str(h.SOURCE_ROOT / "tools" / "make-test-pki.sh")
    subprocess.run([script, "--ip", "127.0.0.1", str(pki), "src", "dst"], check=True, capture_output=True, timeout=300)
    subprocess.run([script, "--psk", "vm-bench", str(pki / "psk"), "h"], check=True, capture_output=True, timeout=300)


def tls_config(pki, host, kernel_tls=True):
    tls = {"x509-dir": str(pki / host)}
    if not kernel_tls:
        tls["kernel-tls"] = False
    return {"tls": tls}


def psk_config(pki, kernel_tls=True):
    tls = {"psk-file": str(pki / "psk" / "h" / "psk.txt")}
    if not kernel_tls:
        tls["kernel-tls"] = False
    return {"tls": tls}


def cpu_seconds(pid):
    """utime + stime of a process, every thread (and io_uring worker) included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------


def run(g):
    C = g.C
    with g.section("kernel TLS: what the guest kernel offers"):
        if g.KERNEL_NAME == "6.12":
            C.check(Path("/sys/module/tls").is_dir(), "tls.ko is loaded", "net/tls/tls.ko, CONFIG_TLS=m")
        C.check(TLS_STAT.exists(), "/proc/net/tls_stat exists", str(tls_stat()))
        if g.KERNEL_NAME == "6.12":
            mods = [m for m in ("gcm", "ghash_generic", "aesni_intel", "ghash_clmulni_intel")
                    if Path(f"/sys/module/{m}").is_dir()]
            C.equal(mods, ["gcm", "ghash_generic", "aesni_intel", "ghash_clmulni_intel"],
                    "the AES-GCM AEAD kTLS instantiates is loaded (no modprobe in the guest)")
        else:
            # Built in (the tier's 7.2: CONFIG_TLS=y, CONFIG_CRYPTO_GCM=y, CONFIG_CRYPTO_AES_NI_INTEL=y), or
            # whatever an operator's kernel has: the AES-GCM implementations registered.
            drivers = sorted(set(re.findall(r"(?m)^driver\s*:\s*(\S*gcm\S*)$", Path("/proc/crypto").read_text())))
            C.check(drivers, "an AES-GCM AEAD for kTLS is registered (/proc/crypto)", " ".join(drivers))
    pki = h.TempDir(prefix="vfm-vm-pki-")
    try:
        with g.section("kernel TLS: a throwaway CA (tools/make-test-pki.sh in the guest)"):
            make_pki(pki.path)
            C.check((pki / "src" / "server-cert.pem").exists() and (pki / "dst" / "server-cert.pem").exists(),
                    "certificates for src and dst, one CA", str(pki))
        for kernel_tls in (True, False):
            mtty_over_tls(g, pki.path, kernel_tls)
        throughput(g, pki.path)
    finally:
        pki.stop()


def mtty_over_tls(g, pki, kernel_tls):
    C = g.C
    want = "tls-kernel" if kernel_tls else "tls-user"
    label = "kernel TLS" if kernel_tls else "user-space TLS (\"kernel-tls\": false)"
    src_bus = h.PrivateBus().start()
    dst_bus = h.PrivateBus().start()
    src = h.Daemon(src_bus, allow_simulated=False, config=tls_config(pki, "src", kernel_tls))
    dst = h.Daemon(dst_bus, allow_simulated=False, config=tls_config(pki, "dst", kernel_tls),
                   args=["--stream-listen=127.0.0.1:0"])
    pair = None
    try:
        with g.section(f"mtty migration over {label}: two vfiomigd with certificates of one CA"):
            src.start()
            dst.start()
            for name, d in (("source", src), ("destination", dst)):
                said = "kernel TLS is available" in d.log()
                C.equal(said, kernel_tls, f"the {name} daemon says at start whether kernel TLS runs",
                        next((line for line in d.log().splitlines() if "Migration channels run TLS" in line), "no line"))
            paths = {}
            for bus, uuid in ((src_bus, g.MDEV_A), (dst_bus, g.MDEV_B)):
                out = g.ctl_json(bus, "attach", uuid)
                paths[uuid] = out.get("object") or bus.client.call1(h.MANAGER_PATH, h.MANAGER_IFACE, "GetDevice",
                                                                    "s", uuid)
            pair = g.MttyPair(src_bus, dst_bus, src, dst, paths[g.MDEV_A], paths[g.MDEV_B])
        if pair is None:
            return
        # ABORT from the destination and the source's devices back, over this transport
        g.mtty_migration_cancelled(pair, f" over {label}")
        with g.section(f"mtty migration over {label}: A -> B, pre-copy, run=true"):
            state_a, _ = pair.fresh(7, 8)
            blob = f"config space of A over {want}".encode()
            pair.src.device(pair.a, "SetMigrationBlob", "ay", blob)
            before = tls_stat()
            in_job, token, addresses = pair.prepare({"run": ("b", True)})
            t = time.monotonic()
            # Two channels: the kernel's counters must show both. (Under a loaded TCG host each
            # x509 handshake takes seconds, and the destination's 5 s HELLO deadline of channel 0
            # covers the source's handshakes of every channel: more channels fail there.)
            out_job = pair.start(addresses[0], token, {"channels": ("u", 2)})
            out, inc, seen = pair.wait(out_job, in_job)
            after = tls_stat()
            C.note(f"source phases: {' -> '.join(seen)}; {time.monotonic() - t:.2f}s; {out['Channels']} channel(s)")
            C.equal((out["Phase"], inc["Phase"]), ("completed", "completed"), "both jobs completed",
                    f"source error {out['Error']!r}, destination error {inc['Error']!r}")
            C.equal((out["Transport"], inc["Transport"]), (want, want), "Transport on both jobs")
            delta = stat_delta(before, after)
            C.note(f"/proc/net/tls_stat changes: {delta or 'none'}")
            n = out["Channels"]
            if kernel_tls:
                C.equal((delta.get("TlsTxSw", 0), delta.get("TlsRxSw", 0)), (2 * n, 2 * n),
                        "the kernel's counters: a software TLS_TX and TLS_RX on both ends of every channel",
                        f"{n} channel(s)")
            else:
                C.equal((delta.get("TlsTxSw", 0), delta.get("TlsRxSw", 0)), (0, 0),
                        "the kernel's counters: no socket handed to kernel TLS")
            C.equal(delta.get("TlsDecryptError", 0), 0, "no record failed to authenticate in the kernel")
            up = [line for line in src.log().splitlines() if "stream out: TLS to" in line][-1:] or ["no line"]
            C.check(("records in the kernel (kTLS)" if kernel_tls else "records in user space (GnuTLS)") in up[0]
                    and "CN=dst" in up[0], "the source's log names the peer and where the records are sealed",
                    up[0].split("vfiomigd: ")[-1])
            C.equal(g.UartState.read(pair.vmm_b), state_a.expected(),
                    "B's UART registers and FIFOs on both ports are A's")
            C.equal(bytes(pair.dst.device(pair.b, "GetMigrationBlob")[0]), blob, "the blob set on A arrived on B")
            C.equal((pair.src.dev_prop(pair.a, "State"), pair.dst.dev_prop(pair.b, "State")), ("stop", "running"),
                    "A stopped, B running")
        with g.section(f"mtty over {label}: the devices back as they were found"):
            for client, dev in ((pair.src, pair.a), (pair.dst, pair.b)):
                client.device(dev, "Reset")
            for bus, uuid in ((src_bus, g.MDEV_A), (dst_bus, g.MDEV_B)):
                r = g.ctl(bus, "detach", uuid, check=False)
                C.equal(r.returncode, 0, f"vfiomigctl detach {uuid}", r.stderr.strip())
    finally:
        if pair is not None:
            cancel_jobs(pair.dst)
            pair.stop()
        for name, daemon in (("source", src), ("destination", dst)):
            if daemon.alive():
                C.equal(daemon.terminate(), 0, f"the {name} vfiomigd exits 0 on SIGTERM")
            (g.WORK / f"vfiomigd-{want}-{name}.log").write_text(daemon.log())
            daemon.stop(expect=None)
        src_bus.stop()
        dst_bus.stop()


def cancel_jobs(client):
    """A job a failed check left behind (a prepared destination waits for its source)."""
    for _id, _direction, phase, _bytes, path in client.call(h.MANAGER_PATH, h.MANAGER_IFACE, "ListMigrations")[0]:
        if phase not in ("completed", "failed", "cancelled"):
            try:
                client.call(path, "org.vfiomig1.Migration", "Cancel")
            except h.DBusError:
                pass


# --------------------------------------------------------------------------------------------
# Throughput: cleartext, kernel TLS, user-space TLS, in this guest


def throughput(g, pki):
    C = g.C
    size = int(os.environ.get("VM_TLS_BENCH_MIB") or 16) * MiB
    runs = max(1, int(os.environ.get("VM_TLS_BENCH_RUNS") or 1))
    transports = (("cleartext", None, None), ("tls-kernel", True, "kernel TLS"),
                  ("tls-user", False, "user-space TLS"))
    results = {}
    for want, kernel_tls, _ in transports:
        with g.section(f"throughput: {size // MiB} MiB of simulated device state over {want}, 1 and 4 channels"):
            # A PSK (as bench-stream uses): the records cost the same as with certificates, and
            # the handshakes, which TCG makes slow, are cheaper.
            cfg = (lambda host: None) if kernel_tls is None else (lambda host: psk_config(pki, kernel_tls))
            src = tm.Side("src", config=cfg("src"))
            dst = tm.Side("dst", config=cfg("dst"))
            try:
                src.start()
                dst.start()
                for channels in (1, 4):
                    best = None
                    for i in range(runs):
                        r = one_migration(C, src, dst, size, channels, want, f"{want}, {channels} ch, run {i + 1}")
                        if r and (best is None or r["mibps"] > best["mibps"]):
                            best = r
                    if best:
                        results[(want, channels)] = best
            finally:
                for side in (dst, src):
                    try:
                        side.stop()
                    except AssertionError as e:
                        C.check(False, f"the {side.name} vfiomigd stops cleanly", str(e)[:300])
    with g.section("throughput: the figures (guest under TCG: compare rows, not absolute values)"):
        print(f"  ..    {'transport':<11} {'ch':>2} {'MiB/s':>8} {'CPU-s/GiB':>10} {'vs cleartext: throughput':>26}"
              f" {'CPU':>6}", flush=True)
        for want, _, _ in transports:
            for channels in (1, 4):
                r = results.get((want, channels))
                base = results.get(("cleartext", channels))
                if not r:
                    print(f"  ..    {want:<11} {channels:>2}  (no result)", flush=True)
                    continue
                ratio = f"{r['mibps'] / base['mibps']:.2f}x" if base else "-"
                cpu = f"{r['cpu_per_gib'] / base['cpu_per_gib']:.2f}x" if base and base['cpu_per_gib'] else "-"
                print(f"  ..    {want:<11} {channels:>2} {r['mibps']:8.1f} {r['cpu_per_gib']:10.2f} {ratio:>26} {cpu:>6}",
                      flush=True)
        C.check(len(results) == 6, "every row has a figure", f"{len(results)} of 6")


def one_migration(C, src, dst, size, channels, want, what):
    ps = src.attach(size=size, flags=(tm.SC,), seed=0x5EED + channels)
    pd = dst.attach(size=size, flags=(tm.SC,), seed=0xD00D + channels)
    digest = src.digest(ps)
    djob, token, addresses = dst.prepare([pd])
    cpu0 = cpu_seconds(src.daemon.pid) + cpu_seconds(dst.daemon.pid)
    t0 = time.monotonic()
    sjob = src.start_migration([ps], addresses[0], token, channels=channels)
    s_phase = src.wait_final(sjob, 600)
    d_phase = dst.wait_final(djob, 120)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(src.daemon.pid) + cpu_seconds(dst.daemon.pid) - cpu0
    sj, dj = src.job(sjob), dst.job(djob)
    ok = C.equal((s_phase, d_phase), ("completed", "completed"), f"{what}: both jobs completed",
                 f"{sj['Error']!r} / {dj['Error']!r}")
    ok &= C.equal((sj["Transport"], dj["Transport"], sj["Channels"]), (want, want, channels),
                  f"{what}: Transport on both jobs, channels")
    ok &= C.equal(dst.digest(pd), digest, f"{what}: the state arrived intact (StateDigest)")
    # the job's own Duration (ms) covers set-up, handshakes and commit; the wall clock around it
    # adds the D-Bus polling
    seconds = max(sj["Duration"] / 1000.0, 1e-3)
    mibps = sj["BytesTransferred"] / MiB / seconds
    C.note(f"{what}: {sj['BytesTransferred'] / MiB:.1f} MiB in {seconds:.2f}s (job Duration; {elapsed:.2f}s wall) "
           f"= {mibps:.1f} MiB/s, {cpu:.2f} CPU-s for both daemons")
    src.park_all()
    dst.park_all()
    if not ok:
        return None
    return {"mibps": mibps, "cpu_per_gib": cpu / (sj["BytesTransferred"] / (1 << 30))}

