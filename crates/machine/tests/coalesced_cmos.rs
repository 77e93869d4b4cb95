//! The CMOS index port's writes are coalesced (they wait in KVM's ring instead of exiting) and
//! replayed before the next exit, so every data-port access a real guest makes right after its
//! index write still reaches the register it named.

use std::io::Write;
use std::sync::{Arc, Mutex};

use virtkit_hypervisor::Kvm;
use virtkit_machine::{AddressSpace, BootSource, ExitReason, Machine, MachineConfig};
use virtkit_test_guests::Guest;

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

/// The guest's 64 rounds: two index writes, one data write and one data read each.
const ROUNDS: u64 = 64;

#[test]
fn cmos_index_writes_wait_in_the_ring_and_reach_the_register_before_the_data_access() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let output = Output::default();
    let mut machine = Machine::new(
        &kvm,
        MachineConfig {
            vcpus: 1,
            memory_size: 64 << 20,
            boot: BootSource::Linux {
                kernel: Guest::CmosProbe.path().to_owned(),
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
    .unwrap();
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
