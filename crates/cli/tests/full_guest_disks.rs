//! Full guests on our disks: the stock Debian kernel's own `virtio_blk` driver against our
//! virtio-blk device, and SeaBIOS booting a Linux guest from a disk image. The scripts run where
//! stock kernels boot: directly on hardware KVM, or inside the emulated KVM host (QEMU TCG with
//! kvm_amd), which is how CI runs them on this PVM machine. Images live in the host's RAM
//! (its initramfs), so they are small and sparse.
//!
//! The guest scripts and the host scripts' helpers are in `support/`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;
use virtkit_testkit::{skip, Assets};

const SEABIOS: &str = "/usr/share/seabios/bios.bin";

/// Runs `script` with this file's guest scripts (see [`run_guest_script`]).
fn run_disk_script(assets: &Assets, test: &str, files: &[(&Path, &str)], script: &str) -> Option<String> {
    run_guest_script(assets, test, &GUEST_SCRIPTS, files, script)
}

/// Test 1: mkfs.ext4, files with checksums, a remount after dropping the caches.
const GUEST_EXT4: &str = r#"
say serial-vda=$(cat /sys/block/vda/serial)
d=$(dev_by_serial vt-ext4) || { say no-disk; exit 1; }
say disk=$d size=$(cat /sys/block/${d#/dev/}/size)
mkfs.ext4 -q -F -L vtdata "$d"; say mkfs=$?
mount -t ext4 "$d" /mnt; say mount=$?
mkdir -p /mnt/dir
# 16 MiB: many requests, some of the largest the driver sends.
dd if=/dev/urandom of=/mnt/big bs=1M count=16 2>/dev/null; say write-big=$?
dd if=/dev/urandom of=/mnt/small bs=1000 count=3 2>/dev/null
i=1
while [ $i -le 50 ]; do echo "file number $i" >/mnt/dir/f$i; i=$((i + 1)); done
for f in big small dir/f7 dir/f50; do say "sum $f $(sum /mnt/$f)"; done
sync; say sync=$?
umount /mnt; say umount=$?
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 -o ro "$d" /mnt; say remount=$?
for f in big small dir/f7 dir/f50; do say "resum $f $(sum /mnt/$f)"; done
umount /mnt
"#;

/// Test 2: a read-only disk next to a writable one.
const GUEST_RO: &str = r#"
rw=$(dev_by_serial vt-rw) || { say no-rw-disk; exit 1; }
ro=$(dev_by_serial vt-ro) || { say no-ro-disk; exit 1; }
say rw-flag=$(cat /sys/block/${rw#/dev/}/ro) ro-flag=$(cat /sys/block/${ro#/dev/}/ro)
say ro-sum-before=$(dd if=$ro bs=64k count=32 2>/dev/null | sum -)
msg=$(dd if=/dev/zero of=$ro bs=4096 count=1 conv=notrunc,fsync 2>&1); say ro-dd=$?
say "ro-dd-message: $(echo "$msg" | grep -m1 'dd:')"
echo overwritten | dd of=$ro bs=512 seek=100 conv=notrunc,fsync 2>/dev/null; say ro-dd-seek=$?
blockdev --setrw $ro; say setrw=$?
dd if=/dev/zero of=$ro bs=4096 count=1 conv=notrunc,fsync 2>/dev/null; say ro-dd-after-setrw=$?
mkfs.ext4 -q -F $ro >/dev/null 2>&1; say ro-mkfs=$?
# The control: the same write on the writable disk works and reaches its image.
echo vt-rw-sector-ok | dd of=$rw bs=512 seek=8 conv=notrunc,fsync 2>/dev/null; say rw-dd=$?
echo 3 >/proc/sys/vm/drop_caches
say ro-sum-after=$(dd if=$ro bs=64k count=32 2>/dev/null | sum -)
"#;

/// Test 3: unload and reload virtio_blk (the device is reset and set up again), twice.
const GUEST_RELOAD: &str = r#"
ko=/lib/modules/$(uname -r)/virtio_blk.ko
[ -f $ko ] || { say no-module; exit 1; }
d=$(dev_by_serial vt-reload) || { say no-disk; exit 1; }
mkfs.ext4 -q -F "$d"; say mkfs=$?
mount -t ext4 "$d" /mnt; say mount=$?
dd if=/dev/urandom of=/mnt/before bs=64k count=64 2>/dev/null
say "sum before $(sum /mnt/before)"
umount /mnt; say umount=$?
for cycle in 1 2; do
    rmmod virtio_blk; say rmmod-$cycle=$?
    n=$(ls -d /sys/block/vd* 2>/dev/null | wc -l); say disks-unloaded-$cycle=$n
    insmod $ko; say insmod-$cycle=$?
    i=0
    until d=$(dev_by_serial vt-reload) && [ -b "$d" ]; do
        i=$((i + 1)); [ $i -le 100 ] || break; sleep 0.1
    done
    say dev-$cycle=$d
    mount -t ext4 "$d" /mnt; say mount-$cycle=$?
    say "sum before-$cycle $(sum /mnt/before)"
    dd if=/dev/urandom of=/mnt/after$cycle bs=64k count=16 2>/dev/null
    say "sum after$cycle $(sum /mnt/after$cycle)"
    umount /mnt; say umount-$cycle=$?
done
e2fsck -fn "$d" >/dev/null 2>&1; say guest-fsck=$?
"#;

/// Test 4: numbered records, each written and fsynced to the raw disk before its `ack`.
const GUEST_DURABLE: &str = r#"
d=$(dev_by_serial vt-durable) || { say no-disk; exit 1; }
say start
n=1
while [ $n -le 100000 ]; do
    printf 'virtkit-record-%06d\n' $n | dd of=$d bs=512 seek=$n conv=notrunc,fsync 2>/dev/null ||
        { say write-failed $n; break; }
    echo "ack $n"
    n=$((n + 1))
done
"#;

/// Test 6 (a VM bundle): what the guest sees of its identity, and a boot count kept in an
/// ext4 file system on its disk (made on the first boot).
const GUEST_BUNDLE: &str = r#"
say uuid=$(cat /sys/class/dmi/id/product_uuid) serial=$(cat /sys/class/dmi/id/product_serial)
if mount -t ext4 /dev/vda /mnt 2>/dev/null; then
    say found=$(cat /mnt/marker)
else
    mkfs.ext4 -q -F /dev/vda && mount -t ext4 /dev/vda /mnt || { say no-fs; exit 1; }
    echo 0 >/mnt/count
fi
n=$(( $(cat /mnt/count) + 1 ))
echo $n >/mnt/count
echo run-$n >/mnt/marker
sync
umount /mnt
say boot=$n
"#;

const GUEST_SCRIPTS: [(&str, &str); 5] = [
    ("ext4", GUEST_EXT4),
    ("ro", GUEST_RO),
    ("reload", GUEST_RELOAD),
    ("durable", GUEST_DURABLE),
    ("bundle", GUEST_BUNDLE),
];

const EXT4_SCRIPT: &str = r#"
truncate -s 128M $W/ext4.img
run_guest ext4 $W/ext4.img,serial=vt-ext4
# The host reads the filesystem the guest left in the image, with its own ext4 code.
for f in big small dir/f7 dir/f50; do
    echo "CASE ext4: host $f $($DEBUGFS -R "cat /$f" $W/ext4.img 2>/dev/null | sha256sum | cut -d' ' -f1)"
done
echo "CASE ext4: host-dir-entries=$($DEBUGFS -R 'ls -p /dir' $W/ext4.img 2>/dev/null | grep -c '/f[0-9]*/')"
$E2FSCK -fn $W/ext4.img >$W/fsck.log 2>&1
echo "CASE ext4: host-fsck=$?"
sed 's/^/CASE ext4: fsck| /' $W/fsck.log
echo "CASE ext4: host-label=$($DEBUGFS -R stats $W/ext4.img 2>/dev/null | sed -n 's/^Filesystem volume name: *//p')"
"#;

/// The guest makes an ext4 filesystem on a blank disk, writes files and records their sums;
/// the host then finds the same files with the same sums in the image with debugfs, and e2fsck
/// finds the filesystem clean.
#[test]
fn ext4_made_and_written_by_the_guest_reads_back_on_the_host() {
    let Some(assets) = prerequisites() else { return };
    let Some(out) = run_disk_script(&assets, "ext4", &[], EXT4_SCRIPT) else {
        return;
    };
    let lines = case_lines(&out, "ext4").join("\n");
    assert_value(&out, "ext4", "exit", "0");
    assert_value(&out, "ext4", "serial-vda", "vt-ext4");
    assert_value(&out, "ext4", "size", &(128u64 << 20 >> 9).to_string());
    for key in [
        "mkfs",
        "mount",
        "write-big",
        "sync",
        "umount",
        "remount",
        "run-exit",
    ] {
        assert_value(&out, "ext4", key, "0");
    }
    let guest = sums(&out, "ext4", "sum");
    let reread = sums(&out, "ext4", "resum");
    let host = sums(&out, "ext4", "host");
    assert_eq!(guest.len(), 4, "the guest's sums:\n{lines}");
    assert_eq!(reread, guest, "read back after a remount:\n{lines}");
    assert_eq!(host, guest, "debugfs on the host reads other contents:\n{lines}");
    assert_value(&out, "ext4", "host-dir-entries", "50");
    assert_value(&out, "ext4", "host-fsck", "0");
    assert_value(&out, "ext4", "host-label", "vtdata");
}

const RO_SCRIPT: &str = r#"
dd if=/dev/urandom of=$W/ro.img bs=64k count=32 2>/dev/null
truncate -s 32M $W/ro.img
truncate -s 16M $W/rw.img
echo "CASE ro: host-ro-prefix=$(dd if=$W/ro.img bs=64k count=32 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "CASE ro: host-image-before=$(sha256sum $W/ro.img | cut -d' ' -f1)"
run_guest ro $W/rw.img,serial=vt-rw $W/ro.img,ro,serial=vt-ro
echo "CASE ro: host-image-after=$(sha256sum $W/ro.img | cut -d' ' -f1)"
echo "CASE ro: host-rw-sector=$(dd if=$W/rw.img bs=512 skip=8 count=1 2>/dev/null | tr -d '\0')"
"#;

/// A disk attached read-only is read-only to Linux (VIRTIO_BLK_F_RO): writes fail, even after
/// `blockdev --setrw`; its image is unchanged while the same write to a writable disk lands.
#[test]
fn a_read_only_disk_refuses_guest_writes_and_keeps_its_image() {
    let Some(assets) = prerequisites() else { return };
    let Some(out) = run_disk_script(&assets, "ro", &[], RO_SCRIPT) else {
        return;
    };
    let lines = case_lines(&out, "ro").join("\n");
    assert_value(&out, "ro", "exit", "0");
    assert_value(&out, "ro", "run-exit", "0");
    assert_value(&out, "ro", "rw-flag", "0");
    assert_value(&out, "ro", "ro-flag", "1");
    for key in ["ro-dd", "ro-dd-seek", "ro-dd-after-setrw", "ro-mkfs"] {
        let v = case_value(&out, "ro", key).unwrap_or_else(|| panic!("no {key}:\n{lines}"));
        assert_ne!(v, "0", "{key}: a write to the read-only disk succeeded:\n{lines}");
    }
    assert_value(&out, "ro", "rw-dd", "0");
    assert_value(&out, "ro", "host-rw-sector", "vt-rw-sector-ok");
    // The guest reads the image's contents, before and after its write attempts.
    let prefix = case_value(&out, "ro", "host-ro-prefix").expect("host sum");
    assert_value(&out, "ro", "ro-sum-before", prefix);
    assert_value(&out, "ro", "ro-sum-after", prefix);
    let before = case_value(&out, "ro", "host-image-before").expect("image sum before");
    assert_eq!(before.len(), 64, "{lines}");
    assert_value(&out, "ro", "host-image-after", before);
}

const RELOAD_SCRIPT: &str = r#"
truncate -s 64M $W/reload.img
run_guest reload $W/reload.img,serial=vt-reload
for f in before after1 after2; do
    echo "CASE reload: host $f $($DEBUGFS -R "cat /$f" $W/reload.img 2>/dev/null | sha256sum | cut -d' ' -f1)"
done
$E2FSCK -fn $W/reload.img >/dev/null 2>&1
echo "CASE reload: host-fsck=$?"
"#;

/// The guest unloads virtio_blk (the driver resets the device) and loads it again, twice; each
/// time the disk comes back, a file written before reads back, new writes land.
#[test]
fn virtio_blk_unloads_and_reloads_and_the_disk_still_works() {
    let Some(assets) = prerequisites() else { return };
    let Some(out) = run_disk_script(&assets, "reload", &[], RELOAD_SCRIPT) else {
        return;
    };
    let lines = case_lines(&out, "reload").join("\n");
    assert_value(&out, "reload", "exit", "0");
    for key in ["mkfs", "mount", "umount", "guest-fsck", "host-fsck", "run-exit"] {
        assert_value(&out, "reload", key, "0");
    }
    let guest = sums(&out, "reload", "sum");
    let before = guest
        .iter()
        .find(|(f, _)| *f == "before")
        .unwrap_or_else(|| panic!("no sum of `before`:\n{lines}"))
        .1;
    for cycle in ["1", "2"] {
        for key in ["rmmod", "insmod", "mount", "umount"] {
            assert_value(&out, "reload", &format!("{key}-{cycle}"), "0");
        }
        assert_value(&out, "reload", &format!("disks-unloaded-{cycle}"), "0");
        let dev = case_value(&out, "reload", &format!("dev-{cycle}")).unwrap_or("");
        assert!(
            dev.starts_with("/dev/vd"),
            "cycle {cycle}: no disk after insmod:\n{lines}"
        );
        let key = format!("before-{cycle}");
        assert!(
            guest.iter().any(|&(f, s)| f == key && s == before),
            "cycle {cycle}: the file written before the reload reads back differently:\n{lines}"
        );
    }
    let host = sums(&out, "reload", "host");
    let want: Vec<(&str, &str)> = guest
        .iter()
        .filter(|(f, _)| ["before", "after1", "after2"].contains(f))
        .copied()
        .collect();
    assert_eq!(want.len(), 3, "{lines}");
    assert_eq!(host, want, "the host reads other contents:\n{lines}");
}

/// How many acknowledged records the host waits for before it kills the VMM.
const DURABLE_ACKS: u32 = 25;

const DURABLE_SCRIPT: &str = r#"
truncate -s 64M $W/durable.img
vk_start dur $VIRTKIT run --kernel $G/vmlinuz --initrd $G/initrd --memory 256M \
    --disk $W/durable.img,serial=vt-durable \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/durable.sh\""
if vk_expect dur "^ack $ACKS" $GUEST_TIMEOUT; then
    kill -9 "$(cat /run/vk/dur.pid)"
    echo "CASE durable: killed"
fi
vk_wait dur 60
echo "CASE durable: exit=$?"
tr -d '\r' <"$(vk_log dur)" >$W/dur.log
sed 's/^/CASE durable: /' $W/dur.log
# Every record the guest saw acknowledged must be in the image.
acked=0; present=0; missing=
for n in $(sed -n 's/^ack \([0-9][0-9]*\)$/\1/p' $W/dur.log); do
    acked=$((acked + 1))
    want=$(printf 'virtkit-record-%06d' $n)
    if dd if=$W/durable.img bs=512 skip=$n count=1 2>/dev/null | grep -q "^$want\$"; then
        present=$((present + 1))
    else
        missing="$missing $n"
    fi
done
echo "CASE durable: acked=$acked present=$present"
echo "CASE durable: missing=${missing# }"
"#;

/// The guest writes numbered records to the raw disk, each fsynced before it prints `ack N`;
/// the host SIGKILLs the VMM after 25 acks: every acknowledged record is in the image.
#[test]
fn every_acknowledged_write_survives_a_sigkill_of_the_vmm() {
    let Some(assets) = prerequisites() else { return };
    let script = format!("ACKS={DURABLE_ACKS}\n{DURABLE_SCRIPT}");
    let Some(out) = run_disk_script(&assets, "durable", &[], &script) else {
        return;
    };
    let lines = case_lines(&out, "durable").join("\n");
    assert!(
        case_lines(&out, "durable").contains(&"VT start"),
        "the guest did not start writing:\n{lines}"
    );
    assert!(
        case_lines(&out, "durable").contains(&"killed"),
        "the guest never acknowledged {DURABLE_ACKS} records:\n{lines}"
    );
    assert!(
        !lines.contains("write-failed"),
        "a write failed in the guest:\n{lines}"
    );
    // Killed by SIGKILL: the shell reports 128 + 9.
    assert_value(&out, "durable", "exit", "137");
    let acked: u32 = case_value(&out, "durable", "acked")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count:\n{lines}"));
    assert!(acked >= DURABLE_ACKS, "{acked} acks:\n{lines}");
    assert_value(&out, "durable", "present", &acked.to_string());
    assert_eq!(
        case_lines(&out, "durable")
            .into_iter()
            .find_map(|l| l.strip_prefix("missing=")),
        Some(""),
        "acknowledged records missing from the image:\n{lines}"
    );
}

/// A BIOS-bootable disk: a FAT filesystem on the whole disk with SYSLINUX in its boot sector,
/// the asset kernel and guest initramfs, written without mounting anything (mtools).
fn syslinux_boot_image(assets: &Assets, dir: &Path) -> Result<PathBuf, String> {
    let tools = ["mkfs.fat", "syslinux", "mcopy"];
    let mut paths = Vec::new();
    for t in tools {
        paths.push(host_tool(t).ok_or_else(|| {
            format!("{t} is not installed (Debian packages dosfstools, syslinux, syslinux-common, mtools)")
        })?);
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cmd:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    };
    let img = dir.join("boot.img");
    let _ = std::fs::remove_file(&img);
    // 24 MiB: the kernel (14 MiB) and the initramfs (3 MiB) with room to spare.
    run(Command::new(&paths[0])
        .args(["-C", "-n", "VTBOOT"])
        .arg(&img)
        .arg("24576"))?;
    run(Command::new(&paths[1]).arg("--install").arg(&img))?;
    let cfg = dir.join("syslinux.cfg");
    std::fs::write(
        &cfg,
        "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  LINUX /vmlinuz\n  \
         INITRD /initrd\n  APPEND console=ttyS0 quiet virtkit.token=from-disk \
         virtkit.run=\"echo VT vda-size=$(cat /sys/block/vda/size)\"\n",
    )
    .unwrap();
    for (src, name) in [
        (cfg.as_path(), "syslinux.cfg"),
        (assets.vmlinuz(), "vmlinuz"),
        (assets.guest_initramfs(), "initrd"),
    ] {
        run(Command::new(&paths[2])
            .arg("-i")
            .arg(&img)
            .arg(src)
            .arg(format!("::/{name}")))?;
    }
    Ok(img)
}

const FIRMWARE_BOOT_SCRIPT: &str = r#"
timeout -s KILL $GUEST_TIMEOUT $VIRTKIT run --firmware $G/bios.bin --memory 256M --disk $G/boot.img </dev/null >$W/fw.raw 2>&1
code=$?
tr -d '\r' <$W/fw.raw >$W/fw.log
sed 's/^/CASE fwboot: /' $W/fw.log
echo "CASE fwboot: exit=$code"
"#;

/// SeaBIOS boots a disk holding SYSLINUX, which loads the stock kernel and the initramfs through
/// int 13h from our virtio-blk; the kernel reaches the init, finds the same disk with its own
/// driver, and the guest powers off.
#[test]
fn seabios_boots_linux_from_a_syslinux_disk_to_its_init() {
    let Some(assets) = prerequisites() else { return };
    if !Path::new(SEABIOS).exists() {
        skip("SeaBIOS is not installed (Debian package seabios)");
        return;
    }
    let scratch = Scratch::new("fwimage");
    let img = match syslinux_boot_image(&assets, &scratch.0) {
        Ok(img) => img,
        Err(e) => {
            skip(&e);
            return;
        }
    };
    let size = std::fs::metadata(&img).unwrap().len();
    let files = [(Path::new(SEABIOS), "bios.bin"), (img.as_path(), "boot.img")];
    let Some(out) = run_disk_script(&assets, "fwboot", &files, FIRMWARE_BOOT_SCRIPT) else {
        return;
    };
    let lines = case_lines(&out, "fwboot").join("\n");
    assert!(lines.contains("SeaBIOS (version"), "no SeaBIOS banner:\n{lines}");
    assert!(lines.contains("SYSLINUX"), "SYSLINUX did not start:\n{lines}");
    assert!(
        lines.contains("VIRTKIT-GUEST: init"),
        "the guest did not reach its init:\n{lines}"
    );
    assert_value(&out, "fwboot", "token", "from-disk");
    assert_value(&out, "fwboot", "vda-size", &(size / 512).to_string());
    assert!(lines.contains("VIRTKIT-GUEST: poweroff"), "{lines}");
    assert_value(&out, "fwboot", "exit", "0");
}

/// The VM manager with a stock Linux guest: `create --kernel --initrd --cmdline --from`, a
/// detached run whose console is in `logs`, a clean `stop` through the ACPI power button
/// (the guest's acpid powers off), a second run that finds what the first wrote, a clone with
/// a new SMBIOS identity that finds the same data, and delete.
const BUNDLE_SCRIPT: &str = r#"
export VIRTKIT_HOME=$W/home
wait_log() { # NAME TEXT: wait up to 150 s for TEXT in the VM's console log
    end=$(($(date +%s) + 150))
    until $VIRTKIT logs $1 2>/dev/null | grep -F -- "$2" >/dev/null; do
        if [ $(date +%s) -ge $end ]; then
            echo "CASE bundle: timeout $1 $2"
            $VIRTKIT logs $1 | tail -n 30 | sed "s/^/CASE bundle: $1 console: /"
            $VIRTKIT logs $1 --vmm | tail -n 30 | sed "s/^/CASE bundle: $1 vmm: /"
            return 1
        fi
        sleep 0.5
    done
}
show() { $VIRTKIT logs $1 | tr -d '\r' | grep '^VT ' | sed "s/^/CASE bundle: $1 /"; }
truncate -s 48M $W/rootfs.img
$VIRTKIT create k1 --kernel $G/vmlinuz --initrd $G/initrd --from $W/rootfs.img --disk-size 64M \
    --cpus 1 --memory 256M --network none \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/bundle.sh\" virtkit.action=wait" 2>&1
echo "CASE bundle: create=$?"
$VIRTKIT run k1 --detach; echo "CASE bundle: run1=$?"
wait_log k1 "VT boot="
show k1
echo "CASE bundle: get $($VIRTKIT get k1 --format json | tr -d ' \n')"
$VIRTKIT stop k1 --timeout 60; echo "CASE bundle: stop1=$?"
$VIRTKIT logs k1 | grep -c "VIRTKIT-GUEST: acpi-power-button" | sed 's/^/CASE bundle: power-button-lines=/'
$VIRTKIT run k1 --detach; echo "CASE bundle: run2=$?"
wait_log k1 "VT boot="
show k1
$VIRTKIT stop k1 --timeout 60; echo "CASE bundle: stop2=$?"
$VIRTKIT clone k1 k2; echo "CASE bundle: clone=$?"
# One at a time: two nested guests at once overflow a kernel stack in the emulated host's
# kvm_amd (QEMU TCG); running clones side by side is tested on this host's KVM with SeaBIOS.
$VIRTKIT run k2 --detach; echo "CASE bundle: run3=$?"
wait_log k2 "VT boot="
show k2
echo "CASE bundle: list $($VIRTKIT list --format json | tr -d ' \n')"
echo "CASE bundle: get2 $($VIRTKIT get k2 --format json | tr -d ' \n')"
$VIRTKIT stop k2 --timeout 60; echo "CASE bundle: stop3=$?"
$VIRTKIT delete k2; echo "CASE bundle: delete=$?"
echo "CASE bundle: left=$(ls $VIRTKIT_HOME/vms | tr '\n' ' ')"
"#;

#[test]
fn a_linux_vm_bundle_is_created_run_detached_stopped_cleanly_cloned_and_deleted() {
    let Some(assets) = prerequisites() else { return };
    let Some(out) = run_disk_script(&assets, "bundle", &[], BUNDLE_SCRIPT) else {
        return;
    };
    let lines = case_lines(&out, "bundle").join("\n");
    for key in [
        "create", "run1", "stop1", "run2", "stop2", "clone", "run3", "stop3", "delete",
    ] {
        assert_value(&out, "bundle", key, "0");
    }
    // The guest's identity is the bundle's machine id, the same on every run.
    let get: serde_json::Value = serde_json::from_str(
        case_lines(&out, "bundle")
            .iter()
            .find_map(|l| l.strip_prefix("get "))
            .expect(&lines),
    )
    .unwrap();
    let id = get["machine_id"].as_str().unwrap();
    let k1_uuids: Vec<&str> = case_lines(&out, "bundle")
        .into_iter()
        .filter_map(|l| l.strip_prefix("k1 VT uuid="))
        .collect();
    assert_eq!(k1_uuids.len(), 2, "{lines}");
    for l in &k1_uuids {
        assert!(
            l.starts_with(&format!("{id} serial={}", get["serial_number"].as_str().unwrap())),
            "{l}\n{lines}"
        );
    }
    // What the first run wrote, the second finds; the clone starts from the disk as it was.
    assert!(lines.contains("k1 VT boot=1"), "{lines}");
    assert!(lines.contains("k1 VT found=run-1"), "{lines}");
    assert!(lines.contains("k1 VT boot=2"), "{lines}");
    assert!(lines.contains("k2 VT found=run-2"), "{lines}");
    assert!(lines.contains("k2 VT boot=3"), "{lines}");
    // The stop was the guest's own shutdown, through acpid.
    let presses: u32 = case_value(&out, "bundle", "power-button-lines")
        .unwrap()
        .parse()
        .unwrap();
    assert!(presses >= 1, "{lines}");
    // The clone has its own identity.
    let get2: serde_json::Value = serde_json::from_str(
        case_lines(&out, "bundle")
            .iter()
            .find_map(|l| l.strip_prefix("get2 "))
            .expect(&lines),
    )
    .unwrap();
    assert_ne!(get2["machine_id"], get["machine_id"]);
    assert_ne!(get2["mac_address"], get["mac_address"]);
    let k2_uuid = case_lines(&out, "bundle")
        .into_iter()
        .find_map(|l| l.strip_prefix("k2 VT uuid="))
        .expect(&lines);
    assert!(
        k2_uuid.starts_with(get2["machine_id"].as_str().unwrap()),
        "{k2_uuid}"
    );
    let list: serde_json::Value = serde_json::from_str(
        case_lines(&out, "bundle")
            .iter()
            .find_map(|l| l.strip_prefix("list "))
            .expect(&lines),
    )
    .unwrap();
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["stopped", "running"], "{lines}");
    assert_eq!(case_value(&out, "bundle", "left"), Some("k1"), "{lines}");
}
