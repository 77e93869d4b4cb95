//! The skip policy: a test whose prerequisite is missing says so and returns, unless
//! `VIRTKIT_REQUIRE_ALL=1` (set in CI), where a missing prerequisite fails the test.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::assets::Assets;

/// Set to `1` to turn every skip into a test failure.
pub const REQUIRE_ALL_ENV: &str = "VIRTKIT_REQUIRE_ALL";

/// Environment variable naming the QEMU binary (default `qemu-system-x86_64` from `PATH`).
pub const QEMU_ENV: &str = "VIRTKIT_QEMU";

/// Whether `VIRTKIT_REQUIRE_ALL=1` is set.
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| v == "1")
}

/// Skips the current test: prints `SKIPPED: <test name>: <reason>` on stderr (not captured by
/// the test harness, so it shows in every run). With `VIRTKIT_REQUIRE_ALL=1` it panics with
/// `required test prerequisite missing: <reason>` instead.
///
/// The caller returns right after: `if !require_kvm() { return; }`.
pub fn skip(reason: &str) {
    if require_all() {
        panic!("required test prerequisite missing: {reason}");
    }
    let thread = std::thread::current();
    let line = match thread.name() {
        Some(name) if name != "main" => format!("SKIPPED: {name}: {reason}\n"),
        _ => format!("SKIPPED: {reason}\n"),
    };
    crate::tell(&line);
}

/// Whether `/dev/kvm` can be opened read-write.
pub fn kvm_available() -> bool {
    OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// [`kvm_available`], or [`skip`] and `false`.
pub fn require_kvm() -> bool {
    if kvm_available() {
        return true;
    }
    let why = match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Err(e) => format!("/dev/kvm cannot be opened read-write: {e}"),
        Ok(_) => "/dev/kvm cannot be opened read-write".to_string(),
    };
    skip(&why);
    false
}

/// Debian's SeaBIOS build, the firmware the firmware-boot tests run.
pub const SEABIOS: &str = "/usr/share/seabios/bios.bin";

/// KVM ([`require_kvm`]) and SeaBIOS at [`SEABIOS`], or [`skip`] and `false`.
pub fn require_kvm_and_seabios() -> bool {
    if !require_kvm() {
        return false;
    }
    if !std::path::Path::new(SEABIOS).exists() {
        skip("SeaBIOS is not installed (Debian package seabios)");
        return false;
    }
    true
}

/// [`Assets::load`], or [`skip`] and `None`.
pub fn require_assets() -> Option<Assets> {
    match Assets::load() {
        Ok(a) => Some(a),
        Err(e) => {
            skip(&format!("test assets unavailable: {e}"));
            None
        }
    }
}

/// The QEMU binary the harness runs: `$VIRTKIT_QEMU` or `qemu-system-x86_64`.
pub fn qemu_program() -> String {
    std::env::var(QEMU_ENV).unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// Whether the QEMU binary runs (`--version`).
pub fn qemu_available() -> bool {
    Command::new(qemu_program())
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// [`qemu_available`], or [`skip`] and `false`.
pub fn require_qemu() -> bool {
    if qemu_available() {
        return true;
    }
    skip(&format!(
        "{} not found or not runnable (apt-get install qemu-system-x86, or set {QEMU_ENV})",
        qemu_program()
    ));
    false
}

/// What kind of KVM this machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware virtualization (VT-x/AMD-V): stock kernels boot on `/dev/kvm`.
    Hardware,
    /// PVM (`kvm_pvm`): only PVM-enlightened guest kernels boot to user space.
    Pvm,
    /// No usable KVM.
    None,
}

/// Detects the kind of KVM: [`KvmKind::Pvm`] if `/sys/module/kvm_pvm` exists, [`KvmKind::Hardware`]
/// if the CPU flags have `vmx` or `svm` and `/dev/kvm` exists, [`KvmKind::None`] otherwise.
pub fn host_kvm_kind() -> KvmKind {
    kvm_kind_from(
        Path::new("/sys/module/kvm_pvm").exists(),
        &fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
        Path::new("/dev/kvm").exists(),
    )
}

fn kvm_kind_from(pvm_module: bool, cpuinfo: &str, dev_kvm: bool) -> KvmKind {
    if pvm_module {
        return KvmKind::Pvm;
    }
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw && dev_kvm {
        KvmKind::Hardware
    } else {
        KvmKind::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_kind() {
        let svm = "processor\t: 0\nflags\t\t: fpu svm lm\n";
        let none = "processor\t: 0\nflags\t\t: fpu lm hypervisor\n";
        assert_eq!(kvm_kind_from(true, svm, true), KvmKind::Pvm);
        assert_eq!(kvm_kind_from(true, none, true), KvmKind::Pvm);
        assert_eq!(kvm_kind_from(false, svm, true), KvmKind::Hardware);
        assert_eq!(kvm_kind_from(false, "flags: vmx\n", true), KvmKind::Hardware);
        assert_eq!(kvm_kind_from(false, svm, false), KvmKind::None);
        assert_eq!(kvm_kind_from(false, none, true), KvmKind::None);
        // "svm" must be a whole flag.
        assert_eq!(kvm_kind_from(false, "flags: svmx\n", true), KvmKind::None);
        // The real machine: just must not panic.
        let _ = host_kvm_kind();
    }

    #[test]
    fn skip_respects_require_all() {
        // Run in a child process so the environment variable does not leak into other tests.
        if std::env::var_os("VIRTKIT_TESTKIT_SKIP_CHILD").is_some() {
            skip("the child's reason");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let run = |require_all: &str| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "skip::tests::skip_respects_require_all",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("VIRTKIT_TESTKIT_SKIP_CHILD", "1")
                .env(REQUIRE_ALL_ENV, require_all)
                .output()
                .unwrap()
        };
        let out = run("0");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("SKIPPED: "), "{stderr}");
        assert!(stderr.contains("the child's reason"), "{stderr}");

        let out = run("1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("required test prerequisite missing: the child's reason"),
            "{stderr}"
        );
    }
}
