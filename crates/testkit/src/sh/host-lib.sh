# shellcheck shell=sh
# /virtkit/lib.sh: helpers sourced before the test's script in the emulated KVM host.
#
# They run a program (a VMM, QEMU, ...) in the background with its stdin fed from a FIFO, so that
# the script can type into the program's console (the inner guest's serial port), and its
# output copied both to the host console (the test sees it) and to a log the script can wait on:
#
#   vk_start NAME CMD [ARG...]   start CMD; stdin <- /run/vk/NAME.in, stdout+stderr -> console
#                                and /run/vk/NAME.log
#   vk_expect NAME ERE [SECS]    wait (default 120 s) until a line of NAME's output matches the
#                                extended regex ERE; returns 1 on timeout or if NAME exited first
#   vk_send NAME TEXT...         type TEXT and a newline into NAME's stdin
#   vk_wait NAME [SECS]          wait (default 120 s) for NAME to exit; returns its exit code,
#                                or 124 after killing it on timeout
#   vk_stop NAME                 kill NAME
#   vk_log NAME                  print the path of NAME's log
#   vk_diag NAME                 print what NAME's processes and threads are doing (state, wchan,
#                                CPU time twice 2 s apart, kernel stacks, the VMs' KVM exit
#                                counters): vk_expect and vk_wait call it when they time out
# Helpers that fail print a "VIRTKIT-HOST: vk_... " line saying why.

VK_DIR=/run/vk

vk_log() { echo "$VK_DIR/$1.log"; }

vk_start() {
	_vk_n=$1
	shift
	mkdir -p "$VK_DIR"
	rm -f "$VK_DIR/$_vk_n".*
	mkfifo "$VK_DIR/$_vk_n.in"
	: >"$VK_DIR/$_vk_n.log"
	# A holder keeps the FIFO's write end open: the program never reads EOF between sends.
	sleep 2147483647 >"$VK_DIR/$_vk_n.in" &
	echo $! >"$VK_DIR/$_vk_n.holder"
	(
		"$@" <"$VK_DIR/$_vk_n.in" 2>&1 &
		echo $! >"$VK_DIR/$_vk_n.pid"
		wait $!
		echo $? >"$VK_DIR/$_vk_n.exit.tmp"
		mv "$VK_DIR/$_vk_n.exit.tmp" "$VK_DIR/$_vk_n.exit"
	) | tee -a "$VK_DIR/$_vk_n.log" &
	# Wait until the pid file exists, so that vk_stop works right away.
	_vk_i=0
	while [ ! -s "$VK_DIR/$_vk_n.pid" ] && [ $_vk_i -lt 100 ]; do
		sleep 0.05
		_vk_i=$((_vk_i + 1))
	done
	return 0
}

vk_expect() {
	_vk_n=$1
	_vk_re=$2
	_vk_left=$((${3:-120} * 10))
	while ! grep -Eq -- "$_vk_re" "$VK_DIR/$_vk_n.log" 2>/dev/null; do
		if [ -e "$VK_DIR/$_vk_n.exit" ]; then
			# Exited: give tee a moment to write the last output, then look once more.
			sleep 0.2
			grep -Eq -- "$_vk_re" "$VK_DIR/$_vk_n.log" 2>/dev/null && return 0
			echo "VIRTKIT-HOST: vk_expect $_vk_n /$_vk_re/: exited ($(cat "$VK_DIR/$_vk_n.exit")) first"
			return 1
		fi
		if [ $_vk_left -le 0 ]; then
			echo "VIRTKIT-HOST: vk_expect $_vk_n /$_vk_re/: timed out after ${3:-120} s"
			vk_diag "$_vk_n"
			return 1
		fi
		sleep 0.1
		_vk_left=$((_vk_left - 1))
	done
	return 0
}

vk_send() {
	_vk_n=$1
	shift
	printf '%s\n' "$*" >"$VK_DIR/$_vk_n.in"
}

vk_stop() {
	[ -s "$VK_DIR/$1.pid" ] && kill "$(cat "$VK_DIR/$1.pid")" 2>/dev/null
	[ -s "$VK_DIR/$1.holder" ] && kill "$(cat "$VK_DIR/$1.holder")" 2>/dev/null
	return 0
}

vk_wait() {
	_vk_n=$1
	_vk_left=$((${2:-120} * 10))
	while [ ! -e "$VK_DIR/$_vk_n.exit" ]; do
		if [ $_vk_left -le 0 ]; then
			echo "VIRTKIT-HOST: vk_wait $_vk_n: timed out after ${2:-120} s; killing it"
			vk_diag "$_vk_n"
			vk_stop "$_vk_n"
			return 124
		fi
		sleep 0.1
		_vk_left=$((_vk_left - 1))
	done
	[ -s "$VK_DIR/$_vk_n.holder" ] && kill "$(cat "$VK_DIR/$_vk_n.holder")" 2>/dev/null
	sleep 0.2 # let tee flush
	return "$(cat "$VK_DIR/$_vk_n.exit")"
}

# _vk_tree PID: PID and its descendants, one per line.
_vk_tree() {
	echo "$1"
	for _vk_c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		_vk_tree "$_vk_c"
	done
}

# _vk_threads PIDS...: one line per thread: pid/tid, name, state, utime+stime (ticks), wchan.
_vk_threads() {
	for _vk_p in "$@"; do
		for _vk_t in /proc/"$_vk_p"/task/*; do
			[ -r "$_vk_t/stat" ] || continue
			# Fields after the ")" that ends the name: 1 state ... 12 utime 13 stime.
			_vk_s=$(sed 's/.*) //' "$_vk_t/stat")
			echo "VIRTKIT-HOST: diag   $_vk_p/${_vk_t##*/} $(cat "$_vk_t/comm" 2>/dev/null)" \
				"state=$(echo "$_vk_s" | cut -d' ' -f1)" \
				"cpu=$(echo "$_vk_s" | awk '{ print $12 + $13 }')" \
				"wchan=$(cat "$_vk_t/wchan" 2>/dev/null)"
		done
	done
}

vk_diag() {
	_vk_pid=$(cat "$VK_DIR/$1.pid" 2>/dev/null)
	if [ -z "$_vk_pid" ] || [ ! -d "/proc/$_vk_pid" ]; then
		echo "VIRTKIT-HOST: diag $1: no process"
		return 0
	fi
	_vk_pids=$(_vk_tree "$_vk_pid")
	echo "VIRTKIT-HOST: diag $1: processes" $_vk_pids
	_vk_threads $_vk_pids
	sleep 2
	echo "VIRTKIT-HOST: diag $1: 2 s later"
	_vk_threads $_vk_pids
	for _vk_p in $_vk_pids; do
		for _vk_t in /proc/"$_vk_p"/task/*; do
			[ -r "$_vk_t/stack" ] || continue
			sed "s|^|VIRTKIT-HOST: diag   stack $_vk_p/${_vk_t##*/}: |" "$_vk_t/stack"
		done
	done
	[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
	for _vk_v in /sys/kernel/debug/kvm/*-*; do
		[ -d "$_vk_v" ] || continue
		for _vk_f in exits halt_exits io_exits mmio_exits irq_exits irq_injections \
			nmi_injections halt_wakeup signal_exits; do
			[ -r "$_vk_v/$_vk_f" ] && echo "VIRTKIT-HOST: diag   kvm ${_vk_v##*/} $_vk_f=$(cat "$_vk_v/$_vk_f")"
		done
	done
	echo "VIRTKIT-HOST: diag $1: last output"
	tail -n 20 "$VK_DIR/$1.log" 2>/dev/null | sed "s/^/VIRTKIT-HOST: diag   | /"
	return 0
}
