//! Virtio devices in machine state files, on the host's KVM with SeaBIOS: an MBR program
//! reading or writing its virtio-blk disk is paused and saved between two of its requests
//! (SeaBIOS's driver polls the used ring, so a request may be in flight in the device when
//! the vCPU parks), restored into a new VM of the same configuration and resumed; it finishes
//! with the right sums and sectors, which it can only do if the queue goes on from the
//! indices it was saved at. An entropy device and a console ride along (SeaBIOS does not drive
//! them: they are saved as never started, with the BARs SeaBIOS gave them).

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{build, start, Running};
use virtkit::{
    ConsoleDeviceConfiguration, ConsolePortConfiguration, EntropyDeviceConfiguration, StopReason,
    StorageDeviceConfiguration, VirtualMachineConfiguration, VmState,
};
use virtkit_test_guests::mbr::{sector_sum, write_pattern, READ_DISK_BYTES, READ_LBAS, WRITE_LBAS};
use virtkit_test_guests::output::{mbr_read_sum, mbr_write, ReadKind, WriteResult};
use virtkit_test_guests::Guest;

const WAIT: Duration = Duration::from_secs(60);

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("virtkit-virtio-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A sector whose bytes depend on its LBA.
fn known_sector(lba: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    for (i, b) in s.iter_mut().enumerate() {
        *b = (lba.wrapping_mul(31) as u8) ^ (i as u8).wrapping_mul(7);
    }
    s
}

/// A sparse disk of `size` bytes with `guest` in its first sector and `sectors` in place.
fn disk(dir: &Dir, size: u64, guest: Guest, sectors: &[(u64, [u8; 512])]) -> PathBuf {
    let path = dir.0.join("disk.img");
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    f.write_all(guest.bytes()).unwrap();
    for (lba, data) in sectors {
        f.seek(SeekFrom::Start(lba * 512)).unwrap();
        f.write_all(data).unwrap();
    }
    path
}

fn config(disk: &Path) -> VirtualMachineConfiguration {
    let mut config =
        VirtualMachineConfiguration::firmware(1, 128 << 20, PathBuf::from(virtkit_testkit::SEABIOS))
            .with_storage(StorageDeviceConfiguration::disk_image(disk.to_owned()))
            .with_entropy(EntropyDeviceConfiguration::default());
    config.console_devices.push(ConsoleDeviceConfiguration {
        ports: vec![ConsolePortConfiguration::console(None)],
    });
    config
}

/// Boots `config`, waits for `line`, pauses and saves; returns the output so far and the
/// state file, the first VM stopped (its disk free for the next).
fn saved_after(config: VirtualMachineConfiguration, line: &str, path: &Path) -> String {
    let run: Running = start(config);
    run.console.wait_for(line, WAIT);
    run.vm.pause().unwrap();
    let saved = std::time::Instant::now();
    run.vm.save_machine_state(path).unwrap();
    eprintln!("saved in {:?}", saved.elapsed());
    assert_eq!(run.vm.state(), VmState::Paused);
    std::thread::sleep(Duration::from_millis(100));
    let before = run.console.text();
    run.vm.stop().unwrap();
    run.vm.wait_timeout(WAIT).unwrap();
    before
}

/// Restores `path` into a new VM of `config`, resumes it and waits for the guest's power-off;
/// returns what it printed after the restore.
fn restored_until_power_off(config: VirtualMachineConfiguration, path: &Path, before: &str) -> String {
    let mut restored = build(config);
    restored.vm.restore_machine_state(path).unwrap();
    assert_eq!(restored.vm.state(), VmState::Paused);
    restored.vm.resume().unwrap();
    let reason = restored.vm.wait_timeout(WAIT);
    let after = restored.console.text();
    assert_eq!(
        reason,
        Some(StopReason::GuestPoweredOff),
        "before the save:\n{before}\nafter the restore:\n{after}"
    );
    assert!(!after.contains("SeaBIOS (version"), "it started over:\n{after}");
    after
}

#[test]
fn an_mbr_program_reading_its_disk_saved_mid_way_finishes_with_the_right_sums() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    let dir = Dir::new("read");
    let sectors: Vec<(u64, [u8; 512])> = READ_LBAS
        .iter()
        .map(|&l| (u64::from(l), known_sector(u64::from(l))))
        .collect();
    let disk = disk(&dir, READ_DISK_BYTES, Guest::MbrRead, &sectors);
    let path = dir.0.join("state.vksave");
    let first = mbr_read_sum(ReadKind::Extended, 1, sector_sum(&sectors[0].1));
    let before = saved_after(config(&disk), &first, &path);
    assert!(!before.contains("mbr-read done"), "saved too late:\n{before}");

    let after = restored_until_power_off(config(&disk), &path, &before);
    let whole = format!("{before}{after}");
    for (lba, data) in &sectors {
        let line = mbr_read_sum(ReadKind::Extended, *lba as u32, sector_sum(data));
        assert!(
            whole.contains(&line),
            "missing `{line}`:\n{before}\n--- restored ---\n{after}"
        );
    }
    assert!(after.contains("mbr-read done"), "{after}");
    assert!(!whole.contains("error="), "{before}\n--- restored ---\n{after}");
}

#[test]
fn an_mbr_program_writing_its_disk_saved_mid_way_leaves_every_sector_written() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    let dir = Dir::new("write");
    let disk = disk(&dir, 64 << 20, Guest::MbrWrite, &[]);
    let path = dir.0.join("state.vksave");
    let first = mbr_write(WRITE_LBAS[0], WriteResult::Ok);
    let before = saved_after(config(&disk), &first, &path);
    assert!(!before.contains("mbr-write done"), "saved too late:\n{before}");

    let after = restored_until_power_off(config(&disk), &path, &before);
    let whole = format!("{before}{after}");
    for lba in WRITE_LBAS {
        let line = mbr_write(lba, WriteResult::Ok);
        assert!(
            whole.contains(&line),
            "missing `{line}`:\n{before}\n--- restored ---\n{after}"
        );
    }
    assert!(after.contains("mbr-write done"), "{after}");
    let image = std::fs::read(&disk).unwrap();
    for lba in WRITE_LBAS {
        let at = lba as usize * 512;
        assert_eq!(
            &image[at..at + 512],
            &write_pattern(lba)[..],
            "LBA {lba} in the image"
        );
    }
}
