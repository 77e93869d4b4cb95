//! Small test guests for virtkit, written in assembly (`asm/`, GNU as, AT&T syntax) and built
//! by `build.rs` with the machine's binutils (`as`, `ld`, `objcopy`). Nothing here is a checked-in
//! binary.
//!
//! Every guest prints ASCII lines terminated by `"\n"` on COM1 (16550 at port 0x3f8, polled),
//! using the fixed addresses of the platform layout (`virtkit_machine::layout`). Nine guests are
//! 32-bit PVH ELF kernels (linked at 1 MiB, with a Xen `PHYS32_ENTRY` note); one is a raw 64 KiB
//! firmware image that runs in real mode from the reset vector.
//!
//! ```
//! use virtkit_test_guests::{output, Guest};
//! let kernel: &std::path::Path = Guest::Hello.path();
//! assert_eq!(output::HELLO, "virtkit-guest: hello from pvh");
//! # let _ = kernel;
//! ```
//!
//! "ACPI power-off" below means: write 0x3400 (`SLP_TYP`=5, `SLP_EN`) to `PM1_CNT` (port 0x604);
//! if execution continues (a VMM without ACPI power-off, or QEMU's q35, which only powers off for
//! `SLP_TYP` 0), the guest does `cli; hlt` forever.

use std::path::Path;

/// How a guest is booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Boot {
    /// 32-bit code in a 64-bit ELF (ELFCLASS64, `EM_386` code repackaged like a vmlinux) loaded at its `PT_LOAD` physical addresses and entered
    /// through the Xen PVH `PHYS32_ENTRY` note: 32-bit protected mode, paging off, flat
    /// segments. The guests set their own GDT and stack and do not read `hvm_start_info`.
    Pvh,
    /// A raw image of exactly [`FIRMWARE_SIZE`] bytes placed to end at 4 GiB
    /// (0xffff0000..=0xffffffff) and mirrored at 0xf0000; the vCPU starts at the reset vector
    /// (CS=0xf000 with base 0xffff0000, IP=0xfff0) in real mode.
    Firmware,
}

/// Size of a [`Boot::Firmware`] image: 64 KiB.
pub const FIRMWARE_SIZE: usize = 64 * 1024;

/// The test guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guest {
    /// PVH. Prints `virtkit-guest: hello from pvh`, then ACPI power-off (`cli; hlt` forever if
    /// that returns).
    Hello,
    /// PVH, for benchmarks against QEMU. Prints `virtkit-smoke: ready`, then resets through the
    /// i8042 (0xfe to port 0x64). If still running (a machine without an i8042, such as QEMU's
    /// microvm), it loads an IDT with limit 0 and executes `ud2`: a triple fault, which ends a
    /// `-no-reboot` run too.
    Smoke,
    /// PVH. Prints `virtkit-guest: echo ready`, then polls COM1 (LSR bit 0) and writes every
    /// received byte straight back. On `q` (which is not echoed) it prints
    /// `"\nvirtkit-guest: echo done\n"` and does ACPI power-off.
    Echo,
    /// PVH. In this order: `outl 0x12345678` to port 0x700; `inl` from port 0x700 and prints
    /// `pio-read=<8 lowercase hex digits>`; a 4-byte MMIO write of 0xcafebabe to 0xd0000000;
    /// a 4-byte MMIO read of 0xd0000004 and prints `mmio-read=<8 lowercase hex digits>`;
    /// `outb 0x5a` to port 0x701; `outw 0xbeef` to port 0x702; prints `io-probe done`; ACPI
    /// power-off. See [`io_probe`] for the numbers.
    IoProbe,
    /// PVH. The BSP prints `cpu apic=<id> bsp` (id: LAPIC ID register bits 31:24, decimal) and
    /// takes the CPU count N from CPUID.1:EBX\[23:16\] (0 counts as 1). If N > 1 it copies a
    /// real-mode trampoline to 0x8000, software-enables its LAPIC (SVR = 0x1ff), sends INIT to
    /// all-excluding-self, waits 40,000,000 TSC cycles, then sends SIPI vector 0x08 twice
    /// (1,000,000 TSC cycles apart). Each AP enters 32-bit protected mode, takes a stack, and
    /// under a spinlock prints `cpu apic=<id> ap`, counts itself in, then `cli; hlt` forever
    /// (AP lines appear in the order they take the lock). The BSP waits for N-1 APs and prints
    /// `cpus-up=<N>`; if they have not all arrived after 0x5_0000_0000 TSC cycles (~10 s at
    /// 2.1 GHz) it prints `smp timeout`, then `cpus-up=<1 + APs that arrived>`. Then ACPI
    /// power-off. See [`smp`].
    Smp,
    /// PVH, for pause/resume tests. Prints `tick 0`, `tick 1`, `tick 2`, ... (decimal) forever,
    /// one line every [`counter::TICK_TSC_CYCLES`] (40,000,000) TSC cycles: a fixed rdtsc
    /// delta, not calibrated (~19 ms at a 2.1 GHz TSC). Never ends by itself.
    Counter,
    /// PVH. Clears a stale `PWRBTN_STS` (writes 0x100 to `PM1_STS`, port 0x600), sets
    /// `PWRBTN_EN` in `PM1_EN` (port 0x602, read-modify-write), prints
    /// `virtkit-guest: waiting for power button`, then polls `PM1_STS` bit 8. When set, it
    /// writes 0x100 to `PM1_STS` (write-1-to-clear), prints
    /// `virtkit-guest: power button pressed` and does ACPI power-off.
    PowerButton,
    /// PVH. Prints `virtkit-guest: resetting`, then writes 0xfe to port 0x64 (i8042 reset);
    /// `cli; hlt` forever if that returns.
    Reset,
    /// PVH. Prints `virtkit-guest: triple fault next`, loads an IDT with limit 0 and executes
    /// `ud2`: #UD, #GP and #DF cannot be delivered, so the vCPU triple-faults (KVM reports
    /// `KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// Raw 64 KiB firmware image ([`Boot::Firmware`]). The reset vector holds a near `jmp`
    /// (0xe9) into the image; the 16-bit real-mode code there prints
    /// `virtkit-guest: real mode at reset vector` and does ACPI power-off. It uses no RAM (no
    /// stack; data is read through CS, whose base is still 0xffff0000).
    ResetVector,
}

macro_rules! artifact {
    ($file:literal) => {
        (
            concat!(env!("OUT_DIR"), "/", $file),
            include_bytes!(concat!(env!("OUT_DIR"), "/", $file)) as &'static [u8],
        )
    };
}

impl Guest {
    /// Every guest.
    pub const ALL: [Guest; 10] = [
        Guest::Hello,
        Guest::Smoke,
        Guest::Echo,
        Guest::IoProbe,
        Guest::Smp,
        Guest::Counter,
        Guest::PowerButton,
        Guest::Reset,
        Guest::TripleFault,
        Guest::ResetVector,
    ];

    /// Short name, also the source file name (`asm/<name>.s`).
    pub fn name(self) -> &'static str {
        match self {
            Guest::Hello => "hello",
            Guest::Smoke => "smoke",
            Guest::Echo => "echo",
            Guest::IoProbe => "io_probe",
            Guest::Smp => "smp",
            Guest::Counter => "counter",
            Guest::PowerButton => "power_button",
            Guest::Reset => "reset",
            Guest::TripleFault => "triple_fault",
            Guest::ResetVector => "reset_vector",
        }
    }

    /// How the guest is booted.
    pub fn boot(self) -> Boot {
        match self {
            Guest::ResetVector => Boot::Firmware,
            _ => Boot::Pvh,
        }
    }

    /// Path of the built artifact in the build's `OUT_DIR`: `<name>.elf` for PVH guests,
    /// `reset_vector.bin` for the firmware image.
    pub fn path(self) -> &'static Path {
        Path::new(self.artifact().0)
    }

    /// Contents of the built artifact (embedded at compile time; the same bytes as the file at
    /// [`Guest::path`]).
    pub fn bytes(self) -> &'static [u8] {
        self.artifact().1
    }

    fn artifact(self) -> (&'static str, &'static [u8]) {
        match self {
            Guest::Hello => artifact!("hello.elf"),
            Guest::Smoke => artifact!("smoke.elf"),
            Guest::Echo => artifact!("echo.elf"),
            Guest::IoProbe => artifact!("io_probe.elf"),
            Guest::Smp => artifact!("smp.elf"),
            Guest::Counter => artifact!("counter.elf"),
            Guest::PowerButton => artifact!("power_button.elf"),
            Guest::Reset => artifact!("reset.elf"),
            Guest::TripleFault => artifact!("triple_fault.elf"),
            Guest::ResetVector => artifact!("reset_vector.bin"),
        }
    }
}

/// The exact lines the guests print (without the terminating `"\n"`).
pub mod output {
    /// [`Guest::Hello`](crate::Guest::Hello).
    pub const HELLO: &str = "virtkit-guest: hello from pvh";
    /// [`Guest::Smoke`](crate::Guest::Smoke).
    pub const SMOKE_READY: &str = "virtkit-smoke: ready";
    /// [`Guest::Echo`](crate::Guest::Echo), before it starts echoing.
    pub const ECHO_READY: &str = "virtkit-guest: echo ready";
    /// The byte that makes [`Guest::Echo`](crate::Guest::Echo) stop (not echoed).
    pub const ECHO_QUIT: u8 = b'q';
    /// [`Guest::Echo`](crate::Guest::Echo) after `q`; preceded by an extra `"\n"`.
    pub const ECHO_DONE: &str = "virtkit-guest: echo done";
    /// [`Guest::IoProbe`](crate::Guest::IoProbe), last line.
    pub const IO_PROBE_DONE: &str = "io-probe done";
    /// [`Guest::Smp`](crate::Guest::Smp) when not all APs arrived in time.
    pub const SMP_TIMEOUT: &str = "smp timeout";
    /// [`Guest::PowerButton`](crate::Guest::PowerButton), once `PWRBTN_EN` is set.
    pub const POWER_BUTTON_WAITING: &str = "virtkit-guest: waiting for power button";
    /// [`Guest::PowerButton`](crate::Guest::PowerButton), after it saw and cleared the status.
    pub const POWER_BUTTON_PRESSED: &str = "virtkit-guest: power button pressed";
    /// [`Guest::Reset`](crate::Guest::Reset).
    pub const RESETTING: &str = "virtkit-guest: resetting";
    /// [`Guest::TripleFault`](crate::Guest::TripleFault).
    pub const TRIPLE_FAULT_NEXT: &str = "virtkit-guest: triple fault next";
    /// [`Guest::ResetVector`](crate::Guest::ResetVector).
    pub const RESET_VECTOR: &str = "virtkit-guest: real mode at reset vector";

    /// `pio-read=<8 lowercase hex digits>`.
    pub fn pio_read(value: u32) -> String {
        format!("pio-read={value:08x}")
    }

    /// `mmio-read=<8 lowercase hex digits>`.
    pub fn mmio_read(value: u32) -> String {
        format!("mmio-read={value:08x}")
    }

    /// `cpu apic=<id> bsp` or `cpu apic=<id> ap`.
    pub fn smp_cpu(apic_id: u32, bsp: bool) -> String {
        format!("cpu apic={apic_id} {}", if bsp { "bsp" } else { "ap" })
    }

    /// `cpus-up=<n>`.
    pub fn smp_cpus_up(n: u32) -> String {
        format!("cpus-up={n}")
    }

    /// `tick <n>`.
    pub fn tick(n: u32) -> String {
        format!("tick {n}")
    }
}

/// The accesses [`Guest::IoProbe`] makes, in order.
pub mod io_probe {
    /// `outl` of [`PIO_WRITE_VALUE`] here, then an `inl` from here.
    pub const PIO_PORT: u16 = 0x700;
    /// The 4-byte value written to [`PIO_PORT`].
    pub const PIO_WRITE_VALUE: u32 = 0x1234_5678;
    /// 4-byte MMIO write of [`MMIO_WRITE_VALUE`] here.
    pub const MMIO_WRITE_ADDR: u64 = 0xd000_0000;
    /// The 4-byte value written to [`MMIO_WRITE_ADDR`].
    pub const MMIO_WRITE_VALUE: u32 = 0xcafe_babe;
    /// 4-byte MMIO read from here.
    pub const MMIO_READ_ADDR: u64 = 0xd000_0004;
    /// `outb` of [`BYTE_VALUE`] here.
    pub const BYTE_PORT: u16 = 0x701;
    /// The 1-byte value written to [`BYTE_PORT`].
    pub const BYTE_VALUE: u8 = 0x5a;
    /// `outw` of [`WORD_VALUE`] here.
    pub const WORD_PORT: u16 = 0x702;
    /// The 2-byte value written to [`WORD_PORT`].
    pub const WORD_VALUE: u16 = 0xbeef;
}

/// Numbers [`Guest::Smp`] uses.
pub mod smp {
    /// Where the real-mode AP trampoline is copied (guest RAM must exist there).
    pub const TRAMPOLINE_ADDR: u64 = 0x8000;
    /// The SIPI vector (start address 0x8000).
    pub const SIPI_VECTOR: u8 = 0x08;
    /// TSC cycles between INIT and the first SIPI.
    pub const INIT_DELAY_TSC_CYCLES: u64 = 40_000_000;
    /// TSC cycles the BSP waits for the APs before it prints `smp timeout`.
    pub const TIMEOUT_TSC_CYCLES: u64 = 0x5_0000_0000;
    /// APs beyond this many get no stack and halt without checking in.
    pub const MAX_APS: u32 = 255;
}

/// Numbers [`Guest::Counter`] uses.
pub mod counter {
    /// TSC cycles between two `tick` lines.
    pub const TICK_TSC_CYCLES: u64 = 40_000_000;
}

#[cfg(test)]
mod tests;
