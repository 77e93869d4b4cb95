#!/bin/busybox sh
# shellcheck shell=dash
# /init of the virtkit test guest initramfs (guest-initramfs.cpio.gz), built by scripts/assets.sh.
#
# Busybox applet symlinks are created at build time; the kernel modules listed (in load order) in
# /etc/virtkit/modules live in /lib/modules/<release>/.
#
# Every marker line goes to the console (ttyS0) and starts with "VIRTKIT-GUEST: ".
# Kernel command line (read from /proc/cmdline):
#   virtkit.token=<word>      echoed back as "VIRTKIT-GUEST: token=<word>"
#   virtkit.run=<cmd>         run <cmd> with sh -c (quote it: virtkit.run="uname -r"), then print
#                             "VIRTKIT-GUEST: run-exit=<code>"
#   virtkit.action=<action>   poweroff | reboot | panic | shell | wait
#                             default: shell, or poweroff when virtkit.run= is given
# See docs/TESTING.md for the full list of markers.

PATH=/bin:/sbin:/usr/bin:/usr/sbin
HOME=/
TERM=linux
export PATH HOME TERM

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /var/log /etc/acpi
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
# devtmpfs: nodes for the virtio devices (vda, hvc0, hwrng...) appear as drivers bind.
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox mkdir -p /dev/pts /dev/shm
/bin/busybox mount -t devpts devpts /dev/pts 2>/dev/null
exec </dev/console >/dev/console 2>&1

say() { echo "VIRTKIT-GUEST: $*"; }

# Plain `poweroff`/`reboot`/`halt` (without -f) signal PID 1: handle those signals here.
trap 'say poweroff; sync; poweroff -f' USR2
trap 'say halt; sync; halt -f' USR1
trap 'say reboot; sync; reboot -f' TERM

finish() {
	# Never let init return: the kernel would panic.
	sync
	poweroff -f
	while :; do sleep 1; done
}

say init
say "uptime-at-init=$(cut -d' ' -f1 /proc/uptime)"

# Load the modules in dependency order; a missing or failing one is reported and skipped.
release=$(uname -r)
moddir=/lib/modules/$release
if [ -f /etc/virtkit/modules ] && [ -d "$moddir" ]; then
	nloaded=0
	failed=
	while read -r mod; do
		[ -n "$mod" ] || continue
		if insmod "$moddir/$mod" 2>/dev/null; then
			nloaded=$((nloaded + 1))
		else
			failed="$failed ${mod%.ko}"
		fi
	done </etc/virtkit/modules
	say "modules loaded=$nloaded"
	[ -z "$failed" ] || say "modules-failed=${failed# }"
else
	say "modules-skipped kernel=$release"
fi

CMDLINE=$(cat /proc/cmdline)

# getarg NAME: print the value of NAME=value or NAME="value with spaces" from the command line.
getarg() {
	case " $CMDLINE " in
	*" $1=\""*)
		v=${CMDLINE#*"$1=\""}
		echo "${v%%\"*}"
		;;
	*" $1="*)
		v=" $CMDLINE "
		v=${v#*" $1="}
		echo "${v%% *}"
		;;
	*) return 1 ;;
	esac
}

say "cpus=$(grep -c '^processor' /proc/cpuinfo)"
say "memtotal_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
say "cmdline=$CMDLINE"
if token=$(getarg virtkit.token); then
	say "token=$token"
fi
say "uptime=$(cut -d' ' -f1 /proc/uptime)"

action=shell
if run=$(getarg virtkit.run); then
	action=poweroff
	sh -c "$run"
	say "run-exit=$?"
fi
if a=$(getarg virtkit.action); then
	action=$a
fi

case "$action" in
poweroff)
	say poweroff
	finish
	;;
reboot)
	say reboot
	sync
	reboot -f
	finish
	;;
panic)
	say panic
	echo c >/proc/sysrq-trigger
	finish
	;;
shell)
	say shell-ready
	# cttyhack opens the real console device (ttyS0) as the controlling tty, so that job control
	# and ^C work. The shell runs in the background so that `wait` returns to run the traps
	# above when plain `poweroff` is typed. When the shell exits the guest powers off.
	setsid cttyhack sh </dev/console >/dev/console 2>&1 &
	wait $!
	say "shell-exit=$?"
	say poweroff
	finish
	;;
wait)
	# busybox acpid: reads /dev/input/event*, maps KEY_POWER to "PWRF" (built-in map), looks
	# the event up in the action file (-a, lines "<key> <handler>") and runs
	# <confdir>/<handler>. The handler calls plain `poweroff`, which signals this init (USR2).
	cat >/etc/acpi/power <<-'EOF'
		#!/bin/sh
		echo "VIRTKIT-GUEST: acpi-power-button" >/dev/console
		exec poweroff
	EOF
	chmod 755 /etc/acpi/power
	echo "PWRF power" >/etc/acpid.conf
	if acpid -c /etc/acpi -a /etc/acpid.conf -l /var/log/acpid.log; then
		say acpid-started
	else
		say acpid-failed
	fi
	say waiting
	n=0
	while :; do
		n=$((n + 1))
		say "alive $n"
		sleep 1
	done
	;;
*)
	say "unknown-action=$action"
	say poweroff
	finish
	;;
esac
finish
