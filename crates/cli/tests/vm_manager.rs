//! The everyday VM-manager session, end to end, with real firmware and a real guest program:
//! SeaBIOS boots the project's `mbr_session` program from the VM's disk; it counts its boots
//! on the disk, prints the SMBIOS UUID and serial it finds, ticks, and shuts down on the ACPI
//! power button. Everything goes through the `virtkit` binary and the documented control socket.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virtkit_test_guests::Guest;

use support::home::{text, Home};

fn available() -> bool {
    virtkit_testkit::require_kvm_and_seabios()
}

/// A private virtkit home; `vms` keeps this file's directories apart from other test files'.
fn home(tag: &str) -> Home {
    Home::new("vms", tag)
}

/// The session image as qcow2, made by qemu-img.
fn session_qcow2(home: &Home) -> Option<PathBuf> {
    let raw = home.session_image();
    let path = home.dir.join("session.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&path)
        .status();
    match status {
        Ok(s) if s.success() => Some(path),
        _ => {
            virtkit_testkit::skip("qemu-img is not installed (Debian package qemu-utils)");
            None
        }
    }
}

/// One request on the control socket, in the documented JSON-lines protocol.
fn control(bundle: &Path, request: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(bundle.join("control.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn uuid_line(log: &str) -> String {
    log.lines()
        .find_map(|l| l.trim().strip_prefix("session: uuid="))
        .unwrap_or_else(|| panic!("no uuid line in:\n{log}"))
        .to_owned()
}

/// Reads `child`'s stdout until `needle` shows up.
fn read_until(child: &mut Child, needle: &str) -> String {
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_owned();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(&needle) {
                break;
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("no output in 30 s")
}

#[test]
fn create_run_detached_console_control_persist_clone_and_delete() {
    if !available() {
        return;
    }
    let home = home("session");
    let image = home.session_image();
    home.create("web", &image);
    let listed = home.json(&["list", "--format", "json"]);
    assert_eq!(listed[0]["name"], "web");
    assert_eq!(listed[0]["state"], "stopped");
    assert_eq!(listed[0]["cpus"], 1);
    assert_eq!(listed[0]["memory"], 128u64 << 20);
    assert_eq!(listed[0]["disk_size"], 64u64 << 20);
    assert!(
        listed[0]["disk_use"].as_u64().unwrap() < 8 << 20,
        "sparse: {listed}"
    );

    // Detached: the command returns once the VM runs; its output is in `logs`.
    home.ok(&["run", "web", "--detach"]);
    let log = home.wait_log("web", "session: ready", 1);
    assert!(
        log.contains("session: boot 1\n") || log.contains("session: boot 1\r"),
        "{log}"
    );
    assert_eq!(home.state("web"), "running");
    let id = home.json(&["get", "web", "--format", "json"]);
    assert_eq!(
        uuid_line(&log),
        id["machine_id"].as_str().unwrap(),
        "the guest sees the machine id as SMBIOS UUID"
    );
    assert!(
        log.contains(&format!(
            "session: serial={}",
            id["serial_number"].as_str().unwrap()
        )),
        "{log}"
    );

    // `console` shows the live output.
    let mut console = home
        .cmd(&["console", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = read_until(&mut console, "session: tick");
    assert!(seen.contains("session: tick"), "{seen}");
    let _ = console.kill();
    let _ = console.wait();

    // Pause and resume through the control socket: no ticks while paused.
    let bundle = home.bundle("web");
    let r = control(&bundle, r#"{"command":"pause"}"#);
    assert_eq!(
        (r["ok"].as_bool(), r["state"].as_str()),
        (Some(true), Some("paused")),
        "{r}"
    );
    assert_eq!(home.state("web"), "paused");
    std::thread::sleep(Duration::from_millis(300));
    let before = home.log("web").len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(home.log("web").len(), before, "the guest ran while paused");
    let r = control(&bundle, r#"{"command":"resume"}"#);
    assert_eq!(r["state"], "running", "{r}");
    let ticks = home.log("web").matches("session: tick").count();
    home.wait_log("web", "session: tick", ticks + 2);
    let r = control(&bundle, r#"{"command":"fly"}"#);
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().unwrap().contains("unknown command `fly`"),
        "{r}"
    );

    // While it runs: no delete, no second run, no set, no clone.
    home.fails(&["delete", "web"], "stop it first");
    home.fails(&["run", "web", "--detach"], "already running");
    home.fails(&["run", "web"], "already running");
    home.fails(&["set", "web", "--cpus", "2"], "is running");
    home.fails(&["clone", "web", "web-2"], "is running");
    assert!(bundle.join("disk.img").exists());

    // A clean stop: the power button, the guest powers off.
    let out = home.ok(&["stop", "web", "--timeout", "30"]);
    assert!(out.contains("the guest shut down"), "{out}");
    assert!(home.log("web").contains("session: power button"));
    assert_eq!(home.state("web"), "stopped");
    assert!(!bundle.join("control.sock").exists());

    // Run again: the first run's write to the disk is there.
    home.ok(&["run", "web", "--detach"]);
    let log = home.wait_log("web", "session: ready", 1);
    assert!(log.contains("session: boot 2"), "{log}");
    home.ok(&["stop", "web"]);

    // Clone, then both at once with their own identities.
    let out = home.ok(&["clone", "web", "web-2"]);
    assert!(out.contains("cloned"), "{out}");
    home.ok(&["run", "web", "--detach"]);
    home.ok(&["run", "web-2", "--detach"]);
    let a = home.wait_log("web", "session: ready", 1);
    let b = home.wait_log("web-2", "session: ready", 1);
    assert!(a.contains("session: boot 3"), "{a}");
    assert!(
        b.contains("session: boot 3"),
        "the clone has the disk as it was: {b}"
    );
    let (ja, jb) = (
        home.json(&["get", "web", "--format", "json"]),
        home.json(&["get", "web-2", "--format", "json"]),
    );
    assert_ne!(ja["machine_id"], jb["machine_id"]);
    assert_ne!(ja["mac_address"], jb["mac_address"]);
    assert_eq!(uuid_line(&a), ja["machine_id"].as_str().unwrap());
    assert_eq!(uuid_line(&b), jb["machine_id"].as_str().unwrap());
    let listed = home.json(&["list", "--format", "json"]);
    let states: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["running", "running"]);
    home.ok(&["stop", "web"]);
    home.ok(&["stop", "web-2"]);

    home.ok(&["delete", "web-2"]);
    assert!(!home.bundle("web-2").exists());
    let listed = home.json(&["list", "--format", "json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    home.fails(&["get", "web-2"], "no VM named `web-2`");
}

#[test]
fn a_vm_from_a_qcow2_image_boots_and_the_foreground_run_shows_its_console() {
    if !available() {
        return;
    }
    let home = home("qcow2");
    let Some(image) = session_qcow2(&home) else { return };
    home.create("q", &image);
    assert_eq!(
        home.json(&["get", "q", "--format", "json"])["disk_size"],
        64u64 << 20
    );
    // Foreground: the console is on standard output; SIGTERM presses the power button.
    let mut run = home
        .cmd(&["run", "q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = read_until(&mut run, "session: ready");
    assert!(seen.contains("session: boot 1"), "{seen}");
    Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(home.log("q").contains("session: power button"));
}

#[test]
fn a_killed_vm_process_leaves_a_bundle_that_runs_again() {
    if !available() {
        return;
    }
    let home = home("kill9");
    let image = home.session_image();
    home.create("k", &image);
    home.ok(&["run", "k", "--detach"]);
    home.wait_log("k", "session: ready", 1);
    let pid = home.json(&["get", "k", "--format", "json"])["pid"]
        .as_u64()
        .unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while home.state("k") != "stopped" {
        assert!(Instant::now() < deadline, "still not stopped after kill -9");
        std::thread::sleep(Duration::from_millis(50));
    }
    home.ok(&["run", "k", "--detach"]);
    let log = home.wait_log("k", "session: ready", 1);
    assert!(log.contains("session: boot 2"), "{log}");
    home.ok(&["stop", "k"]);
}

#[test]
fn two_concurrent_runs_start_the_vm_once() {
    if !available() {
        return;
    }
    let home = home("twice");
    let image = home.session_image();
    home.create("t", &image);
    let a = home
        .cmd(&["run", "t", "--detach"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = home
        .cmd(&["run", "t", "--detach"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(1)),
        "{codes:?}: {} / {}",
        text(&a),
        text(&b)
    );
    let loser = if a.status.code() == Some(1) { &a } else { &b };
    assert!(text(loser).contains("already running"), "{}", text(loser));
    let log = home.wait_log("t", "session: ready", 1);
    assert_eq!(log.matches("session: boot").count(), 1, "{log}");
    home.ok(&["stop", "t"]);
}

#[test]
fn bad_input_gets_a_clear_error_and_loses_nothing() {
    if !available() {
        return;
    }
    let home = home("bad");
    let image = home.session_image();
    home.fails(&["get", "nope"], "no VM named `nope`");
    home.fails(&["run", "nope", "--detach"], "no VM named `nope`");
    home.fails(&["delete", "nope"], "no VM named `nope`");
    home.fails(
        &["create", "../x", "--from", image.to_str().unwrap()],
        "not a valid VM name",
    );
    home.create("a", &image);
    let id = home.json(&["get", "a", "--format", "json"])["machine_id"].clone();
    home.fails(
        &["create", "a", "--from", image.to_str().unwrap()],
        "already exists",
    );
    assert_eq!(
        home.json(&["get", "a", "--format", "json"])["machine_id"],
        id,
        "the clash changed nothing"
    );
    home.fails(
        &[
            "create",
            "small",
            "--from",
            image.to_str().unwrap(),
            "--disk-size",
            "4M",
        ],
        "smaller than the image",
    );
    home.fails(
        &["create", "ghost", "--from", "/nonexistent.img"],
        "/nonexistent.img",
    );
    let corrupt = home.dir.join("corrupt.qcow2");
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(4096, 0xff);
    std::fs::write(&corrupt, bytes).unwrap();
    home.fails(&["create", "bad", "--from", corrupt.to_str().unwrap()], "qcow2");
    home.fails(&["set", "a", "--disk-size", "32M"], "can grow but not shrink");
    home.fails(&["set", "a", "--cpus", "0"], "cpu_count");
    let listed = home.json(&["list", "--format", "json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "only `a`: {listed}");
    let names: Vec<String> = std::fs::read_dir(home.dir.join("home/vms"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a"], "no leftovers");
    home.ok(&[
        "set",
        "a",
        "--cpus",
        "2",
        "--memory",
        "256M",
        "--disk-size",
        "128M",
    ]);
    let got = home.json(&["get", "a", "--format", "json"]);
    assert_eq!(
        (
            got["cpus"].as_u64(),
            got["memory"].as_u64(),
            got["disk_size"].as_u64()
        ),
        (Some(2), Some(256 << 20), Some(128 << 20))
    );
}

#[test]
fn an_interrupted_create_leaves_no_bundle() {
    if !available() {
        return;
    }
    let home = home("interrupt");
    // 768 MiB of non-zero data: the install takes long enough to be cut in the middle.
    let image = home.dir.join("big.img");
    {
        let mut f = std::fs::File::create(&image).unwrap();
        f.write_all(Guest::MbrSession.bytes()).unwrap();
        let block = vec![0x5au8; 1 << 20];
        for _ in 0..768 {
            f.write_all(&block).unwrap();
        }
    }
    let mut create = home
        .cmd(&["create", "big", "--from", image.to_str().unwrap()])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let vms = home.dir.join("home/vms");
    let staging = vms.join(format!(".big.creating-{}", create.id()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let written = std::fs::metadata(staging.join("disk.img")).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        });
        if matches!(written, Ok(n) if n >= 16 << 20) {
            break;
        }
        assert!(Instant::now() < deadline, "the install never got going");
        assert!(
            create.try_wait().unwrap().is_none(),
            "create finished before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    create.kill().unwrap();
    create.wait().unwrap();
    assert!(!vms.join("big").exists(), "a half-made bundle is visible");
    assert_eq!(
        home.json(&["list", "--format", "json"]).as_array().unwrap().len(),
        0
    );
    assert!(!staging.exists(), "the next command removed the leftover");
    home.ok(&[
        "create",
        "big",
        "--from",
        image.to_str().unwrap(),
        "--memory",
        "128M",
        "--cpus",
        "1",
    ]);
}

/// One run of the session VM until it is ready, then a clean stop; returns its log.
fn session_run(home: &Home, name: &str) -> String {
    home.ok(&["run", name, "--detach"]);
    let log = home.wait_log(name, "session: ready", 1);
    home.ok(&["stop", name, "--timeout", "30"]);
    log
}

/// Snapshots of a layered VM with a real guest: the session counts its boots on its disk, so
/// the count says which disk state the guest saw. `create --disk-format qcow2`, take, restore,
/// delete the middle of three, and a layered clone whose writes stay its own.
#[test]
fn snapshots_of_a_layered_vm_take_the_guest_back_and_a_layered_clone_is_its_own() {
    if !available() {
        return;
    }
    let home = home("snapshots");
    let image = home.session_image();
    home.create_with("s", &image, &["--disk-format", "qcow2"]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.bundle("s").join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["storage_devices"][0]["format"], "qcow2", "{config}");

    assert!(session_run(&home, "s").contains("session: boot 1"));
    home.ok(&["snapshot", "create", "s", "one"]);
    assert!(session_run(&home, "s").contains("session: boot 2"));
    home.ok(&["snapshot", "create", "s", "two"]);
    assert!(session_run(&home, "s").contains("session: boot 3"));
    home.ok(&["snapshot", "create", "s", "three"]);
    let listed = home.ok(&["snapshot", "list", "s"]);
    for name in ["one", "two", "three"] {
        assert!(listed.contains(name), "{listed}");
    }

    // Back to "one": the guest had booted once then, so this is its second boot.
    home.ok(&["snapshot", "restore", "s", "one"]);
    let log = session_run(&home, "s");
    assert!(log.contains("session: boot 2"), "{log}");
    home.ok(&["snapshot", "delete", "s", "two"]);
    home.ok(&["snapshot", "restore", "s", "three"]);
    let log = session_run(&home, "s");
    assert!(log.contains("session: boot 4"), "{log}");
    home.fails(&["snapshot", "restore", "s", "two"], "no snapshot named `two`");

    // While it runs, a snapshot cannot be restored or deleted (taking one is `suspend`'s test).
    home.ok(&["run", "s", "--detach"]);
    home.wait_log("s", "session: ready", 1);
    home.fails(&["snapshot", "restore", "s", "three"], "is running");
    home.fails(&["snapshot", "delete", "s", "three"], "is running");
    home.ok(&["stop", "s", "--timeout", "30"]);

    // A layered clone: no data copied; each VM counts on from the same state on its own.
    let out = home.ok(&["clone", "s", "c"]);
    assert!(out.contains("layered"), "{out}");
    let a = session_run(&home, "s");
    let b = session_run(&home, "c");
    assert!(a.contains("session: boot 6"), "{a}");
    assert!(
        b.contains("session: boot 6"),
        "the clone's disk is the source's: {b}"
    );
    home.ok(&["delete", "s"]);
    let b = session_run(&home, "c");
    assert!(
        b.contains("session: boot 7"),
        "the clone outlives its source: {b}"
    );
}
