//! The `v_vsock` thread: it owns the three queues and the handler, sleeps in epoll on the queue
//! eventfds, the kill eventfd and the host descriptors the muxer wants watched, and runs one
//! pass over everything on each wake-up (the events only say when to look). A host descriptor
//! is watched for input only while its bytes could go to the guest (credit, rx buffers), for
//! output only while bytes wait for it: epoll is level-triggered, so anything else would spin.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::QueueT;
use virtkit_virtio::{warn_ratelimited, DeviceQueue, EventHandler, EventLoop, QueueError, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::handler::{process_event, process_rx, process_tx, VsockHandler};
use super::host::VsockHost;

pub(crate) const RX: usize = 0;
pub(crate) const TX: usize = 1;
pub(crate) const EVENT: usize = 2;
const QUEUE_TOKEN: u64 = 1 << 32;
const HOST_TOKEN: u64 = 1;

pub(crate) struct Worker<H: VsockHost> {
    /// rx, tx, event, in that order.
    pub queues: Vec<DeviceQueue>,
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub handler: VsockHandler<H>,
    pub broken: bool,
    registered: Vec<RawFd>,
}

impl<H: VsockHost> Worker<H> {
    pub fn new(
        queues: Vec<DeviceQueue>,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        handler: VsockHandler<H>,
    ) -> Worker<H> {
        Worker {
            queues,
            memory,
            interrupt,
            handler,
            broken: false,
            registered: Vec::new(),
        }
    }

    pub fn run(mut self, kill: EventFd) -> (Vec<DeviceQueue>, VsockHandler<H>) {
        let event_loop = match self.event_loop(&kill) {
            Ok(event_loop) => event_loop,
            Err(e) => {
                tracing::error!("virtio-vsock: cannot set up the worker's epoll: {e}");
                self.interrupt.signal_needs_reset();
                let _ = kill.read();
                return (self.queues, self.handler);
            }
        };
        self.handler.rx_starved = false;
        event_loop.run(&kill, &mut self);
        self.unregister(&event_loop);
        (self.queues, self.handler)
    }

    fn event_loop(&self, kill: &EventFd) -> std::io::Result<EventLoop> {
        let event_loop = EventLoop::new(kill)?;
        for (i, queue) in self.queues.iter().enumerate() {
            event_loop.add(queue.event.as_raw_fd(), QUEUE_TOKEN + i as u64, EventSet::IN)?;
        }
        Ok(event_loop)
    }

    fn pass(&mut self) {
        if self.broken {
            return;
        }
        if let Err(e) = self.try_pass() {
            warn_ratelimited!("virtio-vsock: {e}; the device needs a reset");
            self.broken = true;
            self.interrupt.signal_needs_reset();
        }
    }

    fn try_pass(&mut self) -> Result<(), QueueError> {
        let mem = &self.memory;
        let handler = &mut self.handler;
        let mut used = [false; 3];
        used[TX] = process_tx(&mut self.queues[TX].queue, mem, handler)?;
        handler.muxer.host_poll(Instant::now());
        used[RX] = process_rx(&mut self.queues[RX].queue, mem, handler)?;
        used[EVENT] = process_event(&mut self.queues[EVENT].queue, mem, handler)?;
        for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            let q = &mut self.queues[i];
            if q.queue.needs_notification(mem)? {
                self.interrupt.signal_used_queue(q.index);
            }
        }
        Ok(())
    }

    /// Registers afresh what the muxer wants watched (a closed descriptor's number may be
    /// reused by a new socket; epoll forgot the old one by itself).
    fn register(&mut self, event_loop: &EventLoop) {
        self.unregister(event_loop);
        if self.broken {
            return;
        }
        let rx_room = !self.handler.rx_starved;
        for (fd, input, output) in self.handler.muxer.watched(rx_room) {
            let mut events = EventSet::empty();
            if input {
                events |= EventSet::IN;
            }
            if output {
                events |= EventSet::OUT;
            }
            match event_loop.add(fd, HOST_TOKEN, events) {
                Ok(()) => self.registered.push(fd),
                Err(e) => warn_ratelimited!("virtio-vsock: cannot wait for a host socket: {e}"),
            }
        }
    }

    fn unregister(&mut self, event_loop: &EventLoop) {
        for fd in self.registered.drain(..) {
            let _ = event_loop.remove(fd);
        }
    }
}

impl<H: VsockHost> EventHandler for Worker<H> {
    fn before_wait(&mut self, event_loop: &EventLoop) {
        self.pass();
        self.register(event_loop);
    }

    fn wait_timeout_ms(&self) -> i32 {
        match self.handler.muxer.next_deadline() {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                i32::try_from(wait.as_millis())
                    .unwrap_or(i32::MAX)
                    .saturating_add(1)
            }
            None => -1,
        }
    }

    fn handle_event(&mut self, _: &EventLoop, token: u64, _: EventSet) {
        if token >= QUEUE_TOKEN {
            let index = (token - QUEUE_TOKEN) as usize;
            if let Some(queue) = self.queues.get(index) {
                let _ = queue.event.read();
            }
            if index == RX {
                self.handler.rx_starved = false;
            }
        }
    }
}
