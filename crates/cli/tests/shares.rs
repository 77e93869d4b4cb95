//! Shared directories of named VMs, on this host's KVM with the `Counter` guest (no guest driver
//! needed): `set --share` keeps a share in the bundle, `run NAME --share` adds one for that run
//! only; each share gets a virtiofsd of the VM process's own, gone when the VM stops; a share
//! that cannot be is one sentence and no VM.

mod support;

use std::path::Path;
use std::time::Duration;

use support::home::{wait_until, Home};

/// The virtiofsd processes whose parent is `pid`.
fn virtiofsd_children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the name may hold spaces, the last ')' ends it.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if head.ends_with("(virtiofsd") && ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

fn shares_of(home: &Home, name: &str) -> Vec<String> {
    let got = home.json(&["get", name, "--format", "json"]);
    let mut tags: Vec<String> = got["shares"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["tag"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

#[test]
fn a_named_vm_keeps_its_shares_and_run_adds_one_for_that_run_only() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let virtiofsd = match virtkit_testkit::virtiofsd::virtiofsd() {
        Ok(p) => p,
        Err(why) => {
            virtkit_testkit::skip::skip(&format!("no virtiofsd: {why}"));
            return;
        }
    };
    let home = Home::new("shares", "named");
    let (kept, once) = (home.dir.join("kept"), home.dir.join("once"));
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::create_dir_all(&once).unwrap();
    home.create_counter("vm", &["--network", "none"]);
    home.ok(&["set", "vm", "--share", &format!("{}:kept", kept.display())]);
    assert_eq!(shares_of(&home, "vm"), ["kept"]);

    let run = |args: &[&str]| {
        let mut c = home.cmd(args);
        c.env("VIRTKIT_VIRTIOFSD", &virtiofsd);
        support::home::output(c, &args.join(" "))
    };
    let out = run(&[
        "run",
        "vm",
        "--detach",
        "--share",
        &format!("{}:once:ro", once.display()),
    ]);
    assert!(out.status.success(), "{}", support::home::text(&out));
    let pid = home.pid("vm");
    wait_until("a virtiofsd per share", Duration::from_secs(10), || {
        virtiofsd_children(pid).len() == 2
    });
    let bundle = home.bundle("vm");
    for tag in ["kept", "once"] {
        assert!(
            bundle.join(format!("virtiofsd-{tag}.log")).exists(),
            "virtiofsd-{tag}.log in the bundle"
        );
    }
    // The run's own share is not written into the bundle.
    assert_eq!(shares_of(&home, "vm"), ["kept"]);
    home.ok(&["stop", "vm", "--timeout", "1"]);
    wait_until("no virtiofsd after the stop", Duration::from_secs(10), || {
        virtiofsd_children(pid).is_empty()
    });

    // A share that cannot be: one sentence, nothing running.
    let missing = home.dir.join("no-such-dir");
    let out = run(&[
        "run",
        "vm",
        "--detach",
        "--share",
        &format!("{}:gone", missing.display()),
    ]);
    assert!(!out.status.success());
    let said = support::home::text(&out);
    assert!(said.contains(&missing.display().to_string()), "{said}");
    assert_eq!(home.state("vm"), "stopped");
    // Relative paths are taken from where `run` is typed.
    let out = {
        let mut c = home.cmd(&["run", "vm", "--detach", "--share", "once:rel"]);
        c.env("VIRTKIT_VIRTIOFSD", &virtiofsd).current_dir(&home.dir);
        support::home::output(c, "run vm --detach --share once:rel")
    };
    assert!(out.status.success(), "{}", support::home::text(&out));
    home.ok(&["stop", "vm", "--timeout", "1"]);
    assert!(Path::new(&bundle).join("virtiofsd-rel.log").exists());
}
