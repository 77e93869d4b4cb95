//! vCPU threads and the control that pauses, resumes and stops them.
//!
//! A vCPU thread runs `KVM_RUN` in a loop and dispatches port and MMIO exits to the buses. To
//! get a thread out of `KVM_RUN` we send it a signal (the "kick"); a kick can race with the
//! thread entering `KVM_RUN`, so whoever waits for the threads keeps kicking until they answer.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use virtkit_hypervisor::{HypervisorError, Vcpu, VcpuExit, VcpuState};

use crate::bus::Bus;
use crate::exit_stats::{ExitKind, VcpuCounters};
use crate::ExitReason;

/// What the vCPU threads should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunRequest {
    Run,
    Pause,
    Stop,
}

#[derive(Debug)]
struct ControlState {
    request: RunRequest,
    /// vCPU threads parked in a pause.
    paused: usize,
    /// vCPU threads that have not exited.
    running: usize,
    exit: Option<ExitReason>,
    /// Threads to kick. A thread removes itself before it exits, so we never signal a thread
    /// that is gone.
    threads: Vec<libc::pthread_t>,
    /// A save in progress: each parked vCPU thread fills its slot (by vCPU index) with its
    /// state. Only the thread that owns a vCPU can read it; the vCPU moved there at start.
    capture: Option<Vec<Option<Result<VcpuState, HypervisorError>>>>,
}

/// Why the vCPUs' state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("the machine is not paused; pause it before saving its state")]
    NotPaused,
    #[error("the machine was resumed or stopped while its state was being saved; pause it and save again")]
    Interrupted,
    #[error("another save of this machine is in progress; wait for it to finish")]
    SaveInProgress,
    #[error("{parked} of {vcpus} vCPUs are parked; every vCPU must be paused to save the machine")]
    NotAllParked { parked: usize, vcpus: usize },
    #[error("vCPU {vcpu} did not hand over its state within {} s", timeout.as_secs())]
    TimedOut { vcpu: usize, timeout: Duration },
    #[error("KVM would not give vCPU {vcpu}'s state")]
    Vcpu {
        vcpu: usize,
        #[source]
        source: HypervisorError,
    },
}

/// How a pause ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseOutcome {
    /// Every vCPU is parked.
    Paused,
    /// The machine is stopping (a stop came first, or while the pause waited): nothing paused.
    Stopping,
    /// Not every vCPU parked in time; the parked ones run again.
    TimedOut { parked: usize, running: usize },
}

/// Shared between the machine, its handles and the vCPU threads.
#[derive(Debug)]
pub(crate) struct Control {
    state: Mutex<ControlState>,
    changed: Condvar,
}

const KICK_INTERVAL: Duration = Duration::from_millis(5);

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for the kick signal once per process, so the signal interrupts
/// `KVM_RUN` with EINTR instead of killing the process.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            tracing::error!("cannot install the vCPU kick signal handler: {e}");
        }
    });
}

impl Control {
    pub(crate) fn new() -> Arc<Control> {
        install_kick_handler();
        Arc::new(Control {
            state: Mutex::new(ControlState {
                request: RunRequest::Run,
                paused: 0,
                running: 0,
                exit: None,
                threads: Vec::new(),
                capture: None,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kick_all(state: &ControlState) {
        for t in &state.threads {
            // SAFETY: every thread in the list is alive: threads remove themselves under this
            // lock before exiting. The signal has a no-op handler installed.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Records why the machine ends (the first reason wins) and tells every vCPU to stop.
    pub(crate) fn request_exit(&self, reason: ExitReason) {
        let mut state = self.lock();
        if state.exit.is_none() {
            tracing::debug!(?reason, "machine exit requested");
            state.exit = Some(reason);
        }
        state.request = RunRequest::Stop;
        Self::kick_all(&state);
        self.changed.notify_all();
    }

    pub(crate) fn exit_reason(&self) -> Option<ExitReason> {
        self.lock().exit.clone()
    }

    /// Parks every vCPU. Returns once all are parked, once the machine is stopping, or after
    /// `timeout`: a vCPU blocked in the host (a write to a full pipe, a stuck disk) never
    /// answers the kick, and a pause must not wait for it forever. On a timeout the vCPUs that
    /// did park run again, so the machine is as it was.
    pub(crate) fn pause(&self, timeout: Duration) -> PauseOutcome {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        if state.request == RunRequest::Stop {
            return PauseOutcome::Stopping;
        }
        state.request = RunRequest::Pause;
        while state.request == RunRequest::Pause && state.paused < state.running {
            if Instant::now() >= deadline {
                state.request = RunRequest::Run;
                self.changed.notify_all();
                return PauseOutcome::TimedOut {
                    parked: state.paused,
                    running: state.running,
                };
            }
            Self::kick_all(&state);
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match state.request {
            RunRequest::Pause => PauseOutcome::Paused,
            // A stop came while we waited: it wins.
            _ => PauseOutcome::Stopping,
        }
    }

    pub(crate) fn resume(&self) {
        let mut state = self.lock();
        if state.request == RunRequest::Pause {
            state.request = RunRequest::Run;
            self.changed.notify_all();
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.lock().request == RunRequest::Pause
    }

    /// Makes vCPU threads park before their first `KVM_RUN`: a restored machine starts paused.
    pub(crate) fn start_paused(&self) {
        let mut state = self.lock();
        if state.request == RunRequest::Run {
            state.request = RunRequest::Pause;
        }
    }

    /// Has every parked vCPU thread read its vCPU's state; in vCPU order. The machine must be
    /// paused with all `vcpus` threads parked, and stays so.
    pub(crate) fn capture_vcpus(
        &self,
        vcpus: usize,
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, CaptureError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        if state.request != RunRequest::Pause {
            return Err(CaptureError::NotPaused);
        }
        if state.capture.is_some() {
            return Err(CaptureError::SaveInProgress);
        }
        if state.paused != vcpus || state.running != vcpus {
            return Err(CaptureError::NotAllParked {
                parked: state.paused,
                vcpus,
            });
        }
        state.capture = Some((0..vcpus).map(|_| None).collect());
        self.changed.notify_all();
        loop {
            if state.request != RunRequest::Pause {
                // The parked threads left to run or stop; what they gave is not one instant.
                state.capture = None;
                return Err(CaptureError::Interrupted);
            }
            let done = state
                .capture
                .as_ref()
                .is_some_and(|slots| slots.iter().all(Option::is_some));
            if done {
                break;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                let vcpu = state
                    .capture
                    .take()
                    .and_then(|slots| slots.iter().position(Option::is_none))
                    .unwrap_or_default();
                return Err(CaptureError::TimedOut { vcpu, timeout });
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let slots = state.capture.take().unwrap_or_default();
        slots
            .into_iter()
            .enumerate()
            .map(|(vcpu, slot)| match slot {
                Some(Ok(s)) => Ok(s),
                Some(Err(source)) => Err(CaptureError::Vcpu { vcpu, source }),
                None => Err(CaptureError::TimedOut { vcpu, timeout }),
            })
            .collect()
    }

    /// Waits for an exit reason, then until every vCPU thread has left `KVM_RUN`.
    pub(crate) fn wait_exit(&self) -> ExitReason {
        let mut state = self.lock();
        while state.exit.is_none() {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        while state.running > 0 {
            Self::kick_all(&state);
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.exit.clone().unwrap_or(ExitReason::Stopped)
    }

    pub(crate) fn thread_starting(&self) {
        self.lock().running += 1;
    }

    /// Undoes `thread_starting` for a thread that could not be spawned.
    pub(crate) fn thread_exiting_without_start(&self) {
        let mut state = self.lock();
        state.running -= 1;
        self.changed.notify_all();
    }

    fn register_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.push(me);
    }

    fn thread_exiting(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut state = self.lock();
        state.threads.retain(|t| *t != me);
        state.running -= 1;
        self.changed.notify_all();
    }

    /// Called by a vCPU thread before each `KVM_RUN`: parks while paused (reading its vCPU's
    /// state when a save asks); false means stop.
    fn may_run(&self, vcpu: &mut Vcpu, index: usize) -> bool {
        let mut state = self.lock();
        loop {
            match state.request {
                RunRequest::Run => return true,
                RunRequest::Stop => return false,
                RunRequest::Pause => {
                    state.paused += 1;
                    self.changed.notify_all();
                    while state.request == RunRequest::Pause {
                        let asked = state
                            .capture
                            .as_ref()
                            .and_then(|slots| slots.get(index))
                            .is_some_and(Option::is_none);
                        if asked {
                            let saved = read_vcpu_state(vcpu);
                            if let Some(slot) = state.capture.as_mut().and_then(|s| s.get_mut(index)) {
                                *slot = Some(saved);
                            }
                            self.changed.notify_all();
                            continue;
                        }
                        state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                    }
                    state.paused -= 1;
                }
            }
        }
    }
}

/// Completes the exit the vCPU last reported (an `in`'s data, an MMIO read's value reach the
/// registers only at the next `KVM_RUN`), then reads its state: KVM's documented way to get
/// consistent state between exits is one `KVM_RUN` with immediate exit set.
fn read_vcpu_state(vcpu: &mut Vcpu) -> Result<VcpuState, HypervisorError> {
    vcpu.set_immediate_exit(true);
    let completed = vcpu.run().map(|exit| matches!(exit, VcpuExit::Interrupted));
    vcpu.set_immediate_exit(false);
    if !completed? {
        // KVM went back into the guest and brought an exit this thread would have to handle:
        // saving now would lose it.
        return Err(HypervisorError::Ioctl {
            op: "KVM_RUN with immediate exit (the vCPU had an exit to complete)",
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        });
    }
    vcpu.save_state()
}

/// What a vCPU thread needs besides its vCPU.
pub(crate) struct VcpuContext {
    pub control: Arc<Control>,
    pub pio: Bus,
    pub mmio: Bus,
    /// One per vCPU, by index.
    pub exits: Arc<[VcpuCounters]>,
}

/// Runs vCPU `index` until the machine stops.
pub(crate) fn run_vcpu(mut vcpu: Vcpu, index: u32, ctx: &VcpuContext) {
    ctx.control.register_current_thread();
    let _exit = ThreadExit {
        control: &ctx.control,
        index,
    };
    while ctx.control.may_run(&mut vcpu, index as usize) {
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) => {
                ctx.control.request_exit(ExitReason::HostError {
                    vcpu: Some(index),
                    message: format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    ),
                });
                break;
            }
        };
        if let Some(counters) = ctx.exits.get(index as usize) {
            counters.count(match &exit {
                VcpuExit::IoIn { .. } => ExitKind::IoIn,
                VcpuExit::IoOut { .. } => ExitKind::IoOut,
                VcpuExit::MmioRead { .. } => ExitKind::MmioRead,
                VcpuExit::MmioWrite { .. } => ExitKind::MmioWrite,
                VcpuExit::Interrupted => ExitKind::Interrupted,
                _ => ExitKind::Other,
            });
        }
        match exit {
            VcpuExit::IoOut { port, data } => {
                if !ctx.pio.write(port as u64, data) {
                    tracing::trace!(port, ?data, "write to a port with no device");
                }
            }
            VcpuExit::IoIn { port, data } => {
                if !ctx.pio.read(port as u64, data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioWrite { address, data } => {
                if !ctx.mmio.write(address, data) {
                    tracing::trace!(address, "MMIO write with no device");
                }
            }
            VcpuExit::MmioRead { address, data } => {
                if !ctx.mmio.read(address, data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::Interrupted => {}
            // Without a userspace irqchip KVM only reports HLT when the guest halted for good.
            VcpuExit::Hlt => {}
            VcpuExit::Shutdown => {
                log_triple_fault(&vcpu, index);
                ctx.control.request_exit(ExitReason::TripleFault { vcpu: index })
            }
            VcpuExit::SystemReset => ctx.control.request_exit(ExitReason::Reset),
            VcpuExit::SystemShutdown => ctx.control.request_exit(ExitReason::PowerOff),
            VcpuExit::InternalError { suberror } => {
                let rip = vcpu.registers().map(|r| r.rip).unwrap_or(0);
                ctx.control.request_exit(ExitReason::InternalError {
                    vcpu: index,
                    suberror,
                    rip,
                });
            }
            VcpuExit::FailEntry { reason } => {
                ctx.control
                    .request_exit(ExitReason::FailEntry { vcpu: index, reason });
            }
            VcpuExit::Unhandled(what) => ctx.control.request_exit(ExitReason::HostError {
                vcpu: Some(index),
                message: format!("unexpected vCPU exit: {what}"),
            }),
        }
    }
}

/// Leaves the control's books straight however the vCPU thread ends: a bug that panics a vCPU
/// thread stops the machine with a host error instead of leaving it waiting for that thread.
struct ThreadExit<'a> {
    control: &'a Control,
    index: u32,
}

impl Drop for ThreadExit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.control.request_exit(ExitReason::HostError {
                vcpu: Some(self.index),
                message: "the vCPU thread panicked (a virtkit bug; see the log)".into(),
            });
        }
        self.control.thread_exiting();
    }
}

/// Says where a vCPU was when it triple-faulted: once per VM (the machine stops), so not rate
/// limited. What the guest ran there is the first thing anyone asks.
fn log_triple_fault(vcpu: &Vcpu, index: u32) {
    let regs = vcpu.registers();
    let sregs = vcpu.special_registers();
    match (regs, sregs) {
        (Ok(r), Ok(s)) => tracing::error!(
            vcpu = index,
            rip = format_args!("{:#x}", r.rip),
            rsp = format_args!("{:#x}", r.rsp),
            rflags = format_args!("{:#x}", r.rflags),
            cr0 = format_args!("{:#x}", s.cr0),
            cr2 = format_args!("{:#x}", s.cr2),
            cr3 = format_args!("{:#x}", s.cr3),
            cr4 = format_args!("{:#x}", s.cr4),
            efer = format_args!("{:#x}", s.efer),
            cs = format_args!("{:#x}/{:#x}", s.cs.selector, s.cs.base),
            idt = format_args!("{:#x}+{:#x}", s.idt.base, s.idt.limit),
            gdt = format_args!("{:#x}+{:#x}", s.gdt.base, s.gdt.limit),
            tr = format_args!("{:#x}/{:#x}", s.tr.selector, s.tr.base),
            "a vCPU triple-faulted"
        ),
        (r, s) => tracing::error!(
            vcpu = index,
            registers = ?r.err(),
            special_registers = ?s.err(),
            "a vCPU triple-faulted; its registers cannot be read"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_needs_a_pause_with_every_vcpu_parked() {
        let control = Control::new();
        let e = control.capture_vcpus(1, Duration::from_millis(10)).unwrap_err();
        assert!(matches!(e, CaptureError::NotPaused), "{e}");
        // No vCPU thread runs, so the pause holds at once with none parked.
        assert_eq!(control.pause(Duration::from_millis(10)), PauseOutcome::Paused);
        let e = control.capture_vcpus(2, Duration::from_millis(10)).unwrap_err();
        assert!(
            matches!(e, CaptureError::NotAllParked { parked: 0, vcpus: 2 }),
            "{e}"
        );
        assert!(e.to_string().contains("0 of 2 vCPUs are parked"), "{e}");
        assert!(
            control.lock().capture.is_none(),
            "a refused capture leaves nothing behind"
        );
    }

    #[test]
    fn a_restored_machine_starts_paused_but_a_stop_still_wins() {
        let control = Control::new();
        control.start_paused();
        assert!(control.is_paused());
        control.request_exit(ExitReason::Stopped);
        control.start_paused();
        assert!(!control.is_paused(), "a stop is not turned back into a pause");
    }
}
