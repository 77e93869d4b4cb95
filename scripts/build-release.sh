#!/usr/bin/env bash
# Builds virtkit's release binary as a static PIE, with the code a start runs laid out together
# (below), and prints its path:
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
# Wherever cargo puts it ($CARGO_TARGET_DIR, build.target-dir, ./target).
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
out_dir="$target_dir/x86_64-unknown-linux-gnu/release"
bin="$out_dir/virtkit"

# The start's code laid out together. A `virtkit run` executes ~900 KiB of code spread over the
# whole 7 MiB of text, and the kernel maps code 64 KiB around each fault, so a start had
# ~4 MiB of text resident. scripts/order-start-symbols.sh lists the functions a start executes
# (single-stepped, so none is missed) in crates/cli/start-symbols.txt, with the parts of their
# names that change between builds taken off (the legacy mangling's hash, LTO's `.N` suffix);
# here those are matched against this build's own symbols, and lld is asked to put them first
# (--symbol-ordering-file). Two passes: the names are only known once the program is linked,
# so a build whose list came out different from the one it was linked with is linked again.
# The arguments reach only the final link (`cargo rustc`), so the crates are not rebuilt.
# `-z pack-relative-relocs`: the static PIE's ~11,600 relative relocations as a few KiB of
# RELR (glibc >= 2.36) instead of 272 KiB of RELA read at every start.
listed="crates/cli/start-symbols.txt"
order_note="$out_dir/start-order.current"
link() {
    local order=("-C" "link-arg=-Wl,-z,pack-relative-relocs")
    [ -n "${1:-}" ] && order+=("-C" "link-arg=-Wl,--symbol-ordering-file=$1" "-C" "link-arg=-Wl,--no-warn-symbol-ordering")
    cargo rustc --release -p virtkit-cli --bin virtkit --target x86_64-unknown-linux-gnu "${static[@]}" "${cargo_args[@]}" -- "${order[@]}" >&2
}
# This build's names for the listed functions, in the list's order (nm: binutils). A listed name
# the build has is taken as it is; one it lacks (its hash or suffix changed since the list was
# written) is matched by the part of it that does not change, which may take in more than one.
start_order() {
    local symbols hash_re="17h"
    for _ in $(seq 16); do hash_re="$hash_re[0-9a-f]"; done
    symbols=$(mktemp)
    nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ {print $3}' >"$symbols"
    awk -v hash_re="${hash_re}E\$" '
        function stable(name) { sub(/\.[0-9]+$/, "", name); sub(hash_re, "E", name); return name }
        FNR == 1 { file++ }
        file == 1 { if (!($0 in rank)) rank[$0] = FNR; next }
        file == 2 { present[$0] = 1; next }
        file == 3 && FNR == 1 { for (name in rank) if (!(name in present)) lost[stable(name)] = rank[name] }
        ($0 in rank) { print rank[$0], $0; next }
        (stable($0) in lost) { print lost[stable($0)], $0 }
    ' "$listed" "$symbols" "$symbols" | sort -n -s -k1,1 | cut -d' ' -f2 | awk '!seen[$0]++'
    rm -f "$symbols"
}
cargo_args=("$@")
used=""
[ -f "$order_note" ] && used=$(cat "$order_note") && [ -f "$used" ] || used=""
link "$used"
if [ -f "$listed" ]; then
    fresh=$(mktemp "$out_dir/start-order.XXXXXX")
    start_order >"$fresh"
    want="$out_dir/start-order-$(sha256sum "$fresh" | cut -c1-16).txt"
    mv "$fresh" "$want"
    if [ "$want" != "$used" ]; then
        echo "$want" >"$order_note"
        link "$want"
    fi
    total=$(grep -c . "$listed")
    exact=$(grep -cFx -f "$listed" "$want" || true)
    echo "build-release.sh: the start's code laid out first: $exact of the $total functions listed in $listed found by name, $(($(wc -l <"$want") - exact)) more by their names' stable part" >&2
    # Names drift with the compiler's version and the crates' features; a list most of whose
    # names are gone lays out little. CI sets VIRTKIT_START_LAYOUT=require.
    if [ $((exact * 10)) -lt $((total * 9)) ]; then
        echo "build-release.sh: $listed is stale (fewer than 90 % of its names are in this build): run scripts/order-start-symbols.sh" >&2
        [ "${VIRTKIT_START_LAYOUT:-}" = require ] && exit 1
    fi
fi
# A static PIE: an ELF of type DYN that needs no shared library (binutils: scripts/install-deps.sh).
header=$(readelf -h "$bin") && dynamic=$(readelf -d "$bin") ||
    { echo "build-release.sh: cannot read $bin" >&2; exit 1; }
grep -q 'Type: *DYN' <<<"$header" && ! grep -q NEEDED <<<"$dynamic" ||
    { echo "build-release.sh: $bin is not a static PIE (a [target] rustflags in a cargo configuration overrides -C target-feature=+crt-static)" >&2; exit 1; }
echo "$bin"
