//! A device's worker thread: started with a kill eventfd, stopped by signalling it and joining,
//! which hands back whatever the worker owned (its queues and backend).

use std::thread::JoinHandle;

use virtkit_sandbox::{DeviceKind, ThreadRole};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::VirtioError;

/// A running worker thread named `v_<name>` whose body returns `T` when told to stop.
#[derive(Debug)]
pub struct WorkerThread<T> {
    handle: Option<JoinHandle<T>>,
    kill: EventFd,
}

impl<T: Send + 'static> WorkerThread<T> {
    /// Starts `body` on a thread `v_<name>`; `body` gets the kill eventfd to wait on, and must
    /// return soon after it becomes readable.
    pub fn start<F>(name: &str, body: F) -> Result<WorkerThread<T>, VirtioError>
    where
        F: FnOnce(EventFd) -> T + Send + 'static,
    {
        let kill = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        let theirs = kill.try_clone().map_err(VirtioError::EventFd)?;
        let role = ThreadRole::DeviceWorker(DeviceKind::from_worker_name(name));
        let handle = virtkit_sandbox::Builder::new(role)
            .name(format!("v_{name}"))
            .spawn(move || body(theirs))
            .map_err(VirtioError::Thread)?;
        Ok(WorkerThread {
            handle: Some(handle),
            kill,
        })
    }

    /// Tells the worker to stop, waits for it, and returns what it handed back.
    pub fn stop(mut self) -> Result<T, VirtioError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<T, VirtioError> {
        let handle = self.handle.take().ok_or(VirtioError::WorkerPanicked)?;
        if let Err(e) = self.kill.write(1) {
            tracing::error!("cannot signal a worker thread to stop: {e}");
        }
        handle.join().map_err(|_| VirtioError::WorkerPanicked)
    }
}

impl<T> Drop for WorkerThread<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = self.kill.write(1);
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_is_named_and_hands_back_its_result_when_stopped() {
        let worker = WorkerThread::start("test", |kill: EventFd| {
            let name = std::thread::current().name().map(str::to_owned);
            // Block until told to stop.
            loop {
                if kill.read().is_ok() {
                    return name;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
        .unwrap();
        assert_eq!(worker.stop().unwrap().as_deref(), Some("v_test"));
    }

    #[test]
    fn panicking_worker_is_an_error_not_a_panic() {
        let worker =
            WorkerThread::start("boom", |_kill: EventFd| -> u8 { panic!("worker failure") }).unwrap();
        assert!(matches!(worker.stop(), Err(VirtioError::WorkerPanicked)));
    }
}
