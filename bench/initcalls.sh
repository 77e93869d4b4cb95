#!/usr/bin/env bash
# Where each VMM's guest spends its time before init, initcall by initcall: boots the stock
# kernel with `initcall_debug` under virtkit and QEMU microvm (the leanest peer for guest time),
# alternating, inside one emulated KVM host, lets the init print the kernel log (`dmesg`), and
# compares the medians of each initcall's time and of the boot's phases between the two.
#   bench/initcalls.sh [ROUNDS]            (default 2 boots of each)
# Needs virtkit's release binary (scripts/build-release.sh, which bench/run.sh runs).
# Output: bench/out/initcalls.txt (and the emulated host's log beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/bench/out
mkdir -p "$out"
assets=$root/.cache/assets/current
rounds=${1:-2}
case $rounds in '' | *[!0-9]*) echo "initcalls.sh: ROUNDS must be a number, not '$rounds'" >&2; exit 2 ;; esac

virtkit=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/release/virtkit
[ -x "$virtkit" ] || { echo "initcalls.sh: no $virtkit: run scripts/build-release.sh" >&2; exit 2; }
host=${CARGO_TARGET_DIR:-$root/target}/release/examples/emulated_host
[ -x "$host" ] || { echo "initcalls.sh: no $host: run cargo build --release -p virtkit-testkit --example emulated_host" >&2; exit 2; }
[ -f "$assets/vmlinuz" ] || { echo "initcalls.sh: no guest kernel in $assets: run scripts/assets.sh" >&2; exit 2; }
args=(--binary "$virtkit:/usr/bin/virtkit"
    --binary /usr/bin/qemu-system-x86_64:/usr/bin/qemu-system-x86_64
    --file "$assets/vmlinuz:/guest/vmlinuz"
    --file "$assets/guest-initramfs.cpio.gz:/guest/initrd")
for f in bios-microvm.bin linuxboot_dma.bin linuxboot.bin pvh.bin; do
    [ -f /usr/share/qemu/$f ] && args+=(--file /usr/share/qemu/$f:/usr/share/qemu/$f)
done

script=$out/initcalls-host.sh
{
    echo "ROUNDS=$rounds"
    cat <<'SCRIPT'
# `quiet` keeps the console as in the benchmark; initcall_debug's lines go to the log only, and
# the init prints the whole log once it runs.
CMDLINE='console=ttyS0 quiet initcall_debug virtkit.run="dmesg" virtkit.action=poweroff'
round=1
while [ $round -le $ROUNDS ]; do
    for vmm in virtkit qemu; do
        echo "INITCALLS-BEGIN $vmm $round"
        case $vmm in
        virtkit) timeout 300 /usr/bin/virtkit run --kernel /guest/vmlinuz --initrd /guest/initrd --cmdline "$CMDLINE" --cpus 1 --memory 256M --serial stdio </dev/null ;;
        qemu) timeout 300 qemu-system-x86_64 -M microvm,rtc=on -enable-kvm -cpu host -smp 1 -m 256M -nodefaults -no-user-config -nographic -serial stdio -no-reboot -kernel /guest/vmlinuz -initrd /guest/initrd -append "$CMDLINE" </dev/null ;;
        esac 2>&1 | sed "s/^/INITCALLS $vmm $round /"
        echo "INITCALLS-END $vmm $round"
    done
    round=$((round + 1))
done
exit 0
SCRIPT
} >"$script"

"$host" "${args[@]}" --timeout 1500 "$script" >"$out/initcalls-host.log" 2>&1 || {
    echo "initcalls.sh: the emulated host failed; see $out/initcalls-host.log" >&2
    exit 1
}
python3 "$root/bench/initcalls.py" <"$out/initcalls-host.log" | tee "$out/initcalls.txt"
