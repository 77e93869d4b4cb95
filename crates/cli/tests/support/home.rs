//! A private virtkit home for the tests that drive the `virtkit` binary: a VIRTKIT_HOME and
//! scratch space of its own under the temporary directory, removed at the end together with
//! whatever VMs a failed test left running. What only one test file needs stays in that file,
//! as an extension trait or free functions beside its tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use virtkit_test_guests::Guest;

use super::VIRTKIT;

/// Runs a virtkit command to its end and shows it on standard error; `what` names it (its
/// arguments) in what is shown and in failures. A test file whose commands must not hang the
/// suite passes one with a time limit to [`Home::running_with`].
pub type Runner = fn(Command, &str) -> Output;

/// A private virtkit home: VIRTKIT_HOME is `dir/home`; the rest of `dir` is the test's.
pub struct Home {
    pub dir: PathBuf,
    /// Variables of the test's own environment that the virtkit commands must not inherit.
    unset: Vec<&'static str>,
    run: Runner,
    /// `dir` is a file system mounted by the test: unmounted before it is removed.
    unmount: bool,
}

impl Home {
    /// `virtkit-PREFIX-TAG-PID` in the temporary directory, emptied first. Each test file has a
    /// prefix of its own and each of its tests a tag, so that test binaries running at once
    /// never share a directory (nor does a test with a leftover of an earlier run).
    pub fn new(prefix: &str, tag: &str) -> Home {
        let dir = std::env::temp_dir().join(format!("virtkit-{prefix}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Home {
            dir,
            unset: Vec::new(),
            run: output,
            unmount: false,
        }
    }

    /// Keeps `var` of the test's environment from every virtkit command run with [`Home::cmd`].
    pub fn without_env(mut self, var: &'static str) -> Home {
        self.unset.push(var);
        self
    }

    /// Runs [`Home::vk`] (and so `ok`, `fails`, `json`, `state`) with `run` instead of [`output`].
    pub fn running_with(mut self, run: Runner) -> Home {
        self.run = run;
        self
    }

    /// `dir` has been made a mount point: it is unmounted at the end, after the VMs on it are
    /// killed (their open files would keep it busy) and before it is removed.
    pub fn unmount_at_drop(&mut self) {
        self.unmount = true;
    }

    /// `virtkit args` in this home, standard input empty.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(VIRTKIT);
        c.args(args)
            .env("VIRTKIT_HOME", self.dir.join("home"))
            .stdin(Stdio::null());
        for var in &self.unset {
            c.env_remove(var);
        }
        c
    }

    pub fn vk(&self, args: &[&str]) -> Output {
        (self.run)(self.cmd(args), &args.join(" "))
    }

    /// The standard output of `virtkit args`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        assert_ok(args, &self.vk(args))
    }

    /// The whole output of `virtkit args`, which must fail (exit 1) saying `expect`.
    pub fn fails(&self, args: &[&str], expect: &str) -> String {
        let out = self.vk(args);
        let t = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "virtkit {} should fail: {t}",
            args.join(" ")
        );
        assert!(
            t.contains(expect),
            "virtkit {}: expected `{expect}` in:\n{t}",
            args.join(" ")
        );
        t
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    pub fn bundle(&self, name: &str) -> PathBuf {
        self.dir.join("home/vms").join(name)
    }

    /// The VM's state as `virtkit get` reports it.
    pub fn state(&self, name: &str) -> String {
        self.json(&["get", name, "--format", "json"])["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The VM process's ID, from the bundle's `pid` file (which must be there).
    pub fn pid(&self, name: &str) -> u32 {
        std::fs::read_to_string(self.bundle(name).join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The console log as `virtkit logs` shows it.
    pub fn log(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["logs", name]).output().unwrap().stdout).into_owned()
    }

    /// Waits until `virtkit logs` has `count` lines containing `needle`; returns the log.
    pub fn wait_log(&self, name: &str, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log(name);
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "`{needle}` ×{count} not in the log of {name}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A raw disk image holding the `mbr_session` program, which SeaBIOS boots: it prints
    /// `session: ready` and ticks on COM1, and powers off on the power button.
    pub fn session_image(&self) -> PathBuf {
        let path = self.dir.join("session.img");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(Guest::MbrSession.bytes()).unwrap();
        f.set_len(8 << 20).unwrap();
        path
    }

    /// The VM `name` booting the `Counter` test guest directly (64 MiB, one vCPU, a 1 MiB disk),
    /// with `more` arguments for `create` (its network, most often).
    pub fn create_counter(&self, name: &str, more: &[&str]) {
        let counter = Guest::Counter.path();
        let mut args = vec![
            "create",
            name,
            "--kernel",
            counter.to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            "1",
            "--disk-size",
            "1M",
        ];
        args.extend_from_slice(more);
        self.ok(&args);
    }

    /// The VM `name` from `image`: a 64 MiB disk, 128 MiB of memory, one vCPU.
    pub fn create(&self, name: &str, image: &Path) {
        self.create_with(name, image, &[]);
    }

    /// [`Home::create`] with more `create` options.
    pub fn create_with(&self, name: &str, image: &Path, more: &[&str]) {
        let mut args = vec![
            "create",
            name,
            "--from",
            image.to_str().unwrap(),
            "--disk-size",
            "64M",
            "--memory",
            "128M",
            "--cpus",
            "1",
        ];
        args.extend_from_slice(more);
        self.ok(&args);
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Stop whatever a failed test left running, then remove everything.
        if let Ok(list) = std::fs::read_dir(self.dir.join("home/vms")) {
            for e in list.filter_map(|e| e.ok()) {
                if let Ok(pid) = std::fs::read_to_string(e.path().join("pid")) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
        if self.unmount {
            let _ = Command::new("umount")
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The default [`Runner`]: waits as long as the command takes.
pub fn output(mut c: Command, what: &str) -> Output {
    let out = c.output().unwrap();
    report(what, &out);
    out
}

/// Shows a finished virtkit command on standard error (the test's output, seen when it fails).
pub fn report(what: &str, out: &Output) {
    eprintln!("$ virtkit {what} → {:?}\n{}", out.status.code(), text(out));
}

/// The standard output of `virtkit args`, which must have succeeded.
pub fn assert_ok(args: &[&str], out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "virtkit {}: {}",
        args.join(" "),
        text(out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard output, then standard error.
pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Polls `done` every 50 ms until it holds; fails the test after `timeout`, naming `what`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
