//! Per-thread seccomp filters for virtkit, one per thread role (see `docs/SECURITY.md`).
//!
//! Every long-lived thread of virtkit has a role ([`ThreadRole`]) and is started with
//! [`spawn`], which installs that role's filter on the new thread before its body runs: the
//! syscalls the role needs (with their arguments where that is practical, such as the `ioctl`
//! numbers a vCPU may issue) and nothing else. What happens on any other syscall is the
//! process-wide [`SeccompAction`], set once with [`set_policy`] from the VM's configuration or
//! the command line.
//!
//! Seccomp filters are inherited by the threads a thread creates and stack up (the strictest
//! answer wins). So that a thread ends up with its own filter and not also with its creator's
//! (a device worker is started by a vCPU thread when the guest's driver activates the device),
//! [`spawn`] called from a filtered thread has the thread created by a spawner thread that
//! carries no filter, and no filtered thread may create threads itself; called from an
//! unfiltered thread (the main thread starting the VM's threads) it creates the thread there.

mod filters;
pub mod helper_process;
mod inherited;
mod spawn;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

pub use filters::{rules_for, FilterRules};
pub use helper_process::{find_program, HelperCommand, HelperError, HelperLog, HelperProcess};
pub use inherited::{close_inherited_descriptors, take_inherited_descriptor};
pub use spawn::{spawn, Builder};

/// What a filtered thread's syscall outside its role's list does. Process-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompAction {
    /// The whole process is killed by `SIGSYS` (`SECCOMP_RET_KILL_PROCESS`). The process, not
    /// only the thread: a vCPU or device thread that vanished would leave the machine waiting for
    /// it forever, holding locks it took, and the host would never learn why.
    #[default]
    Kill,
    /// The syscall runs and the kernel logs it (`SECCOMP_RET_LOG`: `audit: type=1326 ...
    /// syscall=N` in `dmesg`): for finding what a filter lacks.
    Log,
    /// No filters.
    Off,
}

impl SeccompAction {
    fn to_u8(self) -> u8 {
        match self {
            SeccompAction::Kill => 0,
            SeccompAction::Log => 1,
            SeccompAction::Off => 2,
        }
    }

    fn from_u8(v: u8) -> SeccompAction {
        match v {
            1 => SeccompAction::Log,
            2 => SeccompAction::Off,
            _ => SeccompAction::Kill,
        }
    }
}

impl fmt::Display for SeccompAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompAction::Kill => "kill",
            SeccompAction::Log => "log",
            SeccompAction::Off => "off",
        })
    }
}

impl FromStr for SeccompAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(SeccompAction::Kill),
            "log" => Ok(SeccompAction::Log),
            "off" => Ok(SeccompAction::Off),
            other => Err(format!("`{other}` is not a seccomp policy: use kill, log or off")),
        }
    }
}

/// The environment variable that sets the process's policy until [`set_policy`] is called:
/// `kill`, `log` or `off` (for diagnosing a filter, e.g. running the test suite with `log`).
pub const POLICY_ENV: &str = "VIRTKIT_SECCOMP";

const UNSET: u8 = u8::MAX;
static POLICY: AtomicU8 = AtomicU8::new(UNSET);

/// Sets the process-wide policy (`None`, a configuration that does not say, leaves it as it
/// is). Threads started afterwards use it; running threads keep the filter they have (a filter
/// cannot be removed).
pub fn set_policy(action: impl Into<Option<SeccompAction>>) {
    if let Some(action) = action.into() {
        POLICY.store(action.to_u8(), Ordering::SeqCst);
    }
}

/// The process-wide policy: what [`set_policy`] set, else [`POLICY_ENV`], else
/// [`SeccompAction::Kill`].
pub fn policy() -> SeccompAction {
    match POLICY.load(Ordering::SeqCst) {
        UNSET => {
            let from_env: SeccompAction = std::env::var(POLICY_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_default();
            let _ = POLICY.compare_exchange(UNSET, from_env.to_u8(), Ordering::SeqCst, Ordering::SeqCst);
            SeccompAction::from_u8(POLICY.load(Ordering::SeqCst))
        }
        v => SeccompAction::from_u8(v),
    }
}

/// The kind of a virtio device's worker thread (`v_<name>`); each has its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// `v_blk`: io_uring or synchronous file I/O on the disk image.
    Block,
    /// `v_rng`: `getrandom` and a rate-limit timerfd.
    Rng,
    /// `v_balloon`: `madvise(MADV_DONTNEED)` and the statistics timerfd.
    Balloon,
    /// `v_console`: port backends on pipes, files and Unix sockets.
    Console,
    /// `v_net`: a network backend's connected socket (frames sent and received, no address).
    Net,
    /// `v_vsock`: the host side of virtio-vsock: Unix stream sockets accepted from its
    /// listener and connected to `<path>_<port>`.
    Vsock,
    /// `v_fs`: a vhost-user device's worker: requests to its backend on the connected Unix
    /// socket (`sendmsg`/`recvmsg` with descriptors: memory, kick and call eventfds), then a
    /// watch for the backend's hangup.
    VhostUser,
    /// `v_input`: a virtio keyboard or tablet: events from the host through an eventfd into the
    /// guest's buffers, nothing else.
    Input,
    /// Any other worker (test devices): an event loop on eventfds only.
    Other,
}

impl DeviceKind {
    /// The kind of the worker named `v_<name>` by `WorkerThread::start(name, ..)`.
    pub fn from_worker_name(name: &str) -> DeviceKind {
        match name {
            "blk" => DeviceKind::Block,
            "rng" => DeviceKind::Rng,
            "balloon" => DeviceKind::Balloon,
            "console" => DeviceKind::Console,
            "net" => DeviceKind::Net,
            "vsock" => DeviceKind::Vsock,
            "fs" => DeviceKind::VhostUser,
            "input" => DeviceKind::Input,
            _ => DeviceKind::Other,
        }
    }
}

/// What a thread does, which decides its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadRole {
    /// `vcpu-N`: `KVM_RUN` and the device models it calls into on port and MMIO exits.
    Vcpu,
    /// `v_<device>`: a virtio device's worker.
    DeviceWorker(DeviceKind),
    /// `serial-in`: host input into COM1's receive FIFO.
    SerialInput,
    /// `serial-out`: writes what a vCPU buffered for COM1's host side (terminal, pipe, file),
    /// so the vCPU never waits on a host write.
    SerialOutput,
    /// `vnc-accept`: takes the VNC server's clients from its listening socket (Unix or loopback
    /// TCP) and starts a `vnc-client` thread for each.
    VncAccept,
    /// `vnc-client`: one VNC client: the RFB protocol on its connected socket, the display's
    /// dirty log, and its keys and pointer into the input devices' eventfds.
    VncClient,
    /// `rtc-timer`: the RTC's periodic interrupt: sleeps on a condition variable and writes
    /// IRQ 8's irqfd.
    RtcTimer,
    /// `vmm`: waits for the machine to stop, releases it and records why.
    Vmm,
    /// CLI `signals`: turns SIGTERM/SIGINT/SIGHUP into events.
    CliSignals,
    /// CLI `stdin`: the terminal's input into the guest's input pipe.
    CliStdin,
    /// VM process `console-out`: guest output to the foreground terminal, from a bounded queue.
    ConsoleOutput,
    /// VM process `console-in`: the foreground terminal's input to the guest.
    ConsoleInput,
    /// A `ConsoleServer`'s event loop (VM process `console-sock`, a serial port's
    /// `serial-socket`): its socket's clients, guest output to them and `console.log`, their
    /// input to the guest.
    ConsoleSocket,
    /// VM process `control`: the control server's loop: accepts `control.sock` clients, reads
    /// their requests, answers them, and runs the quick ones (state, request_stop, stop).
    ControlSocket,
    /// VM process `control-exec`: the control requests that wait on the machine (pause,
    /// resume, balloon), one at a time.
    ControlExecutor,
    /// VM process `agent-hello` and `agent-time`: the guest agent's hello listener (one line
    /// from the guest, through the vsock device's `<path>_1025`) and the clock setter, a host
    /// client of the VM's own `vsock.sock`.
    AgentHost,
    /// VM process `state-save`: a suspend's save of the paused machine into the bundle's
    /// `state.vksave` (the VM's interrupt controller, PIT and clock; the file's creation,
    /// writes, sync and rename).
    StateSave,
    /// VM process `snapshot`: a snapshot of the running or paused VM taken by its own process
    /// (what `StateSave` does, into `snapshot-<name>.vksave`, and then the bundle's files: the
    /// boot disk frozen into a layer by a link, a new qcow2 image renamed over it, the
    /// configuration and snapshot list rewritten, and the new chain opened and locked).
    Snapshot,
}

/// Why a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The filter did not compile (a bug in the role's list).
    #[error("cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
    /// The unfiltered spawner thread could not be started (a thread limit).
    #[error("cannot start the sandbox's spawner thread")]
    Spawner(#[source] std::io::Error),
    /// The kernel has no seccomp filters, or not the policy's action.
    #[error(
        "this kernel cannot filter system calls with seccomp's {action} action (CONFIG_SECCOMP_FILTER, \
         Linux 4.14 or later); run with --seccomp off to start without the filters"
    )]
    Unsupported {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl From<SandboxError> for std::io::Error {
    fn from(e: SandboxError) -> std::io::Error {
        std::io::Error::other(e)
    }
}

/// Starts, from the calling thread (which must be unfiltered: the main thread, early), what the
/// first filtered thread would otherwise wait for: the spawner thread, which also makes glibc's
/// allocator do its one file read (see `spawn`), in parallel with whatever the caller does
/// next. Nothing under [`SeccompAction::Off`]. Calling it is optional; calling it twice is
/// harmless.
pub fn start_early() {
    if policy() != SeccompAction::Off {
        // A failure here comes back from the first `spawn`, which tries again.
        let _ = spawn::ensure_spawner();
    }
}

/// Installs `role`'s filter on the calling thread under the current [`policy`] (nothing under
/// [`SeccompAction::Off`]), and from then on keeps its panics from reading files for a
/// backtrace. Prefer [`spawn`], which also gives the thread a clean start: a thread that calls
/// this keeps the filters it inherited, and the threads it creates inherit this one.
pub fn apply(role: ThreadRole) -> Result<(), SandboxError> {
    let action = policy();
    if action == SeccompAction::Off {
        return Ok(());
    }
    let program = filters::compile(role, action)?;
    spawn::ensure_spawner().map_err(SandboxError::Spawner)?;
    // The spawner settles the allocator before its first job: this round trip waits for that.
    spawn::run_on_spawner(|| ()).map_err(SandboxError::Spawner)?;
    spawn::install_panic_hook();
    spawn::prepare_thread();
    seccompiler::apply_filter(&program).map_err(SandboxError::Install)?;
    spawn::mark_filtered(role);
    Ok(())
}
