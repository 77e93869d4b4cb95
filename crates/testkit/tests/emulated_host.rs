//! Proves the emulated-KVM-host harness: QEMU TCG boots the asset kernel, `kvm-amd` gives a
//! `/dev/kvm`, and a VMM inside it (here QEMU itself, with `-enable-kvm`) boots the stock guest
//! kernel and initramfs to user space, with input typed into the guest's console.
//!
//! Needs `scripts/assets.sh` and qemu-system-x86; otherwise each test prints `SKIPPED:` (or fails
//! with `VIRTKIT_REQUIRE_ALL=1`). Run with `--nocapture` to watch the serial output live.

use std::path::Path;
use std::time::Duration;

use virtkit_testkit::{require_assets, require_qemu, skip, Assets, EmulatedHost, HarnessError, GUEST_PREFIX};

fn prerequisites() -> Option<Assets> {
    let assets = require_assets()?;
    if !require_qemu() {
        return None;
    }
    Some(assets)
}

/// The emulated host comes up with /dev/kvm backed by kvm_amd with nested paging.
#[test]
fn kvm_is_ready_in_the_emulated_host() {
    let Some(assets) = prerequisites() else {
        return;
    };
    let run = EmulatedHost::new(&assets)
        .timeout(Duration::from_secs(60))
        .script(
            r#"
ls -l /dev/kvm
echo "nested=$(cat /sys/module/kvm_amd/parameters/nested)"
echo "npt=$(cat /sys/module/kvm_amd/parameters/npt)"
dmesg | grep -E 'SVM|kvm' | sed 's/^/dmesg: /'
grep -q -w svm /proc/cpuinfo && echo "cpuinfo: svm"
[ -c /dev/kvm ] && [ -w /dev/kvm ]
"#,
        )
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "boot to kvm-ready: {:.1} s, whole run: {:.1} s, attempts: {}",
        run.boot_to_ready.as_secs_f64(),
        run.elapsed.as_secs_f64(),
        run.attempts
    );
    run.assert_success();
    assert!(run.contains("VIRTKIT-HOST: kvm-ready"));
    assert!(run.contains("nested=1"), "kvm_amd nested must be on");
    assert!(run.contains("npt=1") || run.contains("npt=Y"), "NPT must be on");
    assert!(run.contains("SVM: kvm: Nested Paging enabled"));
    assert!(run.contains("cpuinfo: svm"));
    assert!(run
        .lines()
        .any(|l| l.starts_with("crw") && l.ends_with("/dev/kvm")));
}

/// The script's exit code and environment reach the test.
#[test]
fn script_exit_code_and_env() {
    let Some(assets) = prerequisites() else {
        return;
    };
    let run = EmulatedHost::new(&assets)
        .env("GREETING", "it's a test")
        .data("/etc/motd", "from the harness\n", 0o644)
        .timeout(Duration::from_secs(60))
        .script("echo \"greeting=$GREETING\"; cat /etc/motd; echo \"cwd=$(pwd)\"; exit 7")
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.script_exit, Some(7), "{}", run.output);
    assert!(run.contains("greeting=it's a test"));
    assert!(run.contains("from the harness"));
    assert!(run.contains("cwd=/"));
}

/// A script that runs past its timeout after kvm-ready is a test failure, not retried.
#[test]
fn hang_after_ready_is_reported() {
    let Some(assets) = prerequisites() else {
        return;
    };
    let err = EmulatedHost::new(&assets)
        .timeout(Duration::from_secs(5))
        .script("echo sleeping; sleep 600")
        .run()
        .expect_err("the script cannot finish in 5 s");
    match err {
        HarnessError::HangAfterReady { output } => {
            assert!(output.contains("VIRTKIT-HOST: kvm-ready"));
            assert!(output.contains("sleeping"));
        }
        other => panic!("expected HangAfterReady, got: {other}"),
    }
}

/// The inner guests' script: an unattended boot, then an interactive one.
const INNER_QEMU_SCRIPT: &str = r#"
Q="qemu-system-x86_64 -M microvm,rtc=on -enable-kvm -cpu host -smp 2 -m 256 -nodefaults \
   -no-user-config -nographic -serial stdio -no-reboot -kernel /guest/vmlinuz -initrd /guest/initrd"

echo "== inner guest 1: token, poweroff"
start=$(cut -d' ' -f1 /proc/uptime)
vk_start g1 $Q -append "console=ttyS0 quiet virtkit.token=inner1 virtkit.action=poweroff"
vk_wait g1 120 || exit 10
echo "inner guest 1: host uptime $start -> $(cut -d' ' -f1 /proc/uptime)"

echo "== inner guest 2: interactive shell"
vk_start g2 $Q -append "console=ttyS0 quiet virtkit.token=inner2"
vk_expect g2 'VIRTKIT-GUEST: shell-ready' 120 || exit 11
sleep 1
vk_send g2 'echo $((6*7))'
vk_expect g2 '^42' 30 || exit 12
vk_send g2 'poweroff -f'
vk_wait g2 60 || exit 13
"#;

/// A VMM inside the emulated host boots the stock guest to user space on the nested /dev/kvm:
/// QEMU with -enable-kvm, the asset kernel and guest initramfs. First an unattended boot that
/// powers off, then an interactive one driven through the lib.sh helpers.
#[test]
fn inner_guest_boots_on_nested_kvm() {
    let Some(assets) = prerequisites() else {
        return;
    };
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    if !qemu.is_file() {
        skip("/usr/bin/qemu-system-x86_64 is needed inside the emulated host");
        return;
    }
    let mut host = EmulatedHost::new(&assets)
        .binary(qemu, "/usr/bin/qemu-system-x86_64")
        .file(assets.vmlinuz(), "/guest/vmlinuz")
        .file(assets.guest_initramfs(), "/guest/initrd")
        .timeout(Duration::from_secs(240));
    // QEMU's firmware for -M microvm (qboot) and its option ROMs for -kernel.
    for f in [
        "bios-microvm.bin",
        "linuxboot_dma.bin",
        "linuxboot.bin",
        "pvh.bin",
    ] {
        let p = Path::new("/usr/share/qemu").join(f);
        if p.exists() {
            host = host.file(&p, &format!("/usr/share/qemu/{f}"));
        }
    }
    // The inner guests boot with `quiet`: every byte on their serial port is a nested exit
    // (emulated SVM -> kvm_amd -> QEMU), and a full boot log takes minutes. `rtc=on`: without
    // a CMOS RTC the kernel's rtc_cmos probe alone takes ~10 s of nested port I/O.
    let host = host.script(INNER_QEMU_SCRIPT);
    // The VMM inside is QEMU, the reference, not virtkit: a wedge of the emulated host while
    // QEMU runs (its own timers stop after kvm-ready), or an inner QEMU guest that makes no
    // progress, is the emulator's (seen in 3 of about 12 runs of this test on a loaded
    // machine). So this one test starts it once more and says so. Hangs and failures with
    // virtkit inside are never retried.
    let run = match host.run() {
        Ok(run) if run.succeeded() => Ok(run),
        first => {
            let why = match &first {
                Ok(run) => format!("the script exited {:?}", run.script_exit),
                Err(e) => e.to_string(),
            };
            eprintln!(
                "note: QEMU's inner guest did not finish ({why}); the emulated host is started once more"
            );
            host.run()
        }
    }
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "boot to kvm-ready: {:.1} s, whole run: {:.1} s, attempts: {}",
        run.boot_to_ready.as_secs_f64(),
        run.elapsed.as_secs_f64(),
        run.attempts
    );
    run.assert_success();
    let markers = run.lines_with_prefix(GUEST_PREFIX);
    assert!(markers.contains(&"token=inner1"), "{markers:?}");
    assert!(markers.contains(&"token=inner2"), "{markers:?}");
    assert!(markers.contains(&"cpus=2"), "{markers:?}");
    assert!(markers.contains(&"shell-ready"), "{markers:?}");
    assert!(markers.contains(&"poweroff"), "{markers:?}");
    assert!(run.lines().any(|l| l.trim() == "42"), "no 42 in the output");
    let mem: u64 = run
        .guest_value("memtotal_kib")
        .and_then(|v| v.parse().ok())
        .expect("memtotal_kib marker");
    assert!((150_000..=262_144).contains(&mem), "memtotal_kib={mem}");
}
