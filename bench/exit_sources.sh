#!/usr/bin/env bash
# Where each VMM's exits to init come from, by guest function: boots the stock kernel to its init
# once per VMM inside one emulated KVM host with KVM's tracepoints on (kvm_exit, kvm_pio,
# kvm_msr, in the emulated host's kernel, which sees every exit of its nested guest),
# and prints the exits grouped by reason and guest function, the port I/O by port and the MSR
# accesses by MSR.
#   bench/exit_sources.sh [virtkit] [qemu] [cloud-hypervisor]      (no argument: all three)
# Needs virtkit's release binary (scripts/build-release.sh, which bench/run.sh runs) and, for
# cloud-hypervisor, scripts/build-peers.sh.
# The guest boots with `nokaslr`, so its addresses are System.map's: the map comes from Debian's
# linux-image-<version>-dbg package (about 280 MB, `apt-get download`, kept in bench/out/).
# Output: bench/out/exit-sources.txt (and the emulated host's log beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/bench/out
mkdir -p "$out"
assets=$root/.cache/assets/current
vmms=("$@")
[ ${#vmms[@]} -gt 0 ] || vmms=(virtkit qemu cloud-hypervisor)

manifest=$assets/manifest.json
kernel=$(python3 -c "import json; print(json.load(open('$manifest'))['kernel_release'])")
kernel_version=$(python3 -c "import json; print(json.load(open('$manifest'))['kernel_package_version'])")
map=$out/System.map-$kernel
if [ ! -s "$map" ]; then
    echo "exit_sources.sh: fetching linux-image-$kernel-dbg $kernel_version for its System.map (about 280 MB)" >&2
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download "linux-image-$kernel-dbg=$kernel_version" >/dev/null)
    dpkg-deb --fsys-tarfile "$tmp"/linux-image-"$kernel"-dbg_*.deb |
        tar -x -O --wildcards "./usr/lib/debug/boot/System.map-$kernel" >"$map.tmp"
    mv "$map.tmp" "$map"
    rm -rf "$tmp"
fi

virtkit=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/release/virtkit
[ -x "$virtkit" ] || { echo "exit_sources.sh: no $virtkit: run scripts/build-release.sh" >&2; exit 2; }
args=(--binary "$virtkit:/usr/bin/virtkit"
    --file "$assets/vmlinuz:/guest/vmlinuz" --file "$assets/vmlinux:/guest/vmlinux"
    --file "$assets/guest-initramfs.cpio.gz:/guest/initrd")
for v in "${vmms[@]}"; do
    case $v in
    virtkit) ;;
    qemu)
        args+=(--binary /usr/bin/qemu-system-x86_64:/usr/bin/qemu-system-x86_64)
        for f in bios-microvm.bin linuxboot_dma.bin linuxboot.bin pvh.bin; do
            [ -f /usr/share/qemu/$f ] && args+=(--file /usr/share/qemu/$f:/usr/share/qemu/$f)
        done ;;
    cloud-hypervisor)
        ch=$(ls "$root"/.cache/peers/cloud-hypervisor-*-static/cloud-hypervisor 2>/dev/null | head -n1 || true)
        [ -n "$ch" ] || { echo "exit_sources.sh: no cloud-hypervisor binary: run scripts/build-peers.sh cloud-hypervisor" >&2; exit 2; }
        args+=(--binary "$ch:/usr/bin/cloud-hypervisor") ;;
    *) echo "exit_sources.sh: unknown VMM '$v' (virtkit, qemu, cloud-hypervisor)" >&2; exit 2 ;;
    esac
done

script=$out/exit-sources-host.sh
{
    echo "VMMS=\"${vmms[*]}\""
    cat <<'SCRIPT'
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
T=/sys/kernel/tracing
echo "EXITS host-clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo 32768 >$T/buffer_size_kb
CMDLINE="console=ttyS0 quiet nokaslr virtkit.action=wait"
trace_one() {
    label=$1; shift
    echo 0 >$T/tracing_on; echo >$T/trace
    for e in kvm_exit kvm_pio kvm_msr; do echo 1 >$T/events/kvm/$e/enable; done
    echo 1 >$T/tracing_on
    "$@" >/tmp/out.$label 2>&1 </dev/null &
    pid=$!
    n=0
    while [ $n -lt 1500 ]; do grep -q 'VIRTKIT-GUEST: init' /tmp/out.$label && break; sleep 0.1; n=$((n + 1)); done
    echo 0 >$T/tracing_on
    kill -9 $pid; wait $pid 2>/dev/null
    t=/tmp/trace.$label
    cp $T/trace $t
    echo "EXITS $label total $(grep -c 'kvm_exit:' $t) lost $(grep -c LOST $t) init-seen $(grep -c 'VIRTKIT-GUEST: init' /tmp/out.$label)"
    grep 'kvm_exit:' $t | awk '{for (i = 1; i <= NF; i++) { if ($i == "reason") r = $(i + 1); if ($i == "rip") p = $(i + 1) } c[r " " p]++}
        END { for (k in c) print c[k], k }' | sort -rn | head -n 60 | sed "s/^/EXITS $label exit /"
    grep 'kvm_pio:' $t | awk '{split($0, a, "kvm_pio: "); split(a[2], b, " "); c[b[1] " " b[3]]++} END { for (k in c) print c[k], k }' |
        sort -rn | head -n 25 | sed "s/^/EXITS $label pio /"
    grep 'kvm_msr:' $t | awk '{split($0, a, "kvm_msr: "); split(a[2], b, " "); c[b[1] " " b[2]]++} END { for (k in c) print c[k], k }' |
        sort -rn | head -n 10 | sed "s/^/EXITS $label msr /"
}
for vmm in $VMMS; do
    case $vmm in
    virtkit) trace_one virtkit /usr/bin/virtkit run --kernel /guest/vmlinuz --initrd /guest/initrd --cmdline "$CMDLINE" --cpus 1 --memory 256M --serial stdio ;;
    qemu) trace_one qemu qemu-system-x86_64 -M microvm,rtc=on -enable-kvm -cpu host -smp 1 -m 256M -nodefaults -no-user-config -nographic -serial stdio -no-reboot -kernel /guest/vmlinuz -initrd /guest/initrd -append "$CMDLINE" ;;
    cloud-hypervisor) trace_one cloud-hypervisor /usr/bin/cloud-hypervisor --kernel /guest/vmlinux --initramfs /guest/initrd --cmdline "$CMDLINE" --cpus boot=1 --memory size=256M --console off --serial tty ;;
    esac
done
exit 0
SCRIPT
} >"$script"

target/release/examples/emulated_host "${args[@]}" --timeout 900 "$script" >"$out/exit-sources-host.log" 2>&1 || {
    echo "exit_sources.sh: the emulated host failed; see $out/exit-sources-host.log" >&2
    exit 1
}
grep '^\[host\] EXITS ' "$out/exit-sources-host.log" | sed 's/^\[host\] EXITS //' |
    python3 "$root/bench/symbolize.py" "$map" | tee "$out/exit-sources.txt"
