//! Starting filtered threads from a clean spawner, their signal mask, and their panic message.

use std::cell::Cell;
use std::io;
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::{Mutex, Once};
use std::thread::JoinHandle;

use crate::{filters, policy, SandboxError, SeccompAction, ThreadRole};

type Job = Box<dyn FnOnce() + Send>;

/// The spawner: an unfiltered thread that only creates threads. It runs no untrusted input.
static SPAWNER: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// Runs `job` on the spawner, starting it on first use. The first use is from an unfiltered
/// thread ([`spawn`] or [`crate::apply`] before it installs anything), so the spawner carries
/// no filter.
fn on_spawner(job: Job) -> io::Result<()> {
    let mut spawner = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
    if spawner.is_none() {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("sandbox-spawn".into())
            .spawn(move || {
                settle_allocator();
                for job in rx {
                    job();
                }
            })?;
        *spawner = Some(tx);
    }
    let sender = spawner.as_ref().ok_or_else(|| io::Error::other("no spawner"))?;
    sender
        .send(job)
        .map_err(|_| io::Error::other("the sandbox's spawner thread is gone"))
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

/// Makes sure the spawner exists; called before the calling thread gets a filter.
pub(crate) fn ensure_spawner() {
    if let Err(e) = on_spawner(Box::new(|| {})) {
        tracing::error!("cannot start the sandbox's spawner thread: {e}");
    }
}

/// Starts `body` on a new thread `name` that runs under `role`'s filter (per the process's
/// [`policy`]). The thread is created by an unfiltered spawner thread, so it carries only its
/// own filter, whichever thread calls this (a filtered one included). Returns once the filter is
/// in place; the thread's asynchronous signals are blocked (see [`prepare_thread`]).
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
    let (reply_tx, reply_rx) = sync_channel::<io::Result<JoinHandle<T>>>(1);
    let (ready_tx, ready_rx) = sync_channel::<Result<(), SandboxError>>(1);
    on_spawner(Box::new(move || {
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            prepare_thread();
            let installed = seccompiler::apply_filter(&program).map_err(SandboxError::Install);
            drop(program);
            let ok = installed.is_ok();
            if ok {
                mark_filtered(role);
            }
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
