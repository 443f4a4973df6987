#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# /init of the VM tier's initramfs: busybox sh as PID 1 in the guest that tests/vm/vm.py boots.
#
# Stage 1 (in the initramfs):
#  1. proc, sysfs, devtmpfs; the modules from /modules in the order of /modules/load-order
#     (insmod does not resolve dependencies; the list has them first).
#  2. The host's root file system, read-only over 9p, at /host, and the writable work share
#     (vmtest.work=PATH on the kernel command line: the host's BUILD_ROOT/tests/vm/work) at the
#     same path inside it, so that host paths mean the same thing in the guest.
#  3. Fresh proc, sysfs, devtmpfs, cgroup2 and tracefs inside /host, and tmpfs over the places
#     that must be writable (/run, /tmp, /var/tmp, /root, /dev/shm).
#  4. Devices: QEMU's edu (00:03.0) bound to vfio-pci; two mtty-2 mdev instances.
#  5. exec chroot /host: PID 1 itself moves into the host root (see stage 2).
# Stage 2 (PID 1, root = the host's root, this script and busybox in /run/vmtest):
#  6. The guest tests (tests/vm/guest_tests.py), their output in the work share, then RESULT
#     (rc=N) there, last. No RESULT means the guest never got that far.
#  7. poweroff -f: QEMU exits.

# The mdev instances (mtty-2: two ports each); guest_tests.py gets them from the environment.
MDEV_A=11111111-2222-3333-4444-00000000000a
MDEV_B=11111111-2222-3333-4444-00000000000b
EDU=0000:00:03.0

B=/bin/busybox
say() { echo "vmtest [$($B cut -d' ' -f1 /proc/uptime)s]: $*"; }

result=
finish() {
        rc=$1
        if [ -n "$result" ]; then
                $B dmesg > "${result%/RESULT}/dmesg.log" 2>&1
                echo "rc=$rc" > "$result"
                $B sync
        fi
        say "exit rc=$rc"
        $B poweroff -f
        $B sleep 5
}
fail() {
        say "SET-UP FAILED: $*"
        finish 99
}

stage1() {
        /bin/busybox --install -s
        export PATH=/bin:/sbin:/usr/bin:/usr/sbin
        mount -t proc proc /proc
        mount -t sysfs sysfs /sys
        mount -t devtmpfs devtmpfs /dev

        work=
        shell=0
        for arg in $(cat /proc/cmdline); do
                case "$arg" in
                vmtest.work=*) work=${arg#vmtest.work=} ;;
                vmtest.shell=1) shell=1 ;;
                esac
        done

        # None for a kernel with everything built in (the tier's own 7.2).
        while read -r m; do
                insmod "/modules/$m.ko" || fail "insmod $m"
        done < /modules/load-order
        say "modules loaded: $(tr '\n' ' ' < /modules/load-order)"

        R=/host
        mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R ||
                fail "cannot mount the host root over 9p"
        [ -n "$work" ] || fail "no vmtest.work= on the kernel command line"
        mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 work "$R$work" ||
                fail "cannot mount the work share at $work"
        result=$R$work/RESULT
        [ -f "$R$work/guest.env" ] || fail "no guest.env in the work share"
        . "$R$work/guest.env"

        # The host's files, the guest's kernel interfaces, writable scratch space.
        mount -t proc proc $R/proc || fail "proc"
        mount -t sysfs sysfs $R/sys || fail "sysfs"
        mount -t devtmpfs devtmpfs $R/dev || fail "devtmpfs"
        mkdir -p $R/dev/pts $R/dev/shm
        mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
        mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
        ln -sf /proc/self/fd $R/dev/fd
        ln -sf /proc/self/fd/0 $R/dev/stdin
        ln -sf /proc/self/fd/1 $R/dev/stdout
        ln -sf /proc/self/fd/2 $R/dev/stderr
        mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "tmpfs /run"
        # What a booted host has under /run, and the integration harness expects (its
        # systemd --user wrapper mounts over /run/systemd and /run/log).
        mkdir -p $R/run/systemd $R/run/log $R/run/user $R/run/lock $R/run/vmtest
        scratch /tmp 1777
        scratch /var/tmp 1777
        scratch /root 0700
        mount -t cgroup2 -o nsdelegate cgroup2 $R/sys/fs/cgroup || fail "cgroup2"
        mount -t tracefs tracefs $R/sys/kernel/tracing || say "no tracefs (kernel-side call counts unavailable)"
        ip link set lo up 2>/dev/null

        # edu: Debian has no driver for it, so it is unbound; vfio-pci takes it on request.
        echo vfio-pci > /sys/bus/pci/devices/$EDU/driver_override || fail "driver_override for $EDU"
        echo $EDU > /sys/bus/pci/drivers_probe || fail "vfio-pci did not bind $EDU (is intel_iommu=on set?)"
        T=/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2
        echo $MDEV_A > $T/create || fail "cannot create mdev $MDEV_A"
        echo $MDEV_B > $T/create || fail "cannot create mdev $MDEV_B"
        say "edu on $(basename "$(readlink /sys/bus/pci/devices/$EDU/driver)"), IOMMU group" \
            "$(basename "$(readlink /sys/bus/pci/devices/$EDU/iommu_group)"); mdevs $MDEV_A $MDEV_B"

        # In a plain chroot systemctl sees that PID 1 has another root and refuses to talk to
        # any service manager ("Running in chroot, ignoring command"): PID 1 moves in too.
        cp /bin/busybox /init $R/run/vmtest/ || fail "cannot copy busybox into the host root"
        export work shell
        exec chroot $R /run/vmtest/busybox sh /run/vmtest/init stage2
        fail "cannot chroot into $R"
}

# tmpfs over a host directory the guest must write to, except for whatever of the source tree,
# the build tree and the work share lies inside it (a CI clone under /tmp): those are moved
# aside before the tmpfs hides them and put back on top of it.
scratch() {
        dir=$1
        kept=
        for p in "$SOURCE_ROOT" "$BUILD_ROOT" "$work"; do
                case "$p" in
                "$dir"/*) ;;
                *) continue ;;
                esac
                rest=${p#"$dir"/}
                top=$dir/${rest%%/*}
                case " $kept " in *" $top "*) continue ;; esac
                mkdir -p "/keep$top" || fail "mkdir /keep$top"
                mount -o rbind "$R$top" "/keep$top" || fail "cannot keep $top across the tmpfs on $dir"
                kept="$kept $top"
        done
        mount -t tmpfs -o "mode=$2" tmpfs "$R$dir" || fail "tmpfs $dir"
        for top in $kept; do
                mkdir -p "$R$top" || fail "mkdir $top on the tmpfs"
                mount -o move "/keep$top" "$R$top" || fail "cannot put $top back"
        done
}

stage2() {
        B=/run/vmtest/busybox
        result=$work/RESULT
        . "$work/guest.env"
        set -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
                LANG=C.UTF-8 TERM="${TERM:-dumb}" PYTHONDONTWRITEBYTECODE=1 \
                SOURCE_ROOT="$SOURCE_ROOT" BUILD_ROOT="$BUILD_ROOT" VM_WORK="$VM_WORK" \
                VM_KERNEL_RELEASE="$VM_KERNEL_RELEASE" VM_KERNEL_VERSION="$VM_KERNEL_VERSION" \
                VM_KERNEL_NOTE="$VM_KERNEL_NOTE" VM_KERNEL_NAME="$VM_KERNEL_NAME" VM_EXPECT="$VM_EXPECT" \
                VM_ONLY="$VM_ONLY" VM_EDU="$EDU" VM_MDEV_A="$MDEV_A" VM_MDEV_B="$MDEV_B" \
                VM_TLS_BENCH_MIB="$VM_TLS_BENCH_MIB" VM_TLS_BENCH_RUNS="$VM_TLS_BENCH_RUNS" \
                /usr/bin/python3 -u "$VM_GUEST_TESTS"

        if [ "$shell" = 1 ]; then
                {
                        echo "#!$B sh"
                        for a in "$@"; do printf "'%s' " "$a"; done
                        echo '"$@"'
                } > /run/vmtest/run-tests
                $B chmod +x /run/vmtest/run-tests
                say "interactive shell in the host root; /run/vmtest/run-tests runs the tests"
                $B setsid $B cttyhack /bin/bash -l
                finish 0
        fi

        say "running $VM_GUEST_TESTS"
        $B "$@" > "$work/guest.log" 2>&1
        finish $?
}

case "$1" in
stage2) stage2 ;;
*) stage1 ;;
esac
