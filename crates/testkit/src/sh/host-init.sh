#!/bin/busybox sh
# /init of the emulated KVM host (generated initramfs, virtkit-testkit). Loads the KVM modules,
# reports "VIRTKIT-HOST: kvm-ready", runs the test's script, reports its exit code, powers off.
# With /virtkit/tmpfs-root (EmulatedHost::root_on_tmpfs) it first copies itself to a tmpfs and
# switch_roots there, so that pivot_root(2) works (it does not on the initramfs's rootfs).
if [ -e /virtkit/tmpfs-root ] && [ ! -e /virtkit/on-tmpfs ]; then
	/bin/busybox mkdir -p /newroot
	/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /newroot
	for e in /*; do
		[ "$e" = /newroot ] || /bin/busybox cp -a "$e" /newroot/
	done
	: >/newroot/virtkit/on-tmpfs
	exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root /bin /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
exec </dev/console >/dev/console 2>&1
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
TERM=dumb
export PATH HOME TERM

echo "VIRTKIT-HOST: init uptime=$(cut -d' ' -f1 /proc/uptime)"
while read -r m; do
	[ -n "$m" ] || continue
	insmod "/virtkit/host-modules/$m" || echo "VIRTKIT-HOST: insmod-failed $m"
done </virtkit/host-modules/order
if [ ! -c /dev/kvm ]; then
	echo "VIRTKIT-HOST: kvm-missing"
	dmesg | tail -n 40
	sync
	poweroff -f
	exit 1
fi
echo "VIRTKIT-HOST: kvm-ready"
echo "VIRTKIT-HOST: uptime=$(cut -d' ' -f1 /proc/uptime)"

set -a
. /virtkit/env
set +a
cd /
# A heartbeat the harness watches when asked (`EmulatedHost::heartbeat`): an emulated host that
# wedges prints nothing, which the harness then tells from a script that is merely quiet. Each
# beat names the threads stuck in the kernel (state D), so a log shows whether a VMM was stuck
# while the host still ran, or the whole host stopped.
if [ -e /virtkit/heartbeat ]; then
	( while sleep 60; do
		stuck=
		for stat in /proc/[0-9]*/task/[0-9]*/stat; do
			read -r line 2>/dev/null <"$stat" || continue
			# The state follows the last ")": a command's name may hold spaces and parentheses.
			state=${line##*) }
			[ "${state%% *}" = D ] || continue
			tid=${stat%/stat}
			comm=${line#*(}
			stuck="$stuck${tid##*/}(${comm%)*}) "
		done
		echo "VIRTKIT-HOST: alive uptime=$(cut -d' ' -f1 /proc/uptime)${stuck:+ stuck: $stuck}"
	done ) &
fi
sh -c '. /virtkit/lib.sh && . /virtkit/script.sh' </dev/null
echo "VIRTKIT-HOST: script-exit=$?"
sync
poweroff -f
