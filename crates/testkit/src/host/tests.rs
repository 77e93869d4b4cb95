use super::*;

const SAMPLE: &str = "\
[    0.000000] Linux version 6.1.0-56-cloud-amd64
VIRTKIT-HOST: init uptime=2.27
VIRTKIT-HOST: kvm-ready
VIRTKIT-HOST: uptime=3.32
VIRTKIT-GUEST: init
VIRTKIT-GUEST: cpus=2
[    1.234] virtio_net virtio0: VIRTKIT-GUEST: token=abc
VIRTKIT-GUEST: memtotal_kib=480280
VIRTKIT-GUEST: cmdline=console=ttyS0 virtkit.token=abc
VIRTKIT-GUEST: alive 1
VIRTKIT-HOST: script-exit=3
";

#[test]
fn prefix_lines() {
    let g = lines_with_prefix(SAMPLE, GUEST_PREFIX);
    assert_eq!(
        g,
        [
            "init",
            "cpus=2",
            "token=abc",
            "memtotal_kib=480280",
            "cmdline=console=ttyS0 virtkit.token=abc",
            "alive 1"
        ]
    );
    assert_eq!(marker_value(SAMPLE, GUEST_PREFIX, "token"), Some("abc"));
    assert_eq!(marker_value(SAMPLE, GUEST_PREFIX, "cpus"), Some("2"));
    assert_eq!(
        marker_value(SAMPLE, GUEST_PREFIX, "cmdline"),
        Some("console=ttyS0 virtkit.token=abc")
    );
    assert_eq!(marker_value(SAMPLE, GUEST_PREFIX, "nope"), None);
    // "cpus" must not match "cpus_x=".
    assert_eq!(
        marker_value("VIRTKIT-GUEST: cpus_x=1\n", GUEST_PREFIX, "cpus"),
        None
    );
    let run = HostRun {
        output: SAMPLE.to_string(),
        script_exit: Some(3),
        attempts: 1,
        boot_to_ready: Duration::from_secs(3),
        elapsed: Duration::from_secs(5),
    };
    assert!(run.contains("kvm-ready"));
    assert_eq!(run.guest_value("memtotal_kib"), Some("480280"));
    assert_eq!(run.guest_markers().len(), 6);
    assert!(!run.succeeded());
    assert_eq!(
        run.lines_with_prefix(HOST_PREFIX),
        ["init uptime=2.27", "kvm-ready", "uptime=3.32", "script-exit=3"]
    );
}

#[test]
fn script_exit() {
    assert_eq!(parse_script_exit("VIRTKIT-HOST: script-exit=0"), Some(0));
    assert_eq!(parse_script_exit("VIRTKIT-HOST: script-exit=127"), Some(127));
    assert_eq!(parse_script_exit("junk VIRTKIT-HOST: script-exit=1 x"), Some(1));
    assert_eq!(parse_script_exit("VIRTKIT-HOST: script-exit="), None);
    assert_eq!(parse_script_exit("VIRTKIT-HOST: kvm-ready"), None);
}

#[test]
fn ldd_parsing() {
    let text = "\
\tlinux-vdso.so.1 (0x00007ffc6d5f3000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f1b2c5a0000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1b2c3bf000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1b2c5d4000)
";
    assert_eq!(
        parse_ldd(text).unwrap(),
        [
            PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
        ]
    );
    let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
    assert!(err.contains("libfoo.so.1"), "{err}");
    assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
}

#[test]
fn ldd_on_real_binaries() {
    // /bin/sh is dynamic on Debian; busybox-static's busybox is not.
    let libs = shared_libraries(Path::new("/bin/sh")).unwrap();
    assert!(
        libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
        "{libs:?}"
    );
    if let Ok(a) = crate::Assets::load() {
        assert!(shared_libraries(a.busybox()).unwrap().is_empty());
    }
}

#[test]
fn tsc_khz_sources() {
    let dmesg = "[    0.000014] tsc: Detected 2100.000 MHz processor\n\
                 [    1.1] tsc: Refined TSC clocksource calibration: 2095.999 MHz\n";
    assert_eq!(tsc_khz_from_dmesg(dmesg), Some(2_095_999));
    assert_eq!(
        tsc_khz_from_dmesg("[    0.000014] tsc: Detected 2100.000 MHz processor\n"),
        Some(2_100_000)
    );
    assert_eq!(tsc_khz_from_dmesg("nothing\n"), None);
    let vm = "cpu MHz\t\t: 2100.000\nflags\t\t: fpu tsc constant_tsc hypervisor\n";
    assert_eq!(tsc_khz_from_cpuinfo(vm), Some(2_100_000));
    let metal = "cpu MHz\t\t: 800.000\nflags\t\t: fpu tsc constant_tsc\n";
    assert_eq!(tsc_khz_from_cpuinfo(metal), None);
}

#[test]
fn env_file_quoting() {
    let a = crate::assets::tests_support::fake_assets();
    let h = EmulatedHost::new(&a).env("A", "it's").env("B_2", "x y");
    assert_eq!(h.env_file().unwrap(), "A='it'\\''s'\nB_2='x y'\n");
    let h = EmulatedHost::new(&a).env("2X", "1");
    assert!(matches!(h.env_file(), Err(HarnessError::Invalid(_))));
    let h = EmulatedHost::new(&a).env("A-B", "1");
    assert!(h.env_file().is_err());
}

/// A stand-in for QEMU: a shell script that plays `body` (with `$N` = attempt number).
fn fake_qemu(tag: &str, body: &str) -> (PathBuf, EmulatedHost) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("virtkit-fake-qemu-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let prog = dir.join("qemu");
    let script = format!(
        "#!/bin/sh\nN=$(cat {d}/n 2>/dev/null || echo 0); N=$((N+1)); echo $N > {d}/n\n{body}\n",
        d = dir.display()
    );
    fs::write(&prog, script).unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    let a = crate::assets::tests_support::fake_assets();
    let host = EmulatedHost::new(&a)
        .qemu(&prog.display().to_string())
        .boot_timeouts(Duration::from_millis(1500), Duration::from_secs(20))
        .timeout(Duration::from_secs(3));
    (dir, host)
}

#[test]
fn hang_before_ready_is_retried_once() {
    let (dir, host) = fake_qemu(
        "retry",
        "echo booting $N\n[ $N = 1 ] && exec sleep 60\necho 'VIRTKIT-HOST: kvm-ready'\n\
         echo 'VIRTKIT-HOST: script-exit=0'",
    );
    let run = host.run().unwrap();
    assert_eq!(run.attempts, 2);
    assert_eq!(run.script_exit, Some(0));
    assert!(run.contains(RETRY_NOTICE), "{}", run.output);
    assert!(run.contains("booting 2"), "{}", run.output);
    assert!(
        !run.contains("booting 1"),
        "a retried attempt's lines stay out of a run that passes:\n{}",
        run.output
    );
    fs::remove_dir_all(dir).unwrap();
}

/// A script's parser takes the first `CASE name: key=` it finds: the lines of an attempt that
/// was retried must not be there for it to find (CI, session 25: a wedged first attempt's
/// `get` line stood in for the second attempt's).
#[test]
fn a_retried_attempts_case_lines_do_not_reach_the_run_that_passes() {
    let (dir, host) = fake_qemu(
        "case-lines",
        "echo 'VIRTKIT-HOST: kvm-ready'\necho \"CASE two: get=from-attempt-$N\"\n\
         [ $N = 1 ] && { echo '[ 1.0] Kernel panic - not syncing: stack'; exit 0; }\n\
         echo 'VIRTKIT-HOST: script-exit=0'",
    );
    let run = host.run().unwrap();
    assert_eq!((run.attempts, run.script_exit), (2, Some(0)));
    assert!(run.contains("CASE two: get=from-attempt-2"), "{}", run.output);
    assert!(!run.contains("from-attempt-1"), "{}", run.output);
    assert!(
        run.contains(CRASH_RETRY_NOTICE),
        "the retry is still said:\n{}",
        run.output
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hang_before_ready_every_time_fails() {
    let (dir, host) = fake_qemu("twice", "echo booting $N\nexec sleep 60");
    let started = Instant::now();
    match host.run() {
        Err(HarnessError::HangBeforeReady { output, attempts }) => {
            assert_eq!(attempts, MAX_ATTEMPTS);
            assert!(output.contains(RETRY_NOTICE), "{output}");
            assert!(output.contains(&format!("booting {MAX_ATTEMPTS}")), "{output}");
        }
        other => panic!("expected HangBeforeReady, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_host_kernel_panic_during_the_script_is_retried_once() {
    let (dir, host) = fake_qemu(
        "panic",
        "echo 'VIRTKIT-HOST: kvm-ready'\necho running $N\n\
         [ $N = 1 ] && { echo '[ 1.0] Kernel panic - not syncing: stack'; exit 0; }\n\
         echo 'VIRTKIT-HOST: script-exit=0'",
    );
    let run = host.run().unwrap();
    assert_eq!(run.attempts, 2);
    assert_eq!(run.script_exit, Some(0));
    assert!(run.contains(CRASH_RETRY_NOTICE), "{}", run.output);
    assert!(run.contains("running 2"), "{}", run.output);
    fs::remove_dir_all(dir).unwrap();

    let (dir, host) = fake_qemu(
        "panic-twice",
        "echo 'VIRTKIT-HOST: kvm-ready'\necho 'Kernel panic - not syncing: stack'",
    );
    match host.run() {
        Err(HarnessError::HostKernelPanicked { output, attempts }) => {
            assert_eq!(attempts, MAX_ATTEMPTS);
            assert!(output.contains(CRASH_RETRY_NOTICE), "{output}");
        }
        other => panic!("expected HostKernelPanicked, got {other:?}"),
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_triple_fault_that_qemu_logged_during_the_script_is_retried_once() {
    // The fake QEMU writes the line to the file after -D, as `-d cpu_reset` does.
    let log_it = "while [ $# -gt 1 ]; do [ \"$1\" = -D ] && L=$2; shift; done";
    let (dir, host) = fake_qemu(
        "triple",
        &format!(
            "{log_it}\necho 'VIRTKIT-HOST: kvm-ready'\necho running $N\n\
             [ $N = 1 ] && {{ echo 'Triple fault' >\"$L\"; exit 0; }}\n\
             echo 'VIRTKIT-HOST: script-exit=0'"
        ),
    );
    let run = host.run().unwrap();
    assert_eq!((run.attempts, run.script_exit), (2, Some(0)));
    assert!(run.contains(TRIPLE_FAULT_RETRY_NOTICE), "{}", run.output);
    fs::remove_dir_all(dir).unwrap();

    let (dir, host) = fake_qemu(
        "triple-twice",
        &format!("{log_it}\necho 'VIRTKIT-HOST: kvm-ready'\necho 'Triple fault' >\"$L\""),
    );
    match host.run() {
        Err(HarnessError::HostTripleFaulted { attempts, .. }) => assert_eq!(attempts, MAX_ATTEMPTS),
        other => panic!("expected HostTripleFaulted, got {other:?}"),
    }
    fs::remove_dir_all(dir).unwrap();

    // An exit without the log line is no triple fault: not retried, and said.
    let (dir, host) = fake_qemu("silent", "echo 'VIRTKIT-HOST: kvm-ready'");
    let run = host.run().unwrap();
    assert_eq!((run.attempts, run.script_exit), (1, None));
    assert!(run.contains("QEMU exited by itself"), "{}", run.output);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_panic_line_after_the_script_ended_or_without_an_exit_is_not_a_host_crash() {
    // The script finished: whatever it printed is the test's to judge.
    let (dir, host) = fake_qemu(
        "guest-panic",
        "echo 'VIRTKIT-HOST: kvm-ready'\necho 'Kernel panic - not syncing: guest'\n\
         echo 'VIRTKIT-HOST: script-exit=3'",
    );
    let run = host.run().unwrap();
    assert_eq!((run.attempts, run.script_exit), (1, Some(3)));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hang_after_ready_is_not_retried() {
    let (dir, host) = fake_qemu(
        "after",
        "echo 'VIRTKIT-HOST: kvm-ready'\necho running\nexec sleep 60",
    );
    match host.run() {
        Err(HarnessError::HangAfterReady { output }) => {
            assert!(output.contains("running"), "{output}");
            assert!(!output.contains(RETRY_NOTICE), "{output}");
        }
        other => panic!("expected HangAfterReady, got {other:?}"),
    }
    assert_eq!(fs::read_to_string(dir.join("n")).unwrap().trim(), "1");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn kvm_missing_and_early_exit() {
    let (dir, host) = fake_qemu("missing", "echo 'VIRTKIT-HOST: kvm-missing'\necho 'insmod: bad'");
    match host.run() {
        Err(HarnessError::KvmMissing { output }) => {
            assert!(output.contains("insmod: bad"), "{output}")
        }
        other => panic!("expected KvmMissing, got {other:?}"),
    }
    fs::remove_dir_all(dir).unwrap();

    let (dir, host) = fake_qemu("exit", "echo 'qemu: bad option' >&2\nexit 1");
    match host.run() {
        Err(e @ HarnessError::QemuExited { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("qemu: bad option"), "{msg}");
            assert!(msg.contains("exit status: 1"), "{msg}");
        }
        other => panic!("expected QemuExited, got {other:?}"),
    }
    fs::remove_dir_all(dir).unwrap();

    let missing = EmulatedHost::new(&crate::assets::tests_support::fake_assets()).qemu("/nonexistent/qemu");
    assert!(matches!(missing.run(), Err(HarnessError::Spawn { .. })));
}

#[test]
fn script_exit_without_poweroff() {
    // The host reports the script's end but QEMU does not exit: killed after a grace
    // period, the run still counts.
    let (dir, host) = fake_qemu(
        "nopoweroff",
        "echo 'VIRTKIT-HOST: kvm-ready'\necho 'VIRTKIT-HOST: script-exit=5'\nexec sleep 60",
    );
    let host = host.poweroff_grace(Duration::from_millis(500));
    let run = host.run().unwrap();
    assert_eq!(run.script_exit, Some(5));
    assert!(run.contains("did not power off"));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn initramfs_contents() {
    let a = crate::assets::tests_support::fake_assets();
    let dir = std::env::temp_dir().join(format!("virtkit-host-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("tree/sub")).unwrap();
    fs::write(dir.join("tree/sub/f"), "F").unwrap();
    std::os::unix::fs::symlink("sub/f", dir.join("tree/link")).unwrap();
    let h = EmulatedHost::new(&a)
        .file(dir.join("tree"), "/data/tree")
        .data("/etc/greeting", "hi", 0o600)
        .binary("/bin/sh", "/bin/dash-copy")
        .script("echo hello");
    let cpio = dir.join("host.cpio");
    h.write_initramfs(&cpio).unwrap();
    let bytes = fs::read(&cpio).unwrap();
    let has = |name: &str| {
        let needle = format!("{name}\0");
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    assert!(!has("virtkit/tmpfs-root"), "root_on_tmpfs is opt-in");
    let tmpfs_cpio = dir.join("host-tmpfs.cpio");
    h.clone().root_on_tmpfs().write_initramfs(&tmpfs_cpio).unwrap();
    let tmpfs_bytes = fs::read(&tmpfs_cpio).unwrap();
    assert!(tmpfs_bytes
        .windows(b"virtkit/tmpfs-root\0".len())
        .any(|w| w == b"virtkit/tmpfs-root\0"));
    for n in [
        "init",
        "bin/busybox",
        "dev/console",
        "virtkit/lib.sh",
        "virtkit/script.sh",
        "virtkit/host-modules/order",
        "virtkit/host-modules/kvm.ko",
        "data/tree/sub/f",
        "data/tree/link",
        "etc/greeting",
        "bin/dash-copy",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(has(n), "{n} missing from the initramfs");
    }
    assert!(h
        .cmdline()
        .starts_with("console=ttyS0 earlyprintk=ttyS0 panic=-1 quiet"));
    let args = h.qemu_command_args(&cpio);
    assert!(args.windows(2).any(|w| w == ["-M", "microvm"]));
    assert!(args.windows(2).any(|w| w == ["-smp", "2"]));
    assert!(args.windows(2).any(|w| w == ["-m", "2048"]));
    let bad = EmulatedHost::new(&a).data("../x", "", 0o644);
    assert!(matches!(
        bad.write_initramfs(&cpio),
        Err(HarnessError::Invalid(_))
    ));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_assertion_qemu_aborted_on_during_the_script_is_retried() {
    // QEMU 7.2 and 10.0 abort so (glib's message on stderr) when a nested guest writes CR8
    // while a virtual interrupt is pending.
    let abort = "echo 'ERROR:../../accel/tcg/tcg-accel-ops.c:81:tcg_handle_interrupt: assertion failed: (qemu_mutex_iothread_locked())' >&2; exit 134";
    let (dir, host) = fake_qemu(
        "assert",
        &format!(
            "echo 'VIRTKIT-HOST: kvm-ready'\necho running $N\n[ $N = 1 ] && {{ {abort}; }}\n\
             echo 'VIRTKIT-HOST: script-exit=0'"
        ),
    );
    let run = host.run().unwrap();
    assert_eq!((run.attempts, run.script_exit), (2, Some(0)));
    assert!(run.contains(EMULATOR_ABORT_RETRY_NOTICE), "{}", run.output);
    fs::remove_dir_all(dir).unwrap();

    let (dir, host) = fake_qemu(
        "assert-always",
        &format!("echo 'VIRTKIT-HOST: kvm-ready'\n{abort}"),
    );
    match host.run() {
        Err(HarnessError::EmulatorAborted { attempts, .. }) => assert_eq!(attempts, MAX_ATTEMPTS),
        other => panic!("expected EmulatorAborted, got {other:?}"),
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_host_with_a_heartbeat_that_goes_silent_is_retried() {
    let (dir, host) = fake_qemu(
        "wedged",
        "echo 'VIRTKIT-HOST: kvm-ready'\necho running $N\n[ $N = 1 ] && exec sleep 60\n\
         echo 'VIRTKIT-HOST: script-exit=0'",
    );
    let run = host.heartbeat(Duration::from_secs(2)).run().unwrap();
    assert_eq!((run.attempts, run.script_exit), (2, Some(0)));
    assert!(run.contains(WEDGED_RETRY_NOTICE), "{}", run.output);
    fs::remove_dir_all(dir).unwrap();

    // Without a heartbeat a quiet script is only quiet: it runs to the host's timeout.
    let (dir, host) = fake_qemu(
        "quiet",
        "echo 'VIRTKIT-HOST: kvm-ready'\nsleep 2.5\necho 'VIRTKIT-HOST: script-exit=0'",
    );
    let run = host.run().unwrap();
    assert_eq!((run.attempts, run.script_exit), (1, Some(0)));
    fs::remove_dir_all(dir).unwrap();
}
