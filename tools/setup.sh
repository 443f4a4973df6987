#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Installs every Debian 12 package vfiomigd's build and tests need. Runs apt-get only when
# something is missing, so a second run costs nothing. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
        # build
        meson ninja-build pkg-config gcc clang
        libsystemd-dev liburing-dev libnl-3-dev libnl-genl-3-dev libjson-c-dev libgnutls28-dev
        # TLS: certtool and psktool for the throwaway PKI (tools/make-test-pki.sh), tcpdump for the capture test
        gnutls-bin tcpdump
        # unit tests
        libcriterion-dev
        # integration tests: a private bus, polkit, a service manager, the CLIs they use
        dbus dbus-daemon dbus-bin polkitd systemd util-linux procps python3
        # documentation checks: man pages render cleanly, XML policy files are well-formed
        groff-base man-db libxml2-utils
        # VM tier (tests/vm/vm.py): QEMU (TCG) and a static busybox for the guest's initramfs; make,
        # xz and zstd to unpack Debian's kernel packages and build the mtty sample module
        qemu-system-x86 busybox-static make xz-utils zstd
        # the VM tier's own Linux 7.2 (tests/vm/linux_build.py builds it from Debian's linux-source-7.2)
        flex bison bc libelf-dev libssl-dev
        # the demo (tools/demo.sh): ip, for two network namespaces joined by a veth pair
        iproute2
)

missing=()
for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
        echo "setup: all ${#PACKAGES[@]} packages present"
        exit 0
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
        SUDO=sudo
fi
echo "setup: installing ${missing[*]}"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
