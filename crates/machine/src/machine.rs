//! Assembling a machine from its parts and running it.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use virtkit_hypervisor::{CpuidEntry, HypervisorError, Kvm, Vcpu, Vm};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{build_tables, write_acpi_tables, AcpiConfig, AcpiError};
use crate::boot::{
    configure_boot_vcpu, firmware_e820_map, load_firmware, load_linux, mirror_isa_bios, open_variable_store,
    BootEntry, BootError, BootSource, FirmwareImage, VariableStore,
};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::cpuid::vcpu_cpuid;
use crate::devices::fw_cfg::{keys as fw_cfg_keys, FwCfg, FwCfgError, FW_CFG_PORT_BASE, FW_CFG_PORT_LEN};
use crate::devices::{
    pflash::Pflash, spawn_serial_input, AcpiPm, Cmos, GuestRequest, OvmfShutdown, PvPanic, RequestSink,
    SerialDevice, SerialInputError, I8042, OVMF_PM1_CNT_LEN, OVMF_PM1_CNT_PORT, PVPANIC_PORT,
};
use crate::exit_stats::{ExitCounters, ExitStats};
use crate::interrupt::GsiRouter;
use crate::layout::{
    irqs, ports, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, PAM_WINDOW_END, PAM_WINDOW_START, PCI_ECAM_SIZE,
    PCI_ECAM_START,
};
use crate::memory::{
    create_guest_memory, create_shared_guest_memory, low_ram_end, ram_ranges, ranges_around,
};
use crate::pam::{ShadowRam, ShadowRamError};
use crate::pci::{
    BarAllocator, BarAllocatorError, HostBridge, IsaBridge, PciConfigIo, PciConfigMmio, PciRoot,
    PciRootError, Piix4Pm, ISA_BRIDGE_SLOT, PIIX4_PM_FUNCTION,
};
use crate::smbios::{
    write_smbios_tables, BiosInformation, SmbiosError, SmbiosIdentity, SmbiosTables, FW_CFG_ANCHOR_FILE,
    FW_CFG_TABLES_FILE,
};
use crate::snapshot::{PlatformDevices, SaveParts, SaveSummary, SnapshotError};
use crate::vcpu::{run_vcpu, Control, PauseOutcome, VcpuContext};
use crate::vcpu_threads::{start_waiting, vcpu_thread, WaitingVcpuThread};

/// Why a machine stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest reset the machine (i8042 reset line or a KVM reset event).
    Reset,
    /// The guest kernel reported a panic (pvpanic).
    Panic,
    /// A vCPU triple-faulted.
    TripleFault { vcpu: u32 },
    /// KVM could not go on running a vCPU.
    InternalError { vcpu: u32, suberror: u32, rip: u64 },
    /// KVM could not enter the guest.
    FailEntry { vcpu: u32, reason: u64 },
    /// The host stopped the machine.
    Stopped,
    /// Something failed in the VMM.
    HostError { vcpu: Option<u32>, message: String },
}

/// Everything the machine needs to know to be built.
pub struct MachineConfig {
    pub vcpus: u8,
    pub memory_size: u64,
    pub boot: BootSource,
    /// Where COM1's output goes.
    pub serial_output: Box<dyn Write + Send>,
    /// Where COM1's input comes from, if anywhere.
    pub serial_input: Option<OwnedFd>,
    /// The SMBIOS system UUID and serial number; `None` gives the guest an all-zero UUID.
    pub smbios_identity: Option<SmbiosIdentity>,
    /// Guest RAM backed by a memfd that a vhost-user backend can map
    /// (`memory::create_shared_guest_memory`); `false`: anonymous memory.
    pub shared_memory: bool,
    /// A PS/2 keyboard and mouse on the i8042 ([`Machine::ps2_input`]), which the ACPI tables
    /// then describe.
    pub ps2_input: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("KVM refused to set up the machine")]
    Hypervisor(#[from] HypervisorError),
    #[error("cannot allocate {size} bytes of guest memory")]
    Memory {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot allocate {size} bytes of shareable guest memory")]
    SharedMemory {
        size: u64,
        #[source]
        source: crate::memory::SharedMemoryError,
    },
    #[error("cannot load the guest")]
    Boot(#[from] BootError),
    #[error("cannot describe the machine to the firmware (fw_cfg)")]
    FwCfg(#[from] FwCfgError),
    #[error("a boot order is only for firmware boots")]
    NoFirmware,
    #[error("cannot build the ACPI tables")]
    Acpi(#[from] AcpiError),
    #[error("cannot build the SMBIOS tables")]
    Smbios(#[from] SmbiosError),
    #[error("device layout is inconsistent")]
    Bus(#[from] BusError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    SerialInput(#[from] SerialInputError),
    #[error("the machine was already started")]
    AlreadyStarted,
    #[error("cannot place a PCI device")]
    Pci(#[from] PciRootError),
    #[error("cannot assign PCI BARs for a direct kernel boot")]
    PciBars(#[from] BarAllocatorError),
    #[error("the firmware image {0} cannot be read")]
    Firmware(PathBuf),
    #[error("cannot set up the BIOS area's shadow RAM (PAM)")]
    ShadowRam(#[from] ShadowRamError),
}

/// A built machine: memory loaded, devices in place, vCPUs created but not yet running.
pub struct Machine {
    // vCPU threads must end before the memory they run on goes away: `Drop` stops them first.
    threads: Vec<JoinHandle<()>>,
    vcpus: Vec<Vcpu>,
    /// The vCPU threads made while the machine was built, waiting for `start` (`vcpu_threads`).
    waiting_vcpu_threads: Vec<WaitingVcpuThread>,
    control: Arc<Control>,
    pm: Arc<Mutex<AcpiPm>>,
    serial: Arc<Mutex<SerialDevice>>,
    serial_input: Option<OwnedFd>,
    serial_input_thread: Option<(JoinHandle<()>, EventFd)>,
    pio: Bus,
    mmio: Bus,
    pci: Arc<Mutex<PciRoot>>,
    /// No firmware will assign BARs (a direct kernel boot): `start` does.
    assign_pci_bars: bool,
    gsi_router: Arc<GsiRouter>,
    vm: Arc<Vm>,
    memory: GuestMemoryMmap,
    fw_cfg: Option<Arc<Mutex<FwCfg>>>,
    exits: ExitCounters,
    save_parts: SaveParts,
    /// The PS/2 keyboard and mouse, when the configuration asked for them.
    ps2_input: Option<(crate::devices::KeyboardHandle, crate::devices::MouseHandle)>,
}

/// A cheap handle to control a running machine from other threads.
#[derive(Clone)]
pub struct MachineHandle {
    control: Arc<Control>,
    pm: Arc<Mutex<AcpiPm>>,
    exits: ExitCounters,
    save_parts: SaveParts,
}

impl MachineHandle {
    /// Parks every vCPU; returns when none is running guest code, when the machine is
    /// stopping, or after `timeout` with the machine running as before (see [`PauseOutcome`]).
    pub fn pause(&self, timeout: Duration) -> PauseOutcome {
        self.control.pause(timeout)
    }

    pub fn resume(&self) {
        self.control.resume();
    }

    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Presses the ACPI power button, asking the guest to shut down.
    pub fn press_power_button(&self) {
        self.pm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .press_power_button();
    }

    /// Whether the guest has enabled the power button event (its ACPI driver is up).
    pub fn power_button_enabled(&self) -> bool {
        self.pm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .power_button_enabled()
    }

    /// Stops the machine at once.
    pub fn stop(&self) {
        self.control.request_exit(ExitReason::Stopped);
    }

    /// Why the machine stopped, once it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.control.exit_reason()
    }

    /// The exits that reached the VMM so far, by vCPU and reason and by device range.
    pub fn exit_stats(&self) -> ExitStats {
        self.exits.read()
    }

    /// Saves the paused machine to `path` (docs/SAVE.md), atomically, with `configuration`:
    /// its owner's description of what it was built from, which a restore must match, and
    /// `devices`: its owner's devices' state, which [`Machine::restore_state`] hands back.
    /// Refused unless every vCPU is paused; the machine stays paused.
    pub fn save_state(
        &self,
        path: &std::path::Path,
        configuration: &serde_json::Value,
        devices: &serde_json::Value,
    ) -> Result<SaveSummary, SnapshotError> {
        self.save_parts.save(path, configuration, devices)
    }
}

fn lock_pci(pci: &Mutex<PciRoot>) -> std::sync::MutexGuard<'_, PciRoot> {
    pci.lock().unwrap_or_else(|p| p.into_inner())
}

fn request_sink(control: &Arc<Control>) -> RequestSink {
    let control = control.clone();
    Arc::new(move |request| {
        control.request_exit(match request {
            GuestRequest::PowerOff => ExitReason::PowerOff,
            GuestRequest::Reset => ExitReason::Reset,
            GuestRequest::Panic => ExitReason::Panic,
        })
    })
}

impl Machine {
    /// Builds the machine: memory, in-kernel irqchip and PIT, devices, ACPI, the guest image,
    /// and the vCPUs with their CPUID — the boot's steps 2 to 7 (docs/ARCHITECTURE.md), each a
    /// function below.
    pub fn new(kvm: &Kvm, config: MachineConfig) -> Result<Machine, MachineError> {
        Machine::build(kvm, config, true)
    }

    /// Builds the machine as [`Machine::new`] does, for [`Machine::restore_state`] to fill:
    /// on a Linux boot the kernel, initrd, boot parameters and ACPI and SMBIOS tables are not
    /// written into guest memory, nor vCPU 0 given its entry state, since the restore replaces
    /// guest memory and every vCPU's registers with the saved ones (for a Linux guest that is
    /// reading tens of MiB into memory that is thrown away before the first instruction). A
    /// firmware boot is built in full (its fw_cfg items are rebuilt from the configuration and
    /// its ROM is small). Start such a machine only after a successful `restore_state`.
    pub fn new_for_restore(kvm: &Kvm, config: MachineConfig) -> Result<Machine, MachineError> {
        Machine::build(kvm, config, false)
    }

    fn build(kvm: &Kvm, config: MachineConfig, load: bool) -> Result<Machine, MachineError> {
        // KVM_GET_SUPPORTED_CPUID takes ~0.3 ms here (the CPUIDs it runs trap to this host's own
        // hypervisor) and only the vCPUs, built last, need its answer: it is asked on a thread
        // of its own, an unfiltered one that touches nothing of the guest's, while the VM, its
        // memory and its devices are built. The guest's first instruction came that much sooner.
        std::thread::scope(|scope| {
            let asked = std::thread::Builder::new()
                .name("kvm-cpuid".into())
                .spawn_scoped(scope, || kvm.supported_cpuid());
            let supported_cpuid = move || match asked {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to be had (a process limit): ask here.
                Err(_) => kvm.supported_cpuid(),
            };
            Machine::build_with(kvm, config, load, supported_cpuid)
        })
    }

    fn build_with(
        kvm: &Kvm,
        config: MachineConfig,
        load: bool,
        supported_cpuid: impl FnOnce() -> virtkit_hypervisor::Result<Vec<CpuidEntry>>,
    ) -> Result<Machine, MachineError> {
        let MachineConfig {
            vcpus,
            memory_size,
            boot,
            serial_output,
            serial_input,
            smbios_identity,
            shared_memory,
            ps2_input,
        } = config;
        let smbios_identity = smbios_identity.unwrap_or_default();
        // First, so that their creation and filters are done on the other CPU meanwhile; on an
        // error below they are dropped and end (see `vcpu_threads`).
        let waiting_vcpu_threads = start_waiting(vcpus);
        let vm = kvm.create_vm()?;
        vm.set_system_pages(KVM_TSS_ADDRESS, KVM_IDENTITY_MAP_ADDRESS)?;

        let (firmware, variable_store) = match &boot {
            BootSource::Firmware { path, variables } => {
                let image = FirmwareImage::read(path)?;
                let store = match variables {
                    Some(v) => Some(open_variable_store(v, &image, path)?),
                    None => None,
                };
                (Some(image), store)
            }
            BootSource::Linux { .. } => (None, None),
        };
        // Memory before the irqchip and the PIT, on purpose: each registration waits for an SRCU
        // grace period in the kernel, and one that closely follows another (as the irqchip's
        // and PIT's I/O-bus registrations do) waits a jiffy or two more. Slot first: ~0.1 ms;
        // after them: 5-11 ms here (bench/RESULTS.md, part 1).
        let (memory, pam) = map_guest_memory(&vm, memory_size, firmware.as_ref(), shared_memory)?;
        vm.create_interrupt_controllers()?;
        let vm = Arc::new(vm);

        let control = Control::new();
        let requests = request_sink(&control);
        let pio = Bus::new();
        let mmio = Bus::new();
        let legacy = add_legacy_devices(&vm, &pio, serial_output, &requests, memory_size)?;
        let (serial, pm) = (legacy.serial.clone(), legacy.pm.clone());
        let host_bridge = match (pam, &firmware) {
            (true, Some(image)) => host_bridge_with_shadow_ram(&vm, &memory, &mmio, image)?,
            _ => HostBridge::new(),
        };
        let pci = add_pci_bus(&pio, &mmio, host_bridge, &requests)?;
        if let Some(store) = variable_store {
            add_efi_platform(&pio, &mmio, &pci, store, &requests)?;
        }
        let gsi_router = GsiRouter::new(vm.clone());
        let load = load || matches!(boot, BootSource::Firmware { .. });
        let (fw_cfg, entry) = if load {
            let platform = PlatformTables {
                memory_size,
                vcpus,
                ps2_input,
                smbios_identity: &smbios_identity,
            };
            let fw_cfg = place_platform_tables(&boot, &memory, &platform, &pio)?;
            let entry = load_guest(&boot, &memory, memory_size, firmware.as_ref(), pam)?;
            (fw_cfg, Some(entry))
        } else {
            (None, None)
        };
        let ps2 = if ps2_input {
            Some(attach_ps2_input(&vm, &legacy.i8042)?)
        } else {
            None
        };
        let created = create_vcpus(kvm, &vm, vcpus, &memory, entry, supported_cpuid()?, &pio)?;
        let exits = ExitCounters::new(created.len(), pio.clone(), mmio.clone(), pci.clone());
        let save_parts = SaveParts {
            vm: vm.clone(),
            memory: memory.clone(),
            platform: PlatformDevices {
                serial: legacy.serial,
                pm: legacy.pm,
                i8042: legacy.i8042,
                cmos: legacy.cmos,
                pci: pci.clone(),
                fw_cfg: fw_cfg.clone(),
            },
            control: control.clone(),
            vcpus: created.len(),
        };

        Ok(Machine {
            threads: Vec::new(),
            vcpus: created,
            waiting_vcpu_threads,
            control,
            pm,
            serial,
            serial_input,
            serial_input_thread: None,
            pio,
            mmio,
            pci,
            assign_pci_bars: matches!(boot, BootSource::Linux { .. }),
            gsi_router,
            vm,
            memory,
            fw_cfg,
            exits,
            save_parts,
            ps2_input: ps2,
        })
    }

    /// Puts the state saved in `path` into this machine, which must not have started and must
    /// be built from the configuration the state was saved with (`configuration`, as given to
    /// [`MachineHandle::save_state`]). Every check runs before anything changes; after a
    /// restore, `start` starts the machine paused, and `MachineHandle::resume` runs it. If KVM
    /// refuses part of the state the machine is left half restored: drop it. Returns the
    /// owner's `devices` section as saved (`null` if none).
    pub fn restore_state(
        &mut self,
        path: &std::path::Path,
        configuration: &serde_json::Value,
    ) -> Result<serde_json::Value, SnapshotError> {
        if self.vcpus.is_empty() {
            return Err(SnapshotError::AlreadyStarted);
        }
        let devices = self.save_parts.restore(&self.vcpus, path, configuration)?;
        // The saved PCI configuration has the BARs as they were; firmware-style assignment
        // would move them.
        self.assign_pci_bars = false;
        self.control.start_paused();
        Ok(devices)
    }

    /// The port I/O bus, to add devices before `start`.
    pub fn pio_bus_mut(&mut self) -> &mut Bus {
        &mut self.pio
    }

    /// The MMIO bus, to add devices before `start`.
    pub fn mmio_bus_mut(&mut self) -> &mut Bus {
        &mut self.mmio
    }

    /// PCI bus 0, to add devices before `start` (slot 0 is the host bridge's, slot 1 the ISA
    /// bridge's).
    pub fn pci_root(&self) -> &Arc<Mutex<PciRoot>> {
        &self.pci
    }

    /// The GSI routing table, for devices that need MSI vectors.
    pub fn gsi_router(&self) -> &Arc<GsiRouter> {
        &self.gsi_router
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM, for devices that need irqfds or ioeventfds.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// Tells the firmware which devices to boot from, first to last, as OpenFirmware device
    /// paths (`/pci@i0cf8/*@1` is the device in PCI slot 1). Call once, before `start`.
    pub fn set_boot_order(&self, paths: &[String]) -> Result<(), MachineError> {
        let fw_cfg = self.fw_cfg.as_ref().ok_or(MachineError::NoFirmware)?;
        fw_cfg
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_bootorder(paths)?;
        Ok(())
    }

    /// The PS/2 keyboard and mouse, on a machine built with them (`MachineConfig::ps2_input`):
    /// the handles that send keys and move the pointer.
    pub fn ps2_input(&self) -> Option<(crate::devices::KeyboardHandle, crate::devices::MouseHandle)> {
        self.ps2_input.clone()
    }

    /// Gives the firmware the file `name` through fw_cfg (an option ROM such as
    /// `pci1234,1111.rom`, which SeaBIOS runs for that PCI device). Before `start`.
    pub fn add_firmware_file(&self, name: &str, data: Vec<u8>) -> Result<(), MachineError> {
        let fw_cfg = self.fw_cfg.as_ref().ok_or(MachineError::NoFirmware)?;
        fw_cfg
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_file(name, data)?;
        Ok(())
    }

    pub fn handle(&self) -> MachineHandle {
        MachineHandle {
            control: self.control.clone(),
            pm: self.pm.clone(),
            exits: self.exits.clone(),
            save_parts: self.save_parts.clone(),
        }
    }

    /// Starts the vCPU threads (`vcpu-N`; those made at build time are handed their vCPUs) and
    /// the serial input thread.
    pub fn start(&mut self) -> Result<(), MachineError> {
        if self.vcpus.is_empty() {
            return Err(MachineError::AlreadyStarted);
        }
        if self.assign_pci_bars {
            lock_pci(&self.pci).assign_bars(&mut BarAllocator::new())?;
            self.assign_pci_bars = false;
        }
        let ctx = Arc::new(VcpuContext {
            control: self.control.clone(),
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            exits: self.exits.vcpus.clone(),
        });
        let mut waiting = std::mem::take(&mut self.waiting_vcpu_threads)
            .into_iter()
            .peekable();
        for (index, vcpu) in self.vcpus.drain(..).enumerate() {
            let ctx = ctx.clone();
            self.control.thread_starting();
            let handed = match waiting.next_if(|t| t.index() == index as u32) {
                Some(thread) => thread.run(vcpu, ctx),
                None => Err((vcpu, ctx)),
            };
            // No thread waits for this vCPU (it could not be made, or died): one now.
            let spawned = handed.or_else(|(vcpu, ctx)| spawn_vcpu_thread(index, vcpu, ctx));
            match spawned {
                Ok(t) => self.threads.push(t),
                Err(e) => {
                    self.control.thread_exiting_without_start();
                    self.control.request_exit(ExitReason::HostError {
                        vcpu: Some(index as u32),
                        message: format!("cannot start the vCPU thread: {e}"),
                    });
                    return Err(MachineError::Thread(e));
                }
            }
        }
        // After the vCPUs, which wait for nothing it does: input typed before the guest reads
        // it is kept. On an error the caller drops the machine, which stops the vCPUs.
        if let Some(input) = self.serial_input.take() {
            let stop = EventFd::new(0).map_err(MachineError::EventFd)?;
            let stop_clone = stop.try_clone().map_err(MachineError::EventFd)?;
            let thread = spawn_serial_input(self.serial.clone(), input, stop_clone)?;
            self.serial_input_thread = Some((thread, stop));
        }
        // With the guest running: its creation is off the path to the first instruction.
        self.vm.start_teardown_keeper();
        Ok(())
    }

    /// Blocks until the machine stops, then joins its threads and says why it stopped.
    pub fn wait(&mut self) -> ExitReason {
        let reason = self.control.wait_exit();
        self.join_threads();
        reason
    }

    fn join_threads(&mut self) {
        for t in self.waiting_vcpu_threads.drain(..) {
            t.dismiss();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some((thread, stop)) = self.serial_input_thread.take() {
            let _ = stop.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.control.request_exit(ExitReason::Stopped);
            self.control.wait_exit();
        }
        self.join_threads();
        // Nothing runs guest accesses any more: let the devices go (see `Bus::clear`).
        self.pio.clear();
        self.mmio.clear();
    }
}

/// Creates vCPU `index`'s thread and runs the vCPU on it.
fn spawn_vcpu_thread(index: usize, vcpu: Vcpu, ctx: Arc<VcpuContext>) -> std::io::Result<JoinHandle<()>> {
    vcpu_thread(index as u32).spawn(move || run_vcpu(vcpu, index as u32, &ctx))
}

/// Step 3: guest memory, registered as KVM slots (the firmware's read-only). With firmware and
/// read-only slots the PAM window is left to `ShadowRam` (the returned flag says so).
fn map_guest_memory(
    vm: &Vm,
    memory_size: u64,
    firmware: Option<&FirmwareImage>,
    shared: bool,
) -> Result<(GuestMemoryMmap, bool), MachineError> {
    let extra: Vec<_> = firmware.iter().map(|f| f.range()).collect();
    let memory = if shared {
        create_shared_guest_memory(&ram_ranges(memory_size), &extra).map_err(|source| {
            MachineError::SharedMemory {
                size: memory_size,
                source,
            }
        })?
    } else {
        create_guest_memory(&ram_ranges(memory_size), &extra).map_err(|source| MachineError::Memory {
            size: memory_size,
            source,
        })?
    };
    // PAM shadow RAM needs firmware (which programs it; a direct boot keeps plain RAM there
    // for its ACPI and SMBIOS tables) and read-only slots; its window is mapped by
    // `ShadowRam`, the rest of RAM here. The firmware at the top of 4 GiB is ROM too.
    let read_only_slots = vm.read_only_memory_supported();
    if firmware.is_some() && !read_only_slots {
        tracing::warn!(
            "this host's KVM has no read-only memory slots (KVM_CAP_READONLY_MEM): the BIOS \
             area below 1 MiB stays plain RAM and the PAM registers have no effect"
        );
    }
    let pam = firmware.is_some() && read_only_slots;
    for region in memory.iter() {
        let start = region.start_addr().0;
        let host = region.as_ptr() as u64;
        let rom = extra.iter().any(|(at, _)| at.0 == start) && read_only_slots;
        let pieces = if pam {
            ranges_around(start, region.len(), PAM_WINDOW_START..PAM_WINDOW_END)
        } else {
            vec![(start, region.len())]
        };
        for (piece, len) in pieces {
            // SAFETY: the region belongs to `memory`, which the Machine owns and drops only
            // after every vCPU thread has stopped (see `Drop`), so the mapping outlives
            // guest use; `piece..piece + len` lies inside the region.
            unsafe { vm.map_memory(piece, len, host + (piece - start), rom) }?;
        }
    }
    Ok((memory, pam))
}

/// The legacy devices the machine keeps handles on (to control them, and to save them).
struct LegacyDevices {
    serial: Arc<Mutex<SerialDevice>>,
    pm: Arc<Mutex<AcpiPm>>,
    i8042: Arc<Mutex<I8042>>,
    cmos: Arc<Mutex<Cmos>>,
}

/// Step 4, the legacy half: COM1, ACPI PM, i8042, CMOS RTC and pvpanic on the port bus.
/// Plugs a PS/2 keyboard (IRQ 1) and mouse (IRQ 12, the auxiliary port) into the i8042, each
/// interrupt on an irqfd. Without them the i8042's port tests say nothing is attached.
fn attach_ps2_input(
    vm: &Vm,
    i8042: &Arc<Mutex<I8042>>,
) -> Result<(crate::devices::KeyboardHandle, crate::devices::MouseHandle), MachineError> {
    let keyboard_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(MachineError::EventFd)?;
    vm.register_irqfd(&keyboard_irq, irqs::KEYBOARD)?;
    let mouse_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(MachineError::EventFd)?;
    vm.register_irqfd(&mouse_irq, irqs::MOUSE)?;
    {
        let mut device = i8042.lock().unwrap_or_else(|p| p.into_inner());
        device.attach_keyboard(Arc::new(keyboard_irq));
        device.attach_mouse(Arc::new(mouse_irq));
    }
    Ok((
        crate::devices::KeyboardHandle::new(i8042.clone()),
        crate::devices::MouseHandle::new(i8042.clone()),
    ))
}

fn add_legacy_devices(
    vm: &Arc<Vm>,
    pio: &Bus,
    serial_output: Box<dyn Write + Send>,
    requests: &RequestSink,
    memory_size: u64,
) -> Result<LegacyDevices, MachineError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(MachineError::EventFd)?;
    vm.register_irqfd(&serial_irq, irqs::COM1)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, serial_output)));
    pio.insert(
        ports::COM1 as u64,
        ports::COM1_LEN as u64,
        serial.clone() as SharedDevice,
    )?;

    let sci_vm = vm.clone();
    let pm = Arc::new(Mutex::new(AcpiPm::new(
        Box::new(move |level| {
            if let Err(e) = sci_vm.set_irq_line(irqs::SCI, level) {
                crate::warn_ratelimited!("cannot set the SCI line: {e}");
            }
        }),
        requests.clone(),
    )));
    pio.insert(
        ports::PM1A_EVT_BLK as u64,
        crate::devices::pm_io_len(),
        pm.clone() as SharedDevice,
    )?;
    let i8042 = Arc::new(Mutex::new(I8042::new(requests.clone())));
    pio.insert(ports::I8042_DATA as u64, 5, i8042.clone())?;
    let rtc_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(MachineError::EventFd)?;
    vm.register_irqfd(&rtc_irq, irqs::RTC)?;
    let mut rtc = Cmos::new(memory_size, low_ram_end(memory_size));
    rtc.attach_irq(rtc_irq);
    let cmos = Arc::new(Mutex::new(rtc));
    pio.insert(ports::CMOS_INDEX as u64, 2, cmos.clone())?;
    // The index register's writes wait in KVM's ring until the next exit instead of exiting
    // (`hypervisor::coalesced`): nothing sees the index before the data port is accessed.
    vm.coalesce_port_writes(ports::CMOS_INDEX, 1)?;
    pio.insert(
        PVPANIC_PORT as u64,
        1,
        Arc::new(Mutex::new(PvPanic::new(requests.clone()))),
    )?;
    Ok(LegacyDevices {
        serial,
        pm,
        i8042,
        cmos,
    })
}

/// The PAM window: KVM slots that follow the host bridge's PAM registers, and a device for the
/// accesses they send out (writes to read-only segments, an open bus).
fn host_bridge_with_shadow_ram(
    vm: &Arc<Vm>,
    memory: &GuestMemoryMmap,
    mmio: &Bus,
    image: &FirmwareImage,
) -> Result<HostBridge, MachineError> {
    let shadow = Arc::new(Mutex::new(ShadowRam::new(
        vm.clone(),
        memory.clone(),
        image.isa_bios(),
    )?));
    mmio.insert(
        PAM_WINDOW_START,
        PAM_WINDOW_END - PAM_WINDOW_START,
        shadow.clone(),
    )?;
    Ok(HostBridge::new().with_pam_handler(Box::new(move |registers| {
        shadow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_registers(registers)
    })))
}

/// Step 4, PCI: bus 0 with the host bridge at 00:00.0 and the PIIX3 ISA bridge at 00:01.0 (as
/// on a PC, for both boots: Linux knows the pair), reachable through 0xcf8/0xcfc and the ECAM.
fn add_pci_bus(
    pio: &Bus,
    mmio: &Bus,
    host_bridge: HostBridge,
    requests: &RequestSink,
) -> Result<Arc<Mutex<PciRoot>>, MachineError> {
    let pci = Arc::new(Mutex::new(PciRoot::new(pio.clone(), mmio.clone())));
    lock_pci(&pci).add_device(0, Arc::new(Mutex::new(host_bridge)))?;
    lock_pci(&pci).add_device(ISA_BRIDGE_SLOT, Arc::new(Mutex::new(IsaBridge::new())))?;
    pio.insert(
        u64::from(ports::PCI_CONFIG_ADDRESS),
        u64::from(ports::PCI_CONFIG_LEN),
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone()).with_reset({
            let requests = requests.clone();
            Box::new(move || requests(GuestRequest::Reset))
        }))),
    )?;
    mmio.insert(
        PCI_ECAM_START,
        PCI_ECAM_SIZE,
        Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
    )?;
    Ok(pci)
}

/// Step 4, EFI's part: the variable store's CFI flash right below the firmware's code (every
/// access exits: OVMF reads the store once into its cache, then writes through the flash's
/// commands), the PIIX4's power-management function at 00:01.3 that OVMF reads the ACPI PM
/// timer's port from, and the port OVMF powers off through.
fn add_efi_platform(
    pio: &Bus,
    mmio: &Bus,
    pci: &Arc<Mutex<PciRoot>>,
    store: VariableStore,
    requests: &RequestSink,
) -> Result<(), MachineError> {
    mmio.insert(
        store.address,
        store.size,
        Arc::new(Mutex::new(Pflash::new(store.flash))),
    )?;
    pio.insert(
        u64::from(OVMF_PM1_CNT_PORT),
        OVMF_PM1_CNT_LEN,
        Arc::new(Mutex::new(OvmfShutdown::new(requests.clone()))),
    )?;
    lock_pci(pci).add_function(
        ISA_BRIDGE_SLOT,
        PIIX4_PM_FUNCTION,
        Arc::new(Mutex::new(Piix4Pm::new())),
    )?;
    Ok(())
}

/// Step 5: ACPI and SMBIOS. A direct kernel boot finds the tables where Linux scans for the
/// RSDP and SMBIOS; firmware places them itself, from fw_cfg's table loader, with the rest of
/// what it asks QEMU's fw_cfg for (the device is returned).
/// What the platform's tables (ACPI, SMBIOS, fw_cfg) describe.
struct PlatformTables<'a> {
    memory_size: u64,
    vcpus: u8,
    ps2_input: bool,
    smbios_identity: &'a SmbiosIdentity,
}

fn place_platform_tables(
    boot: &BootSource,
    memory: &GuestMemoryMmap,
    platform: &PlatformTables,
    pio: &Bus,
) -> Result<Option<Arc<Mutex<FwCfg>>>, MachineError> {
    let PlatformTables {
        memory_size,
        vcpus,
        ps2_input,
        smbios_identity,
    } = *platform;
    let acpi_config = AcpiConfig {
        num_cpus: vcpus,
        ps2: ps2_input,
    };
    match boot {
        BootSource::Linux { .. } => {
            write_acpi_tables(memory, &acpi_config)?;
            write_smbios_tables(memory, smbios_identity)?;
            Ok(None)
        }
        BootSource::Firmware { .. } => {
            let device = Arc::new(Mutex::new(firmware_config(
                memory,
                memory_size,
                vcpus,
                &acpi_config,
                smbios_identity,
            )?));
            pio.insert(u64::from(FW_CFG_PORT_BASE), FW_CFG_PORT_LEN, device.clone())?;
            Ok(Some(device))
        }
    }
}

/// Step 6: the kernel (and initrd) or the firmware into guest memory; returns where vCPU 0
/// starts.
fn load_guest(
    boot: &BootSource,
    memory: &GuestMemoryMmap,
    memory_size: u64,
    firmware: Option<&FirmwareImage>,
    pam: bool,
) -> Result<BootEntry, MachineError> {
    match boot {
        BootSource::Linux {
            kernel,
            initrd,
            command_line,
        } => Ok(BootEntry::Linux(
            load_linux(memory, memory_size, kernel, initrd.as_deref(), command_line, true)?.entry,
        )),
        BootSource::Firmware { .. } => {
            if let Some(image) = firmware {
                load_firmware(memory, image)?;
                if !pam {
                    mirror_isa_bios(memory, image)?;
                }
            }
            Ok(BootEntry::ResetVector)
        }
    }
}

/// Step 7: the vCPUs with their CPUID (from `supported`, what KVM can give), boot MSRs and LAPIC
/// LINTs; vCPU 0 gets the entry state (none for a machine built to be restored).
fn create_vcpus(
    kvm: &Kvm,
    vm: &Vm,
    vcpus: u8,
    memory: &GuestMemoryMmap,
    entry: Option<BootEntry>,
    mut supported: Vec<CpuidEntry>,
    pio: &Bus,
) -> Result<Vec<Vcpu>, MachineError> {
    if kvm.tsc_deadline_timer() {
        crate::cpuid::offer_tsc_deadline_timer(&mut supported);
    }
    let mut created = Vec::with_capacity(usize::from(vcpus));
    for index in 0..u32::from(vcpus) {
        let mut vcpu = vm.create_vcpu(u64::from(index))?;
        let ports = pio.clone();
        vcpu.set_coalesced_sink(Box::new(move |port, data| {
            ports.write_coalesced(u64::from(port), data);
        }));
        vcpu.set_cpuid(&vcpu_cpuid(&supported, index, u32::from(vcpus)))?;
        vcpu.set_boot_msrs()?;
        vcpu.configure_lapic_lints()?;
        if let (0, Some(entry)) = (index, entry) {
            configure_boot_vcpu(&vcpu, memory, entry)?;
        }
        created.push(vcpu);
    }
    Ok(created)
}

/// What SeaBIOS reads from fw_cfg: RAM and its map, the CPU count it waits for, the ACPI tables
/// through the table loader, the SMBIOS tables (it places them and adds its own type 0), its
/// serial console on COM1, no boot menu, and no wait after "No bootable device" (it resets at
/// once, which ends the run as a guest reset).
pub(crate) fn firmware_config(
    memory: &GuestMemoryMmap,
    memory_size: u64,
    vcpus: u8,
    acpi: &AcpiConfig,
    identity: &SmbiosIdentity,
) -> Result<FwCfg, MachineError> {
    let mut fw_cfg = FwCfg::new(memory.clone())
        .with_ram_size(memory_size)?
        .with_cpus(u16::from(vcpus), u16::from(vcpus))?
        .with_e820(&firmware_e820_map(memory_size))?
        .with_acpi(&build_tables(acpi)?)?
        .with_boot_menu(false)?
        .with_boot_fail_wait_ms(0)?;
    fw_cfg.add_file("etc/sercon-port", ports::COM1.to_le_bytes().to_vec())?;
    let smbios = SmbiosTables::build(identity, BiosInformation::FromFirmware, 0)?;
    fw_cfg.add_file(FW_CFG_ANCHOR_FILE, smbios.entry_point().to_vec())?;
    fw_cfg.add_file(FW_CFG_TABLES_FILE, smbios.structures().to_vec())?;
    // QEMU's UUID item, in text order, for firmware that reads it rather than SMBIOS.
    fw_cfg.add_item(fw_cfg_keys::UUID, identity.uuid.to_vec())?;
    Ok(fw_cfg)
}
