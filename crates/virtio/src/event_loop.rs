//! The loop every device worker runs: sleep in epoll on the device's file descriptors (queue
//! notifications, backend completions, timers) and the worker's kill eventfd, hand each ready
//! token to the device, and return when told to stop. The device keeps only its own logic.

use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// The token of the kill eventfd; devices use any other value.
pub const KILL_TOKEN: u64 = u64::MAX;

/// What a worker does when one of its file descriptors is ready.
pub trait EventHandler {
    /// `token` (as registered) is ready with `events`. Called once per ready descriptor per
    /// wake-up, before [`EventHandler::after_events`].
    fn handle_event(&mut self, event_loop: &EventLoop, token: u64, events: EventSet);
    /// After every wake-up's events: a place to do the work they asked for once.
    fn after_events(&mut self, _event_loop: &EventLoop) {}
}

/// An epoll set that always contains the kill eventfd.
#[derive(Debug)]
pub struct EventLoop {
    epoll: Epoll,
}

impl EventLoop {
    pub fn new(kill: &EventFd) -> std::io::Result<EventLoop> {
        let event_loop = EventLoop { epoll: Epoll::new()? };
        event_loop.add(kill.as_raw_fd(), KILL_TOKEN, EventSet::IN)?;
        Ok(event_loop)
    }

    /// Watches `fd` for `events`, reported as `token`.
    pub fn add(&self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Dispatches events to `handler` until `kill` is signalled (consuming it), then returns.
    /// An epoll failure other than EINTR is logged and ends the loop too, after waiting for the
    /// kill, so a worker never spins.
    pub fn run(&self, kill: &EventFd, handler: &mut impl EventHandler) {
        let mut events = [EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("a device worker's epoll failed: {e}; the device stops");
                    let _ = kill.read();
                    return;
                }
            };
            let mut stop = false;
            for event in &events[..n] {
                if event.data() == KILL_TOKEN {
                    stop = true;
                } else {
                    handler.handle_event(self, event.data(), event.event_set());
                }
            }
            handler.after_events(self);
            if stop {
                let _ = kill.read();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    struct Counter<'a> {
        fd: &'a EventFd,
        seen: u64,
        passes: u32,
    }

    impl EventHandler for Counter<'_> {
        fn handle_event(&mut self, _: &EventLoop, token: u64, _: EventSet) {
            assert_eq!(token, 7);
            self.seen += self.fd.read().unwrap();
        }
        fn after_events(&mut self, _: &EventLoop) {
            self.passes += 1;
        }
    }

    #[test]
    fn dispatches_ready_tokens_then_stops_on_kill() {
        let kill = EventFd::new(EFD_NONBLOCK).unwrap();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let event_loop = EventLoop::new(&kill).unwrap();
        event_loop.add(fd.as_raw_fd(), 7, EventSet::IN).unwrap();
        fd.write(3).unwrap();
        kill.write(1).unwrap();
        let mut counter = Counter {
            fd: &fd,
            seen: 0,
            passes: 0,
        };
        event_loop.run(&kill, &mut counter);
        assert_eq!(counter.seen, 3, "the ready event was handled before the stop");
        assert_eq!(counter.passes, 1);
        assert!(kill.read().is_err(), "the kill was consumed");
    }
}
