//! Interrupt sources for devices: level-triggered lines (PCI INTx) and blocks of MSI vectors, on
//! KVM's in-kernel irqchip.
//!
//! Devices see two small traits, [`LevelIrq`] and [`MsiVectors`], so their logic is testable
//! without KVM. The KVM versions deliver an MSI vector through an irqfd on a GSI of its own whose
//! route the [`GsiRouter`] keeps; `KVM_SET_GSI_ROUTING` replaces the whole table, so the router
//! holds all of it (the default PIC/I/O APIC entries plus every MSI route) and resends it whole.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use virtkit_hypervisor::{GsiRoute, HypervisorError, Vm};
use vm_allocator::IdAllocator;
use vmm_sys_util::eventfd::EventFd;

use crate::layout::irqs::{MSI_GSI_FIRST, MSI_GSI_LAST};

/// An MSI message: what a device writes, and where, to interrupt a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("every GSI for MSI routes ({MSI_GSI_FIRST}..={MSI_GSI_LAST}) is taken")]
    NoFreeGsi,
    #[error("MSI vector {vector} does not exist; the device has {count}")]
    NoSuchVector { vector: u16, count: u16 },
    #[error("cannot create or signal an interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM refused an interrupt change")]
    Hypervisor(#[from] HypervisorError),
}

/// A level-triggered interrupt line, such as a PCI INTx pin wired to an I/O APIC input.
pub trait LevelIrq: Send + Sync {
    fn set_level(&self, asserted: bool) -> Result<(), InterruptError>;
}

/// A device's block of MSI vectors, numbered from 0.
pub trait MsiVectors: Send + Sync {
    fn count(&self) -> u16;
    /// Makes `vector` send `message` from now on; `None` takes its route away.
    fn set_route(&self, vector: u16, message: Option<MsiMessage>) -> Result<(), InterruptError>;
    /// Sends `vector`'s message. Masking is the caller's business (see `pci::msix`).
    fn trigger(&self, vector: u16) -> Result<(), InterruptError>;
    /// The eventfd whose signal sends `vector` inside the kernel (its irqfd), for a device
    /// whose backend runs in another process (vhost-user's call eventfds); `None` where there
    /// is none (test doubles).
    fn irqfd(&self, _vector: u16) -> Option<&EventFd> {
        None
    }
}

struct RouterState {
    gsis: IdAllocator,
    msi_routes: BTreeMap<u32, MsiMessage>,
}

/// The VM's GSI routing table and the allocator of GSIs for MSI routes.
pub struct GsiRouter {
    vm: Arc<Vm>,
    state: Mutex<RouterState>,
}

impl std::fmt::Debug for GsiRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRouter")
            .field("msi_routes", &self.lock().msi_routes.len())
            .finish()
    }
}

impl GsiRouter {
    pub fn new(vm: Arc<Vm>) -> Arc<GsiRouter> {
        let gsis = IdAllocator::new(MSI_GSI_FIRST, MSI_GSI_LAST).expect("the MSI GSI range is not empty");
        Arc::new(GsiRouter {
            vm,
            state: Mutex::new(RouterState {
                gsis,
                msi_routes: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates `count` MSI vectors, each a GSI with an irqfd; they have no route until
    /// [`MsiVectors::set_route`].
    pub fn allocate_msi_vectors(self: &Arc<Self>, count: u16) -> Result<KvmMsiVectors, InterruptError> {
        let mut vectors = KvmMsiVectors {
            router: self.clone(),
            vectors: Vec::with_capacity(count.into()),
        };
        for _ in 0..count {
            let gsi = self
                .lock()
                .gsis
                .allocate_id()
                .map_err(|_| InterruptError::NoFreeGsi)?;
            let event = match EventFd::new(libc::EFD_NONBLOCK) {
                Ok(event) => event,
                Err(e) => {
                    let _ = self.lock().gsis.free_id(gsi);
                    return Err(InterruptError::EventFd(e));
                }
            };
            if let Err(e) = self.vm.register_irqfd(&event, gsi) {
                let _ = self.lock().gsis.free_id(gsi);
                return Err(e.into());
            }
            // From here on, `vectors`' Drop undoes this one too.
            vectors.vectors.push((gsi, event));
        }
        Ok(vectors)
    }

    fn set_msi_route(&self, gsi: u32, message: Option<MsiMessage>) -> Result<(), InterruptError> {
        let mut state = self.lock();
        let old = match message {
            Some(m) => state.msi_routes.insert(gsi, m),
            None => state.msi_routes.remove(&gsi),
        };
        if old == message {
            return Ok(());
        }
        let mut routes = GsiRoute::default_irqchip_routes();
        routes.extend(state.msi_routes.iter().map(|(&gsi, m)| GsiRoute::Msi {
            gsi,
            address: m.address,
            data: m.data,
        }));
        let result = self.vm.set_gsi_routing(&routes);
        if result.is_err() {
            // Keep our table what KVM has.
            match old {
                Some(m) => state.msi_routes.insert(gsi, m),
                None => state.msi_routes.remove(&gsi),
            };
        }
        Ok(result?)
    }

    fn release(&self, gsi: u32, event: &EventFd) {
        if let Err(e) = self.vm.unregister_irqfd(event, gsi) {
            crate::warn_ratelimited!(gsi, "cannot unregister an MSI irqfd: {e}");
        }
        if let Err(e) = self.set_msi_route(gsi, None) {
            crate::warn_ratelimited!(gsi, "cannot remove an MSI route: {e}");
        }
        let _ = self.lock().gsis.free_id(gsi);
    }
}

/// MSI vectors on KVM: one GSI and irqfd each. Dropping them frees the GSIs.
pub struct KvmMsiVectors {
    router: Arc<GsiRouter>,
    vectors: Vec<(u32, EventFd)>,
}

impl std::fmt::Debug for KvmMsiVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.vectors.iter().map(|(gsi, _)| gsi))
            .finish()
    }
}

impl KvmMsiVectors {
    fn vector(&self, vector: u16) -> Result<&(u32, EventFd), InterruptError> {
        self.vectors
            .get(usize::from(vector))
            .ok_or(InterruptError::NoSuchVector {
                vector,
                count: self.count(),
            })
    }
}

impl MsiVectors for KvmMsiVectors {
    fn count(&self) -> u16 {
        // Built from a u16 count.
        self.vectors.len() as u16
    }

    fn set_route(&self, vector: u16, message: Option<MsiMessage>) -> Result<(), InterruptError> {
        let (gsi, _) = self.vector(vector)?;
        self.router.set_msi_route(*gsi, message)
    }

    fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        let (_, event) = self.vector(vector)?;
        event.write(1).map_err(InterruptError::EventFd)
    }

    fn irqfd(&self, vector: u16) -> Option<&EventFd> {
        self.vector(vector).ok().map(|(_, event)| event)
    }
}

impl Drop for KvmMsiVectors {
    fn drop(&mut self) {
        for (gsi, event) in &self.vectors {
            self.router.release(*gsi, event);
        }
    }
}

/// A level-triggered line of the in-kernel PIC/I/O APIC, driven with `KVM_IRQ_LINE`.
#[derive(Debug)]
pub struct KvmLevelIrq {
    vm: Arc<Vm>,
    gsi: u32,
}

impl KvmLevelIrq {
    pub fn new(vm: Arc<Vm>, gsi: u32) -> KvmLevelIrq {
        KvmLevelIrq { vm, gsi }
    }
}

impl LevelIrq for KvmLevelIrq {
    fn set_level(&self, asserted: bool) -> Result<(), InterruptError> {
        Ok(self.vm.set_irq_line(self.gsi, asserted)?)
    }
}
