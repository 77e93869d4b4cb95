//! A running (or runnable) virtual machine and its lifecycle.

mod machine_state;

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtkit_hypervisor::{HypervisorError, Kvm, KvmFlavor};
use virtkit_machine::{
    BootSource, Machine, MachineConfig, MachineError, MachineHandle, PauseOutcome, SmbiosIdentity,
    SnapshotError,
};

pub use machine_state::{saved_graphics_devices, MachineStateError};

use crate::buffered_output::BufferedOutput;
use crate::config::{BootLoader, VirtualMachineConfiguration};
use crate::console_server::ConsoleServer;
use crate::devices::{DeviceError, DeviceManager, SavedDevices};
use crate::serial::{open_attachment, SerialError};
use crate::state::{StopReason, VmState};
use crate::storage::StorageDeviceConfiguration;
use crate::validate::{error_chain, ValidationError};

/// A lifecycle request that does not fit the machine's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmError {
    #[error("cannot {action} a virtual machine that is {state}")]
    InvalidState { action: &'static str, state: VmState },
    #[error("{message}")]
    Device { message: String },
    /// A vCPU did not answer the pause: it is blocked in the host (a write to a full pipe, a
    /// disk that does not answer). The machine runs on as before.
    #[error(
        "cannot pause: {parked} of {running} vCPUs stopped within {} s and the others are blocked in the host; \
         the virtual machine keeps running, and a stop ends it",
        timeout.as_secs()
    )]
    PauseTimedOut {
        parked: usize,
        running: usize,
        timeout: Duration,
    },
}

/// How long [`VirtualMachine::pause`] waits for every vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a virtual machine did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("cannot use KVM")]
    Kvm(#[from] HypervisorError),
    #[error("cannot build the machine")]
    Machine(#[from] MachineError),
    #[error("cannot attach the serial port")]
    Serial(#[from] SerialError),
    #[error(transparent)]
    State(#[from] VmError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("cannot start the VMM thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Restore(#[from] SnapshotError),
    #[error("the state file changed while it was being restored; restore it again")]
    StateFileChanged,
}

/// What a restore starts from: the state file, the configuration it must have been saved with,
/// and its devices section as checked before the machine was built.
struct RestoreFrom<'a> {
    path: &'a std::path::Path,
    configuration: &'a serde_json::Value,
    devices: &'a SavedDevices,
}

struct Status {
    state: VmState,
    reason: Option<StopReason>,
    observers: Vec<Sender<VmState>>,
}

struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to `state` if the lifecycle allows it from where it is ([`VmState::may_become`]);
    /// returns whether the state is `state` now.
    fn set_state(&self, state: VmState) -> bool {
        let mut s = self.lock();
        let moved = Self::transition(&mut s, state);
        self.changed.notify_all();
        moved
    }

    fn transition(s: &mut Status, state: VmState) -> bool {
        if s.state == state {
            return true;
        }
        if !s.state.may_become(state) {
            // A late pause or resume result after a stop: the stop stands.
            tracing::debug!(from = %s.state, to = %state, "state change refused: the run is ending");
            return false;
        }
        tracing::info!(from = %s.state, to = %state, "virtual machine state");
        s.state = state;
        s.observers.retain(|o| o.send(state).is_ok());
        true
    }
}

/// COM1's host side that lives as long as the machine runs.
struct SerialKeep {
    server: Option<ConsoleServer>,
    buffered: Option<BufferedOutput>,
}

/// How long a stopped machine's serial output may take to reach its sink.
const SERIAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A virtual machine built from a valid configuration.
pub struct VirtualMachine {
    config: VirtualMachineConfiguration,
    shared: Arc<Shared>,
    handle: Option<MachineHandle>,
    devices: Arc<DeviceManager>,
    monitor: Option<JoinHandle<()>>,
}

impl VirtualMachine {
    /// Validates `config` and makes a stopped virtual machine from it.
    pub fn new(config: VirtualMachineConfiguration) -> Result<VirtualMachine, ValidationError> {
        config.validate()?;
        Ok(VirtualMachine {
            config,
            shared: Arc::new(Shared {
                status: Mutex::new(Status {
                    state: VmState::Stopped,
                    reason: None,
                    observers: Vec::new(),
                }),
                changed: Condvar::new(),
            }),
            handle: None,
            devices: Arc::new(DeviceManager::default()),
            monitor: None,
        })
    }

    pub fn configuration(&self) -> &VirtualMachineConfiguration {
        &self.config
    }

    pub fn state(&self) -> VmState {
        self.shared.lock().state
    }

    /// Why the machine last stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.shared.lock().reason.clone()
    }

    /// Every state change from now on, in order.
    pub fn state_changes(&self) -> Receiver<VmState> {
        let (tx, rx) = channel();
        self.shared.lock().observers.push(tx);
        rx
    }

    /// The machine's configuration, and what of COM1's host side must outlive the machine (its
    /// socket server, its output buffer).
    fn machine_config(&mut self) -> Result<(MachineConfig, SerialKeep), StartError> {
        let boot = match &self.config.boot_loader {
            BootLoader::Linux {
                kernel,
                initrd,
                command_line,
            } => BootSource::Linux {
                kernel: kernel.clone(),
                initrd: initrd.clone(),
                command_line: command_line.clone(),
            },
            BootLoader::Firmware { path, variable_store } => BootSource::Firmware {
                path: path.clone(),
                variables: variable_store.clone(),
            },
        };
        let ends = open_attachment(self.config.serial_ports.first_mut().map(|p| &mut p.attachment))?;
        Ok((
            MachineConfig {
                vcpus: self.config.cpu_count as u8,
                memory_size: self.config.memory_size,
                boot,
                serial_output: ends.output,
                serial_input: ends.input,
                smbios_identity: self.config.platform.machine_identifier.map(|id| SmbiosIdentity {
                    uuid: *id.as_bytes(),
                    serial_number: id.serial_number(),
                }),
                // Only a vhost-user backend needs to map guest memory; everyone else keeps
                // anonymous memory.
                shared_memory: crate::devices::needs_shared_memory(&self.config),
                // A display brings the PS/2 keyboard and mouse (devices::graphics).
                ps2_input: !self.config.graphics_devices.is_empty(),
            },
            SerialKeep {
                server: ends.server,
                buffered: ends.buffered,
            },
        ))
    }

    /// Builds the machine and starts its vCPUs. Returns once the guest is running; errors in
    /// building it (a kernel that does not load, KVM refusing) come back here.
    pub fn start(&mut self) -> Result<(), StartError> {
        {
            let mut s = self.shared.lock();
            if !matches!(s.state, VmState::Stopped | VmState::Error) {
                return Err(VmError::InvalidState {
                    action: "start",
                    state: s.state,
                }
                .into());
            }
            s.reason = None;
            Shared::transition(&mut s, VmState::Starting);
        }
        // A previous run's monitor has finished (the state said so); reap it.
        if let Some(t) = self.monitor.take() {
            let _ = t.join();
        }
        self.launch(None)
    }

    /// Builds the machine and starts it: running, or with `restore`, restored from that state
    /// file and paused. On failure the state becomes `Error` with the reason.
    fn launch(&mut self, restore: Option<RestoreFrom<'_>>) -> Result<(), StartError> {
        match self.build_and_start(restore) {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut s = self.shared.lock();
                s.reason = Some(StopReason::HostError {
                    message: error_chain(&e),
                });
                Shared::transition(&mut s, VmState::Error);
                self.shared.changed.notify_all();
                Err(e)
            }
        }
    }

    fn build_and_start(&mut self, restore: Option<RestoreFrom<'_>>) -> Result<(), StartError> {
        self.config.validate()?;
        // A previous run's handle holds its PCI devices (and their disks' locks).
        self.handle = None;
        virtkit_sandbox::set_policy(self.config.platform.seccomp);
        virtkit_sandbox::start_early();
        let kvm = Kvm::open()?;
        // The flavour alone: `info()` would ask KVM's limits again, which validation just did.
        let pvm_host = KvmFlavor::detect() == KvmFlavor::Pvm;
        let (machine_config, serial) = self.machine_config()?;
        // A restore replaces guest memory and the vCPUs' registers: the guest image is not
        // loaded first.
        let mut machine = if restore.is_some() {
            Machine::new_for_restore(&kvm, machine_config)?
        } else {
            Machine::new(&kvm, machine_config)?
        };
        let devices = Arc::new(DeviceManager::attach_all(&machine, &mut self.config)?);
        self.devices = devices.clone();
        if let Some(from) = &restore {
            // The devices take their state first (checked, nothing outside them changes), then
            // the machine (memory, KVM, platform), then the devices finish on restored memory.
            devices.restore_devices(from.devices)?;
            let section = machine.restore_state(from.path, from.configuration)?;
            if SavedDevices::from_section(&section)? != *from.devices {
                return Err(StartError::StateFileChanged);
            }
            devices.finish_restore(&machine)?;
        }
        machine.start()?;
        let handle = machine.handle();
        self.handle = Some(handle);
        // A restored machine's vCPUs park before their first instruction (as Apple's
        // restoreMachineStateFrom leaves the VM paused): `resume` runs them.
        self.shared.set_state(if restore.is_some() {
            VmState::Paused
        } else {
            VmState::Running
        });
        let shared = self.shared.clone();
        let monitor = virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::Vmm)
            .name("vmm".into())
            .spawn(move || {
                let exit = machine.wait();
                devices.release();
                drop(machine);
                // The guest's last lines reach their terminal, file or pipe before the VM says
                // it stopped (a stuck sink gets a bounded wait).
                let SerialKeep { server, buffered } = serial;
                if let Some(output) = buffered {
                    output.flush_for(SERIAL_FLUSH_TIMEOUT);
                }
                drop(server);
                let reason = StopReason::from_exit(exit, pvm_host);
                tracing::info!(%reason, "virtual machine stopped");
                let mut s = shared.lock();
                let state = if reason.is_clean() {
                    VmState::Stopped
                } else {
                    VmState::Error
                };
                s.reason = Some(reason);
                Shared::transition(&mut s, state);
                shared.changed.notify_all();
            })
            .map_err(StartError::Thread)?;
        self.monitor = Some(monitor);
        Ok(())
    }

    fn running_handle(&self, action: &'static str, allowed: &[VmState]) -> Result<&MachineHandle, VmError> {
        let state = self.state();
        match &self.handle {
            Some(h) if allowed.contains(&state) => Ok(h),
            _ => Err(VmError::InvalidState { action, state }),
        }
    }

    /// Stops running guest code, then puts every device to sleep: requests already in flight
    /// are answered first, and no device does I/O until [`VirtualMachine::resume`]. Gives up
    /// after [`PAUSE_TIMEOUT`] if a vCPU does not answer; a stop that comes meanwhile wins.
    pub fn pause(&self) -> Result<(), VmError> {
        self.pause_within(PAUSE_TIMEOUT)
    }

    /// [`VirtualMachine::pause`], waiting at most `timeout` for the vCPUs.
    pub fn pause_within(&self, timeout: Duration) -> Result<(), VmError> {
        let handle = self.running_handle("pause", &[VmState::Running])?;
        match handle.pause(timeout) {
            PauseOutcome::Paused => {}
            PauseOutcome::Stopping => {
                return Err(VmError::InvalidState {
                    action: "pause",
                    state: self.state(),
                })
            }
            PauseOutcome::TimedOut { parked, running } => {
                return Err(VmError::PauseTimedOut {
                    parked,
                    running,
                    timeout,
                })
            }
        }
        if let Err(e) = self.devices.sleep_all() {
            // Back to running as before: the devices that slept wake, then the vCPUs.
            let _ = self.devices.wake_all();
            handle.resume();
            return Err(VmError::Device {
                message: error_chain(&e),
            });
        }
        if !self.shared.set_state(VmState::Paused) {
            // A stop came while the devices went to sleep; the machine is ending anyway.
            return Err(VmError::InvalidState {
                action: "pause",
                state: self.state(),
            });
        }
        Ok(())
    }

    /// Wakes every device, then runs the paused vCPUs again.
    pub fn resume(&self) -> Result<(), VmError> {
        let handle = self.running_handle("resume", &[VmState::Paused])?;
        if let Err(e) = self.devices.wake_all() {
            return Err(VmError::Device {
                message: error_chain(&e),
            });
        }
        handle.resume();
        if !self.shared.set_state(VmState::Running) {
            return Err(VmError::InvalidState {
                action: "resume",
                state: self.state(),
            });
        }
        Ok(())
    }

    /// The display, if the machine has one and has been built (for a VNC server), with its
    /// configured size.
    pub fn display(&self) -> Option<(virtkit_devices::display::DisplayHandle, u16, u16)> {
        let config = self.config.graphics_devices.first()?;
        Some((self.devices.display()?, config.width, config.height))
    }

    /// The PS/2 mouse that comes with a display, to move it (an absolute pointer's positions).
    pub fn mouse(&self) -> Option<virtkit_machine::devices::MouseHandle> {
        self.devices.mouse()
    }

    /// The virtio keyboard, to send the guest's driver keys (Linux key codes).
    pub fn virtio_keyboard(&self) -> Option<virtkit_devices::input::InputHandle> {
        self.devices.virtio_keyboard()
    }

    /// The virtio tablet, to send the guest's driver pointer positions and buttons.
    pub fn tablet(&self) -> Option<virtkit_devices::input::InputHandle> {
        self.devices.tablet()
    }

    /// The PS/2 keyboard that comes with a display, to send it keys (set-1 scan codes).
    pub fn keyboard(&self) -> Option<virtkit_machine::devices::KeyboardHandle> {
        self.devices.keyboard()
    }

    /// What the display shows now, as RGBA pixels (`Ok(None)`: the guest has set no mode yet,
    /// the screen is dark). An error if the machine has no display or does not run.
    pub fn screenshot(&self) -> Result<Option<virtkit_devices::display::Frame>, VmError> {
        self.running_handle("take a screenshot of", &[VmState::Running, VmState::Paused])?;
        self.devices.screenshot().map_err(|e| VmError::Device {
            message: error_chain(&e),
        })
    }

    /// Closes the file of storage device `index` (in `storage_devices` order) and opens `disk`
    /// in its place, on a paused VM: what the guest sees is unchanged (same size, same device),
    /// only where the bytes live. A snapshot of a running VM uses it to move the disk onto a new
    /// qcow2 layer over the file it had. If `disk` cannot be opened, the device is left with no
    /// file (its requests fail) and the error says why; calling again with a file that opens
    /// puts it back in service.
    pub fn replace_storage_device(
        &self,
        index: usize,
        disk: &StorageDeviceConfiguration,
    ) -> Result<(), VmError> {
        self.running_handle("replace a disk of", &[VmState::Paused])?;
        self.devices
            .replace_disk(index, disk)
            .map_err(|e| VmError::Device {
                message: error_chain(&e),
            })
    }

    /// Asks the guest to give `bytes` of its memory back through the memory balloon (0: give it
    /// all back to the guest). The guest's driver does it in its own time; `balloon` says how
    /// far it got.
    pub fn set_balloon_target(&self, bytes: u64) -> Result<(), VmError> {
        self.running_handle("set the balloon of", &[VmState::Running, VmState::Paused])?;
        self.devices
            .set_balloon_target(bytes, self.config.memory_size)
            .map_err(|e| VmError::Device {
                message: error_chain(&e),
            })
    }

    /// The memory balloon's target, what the guest gave back, and its last statistics.
    pub fn balloon(&self) -> Result<crate::BalloonStatus, VmError> {
        self.running_handle("read the balloon of", &[VmState::Running, VmState::Paused])?;
        self.devices.balloon_status().map_err(|e| VmError::Device {
            message: error_chain(&e),
        })
    }

    /// Each network card's MAC and addresses, as learned from its frames; for NAT, the address
    /// its DHCP server hands out is `expected_ipv4` until the guest shows it uses one.
    pub fn network_addresses(&self) -> Result<Vec<crate::NicAddresses>, VmError> {
        self.running_handle("read the addresses of", &[VmState::Running, VmState::Paused])?;
        Ok(self.devices.network_addresses())
    }

    /// Tells the guest's console drivers the terminal's size.
    pub fn resize_consoles(&self, cols: u16, rows: u16) {
        self.devices.resize_consoles(cols, rows);
    }

    /// The attached devices (`blk0`, `rng0`, ...) with their PCI slots, while it runs.
    pub fn devices(&self) -> Vec<(String, u8)> {
        self.devices.names()
    }

    /// The device manager of the current (or last) run.
    pub fn device_manager(&self) -> &Arc<DeviceManager> {
        &self.devices
    }

    /// The exits that reached the VMM since the machine started, by vCPU and reason and by
    /// device (`None` before the first start). Readable while it runs and after it stopped.
    pub fn exit_statistics(&self) -> Option<crate::ExitStatistics> {
        let handle = self.handle.as_ref()?;
        Some(crate::ExitStatistics::new(handle.exit_stats(), &self.devices()))
    }

    /// Asks the guest to shut down by pressing the ACPI power button. The guest decides; the
    /// machine keeps running until it powers off.
    pub fn request_stop(&self) -> Result<(), VmError> {
        let handle = self.running_handle("request a stop of", &[VmState::Running])?;
        handle.press_power_button();
        Ok(())
    }

    /// Whether the guest listens to the power button yet (its ACPI driver enabled the event).
    pub fn can_request_stop(&self) -> bool {
        self.running_handle("request a stop of", &[VmState::Running])
            .map(|h| h.power_button_enabled())
            .unwrap_or(false)
    }

    /// Stops the machine at once, as pulling the plug would.
    pub fn stop(&self) -> Result<(), VmError> {
        let handle = self.running_handle("stop", &[VmState::Running, VmState::Paused, VmState::Stopping])?;
        self.shared.set_state(VmState::Stopping);
        handle.stop();
        Ok(())
    }

    /// Blocks until the machine has stopped; returns why.
    pub fn wait(&self) -> StopReason {
        let mut s = self.shared.lock();
        loop {
            if matches!(s.state, VmState::Stopped | VmState::Error) {
                if let Some(r) = &s.reason {
                    return r.clone();
                }
            }
            s = self.shared.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like `wait`, giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<StopReason> {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        loop {
            if matches!(s.state, VmState::Stopped | VmState::Error) {
                if let Some(r) = &s.reason {
                    return Some(r.clone());
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            s = self
                .shared
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for VirtualMachine {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.stop();
        }
        if let Some(t) = self.monitor.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(state: VmState) -> Shared {
        Shared {
            status: Mutex::new(Status {
                state,
                reason: None,
                observers: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    /// The order a stuck pause and a stop produce: the stop lands while the pause waits for
    /// the vCPUs; the pause's result comes afterwards and must not turn the VM `paused`.
    #[test]
    fn a_pause_that_finishes_after_a_stop_does_not_overwrite_it() {
        let s = shared(VmState::Running);
        let changes = {
            let (tx, rx) = channel();
            s.lock().observers.push(tx);
            rx
        };
        assert!(s.set_state(VmState::Stopping));
        assert!(!s.set_state(VmState::Paused), "a late pause");
        assert!(!s.set_state(VmState::Running), "a late resume");
        assert_eq!(s.lock().state, VmState::Stopping);
        assert!(s.set_state(VmState::Stopped));
        assert!(!s.set_state(VmState::Paused));
        assert_eq!(s.lock().state, VmState::Stopped);
        let seen: Vec<VmState> = changes.try_iter().collect();
        assert_eq!(
            seen,
            [VmState::Stopping, VmState::Stopped],
            "observers see no paused"
        );
    }

    #[test]
    fn a_pause_timeout_says_the_vm_keeps_running_and_what_ends_it() {
        let e = VmError::PauseTimedOut {
            parked: 1,
            running: 2,
            timeout: PAUSE_TIMEOUT,
        }
        .to_string();
        assert!(e.contains("1 of 2 vCPUs"), "{e}");
        assert!(e.contains("keeps running") && e.contains("stop"), "{e}");
    }
}
