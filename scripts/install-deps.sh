#!/usr/bin/env bash
# Installs the Debian packages virtkit's build, tests and benchmarks use, when missing.
set -euo pipefail
packages=(qemu-system-x86 qemu-utils busybox-static seabios ovmf cpio binutils e2fsprogs xz-utils zstd lz4 acpica-tools
    dosfstools mtools syslinux syslinux-common)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
