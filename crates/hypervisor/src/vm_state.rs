//! Saving and restoring what KVM keeps for the whole VM ([`VmState`]): the in-kernel PIC
//! pair and IOAPIC, the PIT, and the kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};

use crate::error::{ioctl, HypervisorError};
use crate::state::{from_bytes, to_bytes, VmState};
use crate::vm::Vm;
use crate::Result;

impl Vm {
    fn irqchip(&self, chip_id: u32, op: &'static str) -> Result<Vec<u8>> {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.fd.get_irqchip(&mut chip).map_err(ioctl(op))?;
        Ok(to_bytes(&chip))
    }

    fn set_irqchip(&self, chip_id: u32, what: &'static str, bytes: &[u8]) -> Result<()> {
        let chip: kvm_irqchip = from_bytes(bytes).ok_or(HypervisorError::StateLayout {
            what,
            len: bytes.len(),
            expected: size_of::<kvm_irqchip>(),
        })?;
        if chip.chip_id != chip_id {
            return Err(HypervisorError::StateLayout {
                what,
                len: bytes.len(),
                expected: size_of::<kvm_irqchip>(),
            });
        }
        self.fd.set_irqchip(&chip).map_err(ioctl("KVM_SET_IRQCHIP"))
    }

    /// Reads the irqchip, PIT and clock. Call with every vCPU stopped.
    pub fn save_state(&self) -> Result<VmState> {
        let clock_ns = match self.fd.get_clock() {
            Ok(clock) => Some(clock.clock),
            Err(e) if matches!(e.errno(), libc::EINVAL | libc::ENOTTY | libc::ENOSYS) => {
                tracing::warn!("this host's KVM has no KVM_GET_CLOCK: the guest's kvmclock is not saved");
                None
            }
            Err(e) => return Err(ioctl("KVM_GET_CLOCK")(e)),
        };
        Ok(VmState {
            pic_master: self.irqchip(KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
            pic_slave: self.irqchip(KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
            ioapic: self.irqchip(KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
            pit: to_bytes(&self.fd.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?),
            clock_ns,
        })
    }

    /// Puts `state` into this VM, built by [`Vm::create_platform`] and not yet run.
    pub fn restore_state(&self, state: &VmState) -> Result<()> {
        self.set_irqchip(
            KVM_IRQCHIP_PIC_MASTER,
            "PIC master (kvm_irqchip)",
            &state.pic_master,
        )?;
        self.set_irqchip(KVM_IRQCHIP_PIC_SLAVE, "PIC slave (kvm_irqchip)", &state.pic_slave)?;
        self.set_irqchip(KVM_IRQCHIP_IOAPIC, "IOAPIC (kvm_irqchip)", &state.ioapic)?;
        let pit: kvm_bindings::kvm_pit_state2 =
            from_bytes(&state.pit).ok_or(HypervisorError::StateLayout {
                what: "PIT (kvm_pit_state2)",
                len: state.pit.len(),
                expected: size_of::<kvm_bindings::kvm_pit_state2>(),
            })?;
        self.fd.set_pit2(&pit).map_err(ioctl("KVM_SET_PIT2"))?;
        if let Some(clock) = state.clock_ns {
            // Only the value: the realtime and host-TSC flags would ask KVM to add the time the
            // VM spent saved, which a restored guest corrects itself (the agent's set-time).
            self.fd
                .set_clock(&kvm_clock_data {
                    clock,
                    ..Default::default()
                })
                .map_err(ioctl("KVM_SET_CLOCK"))?;
        }
        Ok(())
    }
}
