//! The RTC's periodic interrupt: while the guest has it enabled (status B's PIE) at a rate
//! (status A's RS bits, 2 Hz to 8192 Hz), a thread (`rtc-timer`, started the first time it is
//! enabled) sets status C's PF and IRQF and raises IRQ 8. SeaBIOS's int 15h AH=86h and
//! AH=83h wait with it (the BIOS's "wait N microseconds"); Linux's `rtc-cmos` offers it as
//! `/dev/rtc`'s periodic interrupts.
//!
//! As on the chip, the interrupt is raised when IRQF goes from 0 to 1 and not again until the
//! guest reads status C: a guest that does not answer is not flooded (the thread waits for the
//! read, it does not wake each period), and ticks it missed are not made up. Turning PIE off
//! clears IRQF (PF stays, as QEMU's RTC does), so turning it on again interrupts anew.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

/// Status C: an interrupt is pending (IRQF), and it is the periodic one (PF).
pub const STATUS_C_IRQF: u8 = 1 << 7;
pub const STATUS_C_PF: u8 = 1 << 6;
/// Status B: periodic interrupt enable.
pub const STATUS_B_PIE: u8 = 1 << 6;

/// The period of rate-select `rs` (status A's low 4 bits) with the 32.768 kHz time base, as the
/// MC146818 defines it (RS 1 and 2 repeat RS 8 and 9); `None` for RS 0 (off).
pub fn period(rs: u8) -> Option<Duration> {
    let rs = match rs & 0x0f {
        0 => return None,
        rs @ 1..=2 => rs + 7,
        rs => rs,
    };
    // 2^(rs-1) cycles of 32768 Hz.
    Some(Duration::from_nanos((1u64 << (rs - 1)) * 1_000_000_000 / 32_768))
}

#[derive(Default)]
struct Schedule {
    /// The period while the interrupt is enabled.
    period: Option<Duration>,
    /// The machine is gone: the thread ends.
    stop: bool,
}

struct Shared {
    schedule: Mutex<Schedule>,
    changed: Condvar,
    /// Status C's interrupt flags.
    flags: AtomicU8,
    irq: EventFd,
}

impl Shared {
    fn schedule(&self) -> MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One tick: the flags set, and IRQ 8 raised unless the last one is still unanswered.
    fn tick(&self) {
        let before = self.flags.fetch_or(STATUS_C_IRQF | STATUS_C_PF, Ordering::AcqRel);
        if before & STATUS_C_IRQF == 0 {
            if let Err(e) = self.irq.write(1) {
                crate::warn_ratelimited!("cannot raise the RTC's interrupt: {e}");
            }
        }
    }

    fn run(&self) {
        let mut schedule = self.schedule();
        // The next tick, and the period it was planned with.
        let mut next: Option<(Instant, Duration)> = None;
        loop {
            if schedule.stop {
                return;
            }
            let unanswered = self.flags.load(Ordering::Acquire) & STATUS_C_IRQF != 0;
            let period = match schedule.period {
                Some(period) if !unanswered => period,
                // Off, or the last interrupt unanswered: wait for a change or the guest's read.
                _ => {
                    next = None;
                    schedule = self.changed.wait(schedule).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
            };
            let now = Instant::now();
            let due = match next {
                Some((due, planned)) if planned == period => due,
                // A new rate (or the first tick): one period from now.
                _ => now + period,
            };
            next = Some((due, period));
            if now < due {
                schedule = self
                    .changed
                    .wait_timeout(schedule, due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            self.tick();
            // The next tick one period after this one was due; after a long stall, one period
            // from now (missed ticks are not made up).
            let after = if now - due > period * 4 {
                now + period
            } else {
                due + period
            };
            next = Some((after, period));
        }
    }
}

/// The periodic interrupt of one RTC.
pub struct PeriodicTimer {
    shared: Arc<Shared>,
    started: bool,
}

impl PeriodicTimer {
    /// A timer raising `irq` (IRQ 8's irqfd).
    pub fn new(irq: EventFd) -> PeriodicTimer {
        PeriodicTimer {
            shared: Arc::new(Shared {
                schedule: Mutex::new(Schedule::default()),
                changed: Condvar::new(),
                flags: AtomicU8::new(0),
                irq,
            }),
            started: false,
        }
    }

    /// Follows status A and B: ticks at A's rate while B enables it, else stops ticking.
    pub fn set(&mut self, status_a: u8, status_b: u8) {
        let period = (status_b & STATUS_B_PIE != 0).then(|| period(status_a)).flatten();
        {
            let mut schedule = self.shared.schedule();
            if schedule.period == period {
                return;
            }
            schedule.period = period;
        }
        self.shared.changed.notify_all();
        if period.is_some() && !self.started {
            let shared = self.shared.clone();
            match virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::RtcTimer)
                .name("rtc-timer".into())
                .spawn(move || shared.run())
            {
                Ok(_) => self.started = true,
                Err(e) => tracing::error!("cannot start the RTC's periodic interrupt: {e}"),
            }
        }
    }

    /// Status C's interrupt flags, cleared by the read (as the guest's read of status C does);
    /// an answered interrupt lets the thread tick again.
    pub fn take_flags(&self) -> u8 {
        let flags = self.shared.flags.swap(0, Ordering::AcqRel);
        if flags & STATUS_C_IRQF != 0 {
            // Under the schedule's lock, so the thread is either before its check of the flags
            // or waiting: the notification is not lost.
            let _schedule = self.shared.schedule();
            self.shared.changed.notify_all();
        }
        flags
    }
}

impl Drop for PeriodicTimer {
    fn drop(&mut self) {
        self.shared.schedule().stop = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_the_mc146818_table() {
        assert_eq!(period(0), None);
        assert_eq!(period(6), Some(Duration::from_nanos(976_562)), "1024 Hz");
        assert_eq!(period(3), Some(Duration::from_nanos(122_070)), "8192 Hz");
        assert_eq!(period(15), Some(Duration::from_millis(500)), "2 Hz");
        assert_eq!(period(1), period(8));
        assert_eq!(period(2), period(9));
    }

    #[test]
    fn it_ticks_while_enabled_and_waits_for_the_guest_to_answer() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let raised = irq.try_clone().unwrap();
        let mut timer = PeriodicTimer::new(irq);
        // 128 Hz (RS 9), enabled.
        timer.set(0x29, STATUS_B_PIE);
        let deadline = Instant::now() + Duration::from_secs(10);
        while raised.read().is_err() {
            assert!(Instant::now() < deadline, "no tick within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Unanswered: raised once, however many periods go by.
        std::thread::sleep(Duration::from_millis(100));
        assert!(raised.read().is_err(), "raised again before the guest answered");
        assert_eq!(timer.take_flags(), STATUS_C_IRQF | STATUS_C_PF);
        assert_eq!(timer.take_flags(), 0, "the read cleared them");
        // Answered each time: it keeps ticking.
        let mut ticks = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            if raised.read().is_ok() {
                ticks += 1;
                timer.take_flags();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Never faster than the rate (38 periods of 7.8 ms); slower only if this host is busy.
        assert!((2..=40).contains(&ticks), "{ticks} ticks in 300 ms at 128 Hz");
        // Disabled: no more.
        timer.set(0x29, 0);
        std::thread::sleep(Duration::from_millis(20));
        timer.take_flags();
        let _ = raised.read();
        std::thread::sleep(Duration::from_millis(100));
        assert!(raised.read().is_err(), "no tick while disabled");
        assert_eq!(timer.take_flags(), 0);
    }
}
