//! The KVM side of PCI interrupts and notifications on the real `/dev/kvm`: MSI vectors on GSIs
//! with irqfds and routes (`KVM_SET_GSI_ROUTING` keeps the irqchip lines), level-triggered INTx
//! lines, and ioeventfds registered and moved as a BAR moves.

use std::sync::Arc;

use virtkit_hypervisor::Kvm;
use virtkit_machine::interrupt::{GsiRouter, KvmLevelIrq, LevelIrq, MsiMessage, MsiVectors};
use virtkit_machine::ioevent::{IoEventAddress, IoEvents};
use virtkit_machine::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use vmm_sys_util::eventfd::EventFd;

fn vm() -> Option<Arc<virtkit_hypervisor::Vm>> {
    if !virtkit_testkit::require_kvm() {
        return None;
    }
    let kvm = Kvm::open().expect("open KVM");
    let vm = kvm.create_vm().expect("create a VM");
    vm.create_platform(KVM_TSS_ADDRESS, KVM_IDENTITY_MAP_ADDRESS)
        .expect("irqchip and PIT");
    Some(Arc::new(vm))
}

#[test]
fn msi_vectors_get_routes_fire_and_give_their_gsis_back() {
    let Some(vm) = vm() else { return };
    let router = GsiRouter::new(vm.clone());
    let vectors = router.allocate_msi_vectors(3).expect("three vectors");
    assert_eq!(vectors.count(), 3);
    let message = MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };
    vectors.set_route(0, Some(message)).expect("route vector 0");
    vectors.set_route(2, Some(message)).expect("route vector 2");
    vectors.trigger(0).expect("fire vector 0");
    vectors.set_route(0, None).expect("unroute vector 0");
    assert!(vectors.trigger(3).is_err(), "no vector 3");
    drop(vectors);
    // The GSIs came back: a new block starts at the same place and routes again.
    let again = router.allocate_msi_vectors(3).expect("vectors again");
    again.set_route(0, Some(message)).expect("route after reuse");
}

#[test]
fn intx_line_goes_up_and_down() {
    let Some(vm) = vm() else { return };
    let line = KvmLevelIrq::new(vm, 17);
    line.set_level(true).expect("assert");
    line.set_level(false).expect("deassert");
}

#[test]
fn ioeventfd_registers_moves_and_unregisters() {
    let Some(vm) = vm() else { return };
    let event = EventFd::new(0).unwrap();
    let first = IoEventAddress::Mmio(0xc000_3000);
    let second = IoEventAddress::Mmio(0xc010_3000);
    vm.register(&event, first).expect("register");
    vm.unregister(&event, first).expect("unregister");
    vm.register(&event, second).expect("register at the new place");
    assert!(
        vm.unregister(&event, first).is_err(),
        "nothing left at the old place"
    );
    vm.unregister(&event, second).expect("unregister");
}
