#!/usr/bin/env bash
# Builds, once, a Debian 12 system like the genericcloud image holds (systemd, cloud-init,
# openssh-server, sudo, locales, the cloud kernel) from Debian's packages with mmdebstrap, as a disk
# image with ext4 on the whole disk (no partition table) for a direct kernel boot, and prints
# the directory holding it:
#
#   .cache/debian-image/v<RECIPE>/root.img      ext4, label "root", 2 GiB sparse
#                                 vmlinuz      the system's own kernel
#                                 initrd.img   its initramfs (initramfs-tools, virtio drivers)
#                                 packages     the package list with versions
#
# Needs root (mmdebstrap in root mode, mkfs.ext4 -d) and Debian's apt sources; installs
# mmdebstrap and e2fsprogs when missing. A finished directory is never changed; RECIPE moves
# when the recipe does. About 1-3 minutes with a warm apt cache.
set -euo pipefail
RECIPE=4
cd "$(dirname "$0")/.."
base=.cache/debian-image
out=$base/v$RECIPE
if [ -f "$out/done" ]; then
    echo "$out"
    exit 0
fi
for p in mmdebstrap e2fsprogs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$p" >&2
done
mkdir -p "$base"
build=$(mktemp -d "$base/.build.XXXXXX")
trap 'rm -rf "$build"' EXIT
root=$build/root
echo "debian-image: mmdebstrap bookworm into $root" >&2
mmdebstrap --variant=minbase --mode=root --format=directory \
    --include=systemd-sysv,udev,dbus,kmod,e2fsprogs,util-linux,iproute2,ifupdown,isc-dhcp-client,sudo,openssh-server,cloud-init,linux-image-cloud-amd64,initramfs-tools,busybox,procps,less,locales \
    --customize-hook='echo "LABEL=root / ext4 defaults 0 1" > "$1/etc/fstab"' \
    --customize-hook='rm -f "$1/etc/hostname" "$1/etc/machine-id" && touch "$1/etc/machine-id"' \
    --customize-hook='chroot "$1" systemctl enable ssh.service' \
    --customize-hook='sed -i "s/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/" "$1/etc/locale.gen" && chroot "$1" locale-gen >/dev/null' \
    --customize-hook='printf "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n" > "$1/etc/network/interfaces"' \
    --customize-hook='chroot "$1" dpkg-query -W > "$1/../packages"' \
    bookworm "$root" >&2
cp -L "$root"/boot/vmlinuz-* "$build/vmlinuz"
cp -L "$root"/boot/initrd.img-* "$build/initrd.img"
truncate -s 2G "$build/root.img"
mkfs.ext4 -q -F -L root -d "$root" "$build/root.img" >&2
rm -rf "$root"
touch "$build/done"
trap - EXIT
mv "$build" "$out"
echo "$out"
