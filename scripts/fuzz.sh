#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ under libFuzzer with AddressSanitizer, on the stable
# toolchain:
#   scripts/fuzz.sh [TARGET|all] [SECONDS]      (default: every target, 60 s each)
# Installs cargo-fuzz into ~/.cargo/bin when it is missing. Each target runs in one process
# (niced) from the checked-in seeds in fuzz/corpus/TARGET/ plus what earlier runs found in
# fuzz/corpus-run/TARGET/ (git-ignored; new inputs go there). A crash, leak, timeout or
# out-of-memory stops the run, leaves the input in fuzz/artifacts/TARGET/ and fails the script.
# Exit status: 0 clean, 1 a target failed (or the build did), 2 bad arguments, 77 cargo-fuzz is
# missing and could not be installed (a "SKIPPED:" line says why).
#
# Why this works without nightly: cargo-fuzz passes -Z flags (-Zsanitizer=address) to rustc, and
# RUSTC_BOOTSTRAP=1 makes the stable compiler accept them; the stable toolchain ships the ASan
# runtime (librustc-stable_rt.asan.a). libfuzzer-sys builds libFuzzer itself with the C++ compiler.
# VIRTKIT_FUZZ_SANITIZER=none builds without ASan (faster, catches only panics and aborts).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2 # the newest at the time of writing; builds with rustc 1.95
target=${1:-all}
seconds=${2:-60}
sanitizer=${VIRTKIT_FUZZ_SANITIZER:-address}

if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: SECONDS must be a positive whole number of seconds, not '$seconds'" >&2
    echo "usage: scripts/fuzz.sh [TARGET|all] [SECONDS]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install, into ${CARGO_HOME:-~/.cargo}/bin)"
    if ! nice -n 10 cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"; then
        echo "SKIPPED: fuzz: cargo-fuzz is not installed and 'cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION' failed (no access to crates.io, or it does not build with $(rustc --version)); see above"
        exit 77
    fi
fi

export RUSTC_BOOTSTRAP=1

mapfile -t all_targets < <(cd fuzz && cargo fuzz list)
if [ "$target" = all ]; then
    targets=("${all_targets[@]}")
else
    if ! printf '%s\n' "${all_targets[@]}" | grep -qxF "$target"; then
        echo "fuzz.sh: no fuzz target '$target'; the targets are: ${all_targets[*]}" >&2
        exit 2
    fi
    targets=("$target")
fi

echo "== building fuzz targets (sanitizer: $sanitizer): ${targets[*]}"
for t in "${targets[@]}"; do
    nice -n 10 cargo fuzz build --sanitizer "$sanitizer" "$t"
done

log=$(mktemp)
started=$(mktemp) # its time stamp tells this run's artifacts from older ones
trap 'rm -f "$log" "$started"' EXIT
failed=()
for t in "${targets[@]}"; do
    # libFuzzer stops at once on a corpus directory that is missing: say what is wrong instead.
    if [ ! -d "fuzz/corpus/$t" ]; then
        echo "fuzz: $t has no checked-in seeds: add a few inputs in fuzz/corpus/$t/"
        failed+=("$t")
        continue
    fi
    mkdir -p "fuzz/corpus-run/$t"
    echo "== fuzzing $t for $seconds s"
    touch "$started"
    # --jobs 1: one fuzzing process, no -fork. -timeout: an input running 10 s is a hang (a
    # queue walk takes microseconds). New inputs go into the first corpus directory only.
    set +e
    nice -n 10 cargo fuzz run --sanitizer "$sanitizer" --jobs 1 "$t" \
        "fuzz/corpus-run/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    # libFuzzer's last status line (#runs ... cov: ... ft: ... corp: inputs/bytes ...) and stats.
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    runs=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$log")
    rate=$(awk '/^stat::average_exec_per_sec:/ { print $2 }' "$log")
    rss=$(awk '/^stat::peak_rss_mb:/ { print $2 }' "$log")
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
    crashes=$(find "fuzz/artifacts/$t" -type f -newer "$started" 2>/dev/null | wc -l)
    echo "fuzz: $t: ${runs:-?} executions in $seconds s (${rate:-?} exec/s), cov ${cov:-?}," \
        "features ${ft:-?}, corpus ${corp:-?} (inputs/bytes), peak RSS ${rss:-?} MB," \
        "new artifacts $crashes, exit status $status"
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/ (minimise it with" \
            "RUSTC_BOOTSTRAP=1 cargo fuzz tmin $t <file>)"
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: all clean: ${targets[*]}"
