//! vCPU and VM state on the host's real KVM: a few real-mode instructions count in BX and
//! report each count on a port; the state saved after the third count, restored into a second
//! VM with a copy of the memory, goes on with the fourth. Also says which of the optional
//! state ioctls this KVM has (the probe behind docs/SAVE.md's PVM notes).

use virtkit_hypervisor::{FpuSnapshot, HypervisorError, Kvm, Vcpu, VcpuExit, Vm};
use vm_memory::{Bytes, MmapRegion, VolatileMemory};

const CODE_PAGE: u64 = 0x1000;
const PAGE: usize = 0x1000;
const TSS_ADDRESS: u64 = 0xfffb_c000;
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_b000;

/// `1: inc bx; mov al, bl; out 0x10, al; jmp 1b`
const COUNTER: &[u8] = &[0x43, 0x88, 0xd8, 0xe6, 0x10, 0xeb, 0xf9];

fn next_count(vcpu: &mut Vcpu) -> u8 {
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::Interrupted => continue,
            VcpuExit::IoOut { port: 0x10, data } => return data[0],
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

/// A VM with `memory` at guest address 0 and one vCPU at the counter's first instruction.
fn counting_vm(kvm: &Kvm, memory: &MmapRegion) -> (Vm, Vcpu) {
    let vm = kvm.create_vm().unwrap();
    vm.create_platform(TSS_ADDRESS, IDENTITY_MAP_ADDRESS).unwrap();
    // SAFETY: `memory` is a live anonymous mapping of this size that the callers keep until
    // after the VM is dropped.
    unsafe { vm.map_memory(0, memory.size() as u64, memory.as_ptr() as u64, false) }.unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&kvm.supported_cpuid().unwrap()).unwrap();
    let mut sregs = vcpu.special_registers().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_special_registers(&sregs).unwrap();
    let mut regs = vcpu.registers().unwrap();
    regs.rip = CODE_PAGE;
    regs.rbx = 0;
    vcpu.set_registers(&regs).unwrap();
    (vm, vcpu)
}

#[test]
fn a_counting_vcpu_restored_into_another_vm_continues_its_count() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let memory = MmapRegion::<()>::new(2 * PAGE).unwrap();
    memory
        .as_volatile_slice()
        .write_slice(COUNTER, CODE_PAGE as usize)
        .unwrap();
    let copy = MmapRegion::<()>::new(2 * PAGE).unwrap();
    let (vm, mut vcpu) = counting_vm(&kvm, &memory);
    assert_eq!(
        [
            next_count(&mut vcpu),
            next_count(&mut vcpu),
            next_count(&mut vcpu)
        ],
        [1, 2, 3]
    );
    let vcpu_state = vcpu.save_state().unwrap();
    let vm_state = vm.save_state().unwrap();

    // What this KVM offered (the PVM probe): printed for the record, asserted where required.
    eprintln!(
        "state probe: fpu={} xcrs={} debugregs={} clock={} tsc_khz={:?} msrs={} ({:x?})",
        match &vcpu_state.fpu {
            FpuSnapshot::Xsave(_) => "xsave",
            FpuSnapshot::Legacy(_) => "legacy KVM_GET_FPU",
        },
        vcpu_state.xcrs.is_some(),
        vcpu_state.debug_regs.is_some(),
        vm_state.clock_ns.is_some(),
        vcpu_state.tsc_khz,
        vcpu_state.msrs.len(),
        vcpu_state.msrs.iter().map(|m| m.index).collect::<Vec<_>>(),
    );
    assert!(
        vcpu_state.msrs.iter().any(|m| m.index == 0x10),
        "the TSC is among the saved MSRs"
    );
    // KVM adjusts some bits of what it was given (OSXSAVE, the APIC ID): the leaves are the
    // ones set.
    let leaves = |entries: &[virtkit_hypervisor::CpuidEntry]| -> Vec<(u32, u32)> {
        entries.iter().map(|e| (e.function, e.index)).collect()
    };
    assert_eq!(
        leaves(&vcpu_state.cpuid),
        leaves(&kvm.supported_cpuid().unwrap()),
        "the CPUID as set"
    );

    let mut bytes = vec![0u8; 2 * PAGE];
    memory.as_volatile_slice().read_slice(&mut bytes, 0).unwrap();
    copy.as_volatile_slice().write_slice(&bytes, 0).unwrap();
    let (restored_vm, mut restored) = counting_vm(&kvm, &copy);
    restored_vm.restore_state(&vm_state).unwrap();
    restored.restore_state(&vcpu_state).unwrap();
    assert_eq!(restored.registers().unwrap().rbx, 3);
    assert_eq!(next_count(&mut restored), 4, "the count goes on, not from 1");
    assert_eq!(next_count(&mut restored), 5);
    // The original is untouched by the restore.
    assert_eq!(next_count(&mut vcpu), 4);
    // A second save of the restored vCPU has the same LAPIC and MP state.
    let again = restored.save_state().unwrap();
    assert_eq!(again.mp_state, vcpu_state.mp_state);
    assert_eq!(again.lapic.len(), vcpu_state.lapic.len());
    drop((vm, vcpu, restored_vm, restored));
}

#[test]
fn state_of_another_layout_is_refused_by_name() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let memory = MmapRegion::<()>::new(2 * PAGE).unwrap();
    let (vm, vcpu) = counting_vm(&kvm, &memory);
    let mut state = vcpu.save_state().unwrap();
    state.lapic.pop();
    let e = vcpu.restore_state(&state).unwrap_err();
    assert!(
        matches!(e, HypervisorError::StateLayout { what, .. } if what.contains("local APIC")),
        "{e}"
    );
    let mut vm_state = vm.save_state().unwrap();
    vm_state.pit.push(0);
    let e = vm.restore_state(&vm_state).unwrap_err();
    assert!(e.to_string().contains("PIT"), "{e}");
    drop((vm, vcpu));
}
