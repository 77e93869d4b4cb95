//! GSI routing: what each global system interrupt number means to KVM's in-kernel irqchip.

use kvm_bindings::{
    kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};

/// An interrupt controller input in the in-kernel irqchip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqChip {
    /// The master 8259 PIC (ISA IRQs 0-7).
    PicMaster,
    /// The slave 8259 PIC (ISA IRQs 8-15).
    PicSlave,
    /// The I/O APIC (pins 0-23).
    Ioapic,
}

/// One entry of the GSI routing table. A GSI may have several entries (ISA IRQs go to both the
/// PIC and the I/O APIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsiRoute {
    /// `gsi` drives `pin` of `chip`.
    Irqchip { gsi: u32, chip: IrqChip, pin: u32 },
    /// `gsi` sends the MSI message `address`/`data` to the local APICs.
    Msi { gsi: u32, address: u64, data: u32 },
}

impl GsiRoute {
    /// The GSI this entry is for.
    pub fn gsi(&self) -> u32 {
        match *self {
            GsiRoute::Irqchip { gsi, .. } | GsiRoute::Msi { gsi, .. } => gsi,
        }
    }

    /// The routing KVM sets up when the irqchip is created, which `KVM_SET_GSI_ROUTING` replaces
    /// as a whole: GSIs 0-15 to the PICs and the same I/O APIC pins, GSIs 16-23 to the I/O APIC.
    pub fn default_irqchip_routes() -> Vec<GsiRoute> {
        let mut routes = Vec::with_capacity(40);
        for gsi in 0..24 {
            if gsi < 8 {
                routes.push(GsiRoute::Irqchip {
                    gsi,
                    chip: IrqChip::PicMaster,
                    pin: gsi,
                });
            } else if gsi < 16 {
                routes.push(GsiRoute::Irqchip {
                    gsi,
                    chip: IrqChip::PicSlave,
                    pin: gsi - 8,
                });
            }
            routes.push(GsiRoute::Irqchip {
                gsi,
                chip: IrqChip::Ioapic,
                pin: gsi,
            });
        }
        routes
    }

    pub(crate) fn to_kvm(self) -> kvm_irq_routing_entry {
        let mut entry = kvm_irq_routing_entry {
            gsi: self.gsi(),
            ..Default::default()
        };
        match self {
            GsiRoute::Irqchip { chip, pin, .. } => {
                entry.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                entry.u.irqchip.irqchip = match chip {
                    IrqChip::PicMaster => KVM_IRQCHIP_PIC_MASTER,
                    IrqChip::PicSlave => KVM_IRQCHIP_PIC_SLAVE,
                    IrqChip::Ioapic => KVM_IRQCHIP_IOAPIC,
                };
                entry.u.irqchip.pin = pin;
            }
            GsiRoute::Msi { address, data, .. } => {
                entry.type_ = KVM_IRQ_ROUTING_MSI;
                entry.u.msi.address_lo = address as u32;
                entry.u.msi.address_hi = (address >> 32) as u32;
                entry.u.msi.data = data;
            }
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_cover_isa_irqs_twice_and_pci_pins_once() {
        let routes = GsiRoute::default_irqchip_routes();
        assert_eq!(routes.len(), 16 * 2 + 8);
        assert!(routes.contains(&GsiRoute::Irqchip {
            gsi: 9,
            chip: IrqChip::PicSlave,
            pin: 1
        }));
        assert!(routes.contains(&GsiRoute::Irqchip {
            gsi: 23,
            chip: IrqChip::Ioapic,
            pin: 23
        }));
        assert!(!routes.iter().any(|r| r.gsi() == 16
            && matches!(
                r,
                GsiRoute::Irqchip {
                    chip: IrqChip::PicSlave,
                    ..
                }
            )));
    }

    #[test]
    fn msi_route_splits_the_address() {
        let entry = GsiRoute::Msi {
            gsi: 30,
            address: 0x1_fee0_1000,
            data: 0x4041,
        }
        .to_kvm();
        assert_eq!(entry.gsi, 30);
        assert_eq!(entry.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: the entry was built as an MSI entry, so `msi` is the initialised union member.
        let msi = unsafe { entry.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_1000, 1, 0x4041)
        );
    }
}
