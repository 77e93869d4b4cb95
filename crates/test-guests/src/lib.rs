//! Small test guests for virtkit, written in assembly (`asm/`, GNU as, AT&T syntax) and built
//! by `build.rs` with the machine's binutils (`as`, `ld`, `objcopy`). Nothing here is a checked-in
//! binary.
//!
//! Every guest prints ASCII lines terminated by `"\n"` on COM1 (16550 at port 0x3f8, polled),
//! using the fixed addresses of the platform layout (`virtkit_machine::layout`). Twelve guests are
//! 32-bit PVH ELF kernels (linked at 1 MiB, with a Xen `PHYS32_ENTRY` note): eleven in ELF64 files
//! like a vmlinux, [`Guest::HelloElf32`] in an ELF32 file; one is a raw 64 KiB
//! firmware image that runs in real mode from the reset vector; seven are MBR programs that BIOS
//! firmware (SeaBIOS) boots from a disk and that use BIOS int 13h: five 512-byte boot sectors and
//! two longer programs ([`Guest::MbrSession`], [`Guest::MbrPam`]) whose boot sector loads the
//! rest.
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
//! `SLP_TYP` 0), the guest does `cli; hlt` forever. The MBR programs write 0x2000 (`SLP_TYP` 0,
//! `SLP_EN`) to the same port before they halt, so that under QEMU and SeaBIOS (which puts the
//! PM block at 0x600 on both pc and q35) they power off too; virtkit ignores `SLP_TYP` 0.

use std::path::Path;

/// How a guest is booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Boot {
    /// 32-bit code in a 64-bit ELF (ELFCLASS64, `EM_386` code repackaged like a vmlinux) loaded at its `PT_LOAD` physical addresses and entered
    /// through the Xen PVH `PHYS32_ENTRY` note: 32-bit protected mode, paging off, flat
    /// segments. The guests set their own GDT and stack and do not read `hvm_start_info`.
    Pvh,
    /// The same as [`Boot::Pvh`], but the file is ELF32 (ELFCLASS32, `EM_386`), as
    /// `ld -m elf_i386` writes it; QEMU and Xen boot such files with `-kernel` too.
    PvhElf32,
    /// A raw image of exactly [`FIRMWARE_SIZE`] bytes placed to end at 4 GiB
    /// (0xffff0000..=0xffffffff) and mirrored at 0xf0000; the vCPU starts at the reset vector
    /// (CS=0xf000 with base 0xffff0000, IP=0xfff0) in real mode.
    Firmware,
    /// A boot sector of exactly [`MBR_SIZE`] bytes ending in 0x55 0xaa: sector 0 of a disk,
    /// which BIOS firmware loads at 0x7c00 and enters in real mode with DL = the boot drive.
    /// The program uses BIOS int 13h on that drive, prints on COM1 directly (polled, never
    /// through int 10h) and ends with ACPI power-off; see [`mbr`]. [`Guest::MbrSession`] and
    /// [`Guest::MbrPam`] are longer: a whole number of sectors whose first is such a boot
    /// sector and loads the others (LBA 1 on) itself; write all of [`Guest::bytes`] at the
    /// start of the disk.
    Mbr,
}

/// The variable store [`Guest::FlashProbe`] runs with: 960 KiB, which with its 64 KiB makes a
/// 1 MiB flash, so the store starts at 0xfff00000.
pub const FLASH_PROBE_STORE_SIZE: u64 = 960 << 10;
/// Where in the store [`Guest::FlashProbe`] keeps its count (block 1; block 0 holds the
/// firmware volume header every store starts with).
pub const FLASH_PROBE_COUNTER: u64 = 0x1000;

/// Size of a [`Boot::Firmware`] image: 64 KiB.
pub const FIRMWARE_SIZE: usize = 64 * 1024;

/// Size of a [`Boot::Mbr`] program: one 512-byte sector.
pub const MBR_SIZE: usize = 512;

/// The test guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guest {
    /// PVH. Prints `virtkit-guest: hello from pvh`, then ACPI power-off (`cli; hlt` forever if
    /// that returns).
    Hello,
    /// PVH in an ELF32 file ([`Boot::PvhElf32`]). Prints `virtkit-guest: hello from pvh elf32`,
    /// then ACPI power-off (`cli; hlt` forever if that returns).
    HelloElf32,
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
    /// PVH. 64 rounds through the CMOS index/data ports: `outb reg` to 0x70, `outb value` to
    /// 0x71, `outb reg` to 0x70, `inb` from 0x71 compared with the value (reg 0x40 + round % 8,
    /// value (round × 37 + 11) & 0xff). Prints `cmos-probe mismatches=<8 lowercase hex
    /// digits>`, then ACPI power-off.
    CmosProbe,
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
    /// PVH, for console back-pressure tests. Sets `PWRBTN_EN` (as [`Guest::PowerButton`]), then
    /// prints `virtkit-guest: flood 0`, `virtkit-guest: flood 1`, ... (decimal) as fast as it
    /// can, forever: every buffer between it and a console client fills within seconds. It
    /// writes COM1's transmit register without polling LSR (a UART that is always ready, like
    /// virtkit's or QEMU's, loses nothing).
    /// Between lines it checks `PM1_STS` bit 8; when set it clears it, prints
    /// [`output::FLOOD_POWER_BUTTON`] and does ACPI power-off.
    Flood,
    /// PVH, for save/restore benchmarks. Prints `virtkit-guest: stream 0`,
    /// `virtkit-guest: stream 1`, ... (decimal) as fast as it can, forever, writing COM1's
    /// transmit register without polling LSR, and touches no other device (no ACPI, no timer),
    /// so it runs alike on every VMM: a restored copy prints within microseconds of its first
    /// instruction. Never ends by itself.
    Stream,
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
    /// Raw 64 KiB firmware image ([`Boot::Firmware`]) for a machine with an EFI variable store
    /// of [`FLASH_PROBE_STORE_SIZE`] right below it (at 0xfff00000) and the PIIX4 PM function.
    /// In flat 32-bit protected mode it drives the flash with OVMF's command sequences: the
    /// probe at +0x10, then at +0x1000 ([`FLASH_PROBE_COUNTER`]) reads a count, erases its
    /// block and programs count + 1 (an erased 0xff becomes 1); it reads 00:01.3's ID, PMBA and
    /// PMREGMISC through 0xcf8, and powers off through OVMF's port (SLP_EN at 0xb004). Its COM1
    /// lines are in `asm/flash_probe.s`.
    FlashProbe,
    /// MBR ([`Boot::Mbr`]). For each LBA of [`mbr::READ_LBAS`] on the boot disk: an extended
    /// read (int 13h AH=42h) prints `ext lba=<n> sum=<s>` ([`output::mbr_read_sum`]) or
    /// `ext lba=<n> error=<AH>` ([`output::mbr_read_error`]); then, if the LBA lies inside the
    /// CHS geometry AH=08h reports, a CHS read (AH=02h) of the same sector prints the same with
    /// `chs`. `n` is decimal, `s` is [`mbr::sector_sum`] as 8 hex digits, AH 2 hex digits. Then
    /// `mbr-read done` and ACPI power-off.
    MbrRead,
    /// MBR. For LBA 3, then 4 ([`mbr::WRITE_LBAS`]): writes [`mbr::write_pattern`] with int 13h
    /// AH=43h, reads it back with AH=42h, compares, and prints `write lba=<n> ok`, or
    /// `write lba=<n> error=<AH>` (the write failed: a read-only disk), `read-error=<AH>` or
    /// `mismatch` in place of `ok` ([`output::mbr_write`]). Then `mbr-write done` and ACPI
    /// power-off.
    MbrWrite,
    /// MBR. For DL = 0x80..=0x83, int 13h AH=48h (EDD drive parameters); for each drive that
    /// answers, `drive <DL> sectors=<total sectors>` (2 and 16 hex digits,
    /// [`output::mbr_drive`]). Then `drives=<how many answered>` and `bios-hd-count=<BIOS data
    /// area byte 0x475>` (decimal), `mbr-drives done` and ACPI power-off.
    MbrDrives,
    /// MBR, for benchmarks. Reads [`mbr::BENCH_BYTES`] from LBA 1 onward with int 13h AH=42h in
    /// [`mbr::BENCH_CHUNK_SECTORS`]-sector requests into a buffer at 0x10000, timed with rdtsc,
    /// and prints `bench-read bytes=67108864 tsc=<cycles, 16 hex digits>`
    /// ([`output::mbr_bench`]), or `bench-read error=<AH> lba=<first LBA of the failed request>`.
    /// Then `mbr-bench done` and ACPI power-off. The disk needs [`mbr::BENCH_MIN_DISK_BYTES`].
    MbrBench,
    /// MBR, for boot-order tests. Prints `boot-drive=<DL, 2 hex digits>`, then
    /// `boot-disk=<marker>`: the text at the start of LBA 1 of the boot disk, up to 64 bytes,
    /// ending before the first byte outside 0x20..=0x7e ([`output::mbr_id`]); or
    /// `boot-disk error=<AH>` if the read fails. Then `mbr-id done` and ACPI power-off.
    MbrId,
    /// MBR, for keyboard tests: prints `keys: ready`, then echoes every key the BIOS's int 16h
    /// gives (its ASCII character; Enter prints a line break and `keys: enter`), until the VM
    /// stops.
    MbrKeys,
    /// MBR, for pointer tests: the BIOS's PS/2 pointing-device services (int 15h C205h, C207h,
    /// C200h) through the i8042's auxiliary port; prints `mouse: ready`, then
    /// `mouse: status=SS x=XX y=YY` for every packet (hex), until the VM stops.
    MbrMouse,
    /// MBR, for display tests and the display benchmark: prints `ticker: ready`, then rewrites
    /// a 5-digit counter at the start of a screen row through int 10h every ~20 ms, for ever.
    MbrTicker,
    /// MBR, for the RTC's periodic interrupt: takes IRQ 8 with its own handler, enables the
    /// interrupt at 1024 Hz and waits for 64 of them; prints `rtc: periodic=64 status-c=XX`
    /// (the status C bits its handler saw, hex) and powers off. Without the interrupt it halts
    /// for ever.
    MbrRtc,
    /// MBR, for VM-manager tests: persistence, identity, liveness and a clean shutdown. It is
    /// [`mbr::SESSION_SECTORS`] sectors long: write all of [`Guest::bytes`] at the start of the
    /// disk (its boot sector loads LBA 1 on to 0x7e00 with int 13h AH=42h; if that fails it
    /// prints `session: load error=<AH>` and powers off). The disk needs
    /// [`mbr::SESSION_MIN_DISK_BYTES`]. In this order:
    ///
    /// 1. Boot counter: reads the state sector at [`mbr::SESSION_STATE_LBA`] (unreadable, or
    ///    not starting with [`mbr::SESSION_STATE_MAGIC`], counts as 0 boots), adds 1, writes
    ///    [`mbr::session_state`] of the new count (AH=43h), reads it back (AH=42h), compares and
    ///    prints `session: boot <n>` or, if that failed, `session: boot <n> (not saved: error
    ///    <AH>)` (the write failed: a read-only disk), `(not saved: read-back error <AH>)` or
    ///    `(not saved: read-back mismatch)` ([`output::session_boot`]).
    /// 2. Identity: scans 0xf0000..=0xfffff on 16-byte boundaries for an SMBIOS entry point with
    ///    a valid checksum (`_SM_`, or `_SM3_` with its table below 4 GiB), copies the structure
    ///    table (up to 0xfff0 bytes) to 0x10000 with int 15h AH=87h and walks it to the first
    ///    type 1 structure with a UUID. Prints `session: uuid=<8-4-4-4-12 lowercase hex>` (the
    ///    first three fields little-endian, as SMBIOS 2.6+ stores them, whatever the table's
    ///    version) and `session: serial=<Serial Number>` (empty if there is none; printable ASCII,
    ///    at most [`mbr::SESSION_SERIAL_MAX`] bytes) ([`output::session_uuid`],
    ///    [`output::session_serial`]), or `session: smbios none`.
    /// 3. Clears a stale `PWRBTN_STS` and sets `PWRBTN_EN` (as [`Guest::PowerButton`]), prints
    ///    `session: ready`, then idles with interrupts on (`hlt`): every
    ///    [`mbr::SESSION_TICK_BIOS_TICKS`] ticks of the BIOS tick counter (0:0x46c, 18.2 Hz)
    ///    it prints `session: tick <n>` (n = 1, 2, ...; [`output::session_tick`]); when
    ///    `PM1_STS` bit 8 is set it clears it, prints `session: power button` and does ACPI
    ///    power-off. Without the power button it never ends.
    MbrSession,
    /// MBR, for the chipset: what the i440FX's PAM (shadow RAM) registers do after the BIOS
    /// booted, and the PCI-to-ISA bridge at 00:01.0, through configuration mechanism #1
    /// (0xcf8/0xcfc). [`mbr::PAM_SECTORS`] sectors long: write all of [`Guest::bytes`] at the
    /// start of the disk (if its boot sector cannot load the rest it prints
    /// `pam: load error=<AH>` and powers off). Prints, in this order:
    ///
    /// 1. `pam=<PAM0..PAM6, 2 hex digits each>` ([`output::parse_pam_registers`]).
    /// 2. `pam-writes=<13 characters>`, one per segment of [`mbr::PAM_SEGMENT_STARTS`]: at the
    ///    segment's start + [`mbr::PAM_WRITE_PROBE_OFFSET`] it writes the inverse of the byte
    ///    there, reads back and writes the original again (interrupts off); `w` if the inverse
    ///    read back, `-` if not ([`output::parse_pam_writes`]).
    /// 3. `pam-probe rom=<a> write-only=<b> read-only=<c> dropped=<d> wrote=<w>` (2 hex digits
    ///    each; [`output::PamProbe`]), with interrupts off at [`mbr::PAM_PROBE_ADDRESS`], by
    ///    rewriting only PAM6's high nibble: attribute 3 (RAM), read `r`; attribute 0, read
    ///    `a`; attribute 2 (write-only), write `w = r ^` [`mbr::PAM_PROBE_XOR`], read `b`;
    ///    attribute 1 (read-only), read `c`, write `!c`, read `d`; then attribute 3, write `r`
    ///    back and restore PAM6.
    /// 4. `isa-bridge id=<dword 0> class=<dword 8> header=<byte 0xe> pirq=<dword 0x60>` of
    ///    00:01.0 (8, 8, 2, 8 hex digits; [`output::IsaBridgeInfo`]).
    ///
    /// Then `mbr-pam done` and ACPI power-off.
    MbrPam,
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
    pub const ALL: [Guest; 26] = [
        Guest::Hello,
        Guest::HelloElf32,
        Guest::Smoke,
        Guest::Echo,
        Guest::IoProbe,
        Guest::CmosProbe,
        Guest::Smp,
        Guest::Counter,
        Guest::Flood,
        Guest::Stream,
        Guest::PowerButton,
        Guest::Reset,
        Guest::TripleFault,
        Guest::ResetVector,
        Guest::FlashProbe,
        Guest::MbrRead,
        Guest::MbrWrite,
        Guest::MbrDrives,
        Guest::MbrBench,
        Guest::MbrId,
        Guest::MbrKeys,
        Guest::MbrMouse,
        Guest::MbrTicker,
        Guest::MbrRtc,
        Guest::MbrSession,
        Guest::MbrPam,
    ];

    /// Short name, also the source file name (`asm/<name>.s`).
    pub fn name(self) -> &'static str {
        match self {
            Guest::Hello => "hello",
            Guest::HelloElf32 => "hello_elf32",
            Guest::Smoke => "smoke",
            Guest::Echo => "echo",
            Guest::IoProbe => "io_probe",
            Guest::CmosProbe => "cmos_probe",
            Guest::Smp => "smp",
            Guest::Counter => "counter",
            Guest::Flood => "flood",
            Guest::Stream => "stream",
            Guest::PowerButton => "power_button",
            Guest::Reset => "reset",
            Guest::TripleFault => "triple_fault",
            Guest::ResetVector => "reset_vector",
            Guest::FlashProbe => "flash_probe",
            Guest::MbrRead => "mbr_read",
            Guest::MbrWrite => "mbr_write",
            Guest::MbrDrives => "mbr_drives",
            Guest::MbrBench => "mbr_bench",
            Guest::MbrId => "mbr_id",
            Guest::MbrKeys => "mbr_keys",
            Guest::MbrMouse => "mbr_mouse",
            Guest::MbrTicker => "mbr_ticker",
            Guest::MbrRtc => "mbr_rtc",
            Guest::MbrSession => "mbr_session",
            Guest::MbrPam => "mbr_pam",
        }
    }

    /// How the guest is booted.
    pub fn boot(self) -> Boot {
        match self {
            Guest::ResetVector | Guest::FlashProbe => Boot::Firmware,
            Guest::HelloElf32 => Boot::PvhElf32,
            Guest::MbrRead
            | Guest::MbrWrite
            | Guest::MbrDrives
            | Guest::MbrBench
            | Guest::MbrId
            | Guest::MbrKeys
            | Guest::MbrMouse
            | Guest::MbrTicker
            | Guest::MbrRtc
            | Guest::MbrSession
            | Guest::MbrPam => Boot::Mbr,
            _ => Boot::Pvh,
        }
    }

    /// Path of the built artifact in the build's `OUT_DIR`: `<name>.elf` for PVH guests (ELF64 or
    /// ELF32),
    /// `reset_vector.bin` for the firmware image, `<name>.mbr` for MBR programs.
    pub fn path(self) -> &'static Path {
        Path::new(self.artifact().0)
    }

    /// Contents of the built artifact (embedded at compile time; the same bytes as the file at
    /// [`Guest::path`]). For [`Guest::MbrSession`] that is the whole multi-sector program, to be
    /// written at the start of the disk.
    pub fn bytes(self) -> &'static [u8] {
        self.artifact().1
    }

    fn artifact(self) -> (&'static str, &'static [u8]) {
        match self {
            Guest::Hello => artifact!("hello.elf"),
            Guest::HelloElf32 => artifact!("hello_elf32.elf"),
            Guest::Smoke => artifact!("smoke.elf"),
            Guest::Echo => artifact!("echo.elf"),
            Guest::IoProbe => artifact!("io_probe.elf"),
            Guest::CmosProbe => artifact!("cmos_probe.elf"),
            Guest::Smp => artifact!("smp.elf"),
            Guest::Counter => artifact!("counter.elf"),
            Guest::Flood => artifact!("flood.elf"),
            Guest::Stream => artifact!("stream.elf"),
            Guest::PowerButton => artifact!("power_button.elf"),
            Guest::Reset => artifact!("reset.elf"),
            Guest::TripleFault => artifact!("triple_fault.elf"),
            Guest::ResetVector => artifact!("reset_vector.bin"),
            Guest::FlashProbe => artifact!("flash_probe.bin"),
            Guest::MbrRead => artifact!("mbr_read.mbr"),
            Guest::MbrWrite => artifact!("mbr_write.mbr"),
            Guest::MbrDrives => artifact!("mbr_drives.mbr"),
            Guest::MbrBench => artifact!("mbr_bench.mbr"),
            Guest::MbrId => artifact!("mbr_id.mbr"),
            Guest::MbrKeys => artifact!("mbr_keys.mbr"),
            Guest::MbrMouse => artifact!("mbr_mouse.mbr"),
            Guest::MbrTicker => artifact!("mbr_ticker.mbr"),
            Guest::MbrRtc => artifact!("mbr_rtc.mbr"),
            Guest::MbrSession => artifact!("mbr_session.mbr"),
            Guest::MbrPam => artifact!("mbr_pam.mbr"),
        }
    }
}

/// The exact lines the guests print (without the terminating `"\n"`).
pub mod output {
    /// [`Guest::Hello`](crate::Guest::Hello).
    pub const HELLO: &str = "virtkit-guest: hello from pvh";
    /// [`Guest::HelloElf32`](crate::Guest::HelloElf32).
    pub const HELLO_ELF32: &str = "virtkit-guest: hello from pvh elf32";
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
    /// The prefix of every [`Guest::Flood`](crate::Guest::Flood) line, followed by the line's
    /// number.
    pub const FLOOD_PREFIX: &str = "virtkit-guest: flood ";
    /// [`Guest::Flood`](crate::Guest::Flood), after it saw and cleared the power button's status.
    pub const FLOOD_POWER_BUTTON: &str = "virtkit-guest: flood power button";
    /// The prefix of every [`Guest::Stream`](crate::Guest::Stream) line, followed by the
    /// line's number.
    pub const STREAM_PREFIX: &str = "virtkit-guest: stream ";
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

    /// [`Guest::MbrRead`](crate::Guest::MbrRead), last line.
    pub const MBR_READ_DONE: &str = "mbr-read done";
    /// [`Guest::MbrWrite`](crate::Guest::MbrWrite), last line.
    pub const MBR_WRITE_DONE: &str = "mbr-write done";
    /// [`Guest::MbrDrives`](crate::Guest::MbrDrives), last line.
    pub const MBR_DRIVES_DONE: &str = "mbr-drives done";
    /// [`Guest::MbrBench`](crate::Guest::MbrBench), last line.
    pub const MBR_BENCH_DONE: &str = "mbr-bench done";
    /// [`Guest::MbrId`](crate::Guest::MbrId), last line.
    pub const MBR_ID_DONE: &str = "mbr-id done";

    /// How [`Guest::MbrRead`](crate::Guest::MbrRead) read a sector.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ReadKind {
        /// int 13h AH=42h (prints `ext`).
        Extended,
        /// int 13h AH=02h (prints `chs`).
        Chs,
    }

    impl ReadKind {
        fn tag(self) -> &'static str {
            match self {
                ReadKind::Extended => "ext",
                ReadKind::Chs => "chs",
            }
        }
    }

    /// `ext lba=<decimal> sum=<8 lowercase hex digits>` (or `chs ...`); `sum` is
    /// [`crate::mbr::sector_sum`] of the sector.
    pub fn mbr_read_sum(kind: ReadKind, lba: u32, sum: u32) -> String {
        format!("{} lba={lba} sum={sum:08x}", kind.tag())
    }

    /// `ext lba=<decimal> error=<AH, 2 lowercase hex digits>` (or `chs ...`).
    pub fn mbr_read_error(kind: ReadKind, lba: u32, ah: u8) -> String {
        format!("{} lba={lba} error={ah:02x}", kind.tag())
    }

    /// What [`Guest::MbrWrite`](crate::Guest::MbrWrite) found for one LBA.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum WriteResult {
        /// Written, read back and equal.
        Ok,
        /// The write (AH=43h) failed with this AH.
        Error(u8),
        /// The read back (AH=42h) failed with this AH.
        ReadError(u8),
        /// The read back differs from what was written.
        Mismatch,
    }

    /// `write lba=<n> ok`, `... error=<AH>`, `... read-error=<AH>` or `... mismatch`.
    pub fn mbr_write(lba: u32, result: WriteResult) -> String {
        match result {
            WriteResult::Ok => format!("write lba={lba} ok"),
            WriteResult::Error(ah) => format!("write lba={lba} error={ah:02x}"),
            WriteResult::ReadError(ah) => format!("write lba={lba} read-error={ah:02x}"),
            WriteResult::Mismatch => format!("write lba={lba} mismatch"),
        }
    }

    /// `drive <DL, 2 hex digits> sectors=<16 hex digits>`.
    pub fn mbr_drive(drive: u8, sectors: u64) -> String {
        format!("drive {drive:02x} sectors={sectors:016x}")
    }

    /// `drives=<n>`.
    pub fn mbr_drives(n: u32) -> String {
        format!("drives={n}")
    }

    /// `bios-hd-count=<n>`.
    pub fn mbr_bios_hd_count(n: u8) -> String {
        format!("bios-hd-count={n}")
    }

    /// The prefix of [`Guest::MbrBench`](crate::Guest::MbrBench)'s result line; 16 hex digits
    /// of TSC cycles follow.
    pub const MBR_BENCH_PREFIX: &str = "bench-read bytes=67108864 tsc=";

    /// `bench-read bytes=67108864 tsc=<16 lowercase hex digits>`.
    pub fn mbr_bench(tsc_cycles: u64) -> String {
        format!("{MBR_BENCH_PREFIX}{tsc_cycles:016x}")
    }

    /// The TSC cycles of a [`mbr_bench`] line, or `None` if `line` is not one.
    pub fn parse_mbr_bench(line: &str) -> Option<u64> {
        let hex = line.trim_end().strip_prefix(MBR_BENCH_PREFIX)?;
        (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
    }

    /// `boot-drive=<DL, 2 hex digits>`.
    pub fn mbr_boot_drive(drive: u8) -> String {
        format!("boot-drive={drive:02x}")
    }

    /// `boot-disk=<marker>`.
    pub fn mbr_id(marker: &str) -> String {
        format!("boot-disk={marker}")
    }

    /// [`Guest::MbrSession`](crate::Guest::MbrSession), after the identity lines.
    pub const SESSION_READY: &str = "session: ready";
    /// [`Guest::MbrSession`](crate::Guest::MbrSession), when it saw the power button; it powers
    /// off next.
    pub const SESSION_POWER_BUTTON: &str = "session: power button";
    /// [`Guest::MbrSession`](crate::Guest::MbrSession) without an SMBIOS type 1 structure, in
    /// place of the uuid and serial lines.
    pub const SESSION_SMBIOS_NONE: &str = "session: smbios none";
    /// [`Guest::MbrSession`](crate::Guest::MbrSession) when its boot sector could not load the
    /// rest of the program; AH (2 hex digits) follows.
    pub const SESSION_LOAD_ERROR_PREFIX: &str = "session: load error=";

    const SESSION_BOOT_PREFIX: &str = "session: boot ";
    const SESSION_UUID_PREFIX: &str = "session: uuid=";
    const SESSION_SERIAL_PREFIX: &str = "session: serial=";
    const SESSION_TICK_PREFIX: &str = "session: tick ";

    /// Whether [`Guest::MbrSession`](crate::Guest::MbrSession) saved its new boot count.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SessionSave {
        /// Written and read back equal.
        Saved,
        /// The write (AH=43h) failed with this AH (a read-only disk).
        WriteError(u8),
        /// The read back (AH=42h) failed with this AH.
        ReadBackError(u8),
        /// The read back differs from what was written.
        ReadBackMismatch,
    }

    /// `session: boot <n>`, or with ` (not saved: error <AH>)`,
    /// ` (not saved: read-back error <AH>)` or ` (not saved: read-back mismatch)` appended.
    pub fn session_boot(boots: u32, save: SessionSave) -> String {
        let line = format!("{SESSION_BOOT_PREFIX}{boots}");
        match save {
            SessionSave::Saved => line,
            SessionSave::WriteError(ah) => format!("{line} (not saved: error {ah:02x})"),
            SessionSave::ReadBackError(ah) => format!("{line} (not saved: read-back error {ah:02x})"),
            SessionSave::ReadBackMismatch => format!("{line} (not saved: read-back mismatch)"),
        }
    }

    /// The boot count and save result of a [`session_boot`] line, or `None` if `line` is not
    /// one.
    pub fn parse_session_boot(line: &str) -> Option<(u32, SessionSave)> {
        let rest = line.trim_end().strip_prefix(SESSION_BOOT_PREFIX)?;
        let (count, save) = match rest.split_once(' ') {
            None => (rest, SessionSave::Saved),
            Some((count, note)) => {
                let note = note.strip_prefix("(not saved: ")?.strip_suffix(')')?;
                let save = if note == "read-back mismatch" {
                    SessionSave::ReadBackMismatch
                } else if let Some(ah) = note.strip_prefix("read-back error ") {
                    SessionSave::ReadBackError(parse_hex8(ah)?)
                } else {
                    SessionSave::WriteError(parse_hex8(note.strip_prefix("error ")?)?)
                };
                (count, save)
            }
        };
        Some((parse_decimal(count)?, save))
    }

    /// `session: uuid=<uuid>`, with `uuid` in lowercase (give it in the 8-4-4-4-12 form).
    pub fn session_uuid(uuid: &str) -> String {
        format!("{SESSION_UUID_PREFIX}{}", uuid.to_ascii_lowercase())
    }

    /// The UUID of a [`session_uuid`] line (8-4-4-4-12 lowercase hex, as printed), or `None` if
    /// `line` is not one.
    pub fn parse_session_uuid(line: &str) -> Option<&str> {
        let uuid = line.trim_end().strip_prefix(SESSION_UUID_PREFIX)?;
        let groups: Vec<&str> = uuid.split('-').collect();
        let well_formed = groups.len() == 5
            && groups
                .iter()
                .zip([8, 4, 4, 4, 12])
                .all(|(g, len)| is_lower_hex(g, len));
        well_formed.then_some(uuid)
    }

    /// `session: serial=<serial>`.
    pub fn session_serial(serial: &str) -> String {
        format!("{SESSION_SERIAL_PREFIX}{serial}")
    }

    /// The serial number of a [`session_serial`] line (possibly empty), or `None` if `line` is
    /// not one.
    pub fn parse_session_serial(line: &str) -> Option<&str> {
        line.trim_end_matches(['\r', '\n'])
            .strip_prefix(SESSION_SERIAL_PREFIX)
    }

    /// `session: tick <n>`.
    pub fn session_tick(n: u32) -> String {
        format!("{SESSION_TICK_PREFIX}{n}")
    }

    /// [`Guest::MbrPam`](crate::Guest::MbrPam), last line.
    pub const MBR_PAM_DONE: &str = "mbr-pam done";
    /// [`Guest::MbrPam`](crate::Guest::MbrPam) when its boot sector could not load the rest;
    /// AH (2 hex digits) follows.
    pub const PAM_LOAD_ERROR_PREFIX: &str = "pam: load error=";

    const PAM_REGISTERS_PREFIX: &str = "pam=";
    const PAM_WRITES_PREFIX: &str = "pam-writes=";

    /// PAM0..PAM6 of a `pam=<14 hex digits>` line, or `None` if `line` is not one.
    pub fn parse_pam_registers(line: &str) -> Option<[u8; 7]> {
        let hex = line.trim_end().strip_prefix(PAM_REGISTERS_PREFIX)?;
        if hex.len() != 14 {
            return None;
        }
        let mut registers = [0u8; 7];
        for (i, register) in registers.iter_mut().enumerate() {
            *register = parse_hex8(&hex[2 * i..2 * i + 2])?;
        }
        Some(registers)
    }

    /// Which segments (in [`crate::mbr::PAM_SEGMENT_STARTS`] order) kept a write, from a
    /// `pam-writes=<13 of w or ->` line, or `None` if `line` is not one.
    pub fn parse_pam_writes(line: &str) -> Option<[bool; 13]> {
        let marks = line.trim_end().strip_prefix(PAM_WRITES_PREFIX)?.as_bytes();
        if marks.len() != 13 || !marks.iter().all(|m| matches!(m, b'w' | b'-')) {
            return None;
        }
        Some(std::array::from_fn(|i| marks[i] == b'w'))
    }

    /// What [`Guest::MbrPam`](crate::Guest::MbrPam)'s PAM6 probe read and wrote.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PamProbe {
        /// Read with attribute 0: the ROM (or open bus) behind the segment.
        pub rom: u8,
        /// Read with attribute 2 after writing `wrote`: the ROM again.
        pub write_only: u8,
        /// Read with attribute 1: the RAM `wrote` went to.
        pub read_only: u8,
        /// Read with attribute 1 after writing `!read_only`: unchanged if the write was dropped.
        pub dropped: u8,
        /// What it wrote with attribute 2: the RAM byte xor [`crate::mbr::PAM_PROBE_XOR`].
        pub wrote: u8,
    }

    impl PamProbe {
        /// `pam-probe rom=<hh> write-only=<hh> read-only=<hh> dropped=<hh> wrote=<hh>`.
        pub fn line(&self) -> String {
            format!(
                "pam-probe rom={:02x} write-only={:02x} read-only={:02x} dropped={:02x} wrote={:02x}",
                self.rom, self.write_only, self.read_only, self.dropped, self.wrote
            )
        }

        /// The probe of a [`PamProbe::line`], or `None` if `line` is not one.
        pub fn parse(line: &str) -> Option<PamProbe> {
            let mut fields = line.trim_end().strip_prefix("pam-probe ")?.split(' ');
            let mut field = |name: &str| parse_hex8(fields.next()?.strip_prefix(name)?.strip_prefix('=')?);
            let probe = PamProbe {
                rom: field("rom")?,
                write_only: field("write-only")?,
                read_only: field("read-only")?,
                dropped: field("dropped")?,
                wrote: field("wrote")?,
            };
            fields.next().is_none().then_some(probe)
        }
    }

    /// The PCI-to-ISA bridge as [`Guest::MbrPam`](crate::Guest::MbrPam) read it at 00:01.0.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IsaBridgeInfo {
        /// Dword 0: device ID << 16 | vendor ID.
        pub id: u32,
        /// Dword 8: class code << 8 | revision.
        pub class: u32,
        /// Byte 0xe: the header type.
        pub header: u8,
        /// Dword 0x60: PIRQA#..PIRQD# route control, PIRQA# in the low byte.
        pub pirq: u32,
    }

    impl IsaBridgeInfo {
        /// `isa-bridge id=<8 hex> class=<8 hex> header=<2 hex> pirq=<8 hex>`.
        pub fn line(&self) -> String {
            format!(
                "isa-bridge id={:08x} class={:08x} header={:02x} pirq={:08x}",
                self.id, self.class, self.header, self.pirq
            )
        }

        /// The values of an [`IsaBridgeInfo::line`], or `None` if `line` is not one.
        pub fn parse(line: &str) -> Option<IsaBridgeInfo> {
            let mut fields = line.trim_end().strip_prefix("isa-bridge ")?.split(' ');
            let mut field = |name: &str, digits: usize| {
                let hex = fields.next()?.strip_prefix(name)?.strip_prefix('=')?;
                is_lower_hex(hex, digits).then(|| u32::from_str_radix(hex, 16).ok())?
            };
            let info = IsaBridgeInfo {
                id: field("id", 8)?,
                class: field("class", 8)?,
                header: field("header", 2)? as u8,
                pirq: field("pirq", 8)?,
            };
            fields.next().is_none().then_some(info)
        }
    }

    /// The number of a [`session_tick`] line, or `None` if `line` is not one.
    pub fn parse_session_tick(line: &str) -> Option<u32> {
        parse_decimal(line.trim_end().strip_prefix(SESSION_TICK_PREFIX)?)
    }

    /// A decimal number as the guests print it: digits only, no sign, no leading zeros.
    fn parse_decimal(text: &str) -> Option<u32> {
        let canonical = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        canonical.then(|| text.parse().ok())?
    }

    /// Exactly 2 lowercase hex digits, as `put_hex8` prints them.
    fn parse_hex8(text: &str) -> Option<u8> {
        is_lower_hex(text, 2).then(|| u8::from_str_radix(text, 16).ok())?
    }

    /// Whether `text` is exactly `digits` lowercase hex digits, as the guests print numbers.
    fn is_lower_hex(text: &str, digits: usize) -> bool {
        text.len() == digits && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

/// Numbers the MBR programs use, and the data tests put on (and expect from) their disks.
pub mod mbr {
    /// The LBAs [`Guest::MbrRead`](crate::Guest::MbrRead) reads, in order: the first sectors,
    /// 1 GiB, beyond 8 GiB (out of CHS reach), and the last sector of a 16 GiB disk.
    pub const READ_LBAS: [u32; 6] = [1, 2, 1000, 1 << 21, (1 << 24) + 5, (1 << 25) - 1];
    /// A disk of this size has every one of [`READ_LBAS`] (create it sparse).
    pub const READ_DISK_BYTES: u64 = 16 << 30;
    /// The LBAs [`Guest::MbrWrite`](crate::Guest::MbrWrite) writes, in order.
    pub const WRITE_LBAS: [u32; 2] = [3, 4];
    /// What [`Guest::MbrWrite`](crate::Guest::MbrWrite) writes starts with this.
    pub const WRITE_MAGIC: &[u8; 13] = b"VIRTKIT-WRITE";
    /// The drives [`Guest::MbrDrives`](crate::Guest::MbrDrives) asks about.
    pub const DRIVES: std::ops::RangeInclusive<u8> = 0x80..=0x83;
    /// Bytes [`Guest::MbrBench`](crate::Guest::MbrBench) reads: 64 MiB.
    pub const BENCH_BYTES: u64 = 64 << 20;
    /// Sectors per int 13h request in [`Guest::MbrBench`](crate::Guest::MbrBench) (32 KiB).
    pub const BENCH_CHUNK_SECTORS: u32 = 64;
    /// The first LBA [`Guest::MbrBench`](crate::Guest::MbrBench) reads.
    pub const BENCH_FIRST_LBA: u32 = 1;
    /// The smallest disk [`Guest::MbrBench`](crate::Guest::MbrBench) reads without error.
    pub const BENCH_MIN_DISK_BYTES: u64 = 512 + BENCH_BYTES;
    /// The longest marker [`Guest::MbrId`](crate::Guest::MbrId) prints.
    pub const ID_MARKER_MAX: usize = 64;
    /// The LBA [`Guest::MbrId`](crate::Guest::MbrId) reads its marker from.
    pub const ID_MARKER_LBA: u32 = 1;
    /// Sectors of [`Guest::MbrSession`](crate::Guest::MbrSession): the boot sector and the
    /// three it loads.
    pub const SESSION_SECTORS: usize = 4;
    /// The LBA of [`Guest::MbrSession`](crate::Guest::MbrSession)'s state sector (1 MiB, well
    /// beyond the program).
    pub const SESSION_STATE_LBA: u32 = 2048;
    /// The smallest disk that holds [`Guest::MbrSession`](crate::Guest::MbrSession) and its
    /// state sector.
    pub const SESSION_MIN_DISK_BYTES: u64 = (SESSION_STATE_LBA as u64 + 1) * 512;
    /// A state sector starts with this (the boot count follows).
    pub const SESSION_STATE_MAGIC: &[u8; 16] = b"VIRTKIT-SESSION\0";
    /// BIOS timer ticks (18.2 Hz) between two `session: tick` lines: about 0.27 s.
    pub const SESSION_TICK_BIOS_TICKS: u32 = 5;
    /// The longest serial number [`Guest::MbrSession`](crate::Guest::MbrSession) prints.
    pub const SESSION_SERIAL_MAX: usize = 64;
    /// Sectors of [`Guest::MbrPam`](crate::Guest::MbrPam): the boot sector and the one it loads.
    pub const PAM_SECTORS: usize = 2;
    /// The PAM segments in the order [`Guest::MbrPam`](crate::Guest::MbrPam) reports them: the
    /// BIOS at 0xF0000 (PAM0's high nibble), then 0xC0000..0xEC000 in 16 KiB pieces (PAM1's
    /// low nibble, its high nibble, PAM2's low nibble, ...).
    pub const PAM_SEGMENT_STARTS: [u64; 13] = [
        0xf0000, 0xc0000, 0xc4000, 0xc8000, 0xcc000, 0xd0000, 0xd4000, 0xd8000, 0xdc000, 0xe0000, 0xe4000,
        0xe8000, 0xec000,
    ];
    /// Where in each segment [`Guest::MbrPam`](crate::Guest::MbrPam) tries a write.
    pub const PAM_WRITE_PROBE_OFFSET: u64 = 0x1000;
    /// The address [`Guest::MbrPam`](crate::Guest::MbrPam) probes by rewriting PAM6's high
    /// nibble (segment 0xEC000); Debian's SeaBIOS 1.16 has a non-zero byte there.
    pub const PAM_PROBE_ADDRESS: u64 = 0xed001;
    /// What [`Guest::MbrPam`](crate::Guest::MbrPam) xors the RAM byte with to get the byte it
    /// writes.
    pub const PAM_PROBE_XOR: u8 = 0x5a;

    /// The sum [`Guest::MbrRead`](crate::Guest::MbrRead) prints: the sector's 128 little-endian
    /// dwords added with wrap-around.
    pub fn sector_sum(sector: &[u8; 512]) -> u32 {
        sector
            .chunks_exact(4)
            .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
            .fold(0, u32::wrapping_add)
    }

    /// The sector [`Guest::MbrWrite`](crate::Guest::MbrWrite) writes to `lba`: bytes 0..13
    /// [`WRITE_MAGIC`], 13..16 zero, 16..20 `lba` (LE32), and from 20 on byte `i` is
    /// `(i mod 256) xor (lba mod 256)`.
    pub fn write_pattern(lba: u32) -> [u8; 512] {
        let mut sector = [0u8; 512];
        for (i, b) in sector.iter_mut().enumerate() {
            *b = (i as u8) ^ (lba as u8);
        }
        sector[..13].copy_from_slice(WRITE_MAGIC);
        sector[13..16].fill(0);
        sector[16..20].copy_from_slice(&lba.to_le_bytes());
        sector
    }

    /// The state sector [`Guest::MbrSession`](crate::Guest::MbrSession) writes after boot
    /// number `boots`: bytes 0..16 [`SESSION_STATE_MAGIC`], 16..20 `boots` (LE32), the rest
    /// zero. Put it at [`SESSION_STATE_LBA`] to make the next boot number `boots + 1`.
    pub fn session_state(boots: u32) -> [u8; 512] {
        let mut sector = [0u8; 512];
        sector[..16].copy_from_slice(SESSION_STATE_MAGIC);
        sector[16..20].copy_from_slice(&boots.to_le_bytes());
        sector
    }

    /// The boot count a state sector holds: `None` without [`SESSION_STATE_MAGIC`] (the program
    /// then counts from 0).
    pub fn session_boots(sector: &[u8]) -> Option<u32> {
        let count = sector.strip_prefix(SESSION_STATE_MAGIC.as_slice())?.get(..4)?;
        Some(u32::from_le_bytes(count.try_into().ok()?))
    }

    /// The marker [`Guest::MbrId`](crate::Guest::MbrId) prints for a disk whose LBA 1 starts
    /// with `sector`.
    pub fn id_marker(sector: &[u8]) -> String {
        sector
            .iter()
            .take(ID_MARKER_MAX)
            .take_while(|b| (0x20..=0x7e).contains(*b))
            .map(|b| char::from(*b))
            .collect()
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
