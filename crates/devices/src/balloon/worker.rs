//! The balloon's worker thread (`v_balloon`): it owns the queues, sleeps in epoll on their
//! eventfds, the kill eventfd, the handle's statistics request eventfd and (with the statistics
//! queue and a polling interval) a timerfd, and runs the handler.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use virtkit_virtio::{warn_ratelimited, DeviceQueue, EventHandler, EventLoop, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::discard::MemoryDiscard;
use super::handle::Shared;
use super::handler::BalloonHandler;
use super::layout::{role_of, QueueRole};
use super::QueueError;

/// Epoll tokens past the queues' (a queue's token is its position in `queues`).
const TIMER_TOKEN: u64 = 1 << 32;
const REQUEST_TOKEN: u64 = TIMER_TOKEN + 1;

pub(crate) struct Worker<D> {
    pub queues: Vec<DeviceQueue>,
    pub acked_features: u64,
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub handler: BalloonHandler<D>,
    pub shared: Arc<Shared>,
    /// Zero: no polling.
    pub stats_interval: Duration,
    /// A queue broke: nothing more is processed until the device is reset.
    pub broken: bool,
}

impl<D: MemoryDiscard> Worker<D> {
    fn position(&self, role: QueueRole) -> Option<usize> {
        self.queues
            .iter()
            .position(|q| role_of(q.index, self.acked_features) == Some(role))
    }

    fn settle(&mut self, position: usize, result: Result<bool, QueueError>) {
        match result {
            Ok(true) => self.interrupt.signal_used_queue(self.queues[position].index),
            Ok(false) => {}
            Err(e) => {
                warn_ratelimited!("virtio-balloon: {e}; the device needs a reset");
                self.broken = true;
                self.interrupt.signal_needs_reset();
            }
        }
    }

    /// Answers what queue `position` holds.
    fn process(&mut self, position: usize) {
        if self.broken {
            return;
        }
        let Some(queue) = self.queues.get_mut(position) else {
            return;
        };
        let mem = &self.memory;
        let q = &mut queue.queue;
        let result = match role_of(queue.index, self.acked_features) {
            Some(QueueRole::Inflate) => self.handler.process_inflate(q, mem),
            Some(QueueRole::Deflate) => self.handler.process_deflate(q, mem),
            Some(QueueRole::Reporting) => self.handler.process_reporting(q, mem),
            Some(QueueRole::Stats) => self.handler.process_stats(q, mem).map(|(notify, stats)| {
                if let Some(stats) = stats {
                    self.shared.store_stats(stats);
                }
                notify
            }),
            None => Ok(false),
        };
        self.settle(position, result);
    }

    /// Hands the statistics buffer back so the guest refills it.
    fn request_stats(&mut self) {
        if self.broken {
            return;
        }
        let Some(position) = self.position(QueueRole::Stats) else {
            return;
        };
        let result = self
            .handler
            .request_stats(&mut self.queues[position].queue, &self.memory);
        self.settle(position, result);
    }

    /// Runs until `kill` is signalled; hands back the queues and the handler.
    pub fn run(mut self, kill: EventFd) -> (Vec<DeviceQueue>, BalloonHandler<D>) {
        let timer = self.timer();
        let event_loop = match self.event_loop(&kill, timer.as_ref()) {
            Ok(event_loop) => event_loop,
            Err(e) => {
                tracing::error!("virtio-balloon: cannot set up the worker's epoll: {e}");
                self.interrupt.signal_needs_reset();
                // Nothing to wait with but a blocking read of the kill eventfd: it is
                // non-blocking, so poll it.
                while kill.read().is_err() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return (self.queues, self.handler);
            }
        };
        // Buffers that came while the worker was not running (before a wake).
        for position in 0..self.queues.len() {
            self.process(position);
        }
        event_loop.run(
            &kill,
            &mut Running {
                worker: &mut self,
                timer,
            },
        );
        (self.queues, self.handler)
    }

    /// A periodic timer when statistics are polled and the driver accepted their queue.
    fn timer(&self) -> Option<TimerFd> {
        if self.stats_interval.is_zero() || self.position(QueueRole::Stats).is_none() {
            return None;
        }
        let mut timer = match TimerFd::new() {
            Ok(timer) => timer,
            Err(e) => {
                tracing::warn!("virtio-balloon: no statistics polling, cannot create a timerfd: {e}");
                return None;
            }
        };
        if let Err(e) = timer.reset(self.stats_interval, Some(self.stats_interval)) {
            tracing::warn!("virtio-balloon: no statistics polling, cannot arm the timerfd: {e}");
            return None;
        }
        Some(timer)
    }

    fn event_loop(&self, kill: &EventFd, timer: Option<&TimerFd>) -> std::io::Result<EventLoop> {
        let event_loop = EventLoop::new(kill)?;
        for (position, queue) in self.queues.iter().enumerate() {
            event_loop.add(queue.event.as_raw_fd(), position as u64, EventSet::IN)?;
        }
        event_loop.add(self.shared.stats_request.as_raw_fd(), REQUEST_TOKEN, EventSet::IN)?;
        if let Some(timer) = timer {
            event_loop.add(timer.as_raw_fd(), TIMER_TOKEN, EventSet::IN)?;
        }
        Ok(event_loop)
    }
}

/// The worker on its [`EventLoop`], with the statistics timer.
struct Running<'a, D> {
    worker: &'a mut Worker<D>,
    timer: Option<TimerFd>,
}

impl<D: MemoryDiscard> EventHandler for Running<'_, D> {
    fn handle_event(&mut self, _: &EventLoop, token: u64, _: EventSet) {
        match token {
            TIMER_TOKEN => {
                // Readable: the read of the expiration count does not block.
                if let Some(timer) = self.timer.as_mut() {
                    let _ = timer.wait();
                }
                self.worker.request_stats();
            }
            REQUEST_TOKEN => {
                let _ = self.worker.shared.stats_request.read();
                self.worker.request_stats();
            }
            token => {
                let position = token as usize;
                if let Some(queue) = self.worker.queues.get(position) {
                    let _ = queue.event.read();
                    self.worker.process(position);
                }
            }
        }
    }
}
