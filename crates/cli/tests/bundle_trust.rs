//! Bundles are trusted only as far as they should be, and `validate` refuses what `run` would:
//! links and special files in a bundle, paths out of it that no command recorded, owner-only
//! permissions under any umask, FIFOs and devices where a file is expected (answered at once,
//! never waited on), an output file that is a disk, `set` all or nothing, one identity running
//! once, and names that differ only in case. Everything goes through the `virtkit` binary.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use virtkit_test_guests::Guest;

use support::home::{report, text, Home};
use support::VIRTKIT;

/// A private virtkit home whose commands are killed after a minute; `trust` keeps this file's
/// directories apart from other test files'.
fn home(tag: &str) -> Home {
    Home::new("trust", tag).running_with(finish)
}

/// Runs `c` and fails the test if it takes more than 60 seconds (a regression that blocks on a
/// FIFO must fail, not hang the suite).
fn finish(mut c: Command, what: &str) -> Output {
    // Captured, as `Command::output` would.
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("virtkit {what} blocked (killed after 60 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    report(what, &out);
    out
}

/// What these tests ask of a home beyond the shared helper.
trait TrustHome {
    /// A file of the scratch space with `bytes` in it.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf;
    fn fifo(&self, name: &str) -> PathBuf;
    /// A file that passes for BIOS firmware, so VMs can be made without SeaBIOS installed.
    fn firmware(&self) -> PathBuf;
    /// A small VM that is never run: firmware boot, 1 MiB disk.
    fn create_never_run(&self, name: &str);
    /// Waits until the VM's `console.log` (read directly, not through `virtkit logs`) shows
    /// `needle`.
    fn wait_console_log(&self, name: &str, needle: &str);
}

impl TrustHome for Home {
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        let status = Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(status.success());
        path
    }

    fn firmware(&self) -> PathBuf {
        self.file("bios.bin", &vec![0u8; 128 << 10])
    }

    fn create_never_run(&self, name: &str) {
        let fw = self.firmware();
        self.ok(&[
            "create",
            name,
            "--firmware",
            s(&fw),
            "--disk-size",
            "1M",
            "--memory",
            "128M",
            "--cpus",
            "1",
        ]);
    }

    fn wait_console_log(&self, name: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(self.bundle(name).join("console.log")).unwrap_or_default();
            if log.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{needle}` not in the log of {name}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o777
}

fn replace_with_link(link: &Path, target: &Path) {
    std::fs::remove_file(link).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[test]
fn linked_bundle_files_are_refused_and_their_targets_untouched() {
    let home = home("links");
    home.create_never_run("v");
    let b = home.bundle("v");
    let victim = home.file("victim.txt", b"precious");

    std::os::unix::fs::symlink(&victim, b.join("console.log")).unwrap();
    for args in [
        &["run", "v"][..],
        &["run", "v", "--detach"],
        &["logs", "v"],
        &["get", "v"],
    ] {
        home.fails(
            args,
            "the VM `v` is damaged: console.log is a symbolic link; bundle files must be regular files (remove it)",
        );
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let listed = home.json(&["list", "--format", "json"]);
    assert_eq!(listed[0]["state"], "damaged", "{listed}");
    std::fs::remove_file(b.join("console.log")).unwrap();

    let config = b.join("config.json");
    let saved = std::fs::read(&config).unwrap();
    replace_with_link(&config, Path::new("/dev/zero"));
    home.fails(&["get", "v"], "config.json is a symbolic link");
    let listed = home.json(&["list", "--format", "json"]);
    assert_eq!(listed[0]["state"], "damaged", "{listed}");
    std::fs::remove_file(&config).unwrap();
    std::fs::write(&config, &saved).unwrap();

    let other = home.file("other.img", &[5u8; 4096]);
    replace_with_link(&b.join("disk.img"), &other);
    home.fails(&["set", "v", "--disk-size", "1G"], "disk.img is a symbolic link");
    assert_eq!(std::fs::read(&other).unwrap(), vec![5u8; 4096]);
}

#[test]
fn a_path_outside_the_bundle_runs_only_once_recorded() {
    let home = home("external");
    home.create_never_run("v");
    let b = home.bundle("v");
    let got = home.json(&["get", "v", "--format", "json"]);
    assert_eq!(
        got["external_paths"],
        serde_json::json!([s(&home.dir.join("bios.bin"))])
    );

    let config = b.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"disk.img\"", "\"/etc/shadow\"")).unwrap();
    home.fails(
        &["run", "v"],
        "names /etc/shadow (storage_devices[0].path), a path outside its bundle that no virtkit command recorded",
    );
    home.fails(&["run", "v", "--detach"], "/etc/shadow");

    let data = home.file("data.img", &[0u8; 1 << 20]);
    std::fs::write(
        &config,
        text.replace("\"disk.img\"", &format!("\"{}\"", s(&data))),
    )
    .unwrap();
    let t = home.fails(&["run", "v"], "a path outside its bundle");
    assert!(
        t.contains(&format!("virtkit set v --allow-path {}", s(&data))),
        "{t}"
    );
    home.ok(&["set", "v", "--allow-path", s(&data)]);
    let got = home.json(&["get", "v", "--format", "json"]);
    assert!(
        got["external_paths"]
            .as_array()
            .unwrap()
            .contains(&s(&data).into()),
        "{got}"
    );
    home.fails(
        &["set", "v", "--allow-path", "/etc/passwd"],
        "does not name /etc/passwd",
    );

    let extra = home.file("extra.img", &[0u8; 1 << 20]);
    home.ok(&["set", "v", "--add-disk", &format!("{},ro", s(&extra))]);
    let got = home.json(&["get", "v", "--format", "json"]);
    assert!(
        got["external_paths"]
            .as_array()
            .unwrap()
            .contains(&s(&extra).into()),
        "{got}"
    );
}

#[test]
fn bundles_are_owner_only_whatever_the_umask() {
    let home = home("umask");
    let fw = home.firmware();
    let mut c = Command::new("sh");
    c.args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(VIRTKIT)
        .args([
            "create",
            "v",
            "--firmware",
            s(&fw),
            "--disk-size",
            "1M",
            "--memory",
            "128M",
        ])
        .env("VIRTKIT_HOME", home.dir.join("home"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = finish(c, "create v (umask 000)");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let b = home.bundle("v");
    assert_eq!(mode(&b), 0o700);
    let mut files = 0;
    for e in std::fs::read_dir(&b).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        files += 1;
    }
    assert!(files >= 5, "{files} files");
    // Taking the lock (here by `set`) leaves it owner-only too.
    home.ok(&["set", "v", "--cpus", "1"]);
    assert_eq!(mode(&b.join("lock")), 0o600);
    // An older bundle's world-readable lock is tightened when used.
    std::fs::set_permissions(b.join("lock"), std::fs::Permissions::from_mode(0o644)).unwrap();
    home.ok(&["set", "v", "--cpus", "1"]);
    assert_eq!(mode(&b.join("lock")), 0o600);
}

#[test]
fn fifos_and_devices_are_refused_at_once_wherever_a_file_is_expected() {
    let home = home("fifos");
    let kernel = s(Guest::Hello.path()).to_owned();
    let fifo = home.fifo("thing");
    let f = s(&fifo).to_owned();
    let fifo_words = "is a FIFO (named pipe)";

    home.fails(&["validate", &f], fifo_words);
    home.fails(&["validate", "/dev/zero"], "/dev/zero is a character device");
    let big = home.file("big.json", &vec![b' '; (1 << 20) + 1]);
    home.fails(&["validate", s(&big)], "is larger than 1 MiB");
    home.fails(&["run", "--config", &f], fifo_words);
    home.fails(&["run", "--config", "/dev/zero"], "character device");
    home.fails(&["run", "--kernel", &f], fifo_words);
    home.fails(&["run", "--kernel", &kernel, "--initrd", &f], fifo_words);
    home.fails(&["run", "--firmware", "/dev/zero"], "character device");
    home.fails(
        &["run", "--kernel", &kernel, "--serial", &format!("file:{f}")],
        fifo_words,
    );
    home.fails(
        &["run", "--kernel", &kernel, "--serial", "file:/dev/zero"],
        "character device",
    );
    home.fails(&["run", "--kernel", &kernel, "--disk", &f], fifo_words);

    let fw = home.firmware();
    home.fails(&["create", "a", "--firmware", s(&fw), "--from", &f], fifo_words);
    home.fails(
        &["create", "b", "--firmware", s(&fw), "--from", "/dev/zero"],
        "character device",
    );
    home.fails(&["create", "c", "--kernel", &f], fifo_words);
    home.fails(
        &["create", "d", "--kernel", &kernel, "--initrd", "/dev/zero"],
        "character device",
    );
    let empty = home.file("empty.img", b"");
    home.fails(
        &["create", "e", "--firmware", s(&fw), "--from", s(&empty)],
        "empty image",
    );
    home.fails(
        &["create", "z", "--firmware", s(&fw), "--disk-size", "0"],
        "a disk of 0 bytes",
    );
    assert_eq!(home.json(&["list", "--format", "json"]), serde_json::json!([]));
}

#[test]
fn an_output_file_that_is_a_disk_is_refused_and_the_disk_untouched() {
    let home = home("serial-disk");
    let kernel = s(Guest::Hello.path()).to_owned();
    let victim = home.file("victim.img", &[9u8; 8192]);
    let v = s(&victim).to_owned();
    let config = home.file(
        "vm.json",
        serde_json::json!({
            "cpu_count": 1,
            "memory_size": 64 << 20,
            "boot_loader": {"type": "linux", "kernel": kernel, "command_line": "console=ttyS0"},
            "storage_devices": [{"path": v}],
            "serial_ports": [{"attachment": {"type": "file", "path": v}}],
        })
        .to_string()
        .as_bytes(),
    );
    home.fails(&["validate", s(&config)], "is the disk");
    home.fails(&["run", "--config", s(&config)], "is the disk");
    home.fails(
        &[
            "run",
            "--kernel",
            &kernel,
            "--disk",
            &v,
            "--serial",
            &format!("file:{v}"),
        ],
        "is the disk",
    );
    assert_eq!(std::fs::read(&victim).unwrap(), vec![9u8; 8192]);

    let empty = home.file("empty.img", b"");
    home.fails(
        &["run", "--kernel", &kernel, "--disk", s(&empty)],
        "is empty (0 bytes)",
    );
    let nul = home.file(
        "nul.json",
        serde_json::json!({
            "cpu_count": 1,
            "memory_size": 64 << 20,
            "boot_loader": {"type": "linux", "kernel": kernel, "command_line": "console=ttyS0\u{0} x"},
        })
        .to_string()
        .as_bytes(),
    );
    home.fails(&["validate", s(&nul)], "NUL");
}

#[test]
fn set_changes_all_or_nothing() {
    let home = home("set");
    home.create_never_run("v");
    let before = home.json(&["get", "v", "--format", "json"]);
    home.fails(
        &["set", "v", "--cpus", "2", "--disk-size", "512K"],
        "can grow but not shrink",
    );
    home.fails(
        &["set", "v", "--memory", "1M", "--disk-size", "2M"],
        "memory_size",
    );
    let missing = home.dir.join("missing.img");
    home.fails(
        &["set", "v", "--cpus", "2", "--add-disk", s(&missing)],
        "does not exist",
    );
    let after = home.json(&["get", "v", "--format", "json"]);
    for key in ["cpus", "memory", "disk_size", "external_paths", "machine_id"] {
        assert_eq!(before[key], after[key], "{key} changed by a refused set");
    }
    home.ok(&["set", "v", "--cpus", "2", "--disk-size", "2M"]);
    let after = home.json(&["get", "v", "--format", "json"]);
    assert_eq!(
        (after["cpus"].as_u64(), after["disk_size"].as_u64()),
        (Some(2), Some(2 << 20))
    );
}

#[test]
fn names_that_differ_only_in_case_are_refused() {
    let home = home("case");
    home.create_never_run("web");
    let fw = home.firmware();
    home.fails(
        &["create", "Web", "--firmware", s(&fw), "--disk-size", "1M"],
        "a VM named `web` already exists (names differ only in case)",
    );
    home.fails(&["clone", "web", "WEB"], "names differ only in case");
    assert_eq!(
        home.json(&["list", "--format", "json"]).as_array().unwrap().len(),
        1
    );
}

#[test]
fn serial_log_with_the_hvc_console_is_the_bundles_own_file() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    let home = home("serial-log");
    let image = home.session_image();
    home.ok(&[
        "create",
        "h",
        "--from",
        s(&image),
        "--memory",
        "128M",
        "--cpus",
        "1",
    ]);
    let serial = home.bundle("h").join("serial.log");
    let victim = home.file("victim.txt", b"precious");
    std::os::unix::fs::symlink(&victim, &serial).unwrap();
    home.fails(
        &["run", "h", "--detach", "--console", "hvc"],
        "serial.log is a symbolic link",
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_file(&serial).unwrap();

    home.ok(&["run", "h", "--detach", "--console", "hvc"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("session: ready")
    {
        assert!(Instant::now() < deadline, "COM1 never reached serial.log");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mode(&serial), 0o600);
    home.ok(&["stop", "h", "--timeout", "30"]);
}

#[test]
fn a_copy_made_by_hand_does_not_run_beside_its_original() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    let home = home("twin");
    let image = home.session_image();
    home.ok(&[
        "create",
        "a",
        "--from",
        s(&image),
        "--memory",
        "128M",
        "--cpus",
        "1",
    ]);
    let status = Command::new("cp")
        .args(["-a", s(&home.bundle("a")), s(&home.bundle("b"))])
        .status()
        .unwrap();
    assert!(status.success());
    home.ok(&["run", "a", "--detach"]);
    home.fails(
        &["run", "b", "--detach"],
        "the VM `b` has the same machine identifier as `a`, which is running",
    );
    let t = home.fails(&["run", "b"], "same machine identifier");
    assert!(t.contains("virtkit set b --new-identity"), "{t}");
    home.ok(&["set", "b", "--new-identity"]);
    home.ok(&["run", "b", "--detach"]);
    let (ia, ib) = (
        home.json(&["get", "a", "--format", "json"])["machine_id"].clone(),
        home.json(&["get", "b", "--format", "json"])["machine_id"].clone(),
    );
    assert_ne!(ia, ib);
    // The running VM's console log is the bundle's own, owner-only.
    assert_eq!(mode(&home.bundle("a").join("console.log")), 0o600);
    home.wait_console_log("a", "session: ready");
    home.wait_console_log("b", "session: ready");
    home.ok(&["stop", "a", "--timeout", "30"]);
    home.ok(&["stop", "b", "--timeout", "30"]);
}
