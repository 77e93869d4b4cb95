#!/usr/bin/env bash
# Builds virtkit's release binary as a static PIE and prints its path:
#   scripts/build-release.sh          -> <target>/x86_64-unknown-linux-gnu/release/virtkit
# where <target> is $CARGO_TARGET_DIR or ./target. glibc's static libraries come with
# libc6-dev, which linking any Rust program already needs.
#
# Why static: a dynamically linked virtkit spent ~0.35 ms of every start in the dynamic loader
# (mapping libc, libm and libgcc_s, resolving their symbols) and had those libraries' pages
# resident too: the tiny guest's first output 4.44 -> 4.08 ms and peak RSS 7.8 -> 6.4 MiB
# (bench/RESULTS.md). Still a PIE: the VMM's own code keeps its randomised address.
# `--target` is given explicitly so that RUSTFLAGS reach only virtkit's crates, not build
# scripts or proc macros (which cannot be linked statically); a plain `cargo build --release`
# still builds the dynamically linked binary into <target>/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    cargo build --release -p virtkit-cli --target x86_64-unknown-linux-gnu "$@" >&2
bin="$target_dir/x86_64-unknown-linux-gnu/release/virtkit"
# A static PIE: an ELF of type DYN that needs no shared library (binutils: scripts/install-deps.sh).
readelf -h "$bin" | grep -q 'Type: *DYN' && ! readelf -d "$bin" | grep -q NEEDED \
    || { echo "build-release.sh: $bin is not a static PIE" >&2; exit 1; }
echo "$bin"
