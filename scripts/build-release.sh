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
# The flag joins the rustflags of cargo's configuration (`--config` arrays are appended), or
# RUSTFLAGS when that is set (which replaces the configuration's).
if [ -n "${RUSTFLAGS:-}" ]; then
    export RUSTFLAGS="$RUSTFLAGS -C target-feature=+crt-static"
    static=()
else
    static=(--config 'build.rustflags = ["-C", "target-feature=+crt-static"]')
fi
cargo build --release -p virtkit-cli --target x86_64-unknown-linux-gnu "${static[@]}" "$@" >&2
# Wherever cargo puts it ($CARGO_TARGET_DIR, build.target-dir, ./target).
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/x86_64-unknown-linux-gnu/release/virtkit"
# A static PIE: an ELF of type DYN that needs no shared library (binutils: scripts/install-deps.sh).
header=$(readelf -h "$bin") && dynamic=$(readelf -d "$bin") ||
    { echo "build-release.sh: cannot read $bin" >&2; exit 1; }
grep -q 'Type: *DYN' <<<"$header" && ! grep -q NEEDED <<<"$dynamic" ||
    { echo "build-release.sh: $bin is not a static PIE (a [target] rustflags in a cargo configuration overrides -C target-feature=+crt-static)" >&2; exit 1; }
echo "$bin"
