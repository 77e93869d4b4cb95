//! Memory slots on the host's real KVM: a read-only slot serves guest reads from host memory
//! and turns guest writes into MMIO exits, a removed slot's range exits as MMIO, and a slot
//! number is handed out again once removed. A few real-mode instructions are the guest.

use virtkit_hypervisor::{HypervisorError, Kvm, Vcpu, VcpuExit};
use vm_memory::{Bytes, MmapRegion, VolatileMemory};

const CODE_PAGE: u64 = 0x1000;
const DATA_PAGE: u64 = 0x2000;
const PAGE: usize = 0x1000;
const TSS_ADDRESS: u64 = 0xfffb_c000;
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_b000;

/// 16-bit real-mode code at 0x1000; `out` to ports 0x10.. marks each step for the test.
const GUEST: &[u8] = &[
    0xa0, 0x00, 0x20, // mov al, [0x2000]
    0xe6, 0x10, // out 0x10, al
    0xc6, 0x06, 0x00, 0x20, 0x77, // mov byte [0x2000], 0x77
    0xe6, 0x11, // out 0x11, al
    0xa0, 0x00, 0x20, // mov al, [0x2000]
    0xe6, 0x12, // out 0x12, al
    0xc6, 0x06, 0x00, 0x20, 0x66, // mov byte [0x2000], 0x66
    0xa0, 0x00, 0x20, // mov al, [0x2000]
    0xe6, 0x13, // out 0x13, al
    0xf4, // hlt
];

/// What one run of the vCPU ended with, copied out of the exit.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Out { port: u16, value: u8 },
    MmioWrite { address: u64, data: Vec<u8> },
    MmioRead { address: u64, len: usize },
}

/// Runs until the next port or MMIO exit; answers an MMIO read with `answer`.
fn step(vcpu: &mut Vcpu, answer: u8) -> Step {
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::Interrupted => continue,
            VcpuExit::IoOut { port, data } => return Step::Out { port, value: data[0] },
            VcpuExit::MmioWrite { address, data } => {
                return Step::MmioWrite {
                    address,
                    data: data.to_vec(),
                }
            }
            VcpuExit::MmioRead { address, data } => {
                data.fill(answer);
                return Step::MmioRead {
                    address,
                    len: data.len(),
                };
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

/// vCPU 0 in real mode with CS base 0, about to run the code at `CODE_PAGE`.
fn real_mode_vcpu(kvm: &Kvm, vm: &virtkit_hypervisor::Vm) -> Vcpu {
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&kvm.supported_cpuid().unwrap()).unwrap();
    let mut sregs = vcpu.special_registers().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_special_registers(&sregs).unwrap();
    let mut regs = vcpu.registers().unwrap();
    regs.rip = CODE_PAGE;
    vcpu.set_registers(&regs).unwrap();
    vcpu
}

fn byte(region: &MmapRegion, offset: usize) -> u8 {
    region.as_volatile_slice().read_obj(offset).unwrap()
}

#[test]
fn read_only_removed_and_remapped_slots_behave_as_documented() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let vm = kvm.create_vm().unwrap();
    if !vm.read_only_memory_supported() {
        virtkit_testkit::skip("this host's KVM has no KVM_CAP_READONLY_MEM");
        return;
    }
    vm.create_platform(TSS_ADDRESS, IDENTITY_MAP_ADDRESS).unwrap();
    // The memory outlives the VM: declared first, dropped last.
    let code = MmapRegion::<()>::new(2 * PAGE).unwrap();
    let data = MmapRegion::<()>::new(PAGE).unwrap();
    code.as_volatile_slice()
        .write_slice(GUEST, CODE_PAGE as usize)
        .unwrap();
    data.as_volatile_slice().write_obj(0x5au8, 0).unwrap();

    // SAFETY: `code` and `data` are live anonymous mappings of the sizes given and outlive
    // `vm`, which is dropped at the end of this function before them.
    let code_slot = unsafe { vm.map_memory(0, 2 * PAGE as u64, code.as_ptr() as u64, false) }.unwrap();
    // SAFETY: as above.
    let data_slot = unsafe { vm.map_memory(DATA_PAGE, PAGE as u64, data.as_ptr() as u64, true) }.unwrap();
    assert_ne!(code_slot, data_slot);

    let mut vcpu = real_mode_vcpu(&kvm, &vm);

    // Read-only: reads see the host memory, a write exits and changes nothing.
    assert_eq!(
        step(&mut vcpu, 0),
        Step::Out {
            port: 0x10,
            value: 0x5a
        }
    );
    assert_eq!(
        step(&mut vcpu, 0),
        Step::MmioWrite {
            address: DATA_PAGE,
            data: vec![0x77]
        }
    );
    assert_eq!(byte(&data, 0), 0x5a, "a read-only slot's memory must not change");
    assert_eq!(
        step(&mut vcpu, 0),
        Step::Out {
            port: 0x11,
            value: 0x5a
        }
    );

    // Removed: reads exit too, and the VMM's answer is what the guest gets.
    vm.unmap_memory(data_slot).unwrap();
    assert!(matches!(
        vm.unmap_memory(data_slot),
        Err(HypervisorError::NoSuchSlot(s)) if s == data_slot
    ));
    assert_eq!(
        step(&mut vcpu, 0x33),
        Step::MmioRead {
            address: DATA_PAGE,
            len: 1
        }
    );
    assert_eq!(
        step(&mut vcpu, 0),
        Step::Out {
            port: 0x12,
            value: 0x33
        }
    );

    // Mapped again read-write, under the number just freed: writes land in host memory.
    // SAFETY: as above.
    let again = unsafe { vm.map_memory(DATA_PAGE, PAGE as u64, data.as_ptr() as u64, false) }.unwrap();
    assert_eq!(again, data_slot, "the lowest free slot number is reused");
    assert_eq!(
        step(&mut vcpu, 0),
        Step::Out {
            port: 0x13,
            value: 0x66
        }
    );
    assert_eq!(byte(&data, 0), 0x66);
}

/// 16-bit real-mode code at 0x1000: reads the logged page, marks it, writes it, marks it.
const DIRTYING_GUEST: &[u8] = &[
    0xa0, 0x00, 0x20, // mov al, [0x2000]
    0xe6, 0x10, // out 0x10, al
    0xc6, 0x06, 0x10, 0x20, 0x77, // mov byte [0x2010], 0x77
    0xe6, 0x11, // out 0x11, al
    0xf4, // hlt
];

#[test]
fn a_logged_slot_says_which_pages_the_guest_wrote_once() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_platform(TSS_ADDRESS, IDENTITY_MAP_ADDRESS).unwrap();
    let code = MmapRegion::<()>::new(2 * PAGE).unwrap();
    let data = MmapRegion::<()>::new(2 * PAGE).unwrap();
    code.as_volatile_slice()
        .write_slice(DIRTYING_GUEST, CODE_PAGE as usize)
        .unwrap();
    // SAFETY: `code` and `data` are live anonymous mappings of the sizes given and outlive
    // `vm`, which is dropped at the end of this function before them.
    unsafe { vm.map_memory(0, 2 * PAGE as u64, code.as_ptr() as u64, false) }.unwrap();
    // SAFETY: as above.
    let slot = unsafe { vm.map_memory_logged(DATA_PAGE, 2 * PAGE as u64, data.as_ptr() as u64) }.unwrap();
    assert_eq!(
        vm.dirty_pages(slot, 2 * PAGE as u64).unwrap(),
        [0],
        "nothing written yet"
    );

    let mut vcpu = real_mode_vcpu(&kvm, &vm);

    assert_eq!(step(&mut vcpu, 0), Step::Out { port: 0x10, value: 0 });
    assert_eq!(
        vm.dirty_pages(slot, 2 * PAGE as u64).unwrap(),
        [0],
        "a read dirties nothing"
    );
    assert_eq!(step(&mut vcpu, 0), Step::Out { port: 0x11, value: 0 });
    assert_eq!(byte(&data, 0x10), 0x77);
    assert_eq!(
        vm.dirty_pages(slot, 2 * PAGE as u64).unwrap(),
        [0b01],
        "the first page, written"
    );
    assert_eq!(
        vm.dirty_pages(slot, 2 * PAGE as u64).unwrap(),
        [0],
        "and cleared by the read"
    );
}
