//! The disk's worker thread (`v_blk`): it owns the queue and the backend, sleeps in epoll until
//! the driver notifies the queue (an ioeventfd) or the device stops it, and answers requests.

use std::sync::Arc;

use virtkit_virtio::{warn_ratelimited, DeviceQueue, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::DiskBackend;
use super::handler::{process_queue, RequestHandler};

const QUEUE_TOKEN: u64 = 0;
const KILL_TOKEN: u64 = 1;

pub(crate) struct Worker<B> {
    pub queue: DeviceQueue,
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub handler: RequestHandler<B>,
    /// The queue broke: requests are ignored until the device is reset.
    pub broken: bool,
}

impl<B: DiskBackend> Worker<B> {
    fn process(&mut self) {
        if self.broken {
            return;
        }
        match process_queue(&mut self.queue.queue, &self.memory, &mut self.handler) {
            Ok(true) => self.interrupt.signal_used_queue(self.queue.index),
            Ok(false) => {}
            Err(e) => {
                warn_ratelimited!("virtio-blk: {e}; the device needs a reset");
                self.broken = true;
                self.interrupt.signal_needs_reset();
            }
        }
    }

    /// Runs until `kill` is signalled; hands back the queue and the backend.
    pub fn run(mut self, kill: EventFd) -> (DeviceQueue, RequestHandler<B>) {
        let epoll = match Self::epoll(&self.queue.event, &kill) {
            Ok(epoll) => epoll,
            Err(e) => {
                tracing::error!("virtio-blk: cannot set up the worker's epoll: {e}");
                self.interrupt.signal_needs_reset();
                // Nothing to wait with; wait for the stop by blocking on the kill eventfd.
                let _ = kill.read();
                return (self.queue, self.handler);
            }
        };
        // Requests that came while the worker was not running (before a wake).
        self.process();
        let mut events = [EpollEvent::default(); 2];
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
            for event in &events[..n] {
                match event.data() {
                    KILL_TOKEN => stop = true,
                    QUEUE_TOKEN => {
                        let _ = self.queue.event.read();
                        self.process();
                    }
                    _ => {}
                }
            }
            if stop {
                break;
            }
        }
        (self.queue, self.handler)
    }

    fn epoll(queue: &EventFd, kill: &EventFd) -> std::io::Result<Epoll> {
        use std::os::fd::AsRawFd;
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
        Ok(epoll)
    }
}
