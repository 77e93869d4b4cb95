//! Starting filtered threads from a clean spawner, their signal mask, and their panic message.

use std::cell::Cell;
use std::io::{self, Write};
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::{Mutex, Once, OnceLock};
use std::thread::JoinHandle;

use seccompiler::BpfProgram;

use crate::{filters, policy, SandboxError, SeccompAction, ThreadRole};

type Job = Box<dyn FnOnce() + Send>;

/// The spawner: an unfiltered thread that only creates threads. It runs no untrusted input.
static SPAWNER: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// Runs `job` on the spawner, starting it if there is none. A filtered thread finds it started:
/// every filtered thread is created by [`spawn`] or comes after [`crate::apply`], and both start
/// the spawner from their unfiltered caller first ([`ensure_spawner`]), so it carries no filter.
fn on_spawner(job: Job) -> io::Result<()> {
    let mut spawner = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
    start_spawner(&mut spawner)?
        .send(job)
        .map_err(|_| io::Error::other("the sandbox's spawner thread is gone"))
}

/// The spawner's queue, starting the spawner thread if `spawner` has none. A filtered thread
/// cannot start it (no filter allows `clone`): it gets an error instead of SIGSYS.
fn start_spawner(spawner: &mut Option<Sender<Job>>) -> io::Result<&Sender<Job>> {
    if spawner.is_none() {
        if FILTERED.with(|f| f.get()).is_some() {
            return Err(io::Error::other(
                "the sandbox's spawner thread is not running, and a filtered thread cannot start it",
            ));
        }
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("sandbox-spawn".into())
            .spawn(move || {
                SETTLED.call_once(settle_allocator);
                for job in rx {
                    job();
                }
            })?;
        *spawner = Some(tx);
    }
    spawner.as_ref().ok_or_else(|| io::Error::other("no spawner"))
}

/// Whether [`settle_allocator`] has run: once per process, on the spawner or on the first
/// thread created without it, before either installs a filter.
static SETTLED: Once = Once::new();

/// Whether the kernel has seccomp filters with [`SeccompAction::Kill`]'s and
/// [`SeccompAction::Log`]'s actions (`SECCOMP_GET_ACTION_AVAIL`), asked once per process.
static KILL_AVAILABLE: OnceLock<Result<(), i32>> = OnceLock::new();
static LOG_AVAILABLE: OnceLock<Result<(), i32>> = OnceLock::new();

/// Whether the kernel can install our filters with `action`: a system call, no thread.
fn action_available(action: SeccompAction) -> Result<(), SandboxError> {
    let (cell, value, name) = match action {
        SeccompAction::Kill => (&KILL_AVAILABLE, libc::SECCOMP_RET_KILL_PROCESS, "kill-process"),
        SeccompAction::Log => (&LOG_AVAILABLE, libc::SECCOMP_RET_LOG, "log"),
        SeccompAction::Off => return Ok(()),
    };
    let answer = *cell.get_or_init(|| {
        // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer, a local that
        // outlives the call; it changes nothing.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL,
                0,
                &value as *const u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
        }
        // GET_ACTION_AVAIL answers even without CONFIG_SECCOMP_FILTER; a filter mode that
        // exists reads the (null) program and says EFAULT, one that does not says EINVAL.
        // SAFETY: a null program pointer is never read past the kernel's check of it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                std::ptr::null::<libc::sock_fprog>(),
            )
        };
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EFAULT) if r != 0 => Ok(()),
            errno => Err(errno.unwrap_or(libc::EINVAL)),
        }
    });
    answer.map_err(|errno| SandboxError::Unsupported {
        action: name,
        source: io::Error::from_raw_os_error(errno),
    })
}

/// Has glibc's allocator do, unfiltered, the one thing it does on a thread's heap that no
/// filter allows: the first time it returns memory from a thread's heap (`free` → `heap_trim` →
/// `shrink_heap`) it reads `/proc/sys/vm/overcommit_memory` (an `openat`), then keeps the answer
/// for the process. A filtered thread that frees large buffers would otherwise be killed for it.
/// The spawner is not the main thread, so its allocations come from a thread heap; blocks below
/// the mmap threshold (128 KiB at first), all freed, leave a top chunk that is trimmed. The
/// blocks are allocated, never written: filling them (as this once did) made 1.6 MiB resident in
/// every VMM process and cost ~400 page faults at start, for nothing the trim needs.
fn settle_allocator() {
    let blocks: Vec<Vec<u8>> = (0..16).map(|_| Vec::with_capacity(100 * 1024)).collect();
    drop(std::hint::black_box(blocks));
}

/// Runs `job` on the spawner and returns its result. For work whose effect is tied to the
/// calling thread's life: a child forked here with `PR_SET_PDEATHSIG` is signalled when the
/// forking thread exits, and the spawner lives as long as the process (see `helper_process`).
/// Must not be called from a job already running on the spawner (it would wait on itself).
pub(crate) fn run_on_spawner<T, F>(job: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (reply_tx, reply_rx) = sync_channel::<T>(1);
    on_spawner(Box::new(move || {
        let _ = reply_tx.send(job());
    }))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the sandbox's spawner thread did not answer"))
}

/// Makes sure the spawner exists; called from unfiltered threads only.
pub(crate) fn ensure_spawner() -> io::Result<()> {
    let mut spawner = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
    start_spawner(&mut spawner).map(|_| ())
}

/// Starts `body` on a new thread `name` that runs under `role`'s filter (per the process's
/// [`policy`]); the thread's asynchronous signals are blocked (see [`prepare_thread`]), and it
/// carries only its own filter, whichever thread calls this:
///
/// - from a filtered thread, the thread is created by the unfiltered spawner thread (a thread
///   inherits its creator's filters, and no filter allows `clone`); this returns once the
///   filter is in place, or with the kernel's refusal;
/// - from an unfiltered thread (the main thread, which starts the VM's threads), it is created
///   right here and not waited for: the kernel's support for our filters is asked once per
///   process instead (a refusal comes back here), the new thread installs its filter before
///   `body`, and one the kernel still refuses then ends the process with the reason, never
///   running `body` unfiltered. Each wait was a round trip between two threads, 0.1-0.4 ms on
///   this host, and the first also waited for the spawner and the allocator's settling
///   (~1 ms); the VM's first instruction waited for five.
///
/// Under [`SeccompAction::Off`] this is `std::thread::Builder::new().name(name).spawn(body)`.
pub fn spawn<F, T>(name: impl Into<String>, role: ThreadRole, body: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let name = name.into();
    let action = policy();
    if action == SeccompAction::Off {
        return std::thread::Builder::new().name(name).spawn(body);
    }
    let program = filters::compile(role, action)?;
    install_panic_hook();
    if FILTERED.with(|f| f.get()).is_none() {
        action_available(action)?;
        // The spawner too, now, from this unfiltered thread: the thread made here may need it
        // to start threads of its own; without it, that would fail, so this fails now.
        ensure_spawner()?;
        return spawn_here(name, role, program, body);
    }
    let (reply_tx, reply_rx) = sync_channel::<io::Result<JoinHandle<T>>>(1);
    let (ready_tx, ready_rx) = sync_channel::<Result<(), SandboxError>>(1);
    on_spawner(Box::new(move || {
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let installed = install(program, role);
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if !ok {
                // Fail closed: the body never runs unfiltered. `spawn` has returned the error.
                std::panic::resume_unwind(Box::new("no seccomp filter"));
            }
            body()
        });
        let _ = reply_tx.send(spawned);
    }))?;
    let handle = reply_rx
        .recv()
        .map_err(|_| io::Error::other("the sandbox's spawner thread did not answer"))??;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(io::Error::other(
            "the new thread ended before installing its filter",
        )),
    }
}

/// [`spawn`] from an unfiltered thread: the new thread is created here, and not waited for.
fn spawn_here<F, T>(name: String, role: ThreadRole, program: BpfProgram, body: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let thread_name = name.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        // Unfiltered still: the allocator's one file read happens now if nobody did it yet.
        SETTLED.call_once(settle_allocator);
        if let Err(e) = install(program, role) {
            // The kernel's reason, not `SandboxError`'s summary of it.
            let e = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            // Nobody waits to hear it: fail closed, and loudly (`eprintln!` could panic on a
            // closed stderr and leave the process without this thread instead).
            let _ = writeln!(
                io::stderr(),
                "virtkit: thread `{thread_name}` cannot install its seccomp filter ({e}); stopping \
                 the process rather than running it unfiltered (--seccomp off runs without filters)"
            );
            std::process::abort();
        }
        body()
    })
}

/// The start of every filtered thread, on the thread itself: its signals blocked, `program`
/// installed, then freed, the thread marked as filtered by `role`. What a refusal does is the
/// caller's to decide: report it to a caller that waits, or end the process.
fn install(program: BpfProgram, role: ThreadRole) -> Result<(), SandboxError> {
    prepare_thread();
    let installed = seccompiler::apply_filter(&program).map_err(SandboxError::Install);
    drop(program);
    if installed.is_ok() {
        mark_filtered(role);
    }
    installed
}

/// Blocks the asynchronous signals on the calling thread (all but the synchronous fault signals
/// and `SIGRTMIN`, the vCPU kick). Process-directed signals (SIGTERM, SIGINT, SIGHUP, SIGWINCH)
/// then go to an unfiltered thread, so their handlers (signal-hook's self-pipe write, say) never
/// run under a filter that does not list what they do.
pub(crate) fn prepare_thread() {
    // SAFETY: `set` is a plain C value initialised by sigfillset before any other use;
    // pthread_sigmask changes only the calling thread's mask and reads `set`, which outlives it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGSYS,
            libc::SIGABRT,
            libc::SIGTRAP,
            libc::SIGRTMIN(),
        ] {
            libc::sigdelset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

thread_local! {
    static FILTERED: Cell<Option<ThreadRole>> = const { Cell::new(None) };
}

pub(crate) fn mark_filtered(role: ThreadRole) {
    FILTERED.with(|f| f.set(Some(role)));
}

/// A panic in a filtered thread is reported without a backtrace: resolving one opens and maps
/// the executable's files (`RUST_BACKTRACE`), which no filter allows, and would kill the process
/// with SIGSYS instead of reporting the panic. Other threads keep the previous hook.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let Some(role) = FILTERED.with(|f| f.get()) else {
                return previous(info);
            };
            let thread = std::thread::current();
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("Box<dyn Any>");
            let location = info.location().map(|l| l.to_string()).unwrap_or_default();
            eprintln!(
                "thread '{}' panicked at {location}:\n{payload}\nnote: no backtrace in a seccomp-filtered thread ({role:?})",
                thread.name().unwrap_or("<unnamed>")
            );
        }));
    });
}

/// [`std::thread::Builder`] for a filtered thread: `Builder::new(role).name(name).spawn(body)`
/// is [`spawn`]`(name, role, body)`.
#[derive(Debug, Clone)]
pub struct Builder {
    role: ThreadRole,
    name: String,
}

impl Builder {
    pub fn new(role: ThreadRole) -> Builder {
        Builder {
            role,
            name: String::new(),
        }
    }

    /// The thread's name (its `comm`, which the kernel's seccomp log shows).
    pub fn name(mut self, name: String) -> Builder {
        self.name = name;
        self
    }

    pub fn spawn<F, T>(self, body: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn(self.name, self.role, body)
    }
}
