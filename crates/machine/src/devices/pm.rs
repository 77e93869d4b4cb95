//! ACPI fixed-hardware PM registers: PM1 event and control blocks and the PM timer.
//!
//! The power button sets PWRBTN_STS and, when the guest enabled it, raises the SCI (a
//! level-triggered line, held while any enabled status bit is set). Writing SLP_TYP = S5 with
//! SLP_EN powers the machine off.

use std::time::Instant;

use crate::bus::BusDevice;
use crate::layout::pm::{PWRBTN, S5_SLP_TYP, SCI_EN, SLP_EN, SLP_TYP_MASK, SLP_TYP_SHIFT};
use crate::layout::ports::{PM1A_CNT_BLK, PM1A_EVT_BLK, PM_TMR_BLK};

use super::{GuestRequest, RequestSink};

/// Drives an interrupt line's level.
pub type IrqLevel = Box<dyn Fn(bool) + Send>;

/// The PM timer runs at 3.579545 MHz.
const PM_TIMER_HZ: u128 = 3_579_545;
const PM_TIMER_MASK: u32 = 0x00ff_ffff;

const STS_OFFSET: u64 = 0;
const EN_OFFSET: u64 = 2;
const CNT_OFFSET: u64 = (PM1A_CNT_BLK - PM1A_EVT_BLK) as u64;
const TMR_OFFSET: u64 = (PM_TMR_BLK - PM1A_EVT_BLK) as u64;
/// Bytes from PM1A_EVT_BLK to the end of the timer: one bus range for all three blocks.
pub const PM_IO_LEN: u64 = TMR_OFFSET + 4;

pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    sci_raised: bool,
    sci: IrqLevel,
    requests: RequestSink,
    started: Instant,
    /// The timer's last value as read, in ticks since `started` (not masked to 24 bits).
    last_timer_ticks: u64,
}

/// The PM1 registers and the PM timer as saved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PmState {
    pub status: u16,
    pub enable: u16,
    pub control: u16,
    /// Time the PM timer had counted, so it goes on from there.
    pub timer_elapsed_ns: u64,
}

impl AcpiPm {
    pub fn state(&self) -> PmState {
        PmState {
            status: self.status,
            enable: self.enable,
            control: self.control,
            // Reads may have run ahead of a coarse host clock: the saved time is never behind
            // the last value the guest saw, so the restored timer does not step back.
            timer_elapsed_ns: u64::try_from(self.started.elapsed().as_nanos())
                .unwrap_or(u64::MAX)
                .max(ns_of_ticks(self.last_timer_ticks)),
        }
    }

    /// Puts saved registers back and raises the SCI if they say it is pending.
    pub fn restore_state(&mut self, state: &PmState) {
        self.status = state.status;
        self.enable = state.enable;
        self.control = state.control | SCI_EN;
        let elapsed = std::time::Duration::from_nanos(state.timer_elapsed_ns);
        self.started = Instant::now().checked_sub(elapsed).unwrap_or_else(Instant::now);
        // The timer goes on from the saved time, not from what this device read before.
        self.last_timer_ticks = ticks_of(elapsed);
        self.update_sci();
    }

    pub fn new(sci: IrqLevel, requests: RequestSink) -> AcpiPm {
        AcpiPm {
            status: 0,
            enable: 0,
            // We have no SMI handler: the machine is in ACPI mode from the start.
            control: SCI_EN,
            sci_raised: false,
            sci,
            requests,
            started: Instant::now(),
            last_timer_ticks: 0,
        }
    }

    /// Presses the power button: the guest's ACPI driver sees PWRBTN_STS.
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN;
        self.update_sci();
    }

    /// Whether the guest enabled the power button event.
    pub fn power_button_enabled(&self) -> bool {
        self.enable & PWRBTN != 0
    }

    fn update_sci(&mut self) {
        let level = self.status & self.enable != 0;
        if level != self.sci_raised {
            self.sci_raised = level;
            (self.sci)(level);
        }
    }

    fn timer(&mut self) -> u32 {
        self.timer_at(self.started.elapsed())
    }

    /// The timer's value `elapsed` after it started. Every read returns a value past the last
    /// one: a read is a VM exit, which takes longer than one tick (279 ns) on any hardware, so
    /// on a real chipset two reads never see the same value. The host's clock may be coarser
    /// than a tick (a host whose clock source is jiffies, such as a VM without a stable TSC,
    /// moves it every 1-4 ms), and Linux's check of the timer at boot reads until the value
    /// changes: 650 reads instead of 20 in the emulated KVM host (bench/RESULTS.md, part 2).
    /// The timer stays ahead of the host's clock by the ticks added until the clock passes it:
    /// one tick per read, so a guest that reads in a loop sees a timer that runs at most as fast
    /// as its reads, never backwards.
    fn timer_at(&mut self, elapsed: std::time::Duration) -> u32 {
        let ticks = ticks_of(elapsed).max(self.last_timer_ticks.saturating_add(1));
        self.last_timer_ticks = ticks;
        (ticks as u32) & PM_TIMER_MASK
    }

    fn write_control(&mut self, value: u16) {
        // SCI_EN stays set; SLP_EN is write-only and never reads back.
        self.control = (value & !SLP_EN) | SCI_EN;
        if value & SLP_EN != 0 {
            let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
            if sleep_type == S5_SLP_TYP {
                (self.requests)(GuestRequest::PowerOff);
            } else {
                tracing::debug!(sleep_type, "guest asked for a sleep state we do not support");
            }
        }
    }
}

/// Whole timer ticks in `elapsed`.
fn ticks_of(elapsed: std::time::Duration) -> u64 {
    u64::try_from(elapsed.as_nanos() * PM_TIMER_HZ / 1_000_000_000).unwrap_or(u64::MAX)
}

/// Nanoseconds until the timer has counted `ticks` (rounded up, so `ticks_of` gives them back).
fn ns_of_ticks(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * 1_000_000_000).div_ceil(PM_TIMER_HZ);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn read_le(value: u32, byte_offset: u64, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(byte_offset as usize + i).copied().unwrap_or(0);
    }
}

fn word_from(data: &[u8]) -> u16 {
    match data {
        [lo] => *lo as u16,
        [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
        [] => 0,
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            STS_OFFSET..=1 => read_le(self.status as u32, offset - STS_OFFSET, data),
            EN_OFFSET..=3 => read_le(self.enable as u32, offset - EN_OFFSET, data),
            CNT_OFFSET..=5 => read_le(self.control as u32, offset - CNT_OFFSET, data),
            TMR_OFFSET..=11 => read_le(self.timer(), offset - TMR_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Byte writes to the high half of a register shift the value into place.
        let (base, value) = match offset {
            1 | 3 | 5 => (offset - 1, word_from(data) << 8),
            _ => (offset, word_from(data)),
        };
        match base {
            STS_OFFSET => {
                // Status bits are write-one-to-clear.
                self.status &= !value;
                self.update_sci();
            }
            EN_OFFSET => {
                self.enable = if offset == 3 {
                    (self.enable & 0xff) | value
                } else {
                    value
                };
                self.update_sci();
            }
            CNT_OFFSET => {
                let value = if offset == 5 {
                    (self.control & 0xff) | value
                } else {
                    value
                };
                self.write_control(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<String>>>;

    fn pm() -> (AcpiPm, Log) {
        let log: Log = Arc::default();
        let (l1, l2) = (log.clone(), log.clone());
        let dev = AcpiPm::new(
            Box::new(move |level| l1.lock().unwrap().push(format!("sci={level}"))),
            Arc::new(move |r| l2.lock().unwrap().push(format!("{r:?}"))),
        );
        (dev, log)
    }

    fn read16(dev: &mut AcpiPm, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        dev.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn power_button_raises_sci_only_when_enabled_and_clears_on_w1c() {
        let (mut dev, log) = pm();
        dev.press_power_button();
        assert_eq!(read16(&mut dev, STS_OFFSET) & PWRBTN, PWRBTN);
        assert!(log.lock().unwrap().is_empty(), "not enabled: no SCI");
        dev.write(EN_OFFSET, &PWRBTN.to_le_bytes());
        assert_eq!(*log.lock().unwrap(), vec!["sci=true"]);
        dev.write(STS_OFFSET, &PWRBTN.to_le_bytes());
        assert_eq!(read16(&mut dev, STS_OFFSET) & PWRBTN, 0);
        assert_eq!(*log.lock().unwrap(), vec!["sci=true", "sci=false"]);
    }

    #[test]
    fn slp_en_with_s5_powers_off_and_other_states_do_not() {
        let (mut dev, log) = pm();
        dev.write(CNT_OFFSET, &((3 << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes());
        assert!(log.lock().unwrap().is_empty());
        dev.write(CNT_OFFSET, &(5u16 << SLP_TYP_SHIFT).to_le_bytes());
        assert!(log.lock().unwrap().is_empty(), "SLP_EN clear");
        dev.write(CNT_OFFSET, &0x3400u16.to_le_bytes());
        assert_eq!(*log.lock().unwrap(), vec!["PowerOff"]);
        assert_eq!(read16(&mut dev, CNT_OFFSET) & SLP_EN, 0, "SLP_EN reads as zero");
        assert_eq!(read16(&mut dev, CNT_OFFSET) & SCI_EN, SCI_EN);
    }

    #[test]
    fn byte_write_to_the_high_half_of_pm1_cnt_powers_off() {
        let (mut dev, log) = pm();
        dev.write(CNT_OFFSET + 1, &[0x34]);
        assert_eq!(*log.lock().unwrap(), vec!["PowerOff"]);
    }

    #[test]
    fn timer_advances_and_stays_within_24_bits() {
        let (mut dev, _) = pm();
        let mut a = [0u8; 4];
        dev.read(TMR_OFFSET, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut b = [0u8; 4];
        dev.read(TMR_OFFSET, &mut b);
        let (a, b) = (u32::from_le_bytes(a), u32::from_le_bytes(b));
        assert!(b > a && b <= PM_TIMER_MASK, "{a} {b}");
    }

    #[test]
    fn timer_moves_on_every_read_while_the_host_clock_stands_still() {
        use std::time::Duration;
        let (mut dev, _) = pm();
        let coarse = Duration::from_millis(4);
        let first = dev.timer_at(coarse);
        assert_eq!(first, 14318, "4 ms of 3.579545 MHz");
        let reads: Vec<u32> = (0..5).map(|_| dev.timer_at(coarse)).collect();
        assert_eq!(reads, vec![14319, 14320, 14321, 14322, 14323]);
        // The host's clock moves on: the timer is the clock's again, not one tick per read.
        assert_eq!(dev.timer_at(Duration::from_millis(8)), 28636);
        // At the 24-bit mask it wraps to zero, read after read, while the clock stands still.
        let last_before_wrap = Duration::from_nanos(ns_of_ticks(u64::from(PM_TIMER_MASK)));
        assert_eq!(dev.timer_at(last_before_wrap), PM_TIMER_MASK);
        assert_eq!(dev.timer_at(last_before_wrap), 0);
        assert_eq!(dev.timer_at(last_before_wrap), 1);
    }

    #[test]
    fn a_saved_timer_that_ran_ahead_of_the_clock_does_not_step_back_after_a_restore() {
        use std::time::Duration;
        let (mut dev, _) = pm();
        // Ten reads while the host's clock stands at 0: the guest saw ticks 1..=10.
        let seen: Vec<u32> = (0..10).map(|_| dev.timer_at(Duration::ZERO)).collect();
        assert_eq!(seen.last(), Some(&10));
        let state = dev.state();
        let (mut restored, _) = pm();
        restored.restore_state(&state);
        assert!(
            restored.timer() >= 11,
            "the first read after the restore is past the last one seen"
        );
    }

    #[test]
    fn a_restored_timer_counts_from_the_saved_time_not_from_the_last_read() {
        let (mut dev, _) = pm();
        dev.timer_at(std::time::Duration::from_secs(60));
        let mut state = dev.state();
        state.timer_elapsed_ns = 1_000_000;
        dev.restore_state(&state);
        let value = dev.timer();
        assert!(
            value < 3_579_545,
            "one second of ticks at most after a restore to 1 ms: {value}"
        );
    }
}
