//! Running a test's shell script where stock Linux kernels boot: directly on a host with
//! hardware KVM, or inside the emulated KVM host ([`EmulatedHost`]) on a PVM host. The script
//! finds its files in `$G`, a scratch directory in `$W`, each program in the shell variable it
//! was given, and the `vk_*` helpers of `sh/host-lib.sh` in both places.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::assets::Assets;
use crate::host::EmulatedHost;
use crate::skip::{host_kvm_kind, require_qemu, KvmKind};

const HOST_LIB: &str = include_str!("sh/host-lib.sh");

/// A script and what it needs, run by [`StockKernelScript::run`].
pub struct StockKernelScript {
    name: String,
    files: Vec<(PathBuf, String)>,
    programs: Vec<(String, PathBuf)>,
    timeout: Duration,
    host_setup: Vec<HostSetup>,
}

type HostSetup = Box<dyn FnOnce(EmulatedHost) -> EmulatedHost>;

impl StockKernelScript {
    /// `name` tags the scratch directory of a direct run.
    pub fn new(name: &str) -> StockKernelScript {
        StockKernelScript {
            name: name.to_owned(),
            files: Vec::new(),
            programs: Vec::new(),
            timeout: Duration::from_secs(600),
            host_setup: Vec::new(),
        }
    }

    /// `src` as `$G/name`.
    pub fn file(mut self, src: impl AsRef<Path>, name: &str) -> Self {
        self.files.push((src.as_ref().to_owned(), name.to_owned()));
        self
    }

    /// The program `path` as `$VAR` (`variable` is the shell variable's name).
    pub fn program(mut self, variable: &str, path: impl AsRef<Path>) -> Self {
        self.programs
            .push((variable.to_owned(), path.as_ref().to_owned()));
        self
    }

    /// How long the emulated host may run the script (default 600 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Changes the emulated host only (e.g. `.binary()`, `.data()` at fixed paths for programs
    /// the machine itself has, `.root_on_tmpfs()`); a direct run on hardware KVM ignores it.
    pub fn emulated_host(mut self, setup: impl FnOnce(EmulatedHost) -> EmulatedHost + 'static) -> Self {
        self.host_setup.push(Box::new(setup));
        self
    }

    /// Runs `script`; its standard output and error, or `None` after printing `SKIPPED:` when
    /// neither hardware KVM nor QEMU for the emulated host is there.
    pub fn run(self, assets: &Assets, script: &str) -> Option<String> {
        if host_kvm_kind() == KvmKind::Hardware {
            return Some(self.run_directly(script));
        }
        if !require_qemu() {
            return None;
        }
        // An emulated host that wedges (silent, its CPUs spinning: seen once in
        // `full_guest_debian`, once in `full_guest_devices` with no line for 9 minutes while a
        // `timeout -s KILL 180` in its script never fired) is an emulator fault, started again
        // (up to `host::MAX_ATTEMPTS` boots in all); the beat every 60 s tells it from a quiet
        // script. A test may ask for another silence.
        let mut host = EmulatedHost::new(assets).heartbeat(Duration::from_secs(200));
        let mut variables = String::from("G=/guest; W=/tmp/w; mkdir -p $W");
        for (variable, path) in &self.programs {
            let dest = format!("/usr/bin/{}", variable.to_lowercase());
            host = host.binary(path, &dest);
            variables.push_str(&format!("; {variable}={dest}"));
        }
        for (src, name) in &self.files {
            host = host.file(src, &format!("/guest/{name}"));
        }
        for setup in self.host_setup {
            host = setup(host);
        }
        let run = host
            .script(&format!("{variables}\n{script}"))
            .timeout(self.timeout)
            .run()
            .unwrap_or_else(|e| panic!("emulated host run failed: {e}"));
        if run.attempts > 1 {
            eprintln!(
                "note: the emulated host was started {} times (an emulator fault each time before: \
                 the `[testkit] attempt` lines say which)",
                run.attempts
            );
        }
        Some(run.output)
    }

    fn run_directly(&self, script: &str) -> String {
        let dir = std::env::temp_dir().join(format!("virtkit-{}-{}", self.name, std::process::id()));
        let (g, w) = (dir.join("g"), dir.join("w"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&g).unwrap();
        std::fs::create_dir_all(&w).unwrap();
        for (src, name) in &self.files {
            std::os::unix::fs::symlink(src, g.join(name)).unwrap();
        }
        let mut variables = format!("G={}; W={}", g.display(), w.display());
        for (variable, path) in &self.programs {
            variables.push_str(&format!("; {variable}={}", path.display()));
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{HOST_LIB}\n{variables}\n{script}"))
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}
