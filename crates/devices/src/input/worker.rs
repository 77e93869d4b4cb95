//! The `v_input` thread: it owns the two queues and answers when the driver posts event
//! buffers or status events, or when the host queues events.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtkit_virtio::{warn_ratelimited, DeviceQueue, EventHandler, EventLoop, QueueError, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::handle::Shared;
use super::handler::{consume_status_events, deliver_pending};

const EVENT_QUEUE_TOKEN: u64 = 0;
const STATUS_QUEUE_TOKEN: u64 = 1;
const HOST_TOKEN: u64 = 2;

pub(super) struct Worker {
    pub events: DeviceQueue,
    pub status: DeviceQueue,
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub shared: Arc<Shared>,
}

struct Running<'a> {
    worker: &'a mut Worker,
    deliver: bool,
    status: bool,
    /// A queue broke: nothing is answered until the device is reset.
    broken: bool,
}

impl Running<'_> {
    fn fail(&mut self, e: QueueError) {
        warn_ratelimited!("virtio-input: {e}; the device needs a reset");
        self.broken = true;
        self.worker.interrupt.signal_needs_reset();
    }

    fn process(&mut self) {
        if self.broken {
            return;
        }
        let w = &mut *self.worker;
        if std::mem::take(&mut self.deliver) {
            match deliver_pending(&mut w.events.queue, &w.memory, &w.shared) {
                Ok(true) => w.interrupt.signal_used_queue(w.events.index),
                Ok(false) => {}
                Err(e) => return self.fail(e),
            }
        }
        let w = &mut *self.worker;
        if std::mem::take(&mut self.status) {
            match consume_status_events(&mut w.status.queue, &w.memory, &w.shared) {
                Ok(true) => w.interrupt.signal_used_queue(w.status.index),
                Ok(false) => {}
                Err(e) => self.fail(e),
            }
        }
    }
}

impl EventHandler for Running<'_> {
    fn handle_event(&mut self, _: &EventLoop, token: u64, _: EventSet) {
        match token {
            EVENT_QUEUE_TOKEN => {
                let _ = self.worker.events.event.read();
                self.deliver = true;
            }
            STATUS_QUEUE_TOKEN => {
                let _ = self.worker.status.event.read();
                self.status = true;
            }
            HOST_TOKEN => {
                let _ = self.worker.shared.wake.read();
                self.deliver = true;
            }
            _ => {}
        }
    }

    fn after_events(&mut self, _: &EventLoop) {
        self.process();
    }
}

impl Worker {
    /// Runs until `kill` is signalled; hands back the queues.
    pub fn run(mut self, kill: EventFd) -> Vec<DeviceQueue> {
        let setup = EventLoop::new(&kill).and_then(|event_loop| {
            event_loop.add(self.events.event.as_raw_fd(), EVENT_QUEUE_TOKEN, EventSet::IN)?;
            event_loop.add(self.status.event.as_raw_fd(), STATUS_QUEUE_TOKEN, EventSet::IN)?;
            event_loop.add(self.shared.wake.as_raw_fd(), HOST_TOKEN, EventSet::IN)?;
            Ok(event_loop)
        });
        match setup {
            Ok(event_loop) => {
                let mut running = Running {
                    worker: &mut self,
                    // What came while no worker ran (before a wake).
                    deliver: true,
                    status: true,
                    broken: false,
                };
                running.process();
                event_loop.run(&kill, &mut running);
            }
            Err(e) => {
                tracing::error!("virtio-input: cannot set up the worker: {e}");
                self.interrupt.signal_needs_reset();
                let _ = kill.read();
            }
        }
        vec![self.events, self.status]
    }
}
