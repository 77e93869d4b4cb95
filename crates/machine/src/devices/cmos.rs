//! The MC146818 CMOS RTC and its NVRAM: the guest's wall clock at boot, and the memory-size
//! bytes PC firmware reads.

use std::time::{SystemTime, UNIX_EPOCH};

use vmm_sys_util::eventfd::EventFd;

use super::rtc_timer::PeriodicTimer;
use crate::bus::BusDevice;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Status B: 24-hour mode; data in BCD (bit 2 clear).
const STATUS_B_24H: u8 = 1 << 1;
/// Status D: the RTC has power (valid RAM and time).
const STATUS_D_VRT: u8 = 1 << 7;
/// Status A: 32.768 kHz time base, 1024 Hz periodic rate.
const STATUS_A_DEFAULT: u8 = 0x26;

/// Where the wall-clock time comes from; a function so tests can fix it.
pub type Clock = Box<dyn Fn() -> u64 + Send>;

pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: Clock,
    /// The periodic interrupt on IRQ 8, once the machine gave the RTC its line.
    periodic: Option<PeriodicTimer>,
}

fn bcd(v: u64) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The CMOS index register and RAM as saved. The clock is not: it reads the host's wall
/// clock, which is the time a restored guest should see.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosState {
    pub index: u8,
    pub ram: Vec<u8>,
}

impl Cmos {
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            ram: self.ram.to_vec(),
        }
    }

    /// Puts saved RAM back; `false` (and nothing changed) when it is not 128 bytes.
    pub fn restore_state(&mut self, state: &CmosState) -> bool {
        let Ok(ram) = <[u8; 128]>::try_from(state.ram.as_slice()) else {
            return false;
        };
        self.ram = ram;
        self.index = state.index;
        self.follow_periodic();
        true
    }

    /// Gives the RTC its interrupt line (IRQ 8's irqfd): from then on the guest can enable
    /// the periodic interrupt.
    pub fn attach_irq(&mut self, irq: EventFd) {
        self.periodic = Some(PeriodicTimer::new(irq));
        self.follow_periodic();
    }

    fn follow_periodic(&mut self) {
        let (a, b) = (self.ram[REG_STATUS_A as usize], self.ram[REG_STATUS_B as usize]);
        if let Some(timer) = &mut self.periodic {
            timer.set(a, b);
        }
    }

    /// A CMOS whose memory-size bytes describe `memory_size` bytes of RAM (split at the MMIO
    /// hole as `low_end` says), reading the host's wall clock.
    pub fn new(memory_size: u64, low_end: u64) -> Cmos {
        Self::with_clock(
            memory_size,
            low_end,
            Box::new(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            }),
        )
    }

    pub fn with_clock(memory_size: u64, low_end: u64, clock: Clock) -> Cmos {
        let mut ram = [0u8; 128];
        ram[REG_STATUS_A as usize] = STATUS_A_DEFAULT;
        ram[REG_STATUS_B as usize] = STATUS_B_24H;
        ram[REG_STATUS_D as usize] = STATUS_D_VRT;
        // Base memory 640 KiB; extended memory 1-64 MiB in KiB; 16 MiB to the hole in 64 KiB
        // units; above 4 GiB in 64 KiB units (bytes 0x5b..0x5d).
        ram[0x15] = 0x80;
        ram[0x16] = 0x02;
        let ext_kib = (low_end.saturating_sub(1 << 20) >> 10).min(0xfc00);
        ram[0x17] = ext_kib as u8;
        ram[0x18] = (ext_kib >> 8) as u8;
        ram[0x30] = ram[0x17];
        ram[0x31] = ram[0x18];
        let above_16m = (low_end.saturating_sub(16 << 20) >> 16).min(0xffff);
        ram[0x34] = above_16m as u8;
        ram[0x35] = (above_16m >> 8) as u8;
        let above_4g = memory_size.saturating_sub(low_end) >> 16;
        ram[0x5b] = above_4g as u8;
        ram[0x5c] = (above_4g >> 8) as u8;
        ram[0x5d] = (above_4g >> 16) as u8;
        Cmos {
            index: 0,
            ram,
            clock,
            periodic: None,
        }
    }

    fn time_register(&self, reg: u8) -> Option<u8> {
        let now = (self.clock)();
        let days = (now / 86_400) as i64;
        let secs = now % 86_400;
        let (year, month, day) = civil_from_days(days);
        Some(match reg {
            REG_SECONDS => bcd(secs % 60),
            REG_MINUTES => bcd(secs / 60 % 60),
            REG_HOURS => bcd(secs / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            REG_WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u64),
            REG_DAY => bcd(day as u64),
            REG_MONTH => bcd(month as u64),
            REG_YEAR => bcd(year.rem_euclid(100) as u64),
            REG_CENTURY => bcd(year.div_euclid(100) as u64),
            _ => return None,
        })
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            // The index register is write-only on a PC's chipset and reads float high, as on
            // QEMU. SeaBIOS reads it around each of its 16/32-bit mode switches and, finding the
            // NMI-disable bit (7) clear, sets it and reads the data port, and puts both back
            // after: 4,270 index writes and 4,268 data reads of the 16,155 exits of the part-3
            // benchmark's 64 MiB read. Reading 0xff it takes NMIs as masked already and does
            // neither.
            0 => 0xff,
            _ => match self.index {
                // Status A: update-in-progress never set, so readers need not wait.
                // Reading status C answers the interrupt: its flags clear.
                REG_STATUS_C => {
                    let periodic = self.periodic.as_ref().map_or(0, PeriodicTimer::take_flags);
                    std::mem::take(&mut self.ram[REG_STATUS_C as usize]) | periodic
                }
                i => self.time_register(i).unwrap_or(self.ram[i as usize & 0x7f]),
            },
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 of the index is the NMI mask, not part of the address.
            0 => self.index = value & 0x7f,
            _ => match self.index {
                // The clock follows the host; writes to it (hwclock --systohc) are dropped.
                i if self.time_register(i).is_some() => {}
                REG_STATUS_C | REG_STATUS_D => {}
                i @ (REG_STATUS_A | REG_STATUS_B) => {
                    self.ram[i as usize] = value;
                    self.follow_periodic();
                }
                i => self.ram[i as usize] = value,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_register_reads_as_an_open_bus_whatever_was_written() {
        let mut cmos = Cmos::new(128 << 20, 128 << 20);
        for written in [0x00, 0x0e, 0x8f] {
            cmos.write(0, &[written]);
            let mut read = [0u8];
            cmos.read(0, &mut read);
            assert_eq!(read, [0xff], "after writing {written:#x}");
        }
    }

    fn read_reg(cmos: &mut Cmos, reg: u8) -> u8 {
        cmos.write(0, &[reg | 0x80]);
        let mut b = [0u8];
        cmos.read(1, &mut b);
        b[0]
    }

    #[test]
    fn reports_a_known_instant_in_bcd() {
        // 2026-11-21 21:59:26 UTC, a Saturday.
        let mut cmos = Cmos::with_clock(64 << 20, 64 << 20, Box::new(|| 1_795_298_366));
        assert_eq!(read_reg(&mut cmos, REG_SECONDS), 0x26);
        assert_eq!(read_reg(&mut cmos, REG_MINUTES), 0x59);
        assert_eq!(read_reg(&mut cmos, REG_HOURS), 0x21);
        assert_eq!(read_reg(&mut cmos, REG_DAY), 0x21);
        assert_eq!(read_reg(&mut cmos, REG_MONTH), 0x11);
        assert_eq!(read_reg(&mut cmos, REG_YEAR), 0x26);
        assert_eq!(read_reg(&mut cmos, REG_CENTURY), 0x20);
        assert_eq!(read_reg(&mut cmos, REG_WEEKDAY), 7);
        assert_eq!(read_reg(&mut cmos, REG_STATUS_B) & 0x6, STATUS_B_24H, "BCD, 24h");
        assert_eq!(
            read_reg(&mut cmos, REG_STATUS_A) & 0x80,
            0,
            "no update in progress"
        );
    }

    #[test]
    fn memory_size_bytes_describe_ram_above_16_mib_and_4_gib() {
        let mut cmos = Cmos::new(5 << 30, 3 << 30);
        let above_16m = u16::from_le_bytes([read_reg(&mut cmos, 0x34), read_reg(&mut cmos, 0x35)]);
        assert_eq!(above_16m as u64, ((3u64 << 30) - (16 << 20)) >> 16);
        let above_4g = read_reg(&mut cmos, 0x5b) as u64
            | (read_reg(&mut cmos, 0x5c) as u64) << 8
            | (read_reg(&mut cmos, 0x5d) as u64) << 16;
        assert_eq!(above_4g, (2u64 << 30) >> 16);
    }

    #[test]
    fn nvram_keeps_what_the_guest_writes_but_the_clock_does_not() {
        let mut cmos = Cmos::with_clock(64 << 20, 64 << 20, Box::new(|| 0));
        cmos.write(0, &[0x40]);
        cmos.write(1, &[0xab]);
        assert_eq!(read_reg(&mut cmos, 0x40), 0xab);
        cmos.write(0, &[REG_SECONDS]);
        cmos.write(1, &[0x33]);
        assert_eq!(read_reg(&mut cmos, REG_SECONDS), 0x00);
    }

    #[test]
    fn the_periodic_interrupt_raises_irq_8_and_status_c_says_so() {
        use super::super::rtc_timer::{STATUS_B_PIE, STATUS_C_IRQF, STATUS_C_PF};
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let raised = irq.try_clone().unwrap();
        let mut cmos = Cmos::with_clock(64 << 20, 64 << 20, Box::new(|| 0));
        cmos.attach_irq(irq);
        assert_eq!(
            read_reg(&mut cmos, REG_STATUS_C),
            0,
            "off until the guest enables it"
        );
        // SeaBIOS's int 15h AH=86h: 1024 Hz (status A as it is), PIE on in status B.
        cmos.write(0, &[REG_STATUS_B]);
        cmos.write(1, &[STATUS_B_24H | STATUS_B_PIE]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while raised.read().is_err() {
            assert!(std::time::Instant::now() < deadline, "IRQ 8 never raised");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(read_reg(&mut cmos, REG_STATUS_C), STATUS_C_IRQF | STATUS_C_PF);
        // The saved state carries status B, so a restored RTC ticks again.
        let state = cmos.state();
        cmos.write(0, &[REG_STATUS_B]);
        cmos.write(1, &[STATUS_B_24H]);
        assert!(cmos.restore_state(&state));
        assert_eq!(read_reg(&mut cmos, REG_STATUS_B) & STATUS_B_PIE, STATUS_B_PIE);
    }
}
