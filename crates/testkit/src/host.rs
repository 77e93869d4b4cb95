//! The emulated KVM host: QEMU TCG (`-cpu max`, which emulates AMD-V with nested paging) boots
//! the asset kernel with a generated initramfs; its `/init` loads `kvm.ko` + `kvm-amd.ko`, so a
//! VMM running there gets a `/dev/kvm` with hardware-virtualization semantics. See
//! `docs/TESTING.md` and `/work/shared/PLATFORM.md`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::assets::Assets;
use crate::cpio::CpioWriter;
use crate::skip::qemu_program;

/// Prefix of the lines the emulated host's init prints.
pub const HOST_PREFIX: &str = "VIRTKIT-HOST: ";
/// Prefix of the lines the guest initramfs's init prints.
pub const GUEST_PREFIX: &str = "VIRTKIT-GUEST: ";

const KVM_READY: &str = "VIRTKIT-HOST: kvm-ready";
const KVM_MISSING: &str = "VIRTKIT-HOST: kvm-missing";
const SCRIPT_EXIT: &str = "VIRTKIT-HOST: script-exit=";

/// The message printed (and put in [`HostRun::output`]) when a boot is started once more.
/// How many times at most the emulated host is booted for one script when the emulator fails
/// (a hang before `kvm-ready`, a panic or triple fault of its own kernel).
/// Five: a failing boot of the emulator's usually fails within its first minutes, and one CI
/// run of `full_guest_debian` needed its third boot after two triple faults of the emulated
/// host (another, stop 19's, failed all three).
pub const MAX_ATTEMPTS: u32 = 5;

pub const RETRY_NOTICE: &str = "emulated host hung before /dev/kvm was ready (emulator hang, \
                                not virtkit); starting it once more";
/// The message printed (and put in [`HostRun::output`]) when the emulated host's own kernel
/// panicked during the script and the run is started once more.
pub const CRASH_RETRY_NOTICE: &str = "the emulated host's own kernel panicked during the script \
                                      (a bug of the emulator's nested virtualization or of that \
                                      kernel: no user-space program crashes a correct kernel); \
                                      starting it once more";
/// The message printed (and put in [`HostRun::output`]) when the emulated host triple-faulted
/// during the script and the run is started once more.
pub const TRIPLE_FAULT_RETRY_NOTICE: &str = "the emulated host's own CPU triple-faulted during \
                                             the script (QEMU logged it; a bug of the emulator's \
                                             nested virtualization or of that kernel: no \
                                             user-space program triple-faults a kernel); starting \
                                             it once more";
/// The message printed (and put in [`HostRun::output`]) when QEMU itself aborted on one of its
/// own assertions during the script and the run is started once more.
pub const EMULATOR_ABORT_RETRY_NOTICE: &str = "the emulator (QEMU) aborted on an assertion of its \
                                               own during the script (a bug of its nested \
                                               virtualization, not of virtkit); starting it once \
                                               more";
/// The message printed (and put in [`HostRun::output`]) when an emulated host with a heartbeat
/// went silent during the script and the run is started once more.
pub const WEDGED_RETRY_NOTICE: &str = "the emulated host wedged (no output, not even its \
                                       heartbeat; an emulator fault, not virtkit); starting it \
                                       once more";
/// What QEMU prints (on standard error, and through glib on the console) when one of its
/// assertions fails, as QEMU 7.2 and 10.0 do in `tcg_handle_interrupt` when a nested guest
/// writes CR8 while a virtual interrupt is pending (OVMF's interrupt return does).
const QEMU_ASSERTION: &str = "assertion failed";
/// What QEMU's `-d cpu_reset` log says when a CPU of the emulated host triple-faults outside
/// guest mode (in guest mode it is a `#VMEXIT(SHUTDOWN)` to the host's KVM instead, which QEMU
/// does not log). With `-no-reboot` QEMU then exits without a word on the console.
const QEMU_TRIPLE_FAULT: &str = "Triple fault";
/// What the emulated host's kernel prints when it panics. With `panic=-1` and `-no-reboot` QEMU
/// then exits by itself, which nothing else does before the script's end: an inner guest's panic
/// reaches the console too, but never stops QEMU.
const HOST_KERNEL_PANIC: &str = "Kernel panic - not syncing";

const HOST_INIT: &str = include_str!("sh/host-init.sh");
const HOST_LIB: &str = include_str!("sh/host-lib.sh");

/// Environment variable: `1` keeps the emulated host's work directory (initramfs) after the run.
pub const KEEP_WORKDIR_ENV: &str = "VIRTKIT_KEEP_WORKDIR";
/// Environment variable: `1` writes the `[host]` lines straight to stderr, past libtest's
/// capture (by default they are printed with `eprintln!`, shown live with `--nocapture` and for
/// failed tests).
pub const STREAM_ENV: &str = "VIRTKIT_TESTKIT_STREAM";
/// Environment variable: the host TSC frequency in kHz passed to the emulated host as
/// `tsc_early_khz=` (`0` disables it). Detected from the kernel log or `/proc/cpuinfo` if unset.
pub const TSC_KHZ_ENV: &str = "VIRTKIT_TSC_KHZ";

/// Errors of the emulated-host harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file could not be read or written while preparing the run.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A builder argument is unusable (bad destination path, environment name...).
    #[error("invalid emulated-host setup: {0}")]
    Invalid(String),
    /// A `.binary()` could not be prepared (e.g. `ldd` reports a library as not found).
    #[error("{}: {message}", binary.display())]
    Binary {
        /// The binary.
        binary: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// QEMU could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// QEMU exited before the emulated host reported `/dev/kvm` ready (bad arguments, a kernel
    /// panic in the emulated host...). Not retried.
    #[error(
        "QEMU exited ({status}) before the emulated host reported /dev/kvm ready\n\
         --- QEMU stderr ---\n{stderr}--- serial output (last lines) ---\n{}",
        tail(output, 40)
    )]
    QemuExited {
        /// QEMU's exit status.
        status: String,
        /// QEMU's stderr.
        stderr: String,
        /// The serial output.
        output: String,
    },
    /// The emulated host booted but has no `/dev/kvm` after loading the modules.
    #[error(
        "the emulated host has no /dev/kvm after loading the KVM modules\n\
         --- serial output (last lines) ---\n{}",
        tail(output, 60)
    )]
    KvmMissing {
        /// The serial output.
        output: String,
    },
    /// The emulated host hung before `/dev/kvm` was ready, in every attempt: the emulator's
    /// problem, not the test's (see PLATFORM.md).
    #[error(
        "the emulated host hung before /dev/kvm was ready in {attempts} attempt(s) (emulator \
         hang, not virtkit)\n--- serial output of the last attempt (last lines) ---\n{}",
        tail(output, 40)
    )]
    HangBeforeReady {
        /// The serial output of all attempts.
        output: String,
        /// How many boots were tried.
        attempts: u32,
    },
    /// The emulated host's own CPU triple-faulted during the script, in every attempt.
    #[error(
        "the emulated host's own CPU triple-faulted during the script in {attempts} attempt(s) \
         (emulator or host-kernel bug)\n--- serial output of the last attempt (last lines) ---\n{}",
        tail(output, 60)
    )]
    HostTripleFaulted {
        /// The serial output of all attempts.
        output: String,
        /// How many boots were tried.
        attempts: u32,
    },
    /// The emulated host (with a heartbeat) went silent during the script, in every attempt.
    #[error(
        "the emulated host printed nothing, not even its heartbeat, during the script in \
         {attempts} attempt(s) (it wedged: an emulator fault)\n--- serial output of the last \
         attempt (last lines) ---\n{}",
        tail(output, 40)
    )]
    Wedged {
        /// The serial output of all attempts.
        output: String,
        attempts: u32,
    },
    /// The emulator aborted on an assertion of its own during the script, in every attempt.
    #[error(
        "the emulator (QEMU) aborted on an assertion of its own during the script in {attempts} \
         attempt(s) (emulator bug)\n--- serial output of the last attempt (last lines) ---\n{}",
        tail(output, 40)
    )]
    EmulatorAborted {
        /// The serial output of all attempts.
        output: String,
        attempts: u32,
    },
    /// The emulated host's own kernel panicked during the script, in every attempt.
    #[error(
        "the emulated host's own kernel panicked during the script in {attempts} attempt(s) \
         (emulator or host-kernel bug)\n--- serial output of the last attempt (last lines) ---\n{}",
        tail(output, 60)
    )]
    HostKernelPanicked {
        /// The serial output of all attempts.
        output: String,
        /// How many boots were tried.
        attempts: u32,
    },
    /// The emulated host hung or ran past the timeout after `/dev/kvm` was ready: a test
    /// failure, never retried.
    #[error(
        "the emulated host hung or timed out after /dev/kvm was ready (test failure, not \
         retried)\n--- serial output (last lines) ---\n{}",
        tail(output, 60)
    )]
    HangAfterReady {
        /// The serial output.
        output: String,
    },
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = lines[start..].join("\n");
    out.push('\n');
    out
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}

/// The result of a run that got past `kvm-ready`.
#[derive(Debug, Clone)]
pub struct HostRun {
    /// The serial output of the emulated host (the last attempt; a retry notice first if the
    /// host was started twice). Lines end with `\n`, carriage returns removed.
    pub output: String,
    /// The exit code of the test's script, `None` if the host stopped before it finished.
    pub script_exit: Option<i32>,
    /// How many times the emulated host was started (2 after an emulator hang).
    pub attempts: u32,
    /// Wall time from starting QEMU to `VIRTKIT-HOST: kvm-ready` (last attempt).
    pub boot_to_ready: Duration,
    /// Wall time of the whole run, all attempts.
    pub elapsed: Duration,
}

impl HostRun {
    /// For each output line containing `prefix`, the text after it (e.g. with
    /// `"VIRTKIT-GUEST: "`: `["init", "cpus=2", ...]`). The prefix may be preceded by other
    /// text on the line (a kernel message printed at the same moment).
    pub fn lines_with_prefix<'a>(&'a self, prefix: &str) -> Vec<&'a str> {
        lines_with_prefix(&self.output, prefix)
    }

    /// The guest markers: [`HostRun::lines_with_prefix`] with [`GUEST_PREFIX`].
    pub fn guest_markers(&self) -> Vec<&str> {
        self.lines_with_prefix(GUEST_PREFIX)
    }

    /// The value of the first guest marker `<key>=<value>` (e.g. `guest_value("token")`).
    pub fn guest_value(&self, key: &str) -> Option<&str> {
        marker_value(&self.output, GUEST_PREFIX, key)
    }

    /// The output's lines.
    pub fn lines(&self) -> std::str::Lines<'_> {
        self.output.lines()
    }

    /// Whether the output contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.output.contains(needle)
    }

    /// Whether the script ran to the end and exited 0.
    pub fn succeeded(&self) -> bool {
        self.script_exit == Some(0)
    }

    /// Panics, showing the end of the output, unless the script exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.succeeded(),
            "emulated host script exit: {:?} (attempts: {})\n--- serial output (last lines) ---\n{}",
            self.script_exit,
            self.attempts,
            tail(&self.output, 80)
        );
    }
}

/// For each line of `output` containing `prefix`, the text after the prefix.
pub fn lines_with_prefix<'a>(output: &'a str, prefix: &str) -> Vec<&'a str> {
    output
        .lines()
        .filter_map(|l| l.find(prefix).map(|i| l[i + prefix.len()..].trim_end()))
        .collect()
}

/// The value of the first `<prefix><key>=<value>` line.
pub fn marker_value<'a>(output: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
    lines_with_prefix(output, prefix)
        .into_iter()
        .find_map(|m| m.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn parse_script_exit(line: &str) -> Option<i32> {
    let i = line.find(SCRIPT_EXIT)?;
    let rest = &line[i + SCRIPT_EXIT.len()..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

#[derive(Debug, Clone)]
enum Entry {
    File { src: PathBuf, dest: String },
    Binary { src: PathBuf, dest: String },
    Data { dest: String, data: Vec<u8>, mode: u32 },
}

/// Builder and runner of one emulated-KVM-host boot. See the crate documentation for an example.
#[derive(Debug, Clone)]
pub struct EmulatedHost {
    kernel: PathBuf,
    busybox: PathBuf,
    modules: Vec<PathBuf>,
    entries: Vec<Entry>,
    script: String,
    env: Vec<(String, String)>,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    boot_silence: Duration,
    boot_timeout: Duration,
    /// With a heartbeat: how long the host may print nothing after `kvm-ready`.
    script_silence: Option<Duration>,
    qemu: String,
    qemu_args: Vec<String>,
    kernel_args: Vec<String>,
    poweroff_grace: Duration,
    root_on_tmpfs: bool,
}

impl EmulatedHost {
    /// A host booting the asset kernel with the asset busybox and KVM modules, 2 CPUs, 2 GiB,
    /// an empty script and a 300 s timeout after `kvm-ready`.
    pub fn new(assets: &Assets) -> Self {
        EmulatedHost {
            kernel: assets.vmlinuz().to_path_buf(),
            busybox: assets.busybox().to_path_buf(),
            modules: assets.host_modules().to_vec(),
            entries: Vec::new(),
            script: String::new(),
            env: Vec::new(),
            memory_mib: 2048,
            cpus: 2,
            timeout: Duration::from_secs(300),
            boot_silence: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(90),
            script_silence: None,
            qemu: qemu_program(),
            qemu_args: Vec::new(),
            kernel_args: Vec::new(),
            poweroff_grace: Duration::from_secs(30),
            root_on_tmpfs: false,
        }
    }

    /// Copies the file `src` (symlinks followed) to `dest` in the host. If `src` is a directory
    /// it is copied recursively (symlinks inside it stay symlinks).
    pub fn file(mut self, src: impl AsRef<Path>, dest: &str) -> Self {
        self.entries.push(Entry::File {
            src: src.as_ref().to_path_buf(),
            dest: dest.to_string(),
        });
        self
    }

    /// Copies the executable `src` to `dest`, plus every shared library `ldd` lists for it (and
    /// the dynamic loader) at the same paths as on this machine.
    pub fn binary(mut self, src: impl AsRef<Path>, dest: &str) -> Self {
        self.entries.push(Entry::Binary {
            src: src.as_ref().to_path_buf(),
            dest: dest.to_string(),
        });
        self
    }

    /// Writes `data` to `dest` in the host with permission bits `mode`.
    pub fn data(mut self, dest: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.entries.push(Entry::Data {
            dest: dest.to_string(),
            data: data.into(),
            mode,
        });
        self
    }

    /// The test's shell script (busybox `sh`), run after `/dev/kvm` is ready, in `/`, with stdin
    /// from `/dev/null` and stdout/stderr on the serial console. The helpers of
    /// `/virtkit/lib.sh` (`vk_start`, `vk_expect`, `vk_send`, `vk_wait`, `vk_stop`) are defined.
    /// Its exit code becomes [`HostRun::script_exit`].
    pub fn script(mut self, text: &str) -> Self {
        self.script = text.to_string();
        self
    }

    /// Exports `name=value` to the script.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Memory of the emulated host in MiB (default 2048).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// CPUs of the emulated host (default 2).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Time allowed after `kvm-ready` until the script exits (default 300 s). Running past it
    /// is [`HarnessError::HangAfterReady`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Boot watchdog before `kvm-ready`: a boot that prints nothing for `silence` (default 30 s)
    /// or is not ready after `total` (default 90 s) is an emulator hang, started once more.
    /// The host's init prints a line every 60 s while the script runs, and a host that prints
    /// nothing for `silence` after `kvm-ready` has wedged (the emulator's fault: one spun its
    /// CPUs for half an hour in `full_guest_debian` with no word): it is started once more, as
    /// for a triple fault. `silence` must be well above 60 s.
    pub fn heartbeat(mut self, silence: Duration) -> Self {
        self.script_silence = Some(silence);
        self.data("/virtkit/heartbeat", "", 0o644)
    }

    pub fn boot_timeouts(mut self, silence: Duration, total: Duration) -> Self {
        self.boot_silence = silence;
        self.boot_timeout = total;
        self
    }

    /// How long QEMU may take to exit after the script finished (default 30 s); then it is
    /// killed and the run still counts.
    pub fn poweroff_grace(mut self, grace: Duration) -> Self {
        self.poweroff_grace = grace;
        self
    }

    /// Runs the init and the script with `/` on a tmpfs mount: the init copies the initramfs
    /// there and `switch_root`s before anything else. On the initramfs's own root (`rootfs`,
    /// which has no parent mount) `pivot_root(2)` fails with EINVAL, so programs that sandbox
    /// themselves with it (passt: "pivot_root: Invalid argument") need this; `chroot` is no way
    /// out, as a chrooted process may not create user namespaces. Costs a copy of the
    /// initramfs's files (briefly twice their size in RAM).
    pub fn root_on_tmpfs(mut self) -> Self {
        self.root_on_tmpfs = true;
        self
    }

    /// The QEMU binary (default `$VIRTKIT_QEMU` or `qemu-system-x86_64`).
    pub fn qemu(mut self, program: &str) -> Self {
        self.qemu = program.to_string();
        self
    }

    /// An extra argument for the emulated host's QEMU (e.g. a `-drive`).
    pub fn qemu_arg(mut self, arg: &str) -> Self {
        self.qemu_args.push(arg.to_string());
        self
    }

    /// An extra argument on the emulated host's kernel command line.
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.kernel_args.push(arg.to_string());
        self
    }

    /// The emulated host's kernel command line.
    pub fn cmdline(&self) -> String {
        let mut c = String::from("console=ttyS0 earlyprintk=ttyS0 panic=-1 quiet");
        if let Some(khz) = host_tsc_khz() {
            // Without it the kernel calibrates the TSC against the emulated PIT, which under
            // load often fails ("tsc: Unable to calibrate against PIT") and the boot then hangs
            // waiting for timer ticks. TCG's guest TSC runs at the host TSC's rate.
            let _ = write!(c, " tsc_early_khz={khz}");
        }
        for a in &self.kernel_args {
            c.push(' ');
            c.push_str(a);
        }
        c
    }

    /// The QEMU arguments for the initramfs `initrd`.
    pub fn qemu_command_args(&self, initrd: &Path) -> Vec<String> {
        let mut a: Vec<String> = [
            "-M",
            "microvm",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(self.cpus.to_string());
        a.push("-m".into());
        a.push(self.memory_mib.to_string());
        a.extend(
            [
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-serial",
                "stdio",
                "-no-reboot",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a.push("-kernel".into());
        a.push(self.kernel.display().to_string());
        a.push("-initrd".into());
        a.push(initrd.display().to_string());
        a.push("-append".into());
        a.push(self.cmdline());
        a.extend(self.qemu_args.iter().cloned());
        a
    }

    /// Writes the emulated host's initramfs (uncompressed newc cpio) to `path`.
    pub fn write_initramfs(&self, path: &Path) -> Result<(), HarnessError> {
        let f = File::create(path).map_err(io_err(format!("create {}", path.display())))?;
        let mut w = CpioWriter::new(BufWriter::with_capacity(1 << 20, f));
        let ctx = |what: &str| io_err(format!("writing {} ({what})", path.display()));
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "root", "etc",
            "virtkit",
        ] {
            w.dir(d, 0o755).map_err(ctx(d))?;
        }
        w.char_device("dev/console", 0o600, 5, 1)
            .map_err(ctx("dev/console"))?;
        w.file_from_path("bin/busybox", &self.busybox)
            .map_err(ctx(&self.busybox.display().to_string()))?;
        w.file("init", 0o755, HOST_INIT.as_bytes()).map_err(ctx("init"))?;
        w.file("virtkit/lib.sh", 0o644, HOST_LIB.as_bytes())
            .map_err(ctx("lib.sh"))?;
        w.file("virtkit/script.sh", 0o755, self.script.as_bytes())
            .map_err(ctx("script.sh"))?;
        w.file("virtkit/env", 0o644, self.env_file()?.as_bytes())
            .map_err(ctx("env"))?;
        if self.root_on_tmpfs {
            w.file("virtkit/tmpfs-root", 0o644, b"")
                .map_err(ctx("tmpfs-root"))?;
        }
        let mut order = String::new();
        for m in &self.modules {
            let name = m
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| HarnessError::Invalid(format!("bad module path {}", m.display())))?;
            w.file_from_path(&format!("virtkit/host-modules/{name}"), m)
                .map_err(ctx(&m.display().to_string()))?;
            order.push_str(name);
            order.push('\n');
        }
        w.file("virtkit/host-modules/order", 0o644, order.as_bytes())
            .map_err(ctx("order"))?;

        let mut libs_done = BTreeSet::new();
        for e in &self.entries {
            match e {
                Entry::File { src, dest } => add_path(&mut w, src, dest)?,
                Entry::Data { dest, data, mode } => {
                    check_dest(dest)?;
                    w.file(dest, *mode, data).map_err(ctx(dest))?;
                }
                Entry::Binary { src, dest } => {
                    check_dest(dest)?;
                    w.file_from_path(dest, src)
                        .map_err(io_err(format!("adding {} as {dest}", src.display())))?;
                    for lib in shared_libraries(src)? {
                        let lib_dest = lib.display().to_string();
                        if libs_done.insert(lib_dest.clone()) {
                            w.file_from_path(&lib_dest, &lib)
                                .map_err(io_err(format!("adding library {lib_dest}")))?;
                        }
                    }
                }
            }
        }
        let mut out = w.finish().map_err(ctx("trailer"))?;
        out.flush().map_err(ctx("flush"))?;
        Ok(())
    }

    fn env_file(&self) -> Result<String, HarnessError> {
        let mut s = String::new();
        for (k, v) in &self.env {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(HarnessError::Invalid(format!("environment variable name {k:?}")));
            }
            let _ = writeln!(s, "{k}='{}'", v.replace('\'', r"'\''"));
        }
        Ok(s)
    }

    /// Boots the emulated host and runs the script. A hang before `kvm-ready`, or a panic or
    /// triple fault of the emulated host's own kernel before the script ends, is retried, up to
    /// [`MAX_ATTEMPTS`] boots in all (saying so on stderr and in the output each time); nothing
    /// else after `kvm-ready` is. The emulator's nested virtualization fails in bursts (CI saw
    /// a triple fault and then a kernel panic in one test's two boots), hence more than one
    /// retry.
    ///
    /// At most `$VIRTKIT_HOST_PARALLEL` (default 1) emulated hosts run at a time in one test
    /// process; a run waits for its turn before any timer starts.
    pub fn run(&self) -> Result<HostRun, HarnessError> {
        let _slot = Slot::acquire();
        let started = Instant::now();
        let work = WorkDir::new()?;
        let initrd = work.path.join("host.cpio");
        self.write_initramfs(&initrd)?;
        let size = fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
        log_line(&format!(
            "[testkit] emulated host: {} MiB initramfs, {} CPUs, {} MiB; {} {}",
            size >> 20,
            self.cpus,
            self.memory_mib,
            self.qemu,
            self.qemu_command_args(&initrd).join(" ")
        ));
        // A retried attempt's own lines (its `CASE` lines among them) must not reach a run that
        // then passes: the scripts' parsers take the first `CASE name: key=` they find, and a
        // wedged first attempt's half-done case once stood in for the second's (CI, session
        // 25). The output of a run that passes carries one notice line per retry; the retried
        // attempts' last lines go to stderr, and into the error when every attempt failed.
        let mut notices = String::new();
        let mut history = String::new();
        let mut attempt = 1;
        loop {
            match self.boot_once(&initrd)? {
                Attempt::Done {
                    output,
                    script_exit,
                    boot_to_ready,
                } => {
                    return Ok(HostRun {
                        output: notices + &output,
                        script_exit,
                        attempts: attempt,
                        boot_to_ready,
                        elapsed: started.elapsed(),
                    });
                }
                Attempt::Retry { output, why, kind } => {
                    if attempt >= MAX_ATTEMPTS {
                        let output = history + &output;
                        return Err(kind.error(output, attempt));
                    }
                    let notice = kind.notice();
                    let msg = format!("[testkit] attempt {attempt}: {why}; {notice}");
                    let last_lines = format!(
                        "{msg}\n[testkit] --- last lines of attempt {attempt} ---\n{}\
                         [testkit] --- attempt {} ---\n",
                        tail(&output, 30),
                        attempt + 1
                    );
                    // Always visible, whatever the capture settings.
                    crate::tell(&last_lines);
                    let _ = writeln!(notices, "{msg}");
                    history.push_str(&last_lines);
                    attempt += 1;
                }
            }
        }
    }

    fn boot_once(&self, initrd: &Path) -> Result<Attempt, HarnessError> {
        let mut args = self.qemu_command_args(initrd);
        // QEMU's own log of CPU resets and triple faults: the only trace a triple fault of the
        // emulated host leaves, since with -no-reboot QEMU then exits silently.
        let qemu_log = initrd.with_file_name("qemu-debug.log");
        let _ = fs::remove_file(&qemu_log);
        args.extend([
            "-d".into(),
            "cpu_reset".into(),
            "-D".into(),
            qemu_log.display().to_string(),
        ]);
        let program = find_program(&self.qemu).ok_or_else(|| HarnessError::Spawn {
            program: self.qemu.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "not found or not executable"),
        })?;
        let mut cmd = if setpriv_pdeathsig() {
            // QEMU dies with the test process even if it is killed outright.
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: self.qemu.clone(),
            source,
        })?;
        let mut guard = ChildGuard(child);
        let (tx, rx) = mpsc::channel::<Option<String>>();
        let stdout = guard.0.stdout.take();
        let stderr = guard.0.stderr.take();
        if let Some(s) = stdout {
            thread::spawn(move || {
                let mut r = BufReader::new(s);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf);
                            let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                            if tx.send(Some(line)).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(None);
            });
        }
        // QEMU's stderr, collected whole. Neither reader thread is joined: if something else
        // (a child of a killed program) still holds a pipe open, the run must not wait for it.
        let (err_tx, err_rx) = mpsc::channel::<String>();
        if let Some(mut s) = stderr {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                let _ = err_tx.send(text);
            });
        }

        let mut output = String::new();
        let mut last_line = start;
        let mut ready: Option<Instant> = None;
        let mut missing: Option<Instant> = None;
        let mut script_exit: Option<i32> = None;
        let mut exited_at: Option<Instant> = None;
        enum End {
            Eof,
            Hang(String),
            AfterReadyTimeout,
            NoPowerOff,
            /// No output, not even the heartbeat, for this many seconds after `kvm-ready`.
            Wedged(u64),
        }
        let end = loop {
            let now = Instant::now();
            let deadline = if let Some(t) = exited_at {
                t + self.poweroff_grace
            } else if let Some(t) = missing {
                t + Duration::from_secs(15)
            } else if let Some(t) = ready {
                match self.script_silence {
                    Some(silence) => (t + self.timeout).min(last_line + silence),
                    None => t + self.timeout,
                }
            } else {
                (last_line + self.boot_silence).min(start + self.boot_timeout)
            };
            match rx.recv_timeout(deadline.saturating_duration_since(now)) {
                Ok(Some(line)) => {
                    last_line = Instant::now();
                    log_line(&format!("[host] {line}"));
                    if ready.is_none() && line.contains(KVM_READY) {
                        ready = Some(last_line);
                    }
                    if ready.is_none() && missing.is_none() && line.contains(KVM_MISSING) {
                        missing = Some(last_line);
                    }
                    if ready.is_some() && script_exit.is_none() {
                        if let Some(code) = parse_script_exit(&line) {
                            script_exit = Some(code);
                            exited_at = Some(last_line);
                        }
                    }
                    output.push_str(&line);
                    output.push('\n');
                }
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => break End::Eof,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break if exited_at.is_some() {
                        End::NoPowerOff
                    } else if missing.is_some() {
                        End::Eof
                    } else if ready.is_some()
                        && self
                            .script_silence
                            .is_some_and(|silence| last_line + silence <= Instant::now())
                    {
                        End::Wedged(last_line.elapsed().as_secs())
                    } else if ready.is_some() {
                        End::AfterReadyTimeout
                    } else if last_line + self.boot_silence <= Instant::now() {
                        End::Hang(format!("no output for {} s", last_line.elapsed().as_secs()))
                    } else {
                        End::Hang(format!("not ready after {} s", start.elapsed().as_secs()))
                    };
                }
            }
        };
        // Stop QEMU (a no-op if it exited) and collect what is left.
        let status = match end {
            End::Eof => guard.wait_timeout(Duration::from_secs(10)),
            _ => {
                guard.kill();
                None
            }
        };
        drop(rx);
        let stderr = err_rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
        if !stderr.trim().is_empty() {
            for l in stderr.lines() {
                log_line(&format!("[qemu] {l}"));
            }
        }
        match end {
            End::Hang(why) => Ok(Attempt::Retry {
                output,
                why,
                kind: RetryKind::HangBeforeReady,
            }),
            End::Wedged(seconds) => Ok(Attempt::Retry {
                output,
                why: format!("the emulated host printed nothing, not even its heartbeat, for {seconds} s after kvm-ready"),
                kind: RetryKind::Wedged,
            }),
            End::AfterReadyTimeout => {
                let _ = writeln!(
                    output,
                    "[testkit] killed the emulated host: {} s after kvm-ready the script had not \
                     finished",
                    self.timeout.as_secs()
                );
                Err(HarnessError::HangAfterReady { output })
            }
            End::NoPowerOff => {
                output
                    .push_str("[testkit] the emulated host did not power off after the script; killed it\n");
                Ok(Attempt::Done {
                    output,
                    script_exit,
                    boot_to_ready: ready.map(|r| r - start).unwrap_or_default(),
                })
            }
            End::Eof => match ready {
                Some(_) if script_exit.is_none() && qemu_logged_a_triple_fault(&qemu_log) => {
                    Ok(Attempt::Retry {
                        output,
                        why: "QEMU logged a triple fault of the emulated host before the script \
                              ended"
                            .into(),
                        kind: RetryKind::HostTripleFault,
                    })
                }
                Some(_)
                    if script_exit.is_none()
                        && (stderr.contains(QEMU_ASSERTION) || output.contains(QEMU_ASSERTION)) =>
                {
                    Ok(Attempt::Retry {
                        output,
                        why: "QEMU aborted on an assertion of its own before the script ended".into(),
                        kind: RetryKind::EmulatorAbort,
                    })
                }
                Some(_) if script_exit.is_none() && output.contains(HOST_KERNEL_PANIC) => {
                    Ok(Attempt::Retry {
                        output,
                        why: "the emulated host's kernel panicked before the script ended".into(),
                        kind: RetryKind::HostKernelPanic,
                    })
                }
                Some(r) => {
                    if script_exit.is_none() {
                        let _ = writeln!(
                            output,
                            "[testkit] QEMU exited by itself ({}) before the script ended, with \
                             no panic and no triple fault in its log",
                            status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "status unknown".into())
                        );
                    }
                    Ok(Attempt::Done {
                        output,
                        script_exit,
                        boot_to_ready: r - start,
                    })
                }
                None if missing.is_some() => Err(HarnessError::KvmMissing { output }),
                None => Err(HarnessError::QemuExited {
                    status: status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "did not exit".into()),
                    stderr,
                    output,
                }),
            },
        }
    }
}

enum Attempt {
    Done {
        output: String,
        script_exit: Option<i32>,
        boot_to_ready: Duration,
    },
    /// A boot that failed for the emulator's reasons, started once more.
    Retry {
        output: String,
        why: String,
        kind: RetryKind,
    },
}

#[derive(Clone, Copy)]
enum RetryKind {
    /// No `kvm-ready` in time: the emulator hung while booting.
    HangBeforeReady,
    /// QEMU exited by itself after `kvm-ready` with the host kernel's panic line and no
    /// script exit.
    HostKernelPanic,
    /// QEMU exited by itself after `kvm-ready`, no script exit, and its log has a triple fault.
    HostTripleFault,
    /// QEMU aborted on a failed assertion of its own after `kvm-ready`, no script exit.
    EmulatorAbort,
    /// A host with a heartbeat printed nothing for too long after `kvm-ready`.
    Wedged,
}

impl RetryKind {
    /// What is printed when a boot that failed so is started once more.
    fn notice(self) -> &'static str {
        match self {
            RetryKind::HangBeforeReady => RETRY_NOTICE,
            RetryKind::HostKernelPanic => CRASH_RETRY_NOTICE,
            RetryKind::HostTripleFault => TRIPLE_FAULT_RETRY_NOTICE,
            RetryKind::EmulatorAbort => EMULATOR_ABORT_RETRY_NOTICE,
            RetryKind::Wedged => WEDGED_RETRY_NOTICE,
        }
    }

    /// The error once every boot failed so.
    fn error(self, output: String, attempts: u32) -> HarnessError {
        match self {
            RetryKind::HangBeforeReady => HarnessError::HangBeforeReady { output, attempts },
            RetryKind::HostKernelPanic => HarnessError::HostKernelPanicked { output, attempts },
            RetryKind::HostTripleFault => HarnessError::HostTripleFaulted { output, attempts },
            RetryKind::EmulatorAbort => HarnessError::EmulatorAborted { output, attempts },
            RetryKind::Wedged => HarnessError::Wedged { output, attempts },
        }
    }
}

/// Whether QEMU's `-d cpu_reset` log at `path` records a triple fault.
fn qemu_logged_a_triple_fault(path: &Path) -> bool {
    fs::read(path).is_ok_and(|log| {
        String::from_utf8_lossy(&log)
            .lines()
            .any(|l| l.trim() == QEMU_TRIPLE_FAULT)
    })
}

/// Environment variable: how many emulated hosts one test process runs at once (default 1; each
/// is a multi-threaded TCG emulator, and parallel boots on a small machine hang more often).
pub const PARALLEL_ENV: &str = "VIRTKIT_HOST_PARALLEL";

/// A counting semaphore over [`PARALLEL_ENV`] slots.
struct Slot;

static SLOTS: Mutex<u32> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();

impl Slot {
    fn acquire() -> Slot {
        let max = std::env::var(PARALLEL_ENV)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        let mut used = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= max {
            used = SLOT_FREED.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut used = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(1);
        SLOT_FREED.notify_one();
    }
}

/// Kills (and reaps) QEMU when dropped, so that no run leaves an orphan behind.
struct ChildGuard(Child);

impl ChildGuard {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            match self.0.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.kill();
                    return None;
                }
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scratch directory, removed on drop unless `VIRTKIT_KEEP_WORKDIR=1`.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new() -> Result<WorkDir, HarnessError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("virtkit-host-{}-{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(WorkDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(format!("create {}", path.display()))(e)),
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var(KEEP_WORKDIR_ENV).is_ok_and(|v| v == "1") {
            log_line(&format!("[testkit] kept {}", self.path.display()));
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn log_line(line: &str) {
    if std::env::var(STREAM_ENV).is_ok_and(|v| v == "1") {
        crate::tell(line);
    } else {
        eprintln!("{line}");
    }
}

/// `name` if it contains a `/`, else its first match in `PATH`; only an executable file.
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

fn setpriv_pdeathsig() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The host's TSC frequency in kHz: `$VIRTKIT_TSC_KHZ` (`0` = unknown), else the kernel log's
/// TSC calibration (`dmesg`), else `cpu MHz` of `/proc/cpuinfo` when the CPU flags say the TSC
/// runs at a known constant rate (`constant_tsc` with `tsc_known_freq` or `hypervisor`).
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        if let Ok(v) = std::env::var(TSC_KHZ_ENV) {
            return v.trim().parse().ok().filter(|k| *k > 0);
        }
        let dmesg = Command::new("dmesg")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        tsc_khz_from_dmesg(&dmesg)
            .or_else(|| tsc_khz_from_cpuinfo(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default()))
    })
}

fn mhz_to_khz(s: &str) -> Option<u64> {
    let mhz: f64 = s.trim().parse().ok()?;
    (mhz > 1.0 && mhz < 100_000.0).then(|| (mhz * 1000.0).round() as u64)
}

fn tsc_khz_from_dmesg(dmesg: &str) -> Option<u64> {
    let find = |pat: &str| {
        dmesg.lines().rev().find_map(|l| {
            let rest = &l[l.find(pat)? + pat.len()..];
            mhz_to_khz(rest.split_whitespace().next()?)
        })
    };
    find("tsc: Refined TSC clocksource calibration: ").or_else(|| find("tsc: Detected "))
}

fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split_whitespace()
        .collect();
    let known = flags.contains(&"constant_tsc")
        && (flags.contains(&"tsc_known_freq") || flags.contains(&"hypervisor"));
    if !known {
        return None;
    }
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    mhz_to_khz(line.split(':').nth(1)?)
}

fn check_dest(dest: &str) -> Result<(), HarnessError> {
    crate::cpio::normalize(dest)
        .map(|_| ())
        .map_err(|e| HarnessError::Invalid(format!("destination {dest:?}: {e}")))
}

/// Adds `src` (a file, or a directory recursively) at `dest`.
fn add_path<W: Write>(w: &mut CpioWriter<W>, src: &Path, dest: &str) -> Result<(), HarnessError> {
    check_dest(dest)?;
    let meta = fs::metadata(src).map_err(io_err(format!("{}", src.display())))?;
    if meta.is_file() {
        return w
            .file_from_path(dest, src)
            .map_err(io_err(format!("adding {} as {dest}", src.display())));
    }
    if !meta.is_dir() {
        return Err(HarnessError::Invalid(format!(
            "{} is neither a file nor a directory",
            src.display()
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    w.dir(dest, meta.permissions().mode())
        .map_err(io_err(format!("adding directory {dest}")))?;
    let mut names: Vec<_> = fs::read_dir(src)
        .map_err(io_err(format!("reading {}", src.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(format!("reading {}", src.display())))?;
    names.sort();
    for name in names {
        let child = src.join(&name);
        let child_dest = format!("{}/{}", dest.trim_end_matches('/'), name.to_string_lossy());
        let lmeta = fs::symlink_metadata(&child).map_err(io_err(format!("{}", child.display())))?;
        if lmeta.file_type().is_symlink() {
            let target = fs::read_link(&child).map_err(io_err(format!("{}", child.display())))?;
            w.symlink(&child_dest, &target.to_string_lossy())
                .map_err(io_err(format!("adding symlink {child_dest}")))?;
        } else {
            add_path(w, &child, &child_dest)?;
        }
    }
    Ok(())
}

/// The shared libraries (and dynamic loader) `ldd` lists for `bin`; empty for a static binary.
pub fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, HarnessError> {
    let out = Command::new("ldd")
        .arg(bin)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::Binary {
            binary: bin.to_path_buf(),
            message: format!("cannot run ldd: {e}"),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(HarnessError::Binary {
            binary: bin.to_path_buf(),
            message: format!("ldd failed: {}{}", stdout.trim(), stderr.trim()),
        });
    }
    parse_ldd(&stdout).map_err(|message| HarnessError::Binary {
        binary: bin.to_path_buf(),
        message,
    })
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = if let Some((name, rhs)) = line.split_once("=>") {
            let rhs = rhs.trim();
            if rhs.starts_with("not found") {
                return Err(format!("ldd: {} not found", name.trim()));
            }
            rhs.split(" (").next().unwrap_or("").trim()
        } else {
            line.split(" (").next().unwrap_or("").trim()
        };
        // "linux-vdso.so.1 (0x...)", "statically linked": nothing to copy.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests;
