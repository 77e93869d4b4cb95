//! Port I/O and MMIO exits from a real guest reach the device registered at that address, with
//! the right offset, size and data, and the device's answers reach the guest; coalesced port
//! writes reach it too, in order, without exits of their own.

use std::io::Write;
use std::sync::{Arc, Mutex};

use virtkit_hypervisor::Kvm;
use virtkit_machine::bus::BusDevice;
use virtkit_machine::{AddressSpace, BootSource, ExitReason, Machine, MachineConfig};
use virtkit_test_guests::Guest;

#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<(u64, usize)>,
    answer: u32,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        let bytes = self.answer.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A 1-vCPU, 64 MiB machine booting `guest` (PVH), its COM1 into `output`.
fn machine_for(kvm: &Kvm, guest: Guest, output: &Output) -> Machine {
    Machine::new(
        kvm,
        MachineConfig {
            vcpus: 1,
            memory_size: 64 << 20,
            boot: BootSource::Linux {
                kernel: guest.path().to_owned(),
                initrd: None,
                command_line: String::new(),
            },
            serial_output: Box::new(output.clone()),
            serial_input: None,
            smbios_identity: None,
            shared_memory: false,
            ps2_input: false,
        },
    )
    .unwrap()
}

#[test]
fn port_and_mmio_accesses_reach_the_right_device() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let output = Output::default();
    let mut machine = machine_for(&kvm, Guest::IoProbe, &output);
    let pio = Arc::new(Mutex::new(Recorder {
        answer: 0x1357_9bdf,
        ..Default::default()
    }));
    let mmio = Arc::new(Mutex::new(Recorder {
        answer: 0x2468_ace0,
        ..Default::default()
    }));
    machine.pio_bus_mut().insert(0x700, 0x10, pio.clone()).unwrap();
    machine
        .mmio_bus_mut()
        .insert(0xd000_0000, 0x1000, mmio.clone())
        .unwrap();
    let handle = machine.handle();
    machine.start().unwrap();
    assert_eq!(machine.wait(), ExitReason::PowerOff);

    let text = String::from_utf8_lossy(&output.0.lock().unwrap()).into_owned();
    assert!(text.contains("pio-read=13579bdf"), "{text}");
    assert!(text.contains("mmio-read=2468ace0"), "{text}");
    assert!(text.contains("io-probe done"), "{text}");

    let pio = pio.lock().unwrap();
    assert!(
        pio.writes.contains(&(0, 0x1234_5678u32.to_le_bytes().to_vec())),
        "{:?}",
        pio.writes
    );
    assert!(pio.writes.contains(&(1, vec![0x5a])), "{:?}", pio.writes);
    assert!(
        pio.writes.contains(&(2, 0xbeefu16.to_le_bytes().to_vec())),
        "{:?}",
        pio.writes
    );
    assert_eq!(pio.reads, vec![(0, 4)]);
    let mmio = mmio.lock().unwrap();
    assert_eq!(mmio.writes, vec![(0, 0xcafe_babeu32.to_le_bytes().to_vec())]);
    assert_eq!(mmio.reads, vec![(4, 4)]);

    // The exit accounting saw exactly those accesses on those ranges, and every port or MMIO
    // exit of the vCPU is on some range (a device's, or an unclaimed address).
    let stats = handle.exit_stats();
    let range = |space, base| {
        stats
            .ranges
            .iter()
            .find(|r| r.space == space && r.base == base)
            .unwrap_or_else(|| panic!("no {space:?} range at {base:#x}: {stats:#?}"))
    };
    let probe = range(AddressSpace::Port, 0x700);
    assert_eq!(
        (probe.reads, probe.writes),
        (pio.reads.len() as u64, pio.writes.len() as u64)
    );
    let window = range(AddressSpace::Mmio, 0xd000_0000);
    assert_eq!((window.reads, window.writes), (1, 1));
    let serial = range(AddressSpace::Port, 0x3f8);
    assert_eq!(serial.device, "serial (COM1)");
    assert!(serial.writes >= text.len() as u64, "{serial:?}");
    let total = stats.total();
    let sum = |space, f: fn(&virtkit_machine::RangeExits) -> u64| -> u64 {
        stats.ranges.iter().filter(|r| r.space == space).map(f).sum()
    };
    assert_eq!(total.io_in, sum(AddressSpace::Port, |r| r.reads), "{stats:#?}");
    assert_eq!(total.io_out, sum(AddressSpace::Port, |r| r.writes), "{stats:#?}");
    assert_eq!(
        total.mmio_read,
        sum(AddressSpace::Mmio, |r| r.reads),
        "{stats:#?}"
    );
    assert_eq!(
        total.mmio_write,
        sum(AddressSpace::Mmio, |r| r.writes),
        "{stats:#?}"
    );
    assert_eq!(stats.vcpus.len(), 1);
}

/// The guest's 64 rounds: two index writes, one data write and one data read each.
const ROUNDS: u64 = 64;

/// The CMOS index port's writes are coalesced (they wait in KVM's ring instead of exiting) and
/// replayed before the next exit, so every data-port access right after an index write still
/// reaches the register it named.
#[test]
fn cmos_index_writes_wait_in_the_ring_and_reach_the_register_before_the_data_access() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let output = Output::default();
    let mut machine = machine_for(&kvm, Guest::CmosProbe, &output);
    let handle = machine.handle();
    machine.start().unwrap();
    assert_eq!(machine.wait(), ExitReason::PowerOff);

    let text = String::from_utf8_lossy(&output.0.lock().unwrap()).into_owned();
    // Each read returned the value written through the register its index write named.
    assert!(text.contains("cmos-probe mismatches=00000000"), "{text}");

    let stats = handle.exit_stats();
    let cmos = stats
        .ranges
        .iter()
        .find(|r| r.space == AddressSpace::Port && r.base == 0x70)
        .unwrap_or_else(|| panic!("no CMOS range: {stats:#?}"));
    assert_eq!(cmos.reads, ROUNDS, "one exit per data read: {cmos:?}");
    if kvm.coalesced_pio() {
        // Only the data writes exit; the 128 index writes went through the ring.
        assert_eq!(cmos.writes, ROUNDS, "{cmos:?}");
    } else {
        println!("SKIPPED: coalescing (this KVM has no KVM_CAP_COALESCED_PIO); the values were checked");
        assert_eq!(cmos.writes, 3 * ROUNDS, "{cmos:?}");
    }
}
