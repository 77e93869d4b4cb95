//! The part of a device's lifecycle every device repeats: its handler (the queue logic and the
//! backend) idle in the device while no worker runs, the worker thread that owns it and the
//! queues while one does, the memory and interrupt of the activation kept for waking, and the
//! checks of activate, sleep, wake, reset and snapshot. A device keeps a [`DeviceWorker`] and
//! only its own specifics: which queues it takes and what its worker does with them, in a
//! `start` function from the queues handed over and the [`Activation`] to a [`WorkerBody`].

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::{DeviceQueue, VirtioError, VirtioInterrupt, WorkerThread};

/// What an activation gave the device, kept for every (re)start of its worker.
#[derive(Clone)]
pub struct Activation {
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation").finish_non_exhaustive()
    }
}

/// A worker's body: it gets the handler and the kill eventfd on the thread `v_<name>`, and when
/// the kill is signalled returns the queues and the handler.
pub type WorkerBody<H> = Box<dyn FnOnce(H, EventFd) -> (Vec<DeviceQueue>, H) + Send>;

enum Run<H> {
    Inactive,
    Running(WorkerThread<(Vec<DeviceQueue>, H)>),
    Asleep,
}

/// A device's worker slot over the handler `H`.
///
/// - [`DeviceWorker::activate`]: inactive → running, with the device's queues.
/// - [`DeviceWorker::sleep`]: running → asleep; the worker hands the queues and `H` back.
/// - [`DeviceWorker::wake`]: asleep → running, with the queues from a sleep or a restore.
/// - [`DeviceWorker::reset`]: anything → inactive, the queues handed back.
///
/// The worker's body is built by the device's `start` function from the queues (checked and
/// arranged as the device needs) and the [`Activation`]; a queue it refuses is an error before
/// the handler leaves the slot.
pub struct DeviceWorker<H> {
    name: &'static str,
    /// The handler while no worker has it.
    idle: Option<H>,
    run: Run<H>,
    activation: Option<Activation>,
}

impl<H> std::fmt::Debug for DeviceWorker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let run = match self.run {
            Run::Inactive => "inactive",
            Run::Running(_) => "running",
            Run::Asleep => "asleep",
        };
        f.debug_struct("DeviceWorker")
            .field("name", &self.name)
            .field("run", &run)
            .finish_non_exhaustive()
    }
}

impl<H: Send + 'static> DeviceWorker<H> {
    /// An inactive device's slot; `name` names the thread (`v_<name>`) and the logs
    /// (`virtio-<name>`).
    pub fn new(name: &'static str, handler: H) -> DeviceWorker<H> {
        DeviceWorker {
            name,
            idle: Some(handler),
            run: Run::Inactive,
            activation: None,
        }
    }

    /// The handler, while no worker has it (`None` while running, or once a worker died with it).
    pub fn handler(&self) -> Option<&H> {
        self.idle.as_ref()
    }

    pub fn handler_mut(&mut self) -> Option<&mut H> {
        self.idle.as_mut()
    }

    /// Activated and not reset since (running or asleep).
    pub fn is_active(&self) -> bool {
        !matches!(self.run, Run::Inactive)
    }

    pub fn is_running(&self) -> bool {
        matches!(self.run, Run::Running(_))
    }

    pub fn is_asleep(&self) -> bool {
        matches!(self.run, Run::Asleep)
    }

    /// [`VirtioError::Running`] while a worker runs: snapshot and restore need it stopped.
    pub fn ensure_stopped(&self) -> Result<(), VirtioError> {
        if self.is_running() {
            return Err(VirtioError::Running);
        }
        Ok(())
    }

    /// Starts the worker of an inactive device: `start` checks `queues` and builds the worker's
    /// body. An error leaves the device inactive.
    pub fn activate<F>(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        start: F,
    ) -> Result<(), VirtioError>
    where
        F: FnOnce(Vec<DeviceQueue>, &Activation) -> Result<WorkerBody<H>, VirtioError>,
    {
        if self.is_active() {
            return Err(VirtioError::AlreadyActive);
        }
        let activation = Activation { memory, interrupt };
        let body = start(queues, &activation)?;
        self.activation = Some(activation);
        if let Err(e) = self.spawn(body) {
            self.activation = None;
            self.run = Run::Inactive;
            return Err(e);
        }
        Ok(())
    }

    /// Stops the worker, keeping the device active, and takes the handler back; returns the
    /// queues (`None` if no worker ran, or it died: that is logged).
    pub fn sleep(&mut self) -> Option<Vec<DeviceQueue>> {
        let thread = match std::mem::replace(&mut self.run, Run::Asleep) {
            Run::Running(thread) => thread,
            other => {
                self.run = other;
                return None;
            }
        };
        match thread.stop() {
            Ok((queues, handler)) => {
                self.idle = Some(handler);
                Some(queues)
            }
            Err(e) => {
                tracing::error!("virtio-{}: {e}; the device is gone", self.name);
                None
            }
        }
    }

    /// Restarts the worker of a sleeping device with `queues` (checked by `start`, as in
    /// [`DeviceWorker::activate`]); does nothing to a device that is not asleep or without
    /// queues.
    pub fn wake<F>(&mut self, queues: Option<Vec<DeviceQueue>>, start: F) -> Result<(), VirtioError>
    where
        F: FnOnce(Vec<DeviceQueue>, &Activation) -> Result<WorkerBody<H>, VirtioError>,
    {
        let (Run::Asleep, Some(queues)) = (&self.run, queues) else {
            return Ok(());
        };
        let activation = self.activation.as_ref().ok_or(VirtioError::NotActive)?;
        let body = start(queues, activation)?;
        self.spawn(body)
    }

    /// Stops the worker and forgets the activation; returns the queues if a worker ran.
    pub fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        let queues = self.sleep();
        self.run = Run::Inactive;
        self.activation = None;
        queues
    }

    fn spawn(&mut self, body: WorkerBody<H>) -> Result<(), VirtioError> {
        let handler = self.idle.take().ok_or(VirtioError::IncompatibleState(
            "the device's handler was lost when a worker failed",
        ))?;
        let thread = WorkerThread::start(self.name, move |kill| body(handler, kill))?;
        self.run = Run::Running(thread);
        Ok(())
    }
}

/// The one queue of a single-queue device: exactly one, with index 0.
pub fn single_queue(queues: Vec<DeviceQueue>) -> Result<DeviceQueue, VirtioError> {
    let mut queues = queues.into_iter();
    match (queues.next(), queues.next()) {
        (Some(queue), None) if queue.index == 0 => Ok(queue),
        _ => Err(VirtioError::BadQueue { index: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{test_memory, test_queues, RecordingInterrupt};

    /// A body that counts its runs in the handler and waits for the kill.
    fn body(queues: Vec<DeviceQueue>) -> WorkerBody<u32> {
        Box::new(move |runs, kill| {
            while kill.read().is_err() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            (queues, runs + 1)
        })
    }

    #[test]
    fn activate_sleep_wake_reset_hand_the_queues_and_the_handler_around() {
        let mut slot = DeviceWorker::new("slot", 0u32);
        assert!(!slot.is_active());
        assert!(slot.sleep().is_none());
        let interrupt = Arc::new(RecordingInterrupt::default());
        slot.activate(test_memory(), interrupt.clone(), test_queues(&[8, 8]), |q, _| {
            Ok(body(q))
        })
        .unwrap();
        assert!(slot.is_running() && slot.handler().is_none());
        assert!(matches!(slot.ensure_stopped(), Err(VirtioError::Running)));
        assert!(matches!(
            slot.activate(test_memory(), interrupt, test_queues(&[8]), |q, _| Ok(body(q))),
            Err(VirtioError::AlreadyActive)
        ));
        let queues = slot.sleep().expect("queues");
        assert_eq!(queues.len(), 2);
        assert!(slot.is_asleep() && slot.ensure_stopped().is_ok());
        assert_eq!(slot.handler(), Some(&1));
        slot.wake(Some(queues), |q, _| Ok(body(q))).unwrap();
        assert_eq!(slot.reset().expect("queues").len(), 2);
        assert!(!slot.is_active());
        assert_eq!(slot.handler(), Some(&2));
        assert!(slot.reset().is_none());
    }

    #[test]
    fn a_refused_activation_or_wake_keeps_the_handler() {
        let mut slot = DeviceWorker::new("slot", 0u32);
        let refuse = |_: Vec<DeviceQueue>, _: &Activation| {
            Err::<WorkerBody<u32>, _>(VirtioError::BadQueue { index: 0 })
        };
        let interrupt = Arc::new(RecordingInterrupt::default());
        assert!(slot
            .activate(test_memory(), interrupt, test_queues(&[8]), refuse)
            .is_err());
        assert!(!slot.is_active());
        assert_eq!(slot.handler(), Some(&0));
        // Waking a device that is not asleep does nothing.
        slot.wake(Some(test_queues(&[8])), refuse).unwrap();
        assert!(!slot.is_active());
    }

    #[test]
    fn single_queue_takes_exactly_queue_zero() {
        assert!(single_queue(test_queues(&[8])).is_ok());
        assert!(single_queue(Vec::new()).is_err());
        assert!(single_queue(test_queues(&[8, 8])).is_err());
        let mut queues = test_queues(&[8, 8]);
        assert!(single_queue(queues.split_off(1)).is_err());
    }
}
