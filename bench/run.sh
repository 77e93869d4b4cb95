#!/bin/sh
# bench/run.sh: virtkit vs QEMU boot benchmark. Builds what it needs (release), runs both parts
# side by side, prints the summary and writes bench/RESULTS.md. Options: see bench/run.py --help
# (--runs N, --inner-runs N, --skip-emulated, --no-build). Not part of `cargo test`.
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
timeout -k 30 2400 python3 bench/run.py "$@"
rc=$?
if [ $rc -eq 124 ]; then
	echo "bench/run.sh: the benchmark did not finish within 40 minutes and was stopped" >&2
fi
exit $rc
