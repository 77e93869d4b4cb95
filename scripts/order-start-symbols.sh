#!/usr/bin/env bash
# Writes crates/cli/start-symbols.txt: the functions a `virtkit run` of the benchmark's tiny
# guest executes, which scripts/build-release.sh has the linker lay out first, so that a start
# touches a few hundred KiB of contiguous code instead of pages all over the 7 MiB of text.
#
#   scripts/order-start-symbols.sh      (needs /dev/kvm; ~2 minutes, most of it single-stepping)
#
# Run it again when the list has gone stale: build-release.sh says how many of the listed
# functions it found. The run is single-stepped (bench/stepcover.c, ptrace) rather than sampled:
# a function a sampler misses lands in the cold code and costs a whole 64 KiB fault-around
# window of resident text. Names are written whole, one per line, in the order of the profiled
# binary's layout; build-release.sh matches a name a later build lacks by its stable part.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=bench/out
mkdir -p "$out_dir"
cc -O2 -o "$out_dir/stepcover" bench/stepcover.c
cargo build --release --quiet -p virtkit-test-guests
# Not VIRTKIT_START_LAYOUT=require: the list may be stale, which is why this runs.
bin=$(VIRTKIT_START_LAYOUT= scripts/build-release.sh --quiet)
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
smoke=$(ls -t "$target_dir"/release/build/virtkit-test-guests-*/out/smoke.elf | head -n1)
# The guest resets the machine at the end (exit 3); what counts is that it ran to its line.
"$out_dir/stepcover" -o "$out_dir/start-coverage.txt" -- \
    "$bin" run --kernel "$smoke" --cpus 1 --memory 128M --serial stdio </dev/null >"$out_dir/start-run.txt" 2>&1 || true
grep -q 'virtkit-smoke: ready' "$out_dir/start-run.txt" ||
    { echo "order-start-symbols.sh: the traced run did not reach the guest's line; the list is unchanged:" >&2; cat "$out_dir/start-run.txt" >&2; exit 1; }
python3 - "$bin" "$out_dir/start-coverage.txt" crates/cli/start-symbols.txt <<'EOF'
import bisect, subprocess, sys

binary, coverage, listed = sys.argv[1:]
functions = []
for line in subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True,
                           text=True, check=True).stdout.splitlines():
    fields = line.split()
    if len(fields) == 4 and fields[2] in "tTwW":
        functions.append((int(fields[0], 16), int(fields[1], 16), fields[3]))
functions.sort()
starts = [f[0] for f in functions]
executed = {}
for line in open(coverage):
    address = int(line, 16)
    i = bisect.bisect_right(starts, address) - 1
    if i >= 0 and address < functions[i][0] + max(functions[i][1], 1):
        executed[functions[i][2]] = functions[i]
if len(executed) < 100:
    sys.exit(f"order-start-symbols.sh: only {len(executed)} functions executed; did the run fail?")
names = [name for start, size, name in sorted(executed.values())]
with open(listed, "w") as f:
    f.write("\n".join(names) + "\n")
size = sum(f[1] for f in executed.values())
print(f"order-start-symbols.sh: {len(executed)} functions executed ({size // 1024} KiB of code), "
      f"{len(names)} names written to {listed}", file=sys.stderr)
EOF
