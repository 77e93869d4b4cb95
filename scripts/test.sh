#!/usr/bin/env bash
# Runs every test in the workspace and prints one closing line:
#   tests: N passed, N failed, N skipped
# A test whose prerequisite is missing (no /dev/kvm, no QEMU, no assets) prints
# "SKIPPED: <name>: <reason>" and is counted as skipped, not passed. With VIRTKIT_REQUIRE_ALL=1
# (CI) such a test fails instead.
#
# Self-sufficient on a fresh Debian 12 machine (as root): it installs the packages the tests use,
# builds the test assets and every binary and example the tests start, then runs the tests.
set -uo pipefail
cd "$(dirname "$0")/.."

t0=$(date +%s)
# Each phase's heading says when it started, so a slow run shows where its time went.
phase() { echo "== $1 (at $(($(date +%s) - t0)) s)"; }

phase "packages"
scripts/install-deps.sh || exit 1
phase "test assets"
scripts/assets.sh --quiet >/dev/null || exit 1
phase "virtiofsd (built once into .cache/virtiofsd/)"
scripts/build-virtiofsd.sh >/dev/null || exit 1
phase "Debian system image (mmdebstrap; built once into .cache/debian-image/)"
scripts/debian-image.sh >/dev/null || exit 1
phase "build (binaries and examples the tests start)"
cargo build --workspace --bins --examples --quiet || exit 1
phase "KVM on this host"
./target/debug/virtkit doctor || echo "KVM: not available on this host"
phase "tests"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Two test threads: the machine has two cores and the guest tests are CPU-bound.
cargo test --workspace --all-targets --no-fail-fast --color never -- --test-threads "${VIRTKIT_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^passed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^failed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
skipped=$(grep -c '^SKIPPED: ' "$log" || true)
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    # A build error or a crashed test binary: nothing counted it, so count it here.
    failed=1
fi
echo
echo "== tests done (at $(($(date +%s) - t0)) s)"
echo "tests: $((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$status"
