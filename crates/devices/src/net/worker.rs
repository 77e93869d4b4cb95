//! The `v_net` thread: it owns the queue pair and the handler, sleeps in epoll on the two
//! queue eventfds, the kill eventfd and the backend's descriptor, and runs a pass over both
//! directions on each wake-up. The backend is watched only for what the device wants now:
//! readable while a frame may go to the guest, writable while a send waits (epoll is
//! level-triggered; anything else would wake the thread over and over).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::QueueT;
use virtkit_virtio::{warn_ratelimited, DeviceQueue, EventHandler, EventLoop, QueueError, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::ctrl::CtrlQueue;
use super::device::Shared;
use super::handler::NetHandler;

const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const BACKEND_TOKEN: u64 = 2;
const CTRL_TOKEN: u64 = 3;

pub(crate) struct Worker {
    pub rx: DeviceQueue,
    pub tx: DeviceQueue,
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub handler: NetHandler,
    pub shared: Arc<Shared>,
    /// The control queue, on the first pair's worker of a multiqueue card.
    pub ctrl: Option<CtrlQueue>,
    /// A queue broke: nothing runs until the device is reset.
    pub broken: bool,
    /// The backend's descriptor in epoll and what it is watched for (`None`: not in epoll). A
    /// listening backend's descriptor changes when its peer connects.
    registered: Option<(RawFd, EventSet)>,
}

impl Worker {
    pub fn new(
        rx: DeviceQueue,
        tx: DeviceQueue,
        activation: (GuestMemoryMmap, Arc<dyn VirtioInterrupt>),
        handler: NetHandler,
        shared: Arc<Shared>,
    ) -> Worker {
        let (memory, interrupt) = activation;
        Worker {
            rx,
            tx,
            memory,
            interrupt,
            handler,
            shared,
            ctrl: None,
            broken: false,
            registered: None,
        }
    }

    /// Gives this worker the card's control queue as well.
    pub fn with_ctrl(mut self, ctrl: Option<CtrlQueue>) -> Worker {
        self.ctrl = ctrl;
        self
    }

    /// Runs until `kill` is signalled; hands back the queues (rx, tx) and the handler.
    pub fn run(mut self, kill: EventFd) -> (Vec<DeviceQueue>, NetHandler) {
        let setup = EventLoop::new(&kill).and_then(|event_loop| {
            event_loop.add(self.rx.event.as_raw_fd(), RX_TOKEN, EventSet::IN)?;
            event_loop.add(self.tx.event.as_raw_fd(), TX_TOKEN, EventSet::IN)?;
            if let Some(ctrl) = &self.ctrl {
                event_loop.add(ctrl.queue.event.as_raw_fd(), CTRL_TOKEN, EventSet::IN)?;
            }
            Ok(event_loop)
        });
        match setup {
            Ok(event_loop) => {
                // Buffers the guest added while no worker ran (before a wake).
                self.handler.rx_starved = false;
                event_loop.run(&kill, &mut self);
                if let Some((fd, _)) = self.registered.take() {
                    let _ = event_loop.remove(fd);
                }
            }
            Err(e) => {
                tracing::error!("virtio-net: cannot set up the worker's epoll: {e}");
                self.interrupt.signal_needs_reset();
                let _ = kill.read();
            }
        }
        if !self.broken {
            match self.handler.release_rx(&mut self.rx.queue, &self.memory) {
                Ok(true) => self.interrupt.signal_used_queue(self.rx.index),
                Ok(false) => {}
                Err(e) => warn_ratelimited!("virtio-net: cannot give back rx buffers: {e}"),
            }
        }
        let mut queues = vec![self.rx, self.tx];
        queues.extend(self.ctrl.map(|c| c.queue));
        (queues, self.handler)
    }

    fn pass(&mut self) {
        self.handler.more = false;
        if self.broken {
            return;
        }
        if let Err(e) = self.try_pass() {
            warn_ratelimited!("virtio-net: {e}; the device needs a reset");
            self.broken = true;
            self.interrupt.signal_needs_reset();
        }
        if !self.handler.link_up() && self.shared.link_up.swap(false, Ordering::AcqRel) {
            self.interrupt.signal_config_changed();
        }
    }

    fn try_pass(&mut self) -> Result<(), QueueError> {
        let mem = &self.memory;
        if self.handler.process_tx(&mut self.tx.queue, mem)? && self.tx.queue.needs_notification(mem)? {
            self.interrupt.signal_used_queue(self.tx.index);
        }
        if self.handler.process_rx(&mut self.rx.queue, mem)? && self.rx.queue.needs_notification(mem)? {
            self.interrupt.signal_used_queue(self.rx.index);
        }
        if let Some(ctrl) = &mut self.ctrl {
            if ctrl.process(mem)? && ctrl.queue.queue.needs_notification(mem)? {
                self.interrupt.signal_used_queue(ctrl.queue.index);
            }
        }
        Ok(())
    }

    /// Brings epoll's watch on the backend in line with what the handler wants.
    fn register(&mut self, event_loop: &EventLoop) {
        let mut wanted = EventSet::empty();
        if !self.broken && self.handler.wants_input() {
            wanted |= EventSet::IN;
        }
        if !self.broken && self.handler.wants_output() {
            wanted |= EventSet::OUT;
        }
        let fd = self.handler.backend.fd().as_raw_fd();
        if let Some((old, _)) = self.registered.filter(|(old, _)| *old != fd) {
            // The backend's descriptor changed (a listening backend took its peer); the old
            // one is still open (the backend keeps its listener), so removing it is safe.
            let _ = event_loop.remove(old);
            self.registered = None;
        }
        let result = match (self.registered, wanted.is_empty()) {
            (None, true) => Ok(()),
            (Some(_), true) => event_loop.remove(fd),
            (None, false) => event_loop.add(fd, BACKEND_TOKEN, wanted),
            (Some((_, now)), false) if now == wanted => Ok(()),
            (Some(_), false) => event_loop.modify(fd, BACKEND_TOKEN, wanted),
        };
        match result {
            Ok(()) => self.registered = (!wanted.is_empty()).then_some((fd, wanted)),
            Err(e) => {
                tracing::error!("virtio-net: cannot watch the backend: {e}; the device stops");
                self.broken = true;
                self.interrupt.signal_needs_reset();
            }
        }
    }
}

/// Each wake-up: the events only say what to look at; the pass before the next wait does the
/// work and decides what to watch.
impl EventHandler for Worker {
    fn before_wait(&mut self, event_loop: &EventLoop) {
        self.pass();
        self.register(event_loop);
    }

    fn wait_timeout_ms(&self) -> i32 {
        if self.handler.more && !self.broken {
            0
        } else {
            -1
        }
    }

    fn handle_event(&mut self, _: &EventLoop, token: u64, _: EventSet) {
        match token {
            RX_TOKEN => {
                let _ = self.rx.event.read();
                self.handler.rx_buffers_added();
            }
            TX_TOKEN => {
                let _ = self.tx.event.read();
            }
            CTRL_TOKEN => {
                if let Some(ctrl) = &self.ctrl {
                    let _ = ctrl.queue.event.read();
                }
            }
            // The backend: the pass looks at both directions.
            _ => {}
        }
    }
}
