//! The `v_rng` thread: it owns the queue and the handler, and answers buffers when the driver
//! notifies the queue or, while the rate limit holds buffers back, when its timer fires.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtkit_virtio::{warn_ratelimited, DeviceQueue, EventHandler, EventLoop, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::handler::{process_queue, EntropyHandler};
use super::source::EntropySource;

const QUEUE_TOKEN: u64 = 0;
const TIMER_TOKEN: u64 = 1;

pub(crate) struct Worker<S> {
    pub queue: DeviceQueue,
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub handler: EntropyHandler<S>,
    /// The queue broke: nothing is answered until the device is reset.
    pub broken: bool,
}

struct Running<'a, S> {
    worker: &'a mut Worker<S>,
    timer: &'a mut TimerFd,
    work: bool,
}

impl<S: EntropySource> Running<'_, S> {
    fn process(&mut self) {
        if self.worker.broken {
            return;
        }
        let w = &mut *self.worker;
        match process_queue(&mut w.queue.queue, &w.memory, &mut w.handler, Instant::now()) {
            Ok(fill) => {
                if fill.interrupt {
                    w.interrupt.signal_used_queue(w.queue.index);
                }
                if let Some(wait) = fill.again_after {
                    // A zero timer would disarm it; a microsecond is "at once".
                    let wait = wait.max(Duration::from_micros(1));
                    if let Err(e) = self.timer.reset(wait, None) {
                        tracing::error!("virtio-rng: cannot arm the rate-limit timer: {e}");
                    }
                }
            }
            Err(e) => {
                warn_ratelimited!("virtio-rng: {e}; the device needs a reset");
                w.broken = true;
                w.interrupt.signal_needs_reset();
            }
        }
    }
}

impl<S: EntropySource> EventHandler for Running<'_, S> {
    fn handle_event(&mut self, _: &EventLoop, token: u64, _: EventSet) {
        match token {
            QUEUE_TOKEN => {
                let _ = self.worker.queue.event.read();
            }
            TIMER_TOKEN => {
                let _ = self.timer.wait();
            }
            _ => return,
        }
        self.work = true;
    }

    fn after_events(&mut self, _: &EventLoop) {
        if std::mem::take(&mut self.work) {
            self.process();
        }
    }
}

impl<S: EntropySource> Worker<S> {
    /// Runs until `kill` is signalled; hands back the queue and the handler.
    pub fn run(mut self, kill: EventFd) -> (Vec<DeviceQueue>, EntropyHandler<S>) {
        let setup = TimerFd::new().and_then(|timer| {
            let event_loop = EventLoop::new(&kill)?;
            event_loop.add(self.queue.event.as_raw_fd(), QUEUE_TOKEN, EventSet::IN)?;
            event_loop.add(timer.as_raw_fd(), TIMER_TOKEN, EventSet::IN)?;
            Ok((timer, event_loop))
        });
        match setup {
            Ok((mut timer, event_loop)) => {
                let mut running = Running {
                    worker: &mut self,
                    timer: &mut timer,
                    work: false,
                };
                // Buffers that came while the worker was not running (before a wake).
                running.process();
                event_loop.run(&kill, &mut running);
            }
            Err(e) => {
                tracing::error!("virtio-rng: cannot set up the worker: {e}");
                self.interrupt.signal_needs_reset();
                let _ = kill.read();
            }
        }
        (vec![self.queue], self.handler)
    }
}
