//! A display in machine state files, on the host's KVM with SeaBIOS and the bochs-display VGA
//! BIOS: the `mbr_ticker` program rewrites a counter through int 10h (the VGA BIOS draws it into
//! the framebuffer) every ~20 ms of the RTC's periodic interrupt. Paused and saved, then
//! restored into a new VM of the same configuration, the screen is the saved one pixel for
//! pixel before the guest runs again; resumed, the counter moves on in the same text row, which
//! needs the restored mode, the framebuffer's BAR where the guest put it, its video memory and
//! the RTC's interrupt.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{build, start};
use virtkit::{
    GraphicsDeviceConfiguration, StorageDeviceConfiguration, VirtualMachineConfiguration, VmState,
};
use virtkit_devices::display::Frame;
use virtkit_test_guests::Guest;

const WAIT: Duration = Duration::from_secs(60);

fn config(disk: &std::path::Path) -> VirtualMachineConfiguration {
    let mut config =
        VirtualMachineConfiguration::firmware(1, 128 << 20, PathBuf::from(virtkit_testkit::SEABIOS))
            .with_storage(StorageDeviceConfiguration::disk_image(disk.to_owned()));
    config.add_display(GraphicsDeviceConfiguration {
        width: 640,
        height: 480,
        option_rom: None,
    });
    config
}

fn frame(vm: &virtkit::VirtualMachine) -> Frame {
    let (display, _, _) = vm.display().expect("the VM has a display");
    display.frame().expect("the VGA BIOS set a mode")
}

/// Waits until the screen differs from `from`; returns what it shows then.
fn changed_from(vm: &virtkit::VirtualMachine, from: &Frame, what: &str) -> Frame {
    let started = Instant::now();
    loop {
        let now = frame(vm);
        if now != *from {
            return now;
        }
        assert!(started.elapsed() < WAIT, "the screen did not change: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first and last pixel rows where two frames of one size differ.
fn differing_rows(a: &Frame, b: &Frame) -> Option<(usize, usize)> {
    let line = a.width as usize * 4;
    let rows: Vec<usize> = (0..a.height as usize)
        .filter(|y| a.rgba[y * line..(y + 1) * line] != b.rgba[y * line..(y + 1) * line])
        .collect();
    Some((*rows.first()?, *rows.last()?))
}

#[test]
fn a_restored_display_shows_the_saved_screen_and_the_guest_draws_on() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    if !std::path::Path::new(virtkit::DISPLAY_OPTION_ROM).is_file() {
        virtkit_testkit::skip(&format!(
            "{} is missing (Debian package seabios)",
            virtkit::DISPLAY_OPTION_ROM
        ));
        return;
    }
    let dir = std::env::temp_dir().join(format!("virtkit-display-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    let mut bytes = Guest::MbrTicker.bytes().to_vec();
    bytes.resize(8 << 20, 0);
    std::fs::write(&disk, bytes).unwrap();
    let path = dir.join("state.vksave");

    let run = start(config(&disk));
    run.console.wait_for("ticker: ready", WAIT);
    let ready = frame(&run.vm);
    let ticking = changed_from(&run.vm, &ready, "the counter before the save");
    let (first, last) = differing_rows(&ready, &ticking).unwrap();
    assert!(
        last - first < 16,
        "one text row changes per tick: rows {first}..={last}"
    );
    run.vm.pause().unwrap();
    let saved = frame(&run.vm);
    let summary = run.vm.save_machine_state(&path).unwrap();
    eprintln!("saved: {summary:?}");
    assert_eq!(frame(&run.vm), saved, "a save changes nothing on the screen");
    run.vm.stop().unwrap();
    run.vm.wait_timeout(WAIT).unwrap();
    drop(run); // Its disk's lock goes with it.

    let mut restored = build(config(&disk));
    restored.vm.restore_machine_state(&path).unwrap();
    assert_eq!(restored.vm.state(), VmState::Paused);
    let shown = frame(&restored.vm);
    assert_eq!((shown.width, shown.height), (640, 480));
    let differing = shown
        .rgba
        .chunks_exact(4)
        .zip(saved.rgba.chunks_exact(4))
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing, 0,
        "the restored screen differs from the saved one in {differing} pixels"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(frame(&restored.vm), saved, "nothing draws before resume");

    restored.vm.resume().unwrap();
    let moved_on = changed_from(&restored.vm, &saved, "the counter after the restore");
    let (first, last) = differing_rows(&saved, &moved_on).unwrap();
    assert!(
        last - first < 16,
        "only the counter's text row changes after the restore: rows {first}..={last}"
    );
    let again = changed_from(&restored.vm, &moved_on, "the counter keeps ticking");
    assert_ne!(again, moved_on);
    let console = restored.console.text();
    assert!(
        !console.contains("SeaBIOS (version"),
        "it started over:\n{console}"
    );
    restored.vm.stop().unwrap();
    restored.vm.wait_timeout(WAIT).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
