//! SeaBIOS, a real third-party firmware, boots on our PC platform and drives our virtio-blk
//! disks with its own virtio driver; the project's MBR programs (crates/test-guests) read and
//! write sectors through BIOS int 13h and print what they saw on COM1. Runs on any KVM.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use virtkit_test_guests::mbr::{
    id_marker, sector_sum, session_boots, write_pattern, PAM_PROBE_ADDRESS, PAM_SEGMENT_STARTS,
    READ_DISK_BYTES, READ_LBAS, SESSION_MIN_DISK_BYTES, SESSION_STATE_LBA, WRITE_LBAS,
};
use virtkit_test_guests::output::{
    mbr_drive, mbr_read_sum, mbr_write, parse_pam_registers, parse_pam_writes, parse_session_boot,
    parse_session_serial, parse_session_tick, parse_session_uuid, IsaBridgeInfo, PamProbe, ReadKind,
    SessionSave, WriteResult, MBR_PAM_DONE, SESSION_POWER_BUTTON, SESSION_READY, SESSION_SMBIOS_NONE,
};
use virtkit_test_guests::Guest;

const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");
use virtkit_testkit::SEABIOS;

fn seabios_available() -> bool {
    virtkit_testkit::require_kvm_and_seabios()
}

struct Disks(PathBuf);

impl Disks {
    fn new(name: &str) -> Disks {
        let dir = std::env::temp_dir().join(format!("virtkit-fwdisk-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Disks(dir)
    }

    /// A sparse disk of `size` bytes with `mbr` in sector 0 and `sectors` written at their LBAs.
    fn disk(&self, name: &str, size: u64, mbr: Option<Guest>, sectors: &[(u64, [u8; 512])]) -> PathBuf {
        let path = self.0.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        if let Some(guest) = mbr {
            f.write_all(guest.bytes()).unwrap();
        }
        for (lba, data) in sectors {
            f.seek(SeekFrom::Start(lba * 512)).unwrap();
            f.write_all(data).unwrap();
        }
        path
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn known_sector(lba: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    for (i, b) in s.iter_mut().enumerate() {
        *b = (lba.wrapping_mul(31) as u8) ^ (i as u8).wrapping_mul(7);
    }
    s
}

fn boot(disks: &[String]) -> Output {
    let mut args = vec![
        "run".to_owned(),
        "--firmware".into(),
        SEABIOS.into(),
        "--memory".into(),
        "128M".into(),
    ];
    for d in disks {
        args.push("--disk".into());
        args.push(d.clone());
    }
    let out = Command::new("timeout")
        .arg("120")
        .arg(VIRTKIT)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(124),
        "the boot did not finish in 120 s:\n{}",
        text(&out)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn contents(path: &Path) -> Vec<u8> {
    let mut data = Vec::new();
    std::fs::File::open(path).unwrap().read_to_end(&mut data).unwrap();
    // The images are small or sparse; comparing whole contents is enough and needs no crate.
    data
}

#[test]
fn seabios_reads_known_sectors_anywhere_on_a_16_gib_sparse_disk() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("read");
    let sectors: Vec<(u64, [u8; 512])> = READ_LBAS
        .iter()
        .map(|&l| (u64::from(l), known_sector(u64::from(l))))
        .collect();
    let disk = disks.disk("read.img", READ_DISK_BYTES, Some(Guest::MbrRead), &sectors);
    let out = boot(&[disk.display().to_string()]);
    let console = text(&out);
    assert_eq!(out.status.code(), Some(0), "{console}");
    assert!(
        console.contains("SeaBIOS (version"),
        "the BIOS console is on COM1:\n{console}"
    );
    for (lba, data) in &sectors {
        let line = mbr_read_sum(ReadKind::Extended, *lba as u32, sector_sum(data));
        assert!(console.contains(&line), "missing `{line}`:\n{console}");
    }
    // CHS reaches the sectors inside its 8 GiB geometry, extended int 13h the ones beyond.
    for lba in [1u64, 2, 1000, 1 << 21] {
        let line = mbr_read_sum(ReadKind::Chs, lba as u32, sector_sum(&known_sector(lba)));
        assert!(console.contains(&line), "missing `{line}`:\n{console}");
    }
    assert!(console.contains("mbr-read done"));
}

#[test]
fn sectors_the_guest_writes_are_in_the_image() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("write");
    let disk = disks.disk("write.img", 64 << 20, Some(Guest::MbrWrite), &[]);
    let out = boot(&[disk.display().to_string()]);
    let console = text(&out);
    assert_eq!(out.status.code(), Some(0), "{console}");
    let image = contents(&disk);
    for lba in WRITE_LBAS {
        assert!(console.contains(&mbr_write(lba, WriteResult::Ok)), "{console}");
        let at = lba as usize * 512;
        assert_eq!(
            &image[at..at + 512],
            &write_pattern(lba)[..],
            "LBA {lba} in the image"
        );
    }
}

/// A qcow2 layer over a raw base: SeaBIOS boots the base's boot sector through the layer, the
/// guest's writes land in the layer (read back through the backend, and `qemu-img check`ed where
/// it is installed), and the base is not changed by one byte.
#[test]
fn sectors_the_guest_writes_to_a_qcow2_layer_are_in_the_layer_not_its_base() {
    use virtkit_devices::block::qcow2::Qcow2Disk;
    use virtkit_devices::block::{CacheMode, DiskBackend, SyncMode};
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("qcow2");
    let base = disks.disk("base.img", 64 << 20, Some(Guest::MbrWrite), &[]);
    let before = contents(&base);
    let layer = disks.0.join("layer.qcow2");
    virtkit_disk::create_qcow2_layer(
        &layer,
        64 << 20,
        Some(("base.img", virtkit_disk::ImageFormat::Raw)),
    )
    .unwrap();
    let out = boot(&[format!("{},format=qcow2", layer.display())]);
    let console = text(&out);
    assert_eq!(out.status.code(), Some(0), "{console}");
    let mut image = Qcow2Disk::open(&layer, true, CacheMode::Cached, SyncMode::Full).unwrap();
    for lba in WRITE_LBAS {
        assert!(console.contains(&mbr_write(lba, WriteResult::Ok)), "{console}");
        let mut sector = [0u8; 512];
        image.read_at(u64::from(lba) * 512, &mut sector).unwrap();
        assert_eq!(sector, write_pattern(lba), "LBA {lba} through the layer");
    }
    drop(image);
    assert!(before == contents(&base), "the base image changed");
    if let Ok(check) = Command::new("qemu-img").arg("check").arg(&layer).output() {
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    // A raw file given as qcow2 is refused before the VM starts.
    let out = boot(&[format!("{},format=qcow2", base.display())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is not a qcow2 image"), "{}", text(&out));
}

#[test]
fn a_read_only_disk_fails_the_guest_write_and_keeps_the_image() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("ro");
    let disk = disks.disk("ro.img", 64 << 20, Some(Guest::MbrWrite), &[]);
    let before = contents(&disk);
    let out = boot(&[format!("{},ro", disk.display())]);
    let console = text(&out);
    assert_eq!(out.status.code(), Some(0), "{console}");
    for lba in WRITE_LBAS {
        let line = format!("write lba={lba} error=");
        assert!(
            console.contains(&line),
            "the write must fail in the guest:\n{console}"
        );
    }
    assert!(before == contents(&disk), "a read-only disk's image changed");
}

#[test]
fn seabios_enumerates_three_disks() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("three");
    let a = disks.disk("a.img", 64 << 20, Some(Guest::MbrDrives), &[]);
    let b = disks.disk("b.img", 1 << 30, None, &[]);
    let c = disks.disk("c.img", 16 << 30, None, &[]);
    let out = boot(&[a, b, c].map(|p| p.display().to_string()));
    let console = text(&out);
    assert_eq!(out.status.code(), Some(0), "{console}");
    for (drive, bytes) in [(0x80u8, 64u64 << 20), (0x81, 1 << 30), (0x82, 16 << 30)] {
        let line = mbr_drive(drive, bytes / 512);
        assert!(console.contains(&line), "missing `{line}`:\n{console}");
    }
    assert!(console.contains("drives=3"), "{console}");
}

/// The RTC's periodic interrupt, as SeaBIOS's int 15h AH=86h wait and DOS-era programs use it: a
/// real-mode handler of IRQ 8 runs 64 times at 1024 Hz and sees status C's IRQF and PF. Without
/// the interrupt the program halts until the 120 s limit.
#[test]
fn the_rtc_periodic_interrupt_reaches_a_real_mode_handler() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("rtc");
    let disk = disks.disk("a.img", 1 << 20, Some(Guest::MbrRtc), &[]);
    let out = boot(&[disk.display().to_string()]);
    let console = text(&out);
    assert_eq!(out.status.code(), Some(0), "{console}");
    assert!(console.contains("rtc: periodic=64 status-c=c0"), "{console}");
}

/// SeaBIOS's whole run, to the MBR program's power-off, in few exits to the VMM: the i8042 answers
/// its controller and keyboard self-tests (unanswered, SeaBIOS polls port 0x64 until each test
/// times out: thousands of exits), and no device is probed in a loop.
#[test]
fn seabios_boots_in_few_exits_with_the_i8042_answering_its_self_tests() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("exits");
    let disk = disks.disk("a.img", 1 << 20, Some(Guest::MbrId), &[]);
    let out = Command::new("timeout")
        .arg("120")
        .arg(VIRTKIT)
        .args([
            "run",
            "--firmware",
            SEABIOS,
            "--memory",
            "128M",
            "--stats",
            "json",
            "--disk",
        ])
        .arg(&disk)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mbr-id done"),
        "{}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let json = err
        .lines()
        .find(|l| l.starts_with("{\"total\""))
        .unwrap_or_else(|| panic!("no --stats line:\n{err}"));
    let stats: virtkit::ExitStatistics = serde_json::from_str(json).unwrap();
    let i8042: u64 = stats
        .devices
        .iter()
        .filter(|d| d.device == "i8042")
        .map(|d| d.reads + d.writes)
        .sum();
    // 14 when measured (commands, answers, status reads).
    assert!(
        (1..100).contains(&i8042),
        "{i8042} i8042 exits:\n{}",
        stats.to_table(20)
    );
    // 1,722 when measured; PCI enumeration (~640) and the RTC (~430) are the most.
    assert!(stats.total.total < 5_000, "{}", stats.to_table(20));
}

#[test]
fn boot_order_picks_the_disk_asked_for() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("order");
    let marker = |m: &str| {
        let mut s = [0u8; 512];
        s[..m.len()].copy_from_slice(m.as_bytes());
        s
    };
    let x = disks.disk("x.img", 64 << 20, Some(Guest::MbrId), &[(1, marker("disk-x"))]);
    let y = disks.disk("y.img", 64 << 20, Some(Guest::MbrId), &[(1, marker("disk-y"))]);
    let (xs, ys) = (x.display().to_string(), y.display().to_string());
    let first = text(&boot(&[xs.clone(), ys.clone()]));
    assert!(
        first.contains(&format!("boot-disk={}", id_marker(b"disk-x"))),
        "{first}"
    );
    let second = text(&boot(&[ys, xs]));
    assert!(second.contains("boot-disk=disk-y"), "{second}");
}

#[test]
fn no_bootable_disk_ends_as_a_reset_after_seabios_says_so() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("blank");
    let blank = disks.disk("blank.img", 64 << 20, None, &[]);
    let out = boot(&[blank.display().to_string()]);
    let console = text(&out);
    assert_eq!(out.status.code(), Some(3), "{console}");
    assert!(console.contains("No bootable device"), "{console}");
}

#[test]
fn bad_firmware_and_disk_input_are_clear_errors() {
    let disks = Disks::new("bad");
    let run = |args: &[&str]| -> Output {
        Command::new(VIRTKIT)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let missing_fw = run(&["run", "--firmware", "/nonexistent/bios.bin"]);
    assert_eq!(missing_fw.status.code(), Some(1));
    assert!(text(&missing_fw)
        .contains("boot_loader.path: the firmware image /nonexistent/bios.bin does not exist"));

    let odd = disks.disk("odd.bin", 1000, None, &[]);
    let wrong_size = run(&["run", "--firmware", odd.to_str().unwrap()]);
    assert_eq!(wrong_size.status.code(), Some(1));
    assert!(
        text(&wrong_size).contains("must be a multiple of 4 KiB"),
        "{}",
        text(&wrong_size)
    );

    let missing_disk = run(&["run", "--firmware", SEABIOS, "--disk", "/nonexistent/disk.img"]);
    assert_eq!(missing_disk.status.code(), Some(1));
    assert!(text(&missing_disk)
        .contains("storage_devices[0].path: the disk /nonexistent/disk.img does not exist"));

    let not_a_disk = run(&["run", "--firmware", SEABIOS, "--disk", disks.0.to_str().unwrap()]);
    assert_eq!(not_a_disk.status.code(), Some(1));
    assert!(
        text(&not_a_disk).contains("is a directory, neither a regular file nor a block device"),
        "{}",
        text(&not_a_disk)
    );

    let bad_option = run(&["run", "--firmware", SEABIOS, "--disk", "x.img,turbo"]);
    assert_eq!(bad_option.status.code(), Some(2));
    assert!(text(&bad_option).contains("`turbo` is not a disk option"));
}

/// What one boot of [`Guest::MbrSession`] showed.
struct SessionRun {
    code: Option<i32>,
    /// The guest's `session: ...` lines, in order.
    lines: Vec<String>,
    /// Everything virtkit printed, for failure messages.
    console: String,
}

/// Boots SeaBIOS with `disk` (a `--disk` argument), waits for `session: ready` and two ticks,
/// sends SIGTERM (virtkit presses the ACPI power button) and waits for virtkit to end; kills it
/// and fails if that all takes more than 120 s.
fn session_until_power_button(disk: &str) -> SessionRun {
    let mut child = Command::new(VIRTKIT)
        .args(["run", "--firmware", SEABIOS, "--memory", "128M", "--disk", disk])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (line_tx, line_rx) = channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut console, mut lines) = (String::new(), Vec::new());
    let (mut ready, mut ticks, mut signalled) = (false, 0, false);
    loop {
        match line_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                console += &line;
                console.push('\n');
                // SeaBIOS's text may share the line the program starts on.
                if let Some(at) = line.find("session: ") {
                    let session = line[at..].trim_end().to_owned();
                    ready |= session == SESSION_READY;
                    if ready && parse_session_tick(&session).is_some() {
                        ticks += 1;
                    }
                    lines.push(session);
                }
                if ticks >= 2 && !signalled {
                    let pid = child.id().to_string();
                    assert!(Command::new("kill")
                        .args(["-TERM", &pid])
                        .status()
                        .unwrap()
                        .success());
                    signalled = true;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the session did not end in 120 s (signalled: {signalled}):\n{console}");
            }
        }
    }
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("virtkit closed its output but did not exit:\n{console}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    console += &stderr_reader.join().unwrap();
    assert!(signalled, "the guest ended before two ticks:\n{console}");
    SessionRun {
        code: status.code(),
        lines,
        console,
    }
}

/// Checks the order of a session's lines: boot count, identity, ready, ticks 1, 2, ... and
/// the power button last. Returns how the boot count was saved.
fn check_session(run: &SessionRun, boots: u32) -> SessionSave {
    let console = &run.console;
    assert_eq!(run.code, Some(0), "a clean power-off:\n{console}");
    let mut lines = run.lines.iter().map(String::as_str);
    let (count, save) = lines
        .next()
        .and_then(parse_session_boot)
        .unwrap_or_else(|| panic!("the first line is the boot count:\n{console}"));
    assert_eq!(count, boots, "boot number:\n{console}");
    match lines.next() {
        // SMBIOS tables may be missing; if there is a uuid, a serial line follows.
        Some(SESSION_SMBIOS_NONE) => {}
        Some(uuid) => {
            assert!(parse_session_uuid(uuid).is_some(), "{uuid:?}:\n{console}");
            let serial = lines.next().and_then(parse_session_serial);
            assert!(serial.is_some(), "a serial line after the uuid:\n{console}");
        }
        None => panic!("no identity line:\n{console}"),
    }
    assert_eq!(lines.next(), Some(SESSION_READY), "{console}");
    let rest: Vec<&str> = lines.collect();
    let (last, ticks) = rest.split_last().expect("lines after ready");
    assert_eq!(
        *last, SESSION_POWER_BUTTON,
        "the power button ends it:\n{console}"
    );
    assert!(ticks.len() >= 2, "{console}");
    for (i, tick) in ticks.iter().enumerate() {
        assert_eq!(parse_session_tick(tick), Some(i as u32 + 1), "{console}");
    }
    save
}

#[test]
fn mbr_session_counts_boots_and_stops_on_the_power_button() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("session");
    let size = (64 << 20).max(SESSION_MIN_DISK_BYTES);
    let disk = disks.disk("session.img", size, Some(Guest::MbrSession), &[]);
    let state_at = SESSION_STATE_LBA as usize * 512;
    for boots in [1, 2] {
        let run = session_until_power_button(&disk.display().to_string());
        assert_eq!(check_session(&run, boots), SessionSave::Saved, "{}", run.console);
        assert_eq!(
            session_boots(&contents(&disk)[state_at..]),
            Some(boots),
            "the state sector in the image after boot {boots}"
        );
    }

    let before = contents(&disk);
    let run = session_until_power_button(&format!("{},ro", disk.display()));
    let save = check_session(&run, 3);
    assert!(
        matches!(save, SessionSave::WriteError(_)),
        "a read-only disk fails the write: {save:?}\n{}",
        run.console
    );
    assert!(before == contents(&disk), "a read-only disk's image changed");
}

/// The attribute nibble of segment `index` (in [`PAM_SEGMENT_STARTS`] order), as the i440FX
/// datasheet lays the PAM registers out: the BIOS in PAM0's high nibble, then PAM1..PAM6 low
/// nibble first.
fn pam_attribute(registers: &[u8; 7], index: usize) -> u8 {
    if index == 0 {
        return registers[0] >> 4;
    }
    let piece = index - 1;
    let register = registers[1 + piece / 2];
    if piece % 2 == 1 {
        register >> 4
    } else {
        register & 0xf
    }
}

/// The rest of the first console line that contains `prefix`, from `prefix` on (SeaBIOS's
/// text may share the line the program starts on).
fn line_from<'a>(console: &'a str, prefix: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|line| line.find(prefix).map(|at| line[at..].trim_end()))
}

#[test]
fn pam_shadow_ram_takes_effect_and_the_isa_bridge_answers() {
    if !seabios_available() {
        return;
    }
    let disks = Disks::new("pam");
    let disk = disks.disk("pam.img", 64 << 20, Some(Guest::MbrPam), &[]);
    let out = boot(&[disk.display().to_string()]);
    let console = text(&out);
    assert_eq!(out.status.code(), Some(0), "{console}");
    assert!(console.contains(MBR_PAM_DONE), "{console}");

    // SeaBIOS write-protects its own segment before it boots (make_bios_readonly).
    let registers = line_from(&console, "pam=")
        .and_then(parse_pam_registers)
        .unwrap_or_else(|| panic!("no pam= line:\n{console}"));
    assert_eq!(
        pam_attribute(&registers, 0),
        0x1,
        "0xF0000 read-only (RE, no WE):\n{console}"
    );

    // A write sticks exactly where the registers say RE and WE.
    let writes = line_from(&console, "pam-writes=")
        .and_then(parse_pam_writes)
        .unwrap_or_else(|| panic!("no pam-writes= line:\n{console}"));
    for (index, start) in PAM_SEGMENT_STARTS.iter().enumerate() {
        let attribute = pam_attribute(&registers, index);
        assert_eq!(
            writes[index],
            attribute & 0x3 == 0x3,
            "segment {start:#x} with attribute {attribute:#x}:\n{console}"
        );
    }
    assert!(
        !writes[0],
        "the write into 0xF0000's segment was dropped:\n{console}"
    );
    assert!(
        (0..PAM_SEGMENT_STARTS.len()).any(|i| pam_attribute(&registers, i) == 0x3 && writes[i]),
        "SeaBIOS leaves some segment writable, and a write there sticks:\n{console}"
    );

    // The guest's own PAM6 changes: ROM behind the segment without RE, RAM with it, writes
    // dropped without WE.
    let probe = line_from(&console, "pam-probe ")
        .and_then(PamProbe::parse)
        .unwrap_or_else(|| panic!("no pam-probe line:\n{console}"));
    let firmware = std::fs::read(SEABIOS).unwrap();
    let isa_bios = &firmware[firmware.len() - (128 << 10)..];
    let rom_byte = isa_bios[(PAM_PROBE_ADDRESS - 0xe0000) as usize];
    assert_ne!(
        rom_byte, probe.wrote,
        "the probe cannot tell ROM from RAM here: {probe:?}"
    );
    assert_eq!(
        probe.rom, rom_byte,
        "attribute 0 reads the firmware ROM: {probe:?}"
    );
    assert_eq!(
        probe.write_only, rom_byte,
        "attribute 2 writes RAM but still reads the ROM: {probe:?}"
    );
    assert_eq!(
        probe.read_only, probe.wrote,
        "attribute 1 reads the RAM the write-only write reached: {probe:?}"
    );
    assert_eq!(
        probe.dropped, probe.read_only,
        "attribute 1 drops writes: {probe:?}"
    );

    // The PIIX3 at 00:01.0, with the PIRQ routes SeaBIOS 1.16 programs (pciinit.c's
    // piix_isa_bridge_setup: PIRQA#..PIRQD# to IRQ 10, 10, 11, 11).
    let isa = line_from(&console, "isa-bridge ")
        .and_then(IsaBridgeInfo::parse)
        .unwrap_or_else(|| panic!("no isa-bridge line:\n{console}"));
    assert_eq!(isa.id, 0x7000_8086, "Intel 82371SB PIIX3: {isa:?}");
    assert_eq!(isa.class >> 8, 0x06_01_00, "ISA bridge: {isa:?}");
    assert_eq!(isa.header, 0x80, "multi-function, type 0: {isa:?}");
    assert_eq!(isa.pirq, 0x0b0b_0a0a, "{isa:?}");
}
