//! The disk's worker thread (`v_blk`): it owns the queue and the backend, sleeps in epoll until
//! the driver notifies the queue (an ioeventfd), the backend completes I/O (its completion fd) or
//! the device stops it, and answers requests. One interrupt per wake-up at most, however many
//! requests it answered. When told to stop it first answers every request it had taken from the
//! ring, so a reset, sleep or snapshot never leaves one in flight.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtkit_virtio::{warn_ratelimited, DeviceQueue, EventHandler, EventLoop, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::DiskBackend;
use super::handler::{drain_queue, process_queue, RequestHandler};
use super::QueueError;

const QUEUE_TOKEN: u64 = 0;
const COMPLETION_TOKEN: u64 = 1;

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
        let setup = EventLoop::new(&kill).and_then(|event_loop| {
            event_loop.add(self.queue.event.as_raw_fd(), QUEUE_TOKEN, EventSet::IN)?;
            if let Some(fd) = completion {
                event_loop.add(fd, COMPLETION_TOKEN, EventSet::IN)?;
            }
            Ok(event_loop)
        });
        let event_loop = match setup {
            Ok(event_loop) => event_loop,
            Err(e) => {
                tracing::error!("virtio-blk: cannot set up the worker's epoll: {e}");
                self.interrupt.signal_needs_reset();
                let _ = kill.read();
                return (vec![self.queue], self.handler);
            }
        };
        // Requests that came while the worker was not running (before a wake).
        self.process();
        event_loop.run(
            &kill,
            &mut Running {
                worker: &mut self,
                work: false,
            },
        );
        self.drain();
        // What the backend keeps in memory (a qcow2 image's metadata) reaches its file before the
        // worker stops: the VM may end here, or be saved.
        if let Err(e) = self.handler.disk.write_back() {
            tracing::error!("virtio-blk: cannot write the disk's cached metadata back: {e}");
        }
        (vec![self.queue], self.handler)
    }
}

/// The worker on its [`EventLoop`]: one pass over the queue per wake-up that asked for one.
struct Running<'a, B> {
    worker: &'a mut Worker<B>,
    work: bool,
}

impl<B: DiskBackend> EventHandler for Running<'_, B> {
    fn handle_event(&mut self, _: &EventLoop, token: u64, _: EventSet) {
        match token {
            QUEUE_TOKEN => {
                let _ = self.worker.queue.event.read();
            }
            COMPLETION_TOKEN => {
                if let Some(event) = self.worker.handler.disk.completion_event() {
                    let _ = event.read();
                }
            }
            _ => return,
        }
        self.work = true;
    }

    fn after_events(&mut self, _: &EventLoop) {
        if std::mem::take(&mut self.work) {
            self.worker.process();
        }
    }
}
