#!/usr/bin/env bash
# The main job, from a fresh machine: install what is needed, build virtkit, build the test
# guests and assets, say what this host's KVM can run, and boot guests with `virtkit run`.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing packages and building (release)"
scripts/install-deps.sh
cargo build --release --quiet -p virtkit-test-guests
VK=$(scripts/build-release.sh --quiet)   # the static PIE (see the script)
scripts/assets.sh --quiet >/dev/null
guests=$(dirname "$(ls -t target/release/build/virtkit-test-guests-*/out/hello.elf | head -n 1)")
assets=.cache/assets/current

echo; echo "== virtkit doctor"
"$VK" doctor || true

echo; echo "== virtkit run: a small PVH guest that says hello and powers off through ACPI"
echo "\$ virtkit run --kernel hello.elf --memory 64M"
"$VK" run --kernel "$guests/hello.elf" --memory 64M </dev/null; echo "(exit $?)"

echo; echo "== virtkit run: 4 vCPUs brought up by the guest with INIT-SIPI-SIPI"
echo "\$ virtkit run --kernel smp.elf --cpus 4 --memory 64M"
"$VK" run --kernel "$guests/smp.elf" --cpus 4 --memory 64M </dev/null; echo "(exit $?)"

cmdline="console=ttyS0 quiet virtkit.token=hello-from-the-readme virtkit.action=poweroff"
if "$VK" doctor --json | grep -q '"kvm": "hardware KVM"'; then
    echo; echo "== virtkit run: the stock Debian kernel and a busybox initramfs, to init and power-off"
    "$VK" run --kernel "$assets/vmlinuz" --initrd "$assets/guest-initramfs.cpio.gz" --cpus 2 --memory 512M \
        --cmdline "$cmdline" </dev/null; echo "(exit $?)"
else
    echo; echo "== this host's KVM is PVM: a stock kernel stops in early boot; virtkit says why"
    echo "\$ virtkit run --kernel vmlinux --memory 128M --cmdline 'console=ttyS0 earlyprintk=ttyS0'"
    set +e
    "$VK" run --kernel "$assets/vmlinux" --memory 128M --cmdline "console=ttyS0 earlyprintk=ttyS0" </dev/null | tail -n 3
    echo "(exit ${PIPESTATUS[0]})"
    set -e
    echo; echo "== so the stock kernel boots to init with virtkit inside the emulated KVM host (QEMU TCG + kvm_amd)"
    script=$(mktemp)
    cat >"$script" <<SCRIPT
/usr/bin/virtkit run --kernel /guest/vmlinuz --initrd /guest/initramfs.cpio.gz --cpus 2 --memory 256M \
    --cmdline "$cmdline" </dev/null
echo "virtkit exit code: \$?"
SCRIPT
    cargo run --release --quiet -p virtkit-testkit --example emulated_host -- \
        --binary "$VK:/usr/bin/virtkit" --file "$assets/vmlinuz:/guest/vmlinuz" \
        --file "$assets/guest-initramfs.cpio.gz:/guest/initramfs.cpio.gz" "$script" 2>&1 \
        | grep -E "VIRTKIT-GUEST|virtkit exit code|virtkit:" || true
    rm -f "$script"
fi

echo; echo "== named VMs: create from a disk image, run in the background, control, clone, delete"
# A private home so the demo never touches your VMs; the disk holds the mbr_session program,
# which SeaBIOS boots: it counts its boots on the disk, prints its SMBIOS UUID and ticks.
export VIRTKIT_HOME=$(mktemp -d)
disk="$VIRTKIT_HOME/session.img"
cp "$guests/mbr_session.mbr" "$disk"
truncate -s 8M "$disk"
demo() { echo "\$ virtkit $*"; "$VK" "$@"; }
demo create web --from "$disk" --disk-size 64M --cpus 1 --memory 128M
demo run web --detach
for _ in $(seq 100); do "$VK" logs web | grep -q "session: ready" && break; sleep 0.1; done
demo list
echo "\$ virtkit logs web | grep session:"
"$VK" logs web | tr -d '\r' | grep "session:" | head -n 5 || true
demo pause web
demo resume web
demo stop web --timeout 10
demo clone web web-2
demo get web-2
demo delete web-2
demo delete web
rm -rf "$VIRTKIT_HOME"
