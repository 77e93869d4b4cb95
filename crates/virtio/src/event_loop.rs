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
    /// Before every wait, the first included: a place for work that decides what to wait for
    /// (a worker that registers descriptors as its state changes does it here).
    fn before_wait(&mut self, _event_loop: &EventLoop) {}
    /// How long the next wait may last, in milliseconds; -1 (the default) waits for an event.
    /// A wait that times out is a wake-up with no events.
    fn wait_timeout_ms(&self) -> i32 {
        -1
    }
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
    /// The wake-up that brings the kill still hands its other events to the handler and calls
    /// [`EventHandler::after_events`]; [`EventHandler::before_wait`] is not called again.
    /// An epoll failure other than EINTR is logged and ends the loop too, after waiting for the
    /// kill, so a worker never spins.
    pub fn run(&self, kill: &EventFd, handler: &mut impl EventHandler) {
        let mut events = [EpollEvent::default(); 16];
        loop {
            handler.before_wait(self);
            let n = match self.epoll.wait(handler.wait_timeout_ms(), &mut events) {
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

    /// Counts the passes of a loop that never gets an event but its own kill.
    struct Ticker<'a> {
        kill: &'a EventFd,
        before: u32,
        after: u32,
    }

    impl EventHandler for Ticker<'_> {
        fn before_wait(&mut self, _: &EventLoop) {
            self.before += 1;
            if self.before == 3 {
                self.kill.write(1).unwrap();
            }
        }
        fn wait_timeout_ms(&self) -> i32 {
            1
        }
        fn handle_event(&mut self, _: &EventLoop, token: u64, _: EventSet) {
            panic!("no descriptor but the kill is registered, got token {token}");
        }
        fn after_events(&mut self, _: &EventLoop) {
            self.after += 1;
        }
    }

    #[test]
    fn before_wait_runs_before_every_wait_and_a_timeout_is_a_wake_up_without_events() {
        let kill = EventFd::new(EFD_NONBLOCK).unwrap();
        let event_loop = EventLoop::new(&kill).unwrap();
        let mut ticker = Ticker {
            kill: &kill,
            before: 0,
            after: 0,
        };
        event_loop.run(&kill, &mut ticker);
        assert_eq!(ticker.before, 3, "not called again after the kill");
        assert_eq!(ticker.after, 3, "two timeouts and the kill's wake-up");
    }
}
