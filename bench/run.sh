#!/bin/sh
# bench/run.sh: virtkit vs QEMU benchmark (boot, boot in the emulated KVM host, a disk read
# through SeaBIOS, the guest's disk and network I/O in the emulated KVM host) and the disk and
# network devices' throughput without a VM, and the guest agent (exec, cp) against ssh/scp
# to a Debian guest in the emulated KVM host. Builds what it needs (release), runs the parts,
# prints the summary and writes bench/RESULTS.md. Options: see bench/run.py --help (--parts
# 1,2,3,4,5,6,7,8,10, --runs N, --inner-runs N, --disk-runs N, --blk-seconds S, --blk-reps N,
# --odirect-runs N, --net-seconds S, --net-reps N, --net-runs N, --net-passes N,
# --net-guest-seconds S, --agent-round-trips N, --agent-copies N, --fs-runs N, --fs-passes N,
# --fs-files N, --fs-configs LIST, --save-runs N, --skip-emulated, --no-build). Part 9 (a shared
# directory: virtio-fs against QEMU's vhost-user-fs-pci) runs only with --parts naming it. Part 10
# saves and restores a small guest against QEMU and Firecracker. Not part of `cargo test`.
set -u
cd "$(dirname "$0")/.." || exit 1
if ! command -v python3 >/dev/null 2>&1; then
	echo "bench/run.sh: python3 (3.8 or later, standard library only) is needed" >&2
	exit 1
fi
if ! command -v timeout >/dev/null 2>&1; then
	echo "bench/run.sh: timeout (coreutils) is needed" >&2
	exit 1
fi
# Every step has its own timeout inside run.py; this one is the backstop for the whole run
# (a release build from scratch included).
timeout -k 30 3600 python3 bench/run.py "$@"
rc=$?
if [ $rc -eq 124 ]; then
	echo "bench/run.sh: the benchmark did not finish within 60 minutes and was stopped" >&2
fi
exit $rc
