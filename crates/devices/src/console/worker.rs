//! The console's worker thread (`v_console`): it owns the queues and the ports, sleeps in epoll
//! on the queue eventfds, the kill eventfd, the device's wake eventfd (resize, emergency write)
//! and the ports' host descriptors, and runs a pass over everything on each wake-up. A port's
//! descriptors are in epoll only while the device wants them: input while the guest has room
//! for it, output while a write is waiting to go on, the listener while no client is connected.
//! Anything else would wake the thread over and over (epoll is level-triggered).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::QueueT;
use virtkit_virtio::{warn_ratelimited, DeviceQueue, EventHandler, EventLoop, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::device::{port_queues, Shared};
use super::handler::ConsoleHandler;
use super::QueueError;

const WAKE_TOKEN: u64 = 1;
const QUEUE_TOKEN: u64 = 1 << 16;
const PORT_TOKEN: u64 = 1 << 32;
/// How often input that epoll cannot wait for (a regular file) is polled, in milliseconds.
const POLL_MS: i32 = 10;

pub(crate) struct Worker {
    /// By queue index; `None` for queues the driver did not enable.
    pub queues: Vec<Option<DeviceQueue>>,
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub handler: ConsoleHandler,
    pub shared: Arc<Shared>,
    /// A queue broke: nothing runs until the device is reset.
    pub broken: bool,
    /// Port descriptors in epoll, with their events.
    registered: Vec<(RawFd, EventSet)>,
}

impl Worker {
    pub fn new(
        queues: Vec<Option<DeviceQueue>>,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        handler: ConsoleHandler,
        shared: Arc<Shared>,
    ) -> Worker {
        Worker {
            queues,
            memory,
            interrupt,
            handler,
            shared,
            broken: false,
            registered: Vec::new(),
        }
    }

    /// Runs until `kill` is signalled; hands back the queues and the ports.
    pub fn run(mut self, kill: EventFd) -> (Vec<Option<DeviceQueue>>, ConsoleHandler) {
        let event_loop = match self.event_loop(&kill) {
            Ok(event_loop) => event_loop,
            Err(e) => {
                tracing::error!("virtio-console: cannot set up the worker's epoll: {e}");
                self.interrupt.signal_needs_reset();
                let _ = kill.read();
                return (self.queues, self.handler);
            }
        };
        // Whatever came while the worker was not running (before a wake), and input the guest
        // may have room for by now.
        for port in &mut self.handler.ports {
            port.rx_starved = false;
        }
        self.handler.fds_changed = true;
        event_loop.run(&kill, &mut self);
        self.unregister(&event_loop);
        (self.queues, self.handler)
    }

    fn queue_notified(&mut self, index: usize) {
        if let Some(Some(queue)) = self.queues.get(index) {
            let _ = queue.event.read();
        }
        // An rx queue: the guest added buffers, so its port may read again.
        let port = match index {
            0 => Some(0),
            i if i >= 4 && i % 2 == 0 => Some((i - 2) / 2),
            _ => None,
        };
        if let Some(port) = port.and_then(|p| self.handler.ports.get_mut(p)) {
            port.rx_starved = false;
        }
    }

    /// Whether some port's input must be polled (epoll refused it).
    fn polls_input(&self) -> bool {
        (0..self.handler.ports.len())
            .any(|p| self.handler.ports[p].input_unpollable && self.handler.may_read(p))
    }

    /// One pass over the device: host requests, the control queues, every port both ways, and
    /// one interrupt per queue that got used buffers.
    fn pass(&mut self) {
        if self.broken {
            return;
        }
        if let Err(e) = self.try_pass() {
            warn_ratelimited!("virtio-console: {e}; the device needs a reset");
            self.broken = true;
            self.interrupt.signal_needs_reset();
        }
    }

    fn try_pass(&mut self) -> Result<(), QueueError> {
        if self.shared.resize_pending.swap(false, Ordering::AcqRel) {
            let (cols, rows) = self.shared.size();
            if self.handler.resize(cols, rows) {
                self.interrupt.signal_config_changed();
            }
        }
        let emergency = self.shared.take_emergency();
        if !emergency.is_empty() {
            self.handler.push_emergency(&emergency);
        }
        let mem = &self.memory;
        let mut used = vec![false; self.queues.len()];
        let multiport = self.handler.multiport;
        if multiport {
            if let Some(Some(q)) = self.queues.get_mut(3) {
                used[3] |= self.handler.process_control_tx(&mut q.queue, mem)?;
            }
        }
        self.handler.update_host_status();
        for p in 0..self.handler.ports.len() {
            if !self.handler.served(p) {
                continue;
            }
            let (rx, tx) = port_queues(p);
            if let Some(Some(q)) = self.queues.get_mut(tx) {
                used[tx] |= self.handler.process_port_tx(p, &mut q.queue, mem)?;
            }
            if let Some(Some(q)) = self.queues.get_mut(rx) {
                used[rx] |= self.handler.process_port_rx(p, &mut q.queue, mem)?;
            }
        }
        self.handler.update_host_status();
        if multiport {
            if let Some(Some(q)) = self.queues.get_mut(2) {
                used[2] |= self.handler.fill_control_rx(&mut q.queue, mem)?;
            }
        }
        for (index, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            if let Some(Some(q)) = self.queues.get_mut(index) {
                if q.queue.needs_notification(mem)? {
                    self.interrupt.signal_used_queue(q.index);
                }
            }
        }
        Ok(())
    }

    /// The port descriptors epoll should watch now.
    fn wanted(&self) -> Vec<(RawFd, EventSet, u64)> {
        let mut wanted: Vec<(RawFd, EventSet, u64)> = Vec::new();
        let mut want =
            |fd: RawFd, events: EventSet, token: u64| match wanted.iter_mut().find(|(f, _, _)| *f == fd) {
                Some(entry) => entry.1 |= events,
                None => wanted.push((fd, events, token)),
            };
        for (p, port) in self.handler.ports.iter().enumerate() {
            if self.broken || !self.handler.served(p) {
                continue;
            }
            let token = PORT_TOKEN + p as u64;
            let backend = &port.backend;
            if !backend.connected() {
                if let Some(fd) = backend.listener_fd() {
                    want(fd, EventSet::IN, token);
                }
            }
            if self.handler.may_read(p) && !port.input_unpollable {
                if let Some(fd) = backend.input_fd() {
                    want(fd, EventSet::IN, token);
                }
            }
            if port.tx_blocked {
                if let Some(fd) = backend.output_fd() {
                    want(fd, EventSet::OUT, token);
                }
            }
        }
        wanted
    }

    /// Brings epoll's set of port descriptors in line with [`Worker::wanted`]. When a port's
    /// descriptors changed, everything is registered afresh: a closed descriptor's number may
    /// be reused by a new client, and epoll forgot the old one by itself.
    fn register(&mut self, event_loop: &EventLoop) {
        if std::mem::take(&mut self.handler.fds_changed) {
            self.unregister(event_loop);
        }
        let wanted = self.wanted();
        for &(fd, _) in &self.registered {
            if !wanted.iter().any(|(f, _, _)| *f == fd) {
                let _ = event_loop.remove(fd);
            }
        }
        let mut registered = Vec::with_capacity(wanted.len());
        for (fd, events, token) in wanted {
            let result = match self.registered.iter().find(|(f, _)| *f == fd) {
                Some((_, old)) if *old == events => Ok(()),
                Some(_) => event_loop.modify(fd, token, events),
                None => event_loop.add(fd, token, events).or_else(|e| {
                    if e.raw_os_error() == Some(libc::EEXIST) {
                        event_loop.modify(fd, token, events)
                    } else {
                        Err(e)
                    }
                }),
            };
            match result {
                Ok(()) => registered.push((fd, events)),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    // A regular file: always ready. Input is polled; output never blocks.
                    let p = (token - PORT_TOKEN) as usize;
                    if let Some(port) = self.handler.ports.get_mut(p) {
                        port.input_unpollable = true;
                    }
                }
                Err(e) => warn_ratelimited!("virtio-console: cannot wait for a port's descriptor: {e}"),
            }
        }
        self.registered = registered;
    }

    fn unregister(&mut self, event_loop: &EventLoop) {
        for (fd, _) in self.registered.drain(..) {
            let _ = event_loop.remove(fd);
        }
    }

    fn event_loop(&self, kill: &EventFd) -> std::io::Result<EventLoop> {
        let event_loop = EventLoop::new(kill)?;
        event_loop.add(self.shared.wake.as_raw_fd(), WAKE_TOKEN, EventSet::IN)?;
        for (index, queue) in self.queues.iter().enumerate() {
            if let Some(queue) = queue {
                event_loop.add(queue.event.as_raw_fd(), QUEUE_TOKEN + index as u64, EventSet::IN)?;
            }
        }
        Ok(event_loop)
    }
}

/// Each wake-up: the events only say what to look at; the pass before the next wait does the
/// work, and brings the watched port descriptors in line with it.
impl EventHandler for Worker {
    fn before_wait(&mut self, event_loop: &EventLoop) {
        self.pass();
        self.register(event_loop);
    }

    fn wait_timeout_ms(&self) -> i32 {
        if self.polls_input() {
            POLL_MS
        } else {
            -1
        }
    }

    fn handle_event(&mut self, _: &EventLoop, token: u64, _: EventSet) {
        match token {
            WAKE_TOKEN => {
                let _ = self.shared.wake.read();
            }
            token if (QUEUE_TOKEN..PORT_TOKEN).contains(&token) => {
                self.queue_notified((token - QUEUE_TOKEN) as usize)
            }
            // Port descriptors: the pass looks at every port.
            _ => {}
        }
    }
}
