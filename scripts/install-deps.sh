#!/usr/bin/env bash
# Installs the Debian packages virtkit's build, tests and benchmarks use, when missing.
#
# Two passes: Debian 12 images may ship qemu-utils from backports (10.x), which Breaks bookworm's
# qemu-system-common (7.2), so installing qemu-system-x86 removes it. The second pass puts back
# whatever the first one removed (qemu-utils from bookworm then), and the check at the end
# fails loudly if a command the tests need is still missing.
set -euo pipefail
packages=(qemu-system-x86 qemu-utils busybox-static seabios ovmf cpio binutils e2fsprogs xz-utils zstd lz4 acpica-tools
    dosfstools mtools syslinux syslinux-common btrfs-progs xfsprogs python3 passt util-linux openssh-client mmdebstrap
    # Debian's cloud-init (unpacked into .cache, never installed) checks the seed's user-data
    # against its schema with these libraries.
    python3-yaml python3-jsonschema python3-configobj python3-jinja2 python3-jsonpatch python3-requests
    python3-netifaces python3-oauthlib python3-serial
    # virtiofsd is built from crates.io (scripts/build-virtiofsd.sh) against these.
    libseccomp-dev libcap-ng-dev
    # The VNC tests' real client (vncdotool, from PyPI) goes into a virtual environment.
    python3-venv)
updated=0
for pass in 1 2; do
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && break
    echo "installing (pass $pass): ${missing[*]}" >&2
    if [ "$updated" = 0 ]; then
        apt-get update -q
        updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
done
for cmd in qemu-system-x86_64 qemu-img qemu-io mkfs.btrfs mkfs.xfs busybox cpio passt; do
    if ! command -v "$cmd" >/dev/null; then
        echo "install-deps: '$cmd' is still missing after installing its package; install it by hand" >&2
        exit 1
    fi
done

# vncdotool (PyPI), the real VNC client of crates/vnc's tests, in .cache/vncdotool-venv (Debian's
# own Python refuses `pip install` outside a virtual environment). Built once.
venv="$(cd "$(dirname "$0")/.." && pwd)/.cache/vncdotool-venv"
if ! "$venv/bin/vncdo" --version >/dev/null 2>&1; then
    echo "installing vncdotool into $venv (pip, from PyPI)" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q vncdotool
    "$venv/bin/vncdo" --version >/dev/null || { echo "install-deps: vncdotool does not run from $venv" >&2; exit 1; }
fi
