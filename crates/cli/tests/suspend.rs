//! `virtkit suspend` and the `run` that resumes, on this host's KVM with the counting guest in
//! a bundle: the count goes on after a resume (with a NAT card too: a new passt is started),
//! `run --fresh` boots anew, and a damaged state file is refused with one sentence and kept.

mod support;

use support::home::{text, Home};

const NAME: &str = "c";

/// The last complete `tick N` line's N.
fn last_tick(log: &str) -> u32 {
    ticks(log).next_back().expect("a tick")
}

/// Every complete `tick N` line's N, in order (a line cut by the suspend is left out).
fn ticks(log: &str) -> impl DoubleEndedIterator<Item = u32> + '_ {
    log.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("tick ")?.parse().ok())
}

fn console_log(home: &Home) -> String {
    std::fs::read_to_string(home.bundle(NAME).join("console.log")).unwrap()
}

/// The counter VM suspended after a few ticks; returns the last tick its run printed.
fn suspended_counter(home: &Home) -> u32 {
    home.ok(&["run", NAME, "--detach"]);
    suspend_after_tick(home, 3)
}

/// Suspends the running counter once it has printed `tick <tick>`; returns its last tick.
fn suspend_after_tick(home: &Home, tick: u32) -> u32 {
    home.wait_log(NAME, &format!("tick {tick}\n"), 1);
    let out = home.ok(&["suspend", NAME]);
    assert!(out.contains(&format!("`{NAME}`: suspended")), "{out}");
    assert_eq!(home.state(NAME), "suspended");
    assert!(home.bundle(NAME).join("state.vksave").exists());
    last_tick(&console_log(home))
}

#[test]
fn a_suspended_counter_counts_on_after_run_and_fresh_boots_it_anew() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = Home::new("suspend", "count");
    home.create_counter(NAME, &["--network", "none"]);
    let before = suspended_counter(&home);
    let listed = home.json(&["list", "--format", "json"]);
    assert_eq!(listed[0]["state"], "suspended", "{listed}");

    // `run --detach` returns once the restored VM runs, not while it is restored paused.
    let out = home.ok(&["run", NAME, "--detach"]);
    assert!(out.contains(&format!("`{NAME}`: running")), "{out}");
    let log = home.wait_log(NAME, &format!("tick {}\n", before + 3), 1);
    let first = ticks(&log).next().expect("a tick after the resume");
    assert!(
        first > before && first <= before + 2,
        "the count goes on from {before}, the resumed run printed first {first}:\n{log}"
    );
    assert_eq!(home.state(NAME), "running");
    assert!(
        !home.bundle(NAME).join("state.vksave").exists(),
        "the state file goes once the VM runs again"
    );

    // Suspended again, `--fresh` discards the state and boots: the count starts over.
    suspend_after_tick(&home, before + 4);
    home.ok(&["run", NAME, "--detach", "--fresh"]);
    let log = home.wait_log(NAME, "tick 2\n", 1);
    assert!(log.starts_with("tick 0\n") || log.contains("\ntick 0\n"), "{log}");
    assert!(!home.bundle(NAME).join("state.vksave").exists());
    home.ok(&["stop", NAME, "--timeout", "0"]);
    assert_eq!(home.state(NAME), "stopped");
}

#[test]
fn a_damaged_state_file_is_refused_in_one_sentence_and_kept() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = Home::new("suspend", "damaged");
    home.create_counter(NAME, &["--network", "none"]);
    suspended_counter(&home);
    let path = home.bundle(NAME).join("state.vksave");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 40] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();

    let out = home.vk(&["run", NAME]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "cannot resume the suspended VM `{NAME}` from its saved state"
        )) && said.contains(&format!("`virtkit run {NAME} --fresh` discards it"))
            && said.contains("damaged"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the state file is kept as it was"
    );
    assert_eq!(home.state(NAME), "suspended");

    home.ok(&["run", NAME, "--detach", "--fresh"]);
    home.wait_log(NAME, "tick 1\n", 1);
    home.ok(&["stop", NAME, "--timeout", "0"]);
}

#[test]
fn a_counter_with_a_nat_card_resumes_with_a_new_passt() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    if std::process::Command::new("passt")
        .arg("--version")
        .output()
        .is_err()
    {
        virtkit_testkit::skip("passt is not installed (Debian package passt)");
        return;
    }
    let home = Home::new("suspend", "nat");
    home.create_counter(NAME, &["--network", "nat"]);
    let before = suspended_counter(&home);
    // `run --detach` returns once the restored VM runs, not while it is restored paused.
    let out = home.ok(&["run", NAME, "--detach"]);
    assert!(out.contains(&format!("`{NAME}`: running")), "{out}");
    let log = home.wait_log(NAME, &format!("tick {}\n", before + 3), 1);
    let first = ticks(&log).next().expect("a tick after the resume");
    assert!(
        first > before && first <= before + 2,
        "{before} then {first}:\n{log}"
    );
    assert_eq!(
        home.ok(&["ip", NAME]).trim(),
        "10.0.2.15",
        "the card is there with its address"
    );
    home.ok(&["stop", NAME, "--timeout", "0"]);
}

/// The last `session: tick N` line's N.
fn last_session_tick(log: &str) -> u32 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("session: tick ")?.parse().ok())
        .next_back()
        .expect("a session tick")
}

/// SeaBIOS booting the `mbr_session` program from the bundle's virtio-blk disk (it counts its
/// boots on the disk, then ticks): suspended and resumed it ticks on without booting again,
/// answers the ACPI power button (the PM registers came back), and its next boot finds the
/// count its first boot wrote.
#[test]
fn a_suspended_seabios_session_ticks_on_and_answers_the_power_button() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    let home = Home::new("suspend", "session");
    let image = home.session_image();
    home.create_with("s", &image, &["--network", "none"]);
    home.ok(&["run", "s", "--detach"]);
    home.wait_log("s", "session: tick 2", 1);
    home.ok(&["suspend", "s"]);
    assert_eq!(home.state("s"), "suspended");
    let before = std::fs::read_to_string(home.bundle("s").join("console.log")).unwrap();
    assert!(before.contains("session: boot 1"), "{before}");
    let last = last_session_tick(&before);

    home.ok(&["run", "s", "--detach"]);
    let log = home.wait_log("s", &format!("session: tick {}", last + 2), 1);
    assert!(
        !log.contains("SeaBIOS") && !log.contains("session: boot"),
        "it booted again rather than going on:\n{log}"
    );
    let out = home.ok(&["stop", "s", "--timeout", "30"]);
    assert!(out.contains("the guest shut down"), "{out}");
    assert!(home.log("s").contains("session: power button"));

    home.ok(&["run", "s", "--detach"]);
    let log = home.wait_log("s", "session: ready", 1);
    assert!(log.contains("session: boot 2"), "{log}");
    home.ok(&["stop", "s", "--timeout", "0"]);
}

/// With `run --console hvc` the console is a virtio-console port on the VM process's pipes
/// (descriptors, which a state file cannot record): the suspend saves the port as the guest sees
/// it, and a run with the same console resumes (COM1, where the counter writes, goes to
/// `serial.log`).
#[test]
fn a_counter_run_on_the_hvc_console_suspends_and_resumes() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = Home::new("suspend", "hvc");
    home.create_counter(NAME, &["--network", "none"]);
    let serial = home.bundle(NAME).join("serial.log");
    let wait_serial = |tick: u32| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&serial).unwrap_or_default();
            if log.contains(&format!("tick {tick}\n")) {
                return log;
            }
            assert!(std::time::Instant::now() < deadline, "no tick {tick} in:\n{log}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    home.ok(&["run", NAME, "--detach", "--console", "hvc"]);
    wait_serial(3);
    home.ok(&["suspend", NAME]);
    let before = last_tick(&std::fs::read_to_string(&serial).unwrap());
    home.ok(&["run", NAME, "--detach", "--console", "hvc"]);
    let log = wait_serial(before + 3);
    let first = ticks(&log).next().expect("a tick after the resume");
    assert!(
        first > before && first <= before + 2,
        "{before} then {first}:\n{log}"
    );
    home.ok(&["stop", NAME, "--timeout", "0"]);
}

/// A snapshot of a suspended VM keeps its saved state with its disk: restoring it later makes
/// the VM suspended at that moment again, and `run` goes on from there. The first snapshot
/// also turns the raw disk into a layered one, which the saved state must not mind.
#[test]
fn a_snapshot_of_a_suspended_vm_resumes_from_that_moment_after_a_restore() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = Home::new("suspend", "snapshot");
    home.create_counter(NAME, &["--network", "none"]);
    let before = suspended_counter(&home);
    home.ok(&["snapshot", "create", NAME, "here"]);
    assert_eq!(home.state(NAME), "suspended");

    // Resumed and run on, then stopped: the state file is gone.
    home.ok(&["run", NAME, "--detach"]);
    home.wait_log(NAME, &format!("tick {}\n", before + 4), 1);
    home.ok(&["stop", NAME, "--timeout", "0"]);
    assert_eq!(home.state(NAME), "stopped");

    home.ok(&["snapshot", "restore", NAME, "here"]);
    assert_eq!(home.state(NAME), "suspended");
    home.ok(&["run", NAME, "--detach"]);
    let log = home.wait_log(NAME, &format!("tick {}\n", before + 2), 1);
    let first = ticks(&log).next().expect("a tick after the resume");
    assert!(
        first > before && first <= before + 2,
        "the count goes on from {before} again, the run printed first {first}:\n{log}"
    );
    home.ok(&["stop", NAME, "--timeout", "0"]);
}

/// A snapshot of a running VM is taken by its process: SeaBIOS's `mbr_session` (which counts
/// its boots on its raw virtio-blk disk, then ticks) ticks on in the same process without
/// booting again, and its disk has moved onto a new qcow2 layer over the raw file: the next
/// boot reads the count through the layer and writes the new one into it. Restoring the
/// snapshot makes the VM suspended at that moment: it ticks on from there without booting,
/// and its next boot finds the count the disk had then.
#[test]
fn a_snapshot_of_a_running_vm_lets_it_run_on_and_takes_it_back_to_that_moment() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    let home = Home::new("suspend", "live-snapshot");
    let image = home.session_image();
    home.create_with("s", &image, &["--network", "none"]);
    home.ok(&["run", "s", "--detach"]);
    home.wait_log("s", "session: tick 2", 1);
    let pid = home.pid("s");
    let out = home.ok(&["snapshot", "create", "s", "live"]);
    assert!(out.contains("runs on"), "{out}");
    let at = last_session_tick(&home.log("s"));
    assert_eq!(home.state("s"), "running");
    let log = home.wait_log("s", &format!("session: tick {}", at + 2), 1);
    assert_eq!(home.pid("s"), pid, "the same process runs the VM on");
    assert_eq!(log.matches("session: boot").count(), 1, "it booted again:\n{log}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.bundle("s").join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["storage_devices"][0]["format"], "qcow2", "{config}");
    // The process has the new active layer open (it holds its lock), and only reads the old
    // file, now a layer (a shared lock: an exclusive one is refused, a shared one is not).
    let layer = std::fs::read_dir(home.bundle("s"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("layer-"))
        .expect("the frozen layer");
    let flock = |mode: &str, path: &std::path::Path| {
        std::process::Command::new("flock")
            .args([mode, "-n"])
            .arg(path)
            .arg("true")
            .status()
            .expect("flock (util-linux) runs")
            .success()
    };
    assert!(
        !flock("-x", &home.bundle("s").join("disk.img")),
        "the new disk.img is not in use"
    );
    assert!(!flock("-x", &layer), "the layer is not read by the VM");
    assert!(flock("-s", &layer), "the VM still writes the layer");
    let out = home.ok(&["stop", "s", "--timeout", "30"]);
    assert!(out.contains("the guest shut down"), "{out}");

    // The next boot reads the count the first wrote (now in the frozen layer) and writes its own
    // into the active layer.
    home.ok(&["run", "s", "--detach"]);
    let log = home.wait_log("s", "session: ready", 1);
    assert!(log.contains("session: boot 2"), "{log}");
    home.ok(&["stop", "s", "--timeout", "0"]);

    home.ok(&["snapshot", "restore", "s", "live"]);
    assert_eq!(home.state("s"), "suspended");
    home.ok(&["run", "s", "--detach"]);
    let log = home.wait_log("s", &format!("session: tick {}", at + 2), 1);
    assert!(
        !log.contains("SeaBIOS") && !log.contains("session: boot"),
        "it booted again rather than going on:\n{log}"
    );
    let first: u32 = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("session: tick ")?.parse().ok())
        .expect("a tick");
    assert!(
        first >= at && first <= at + 2,
        "the ticks go on from {at}; the resumed run printed first {first}:\n{log}"
    );
    home.ok(&["stop", "s", "--timeout", "30"]);
    home.ok(&["run", "s", "--detach"]);
    let log = home.wait_log("s", "session: ready", 1);
    assert!(
        log.contains("session: boot 2"),
        "the disk is as it was at the snapshot (booted once):\n{log}"
    );
    home.ok(&["stop", "s", "--timeout", "0"]);
}
