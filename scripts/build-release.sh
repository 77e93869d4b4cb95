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
# (single-stepped, so none is missed), whole names, in crates/cli/start-symbols.txt. Here they
# are matched against this build's own symbols: a name the build has as it is; one it lacks
# (the compiler's version or a crate's features changed its hash, LTO renumbered its `.N`
# suffix) by the part of it that does not change, which may take in several. lld is asked to
# put them first (--symbol-ordering-file). The names are only known once the program is linked,
# so a build whose order came out different from the one it was linked with is linked again;
# a first build starts from the list itself, which a build of the same sources and compiler
# matches exactly, so it links once. The arguments reach only the final crate (`cargo rustc`):
# the dependencies are not rebuilt, but with LTO each link is the whole program's code
# generation again (~1 minute here).
# `-z pack-relative-relocs`: the static PIE's ~11,600 relative relocations as a few KiB of
# RELR (glibc >= 2.36) instead of 272 KiB of RELA read at every start.
listed="crates/cli/start-symbols.txt"
order_note="$out_dir/start-order.current"
counts=$(mktemp)
trap 'rm -f "$counts"' EXIT
link() {
    local extra=()
    if [ -n "${1:-}" ]; then
        extra=("-C" "link-arg=-Wl,-z,pack-relative-relocs"
            "-C" "link-arg=-Wl,--symbol-ordering-file=$1" "-C" "link-arg=-Wl,--no-warn-symbol-ordering")
    fi
    cargo rustc --release -p virtkit-cli --bin virtkit --target x86_64-unknown-linux-gnu "${static[@]}" "${cargo_args[@]}" -- "${extra[@]}" >&2
}
# Standard input saved as $out_dir/start-order-<its hash>.txt, whose path is printed: a new
# order is a new argument, so cargo links again.
save_order() {
    local tmp path
    tmp=$(mktemp "$out_dir/start-order.XXXXXX")
    cat >"$tmp"
    path="$out_dir/start-order-$(sha256sum "$tmp" | cut -c1-16).txt"
    mv "$tmp" "$path"
    echo "$path"
}
# This build's names for the listed functions, in the list's order (nm: binutils); writes to
# $counts how many listed names were found as they are and how many more by their stable part.
# The stable part: without the legacy mangling's `17h<hash>E` and LTO's `.N`, and in v0 names
# (`_R…`, the standard library's) without the crate disambiguators `Cs…_` and the back
# references `B…_` that count bytes of the name.
start_order() {
    local symbols hash_re="17h"
    for _ in $(seq 16); do hash_re="$hash_re[0-9a-f]"; done
    symbols=$(mktemp)
    nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ {print $3}' >"$symbols"
    awk -v hash_re="${hash_re}E\$" -v counts="$counts" '
        function stable(name) {
            sub(/\.[0-9]+$/, "", name)
            sub(hash_re, "E", name)
            if (name ~ /^_R/) { gsub(/Cs[0-9A-Za-z]+_/, "C_", name); gsub(/B[0-9A-Za-z]*_/, "B_", name) }
            return name
        }
        FNR == 1 { file++ }
        file == 1 { if (!($0 in rank)) rank[$0] = FNR; next }
        file == 2 { present[$0] = 1; next }
        file == 3 && FNR == 1 {
            for (name in rank) {
                if (name in present) exact++
                else { key = stable(name); lost_names[key]++; if (!(key in lost) || rank[name] < lost[key]) lost[key] = rank[name] }
            }
        }
        ($0 in rank) { print rank[$0], $0; next }
        { key = stable($0) }
        (key in lost) { print lost[key], $0; found[key] = 1 }
        END { for (key in found) again += lost_names[key]; print exact + 0, again + 0 > counts }
    ' "$listed" "$symbols" "$symbols" | sort -n -s -k1,1 | cut -d' ' -f2 | awk '!seen[$0]++'
    rm -f "$symbols"
}
cargo_args=("$@")
mkdir -p "$out_dir"
total=0
[ -f "$listed" ] && total=$(sort -u "$listed" | grep -c . || true)
used=""
if [ "$total" -gt 0 ]; then
    [ -f "$order_note" ] && used=$(cat "$order_note") && [ -f "$used" ] || used=""
    [ -n "$used" ] || used=$(save_order <"$listed")
fi
if [ -n "$used" ] && ! link "$used"; then
    # The options are lld's (rustc's default linker on x86_64 Linux since 1.90) and GNU ld's
    # from 2.38 on; another linker gets the compiler's layout rather than no binary.
    echo "build-release.sh: the link with the start's layout failed (see above; it needs lld): building without it" >&2
    used=""
    total=0
    link ""
elif [ -z "$used" ]; then
    link ""
fi
if [ "$total" -gt 0 ]; then
    want=$(start_order | save_order)
    [ "$want" = "$used" ] || link "$want"
    echo "$want" >"$order_note"
    find "$out_dir" -maxdepth 1 -name 'start-order-*.txt' ! -path "$want" -delete
    read -r exact again <"$counts"
    echo "build-release.sh: the start's code laid out first: $exact of the $total functions listed in $listed found by name, $again more by their names' stable part ($(wc -l <"$want") symbols)" >&2
    # A list most of whose names are gone lays out little. CI sets VIRTKIT_START_LAYOUT=require.
    if [ $(((exact + again) * 10)) -lt $((total * 9)) ]; then
        echo "build-release.sh: $listed is stale (fewer than 90 % of its functions are in this build): run scripts/order-start-symbols.sh" >&2
        [ "${VIRTKIT_START_LAYOUT:-}" = require ] && exit 1
    fi
fi
# A static PIE: an ELF of type DYN that needs no shared library (binutils: scripts/install-deps.sh).
header=$(readelf -h "$bin") && dynamic=$(readelf -d "$bin") ||
    { echo "build-release.sh: cannot read $bin" >&2; exit 1; }
grep -q 'Type: *DYN' <<<"$header" && ! grep -q NEEDED <<<"$dynamic" ||
    { echo "build-release.sh: $bin is not a static PIE (a [target] rustflags in a cargo configuration overrides -C target-feature=+crt-static)" >&2; exit 1; }
# It starts (the packed relocations need glibc >= 2.36's start-up code).
"$bin" --version >/dev/null ||
    { echo "build-release.sh: $bin does not start" >&2; exit 1; }
echo "$bin"
