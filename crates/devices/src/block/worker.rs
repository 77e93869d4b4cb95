//! The disk's worker thread (`v_blk`): it owns the queue and the backend, sleeps in epoll until
//! the driver notifies the queue (an ioeventfd), the backend completes I/O (its completion fd) or
//! the device stops it, and answers requests. One interrupt per wake-up at most, however many
//! requests it answered. When told to stop it first answers every request it had taken from the
//! ring, so a reset, sleep or snapshot never leaves one in flight.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtkit_virtio::{warn_ratelimited, DeviceQueue, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::DiskBackend;
use super::handler::{drain_queue, process_queue, RequestHandler};
use super::QueueError;

const QUEUE_TOKEN: u64 = 0;
const KILL_TOKEN: u64 = 1;
const COMPLETION_TOKEN: u64 = 2;

pub(crate) struct Worker<B> {
    pub queue: DeviceQueue,
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub handler: RequestHandler<B>,
    /// The queue broke: requests are ignored until the device is reset.
    pub broken: bool,
}

impl<B: DiskBackend> Worker<B> {
    /// Handles a result of the queue loop: one interrupt if it says so, or the queue broke.
    fn settle(&mut self, result: Result<bool, QueueError>) {
        match result {
            Ok(true) => self.interrupt.signal_used_queue(self.queue.index),
            Ok(false) => {}
            Err(e) => {
                warn_ratelimited!("virtio-blk: {e}; the device needs a reset");
                self.broken = true;
                // Its requests can no longer be answered; wait for the disk's I/O in flight.
                self.handler.abandon();
                self.interrupt.signal_needs_reset();
            }
        }
    }

    fn process(&mut self) {
        if self.broken {
            // Only late completions can wake it.
            self.handler.abandon();
            return;
        }
        let result = process_queue(&mut self.queue.queue, &self.memory, &mut self.handler);
        self.settle(result);
    }

    /// Answers every request taken from the ring before the worker stops.
    fn drain(&mut self) {
        if self.broken {
            return;
        }
        let result = drain_queue(&mut self.queue.queue, &self.memory, &mut self.handler);
        self.settle(result);
    }

    /// Runs until `kill` is signalled; hands back the queue and the backend, with no request in
    /// flight.
    pub fn run(mut self, kill: EventFd) -> (Vec<DeviceQueue>, RequestHandler<B>) {
        let completion = self.handler.disk.completion_event().map(|e| e.as_raw_fd());
        let epoll = match Self::epoll(&self.queue.event, &kill, completion) {
            Ok(epoll) => epoll,
            Err(e) => {
                tracing::error!("virtio-blk: cannot set up the worker's epoll: {e}");
                self.interrupt.signal_needs_reset();
                // Nothing to wait with; wait for the stop by blocking on the kill eventfd.
                let _ = kill.read();
                return (vec![self.queue], self.handler);
            }
        };
        // Requests that came while the worker was not running (before a wake).
        self.process();
        let mut events = [EpollEvent::default(); 3];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-blk: epoll failed: {e}");
                    let _ = kill.read();
                    break;
                }
            };
            let mut stop = false;
            let mut work = false;
            for event in &events[..n] {
                match event.data() {
                    KILL_TOKEN => stop = true,
                    QUEUE_TOKEN => {
                        let _ = self.queue.event.read();
                        work = true;
                    }
                    COMPLETION_TOKEN => {
                        if let Some(event) = self.handler.disk.completion_event() {
                            let _ = event.read();
                        }
                        work = true;
                    }
                    _ => {}
                }
            }
            if work {
                self.process();
            }
            if stop {
                break;
            }
        }
        self.drain();
        (vec![self.queue], self.handler)
    }

    fn epoll(queue: &EventFd, kill: &EventFd, completion: Option<RawFd>) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            queue.as_raw_fd(),
            EpollEvent::new(EventSet::IN, QUEUE_TOKEN),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            kill.as_raw_fd(),
            EpollEvent::new(EventSet::IN, KILL_TOKEN),
        )?;
        if let Some(fd) = completion {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, COMPLETION_TOKEN),
            )?;
        }
        Ok(epoll)
    }
}
