//! The process that runs one VM from its bundle — the counterpart of the per-VM service process
//! of Apple's framework. It holds the bundle's lock for its whole life (so a second run is
//! refused, and a crash releases it), records its PID, serves `control.sock` and
//! `console.sock`, keeps `console.log`, and ends when the VM stops.
//!
//! [`PreparedVm::open`] does everything up to a built `VirtualMachine`; [`PreparedVm::start`]
//! starts it and serves the sockets; [`RunningVm::wait`] waits for the stop and cleans up. A
//! front end (the CLI) puts its terminal handling between the steps.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtkit::{
    ConsoleDeviceConfiguration, ConsolePortConfiguration, ConsoleServer, ConsoleServerOptions, OutputPump,
    SerialAttachment, SerialPortConfiguration, StartError, StopReason, ValidationError, VirtualMachine,
    VirtualMachineConfiguration, VmState,
};

use crate::bundle::{
    Access, Bundle, BundleError, BundleLock, HardwareModel, CONSOLE_LOG_FILE, CONSOLE_SOCKET, CONTROL_SOCKET,
    PID_FILE, SERIAL_LOG_FILE, STATE_FILE, VNC_SOCKET, VNC_TCP_FILE,
};
use crate::home::VirtkitHome;

/// Where the guest agent's hello arrives (the guest's connections to the host's vsock port 1025).
const AGENT_HELLO_SOCKET: &str = "vsock.sock_1025";

/// How long the VM process waits for the machine to end once it is stopping before it ends
/// itself: a vCPU blocked in the host (a write to a full pipe, a disk that does not answer)
/// never leaves `KVM_RUN` for the kick, and a stop must end the VM all the same.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a VM process that was suspended waits for the suspend's answer to reach its client.
const FINAL_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// How often `wait` looks whether a stop is taking too long.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Which of the guest's consoles the VM's console (`console.log`, `console.sock`, the front
/// end's terminal) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmConsole {
    /// The serial port COM1 (`ttyS0` in Linux).
    #[default]
    Serial,
    /// The virtio console's first port (`hvc0`); COM1 then goes to `serial.log`.
    Hvc,
}

/// How to run a bundle's VM.
#[derive(Default)]
pub struct VmProcessOptions {
    pub console: VmConsole,
    /// Also gets the console output (a terminal, in the foreground).
    pub echo: Option<Box<dyn Write + Send>>,
    /// Console input besides `console.sock`'s clients (a terminal, in the foreground).
    pub input: Option<Box<dyn Read + Send>>,
    /// The seccomp policy for this run, over the bundle's (`platform.seccomp`).
    pub seccomp: Option<virtkit_sandbox::SeccompAction>,
    /// Start even if the host cannot give the VM its memory ([`crate::admission`]).
    pub force: bool,
    /// Shared directories for this run only, besides the bundle's (`run NAME --share`): given
    /// by the user now, so not subject to the bundle's record of paths outside it.
    pub extra_shares: Vec<virtkit::DirectorySharingDeviceConfiguration>,
    /// Discard a suspended VM's saved state (`state.vksave`) and boot anew (`run --fresh`).
    pub fresh: bool,
    /// A display for this run only, besides the bundle's (`run NAME --display`).
    pub display: Option<virtkit::GraphicsDeviceConfiguration>,
}

/// Why a bundle's VM could not be run.
#[derive(Debug, thiserror::Error)]
pub enum VmProcessError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Admission(#[from] crate::admission::AdmissionError),
    #[error("cannot make the console pipe")]
    Pipe(#[source] std::io::Error),
    #[error("cannot write {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the console")]
    Console(#[source] std::io::Error),
    #[error("the VM `{name}` cannot run: {source}")]
    Invalid {
        name: String,
        #[source]
        source: ValidationError,
    },
    #[error("cannot start the VM `{name}`")]
    Start {
        name: String,
        #[source]
        source: StartError,
    },
    #[error("cannot resume the suspended VM `{name}` from its saved state (kept in {}); `virtkit run {name} --fresh` discards it and boots the VM anew", path.display())]
    Restore {
        name: String,
        path: PathBuf,
        #[source]
        source: Box<virtkit::MachineStateError>,
    },
    #[error("cannot discard the saved state {}", path.display())]
    Discard {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Seed(#[from] crate::seed::SeedError),
    #[error("cannot open the VM's sockets in {}", path.display())]
    Sockets {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Puts the console hub's pipe ends on COM1 or on an hvc console port.
fn attach_console(
    config: &mut VirtualMachineConfiguration,
    bundle: &Bundle,
    choice: VmConsole,
    hub_end: SerialAttachment,
) -> Result<(), BundleError> {
    config.serial_ports.clear();
    match choice {
        VmConsole::Serial => config
            .serial_ports
            .push(SerialPortConfiguration { attachment: hub_end }),
        VmConsole::Hvc => {
            // Opened here, as a bundle file (no links, owner-only), not by path in the VMM.
            let serial_log = bundle.open_file(SERIAL_LOG_FILE, Access::Replace)?;
            config.serial_ports.push(SerialPortConfiguration {
                attachment: SerialAttachment::FileHandles {
                    read: None,
                    write: Some(serial_log.into()),
                },
            });
            if config.console_devices.is_empty() {
                config.console_devices.push(ConsoleDeviceConfiguration::default());
            }
            config.console_devices[0]
                .ports
                .insert(0, ConsolePortConfiguration::console(Some(hub_end)));
        }
    }
    Ok(())
}

/// A bundle's VM, locked and built, not started yet.
pub struct PreparedVm {
    bundle: Bundle,
    lock: BundleLock,
    vm: VirtualMachine,
    console: ConsoleServer,
    pump: OutputPump,
    fresh: bool,
}

/// A bundle's VM that runs, with its sockets served.
pub struct RunningVm {
    bundle: Bundle,
    lock: BundleLock,
    vm: Arc<VirtualMachine>,
    console: ConsoleServer,
    pump: OutputPump,
    /// A suspend's answer, which the process sends before it ends.
    final_answer: Option<Arc<crate::suspend::FinalAnswer>>,
    /// The display's VNC server on `vnc.sock`, if the VM has a display.
    vnc: Option<virtkit_vnc::VncServer>,
}

impl PreparedVm {
    /// Opens the VM `name`, takes its bundle's lock (refused with [`BundleError::Running`] if a
    /// process holds it), writes the PID, builds the runtime configuration with the console on
    /// the console hub, starts the hub (output to `console.log` and `options.echo`) and builds
    /// the `VirtualMachine`.
    pub fn open(
        home: &VirtkitHome,
        name: &str,
        options: VmProcessOptions,
    ) -> Result<PreparedVm, VmProcessError> {
        let bundle = Bundle::open(home, name)?;
        let lock = bundle.lock()?;
        // Under the lock: two VMs starting at once each count the other as running.
        if !options.force {
            crate::admission::admit_on_this_host(home, Some(name), bundle.configuration().memory_size)?;
        }
        bundle.write_pid(&lock)?;
        // A clone (new machine id: a new cloud-init instance) or a renamed VM gets its seed
        // rewritten before the guest reads it; so does one made before the agent was at hand.
        if let Some(mut seed) = crate::seed::SeedSettings::load(bundle.path())? {
            let agent = crate::seed::find_agent();
            if seed.refresh(
                bundle.path(),
                name,
                &bundle.machine_identifier().to_string(),
                agent.as_deref(),
            )? {
                tracing::info!("rewrote the cloud-init seed for this machine");
            }
        }

        let missing = bundle.hardware_model().missing_on(&HardwareModel::of_this_host());
        if !missing.is_empty() {
            tracing::warn!(
                features = %missing.join(" "),
                "this host's CPU lacks features the VM was created with; a guest that uses them may fail"
            );
        }

        let (guest_in_read, guest_in_write) = std::io::pipe().map_err(VmProcessError::Pipe)?;
        let (guest_out_read, guest_out_write) = std::io::pipe().map_err(VmProcessError::Pipe)?;
        let mut config = bundle.runtime_configuration()?;
        config.directory_sharing_devices.extend(options.extra_shares);
        if let Some(display) = options.display {
            config.add_display(display);
        } else if !options.fresh && config.graphics_devices.is_empty() {
            // A suspended run's display given for that run only comes back with it: its saved
            // state holds the display, and a restore needs the same devices.
            let state_file = bundle.file(STATE_FILE);
            if state_file.exists() {
                match virtkit::saved_graphics_devices(&state_file) {
                    Ok(displays) => displays.into_iter().for_each(|d| config.add_display(d)),
                    // The restore itself says what is wrong with the file.
                    Err(e) => tracing::debug!("cannot read the displays of the saved state: {e}"),
                }
            }
        }
        // Before the console's threads start: they get their filters under this policy.
        config.platform.seccomp = options.seccomp.or(config.platform.seccomp);
        virtkit_sandbox::set_policy(config.platform.seccomp);
        attach_console(
            &mut config,
            &bundle,
            options.console,
            SerialAttachment::FileHandles {
                read: Some(guest_in_read.into()),
                write: Some(guest_out_write.into()),
            },
        )?;

        let log = bundle.open_file(CONSOLE_LOG_FILE, Access::Replace)?;
        // passt appends to its log; each run starts it anew, as console.log is, so it stays
        // as small as one run's warnings.
        for (i, card) in config.network_devices.iter().enumerate() {
            if matches!(card.attachment, virtkit::NetworkAttachment::Nat { .. }) {
                drop(bundle.open_file(&virtkit::passt_log_name(i), Access::Replace)?);
            }
        }
        let console = ConsoleServer::new(
            ConsoleServerOptions {
                log: Some(log),
                echo: options.echo,
                ..ConsoleServerOptions::many_clients("console-sock")
            },
            guest_in_write,
        )
        .map_err(VmProcessError::Console)?;
        let pump = console
            .pump(guest_out_read.into())
            .map_err(VmProcessError::Console)?;
        if let Some(input) = options.input {
            console.feed_from(input).map_err(VmProcessError::Console)?;
        }

        let vm = VirtualMachine::new(config).map_err(|source| VmProcessError::Invalid {
            name: name.to_owned(),
            source,
        })?;
        Ok(PreparedVm {
            bundle,
            lock,
            vm,
            console,
            pump,
            fresh: options.fresh,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The VM, to watch its state before it starts.
    pub fn vm(&self) -> &VirtualMachine {
        &self.vm
    }

    /// Whether this run resumes a suspended VM (its `state.vksave` is there and `fresh` was
    /// not asked).
    pub fn resumes_suspended(&self) -> bool {
        !self.fresh && self.bundle.file(STATE_FILE).exists()
    }

    /// Starts the VM (or, when it was suspended, restores it paused from `state.vksave`) and
    /// serves `control.sock` and `console.sock`; a restored VM then runs on, and only then is
    /// its state file removed, so a restore that fails loses nothing.
    pub fn start(self) -> Result<RunningVm, VmProcessError> {
        let resumes = self.resumes_suspended();
        let PreparedVm {
            bundle,
            lock,
            mut vm,
            mut console,
            pump,
            fresh,
        } = self;
        let name = bundle.name().to_owned();
        let state_file = bundle.file(STATE_FILE);
        if fresh {
            discard_state(&state_file).inspect_err(|_| {
                let _ = std::fs::remove_file(bundle.file(PID_FILE));
            })?;
        }
        let started = if resumes {
            vm.restore_machine_state(&state_file)
                .map_err(|source| VmProcessError::Restore {
                    name: name.clone(),
                    path: state_file.clone(),
                    source: Box::new(source),
                })
        } else {
            vm.start().map_err(|source| VmProcessError::Start {
                name: name.clone(),
                source,
            })
        };
        if let Err(e) = started {
            let _ = std::fs::remove_file(bundle.file(PID_FILE));
            return Err(e);
        }
        let vm = Arc::new(vm);
        // The agent's hello may come as soon as the guest runs; a VM without a vsock device
        // simply never gets one.
        let shares = bundle
            .configuration()
            .directory_sharing_devices
            .iter()
            .map(|s| s.tag.clone())
            .collect();
        let agent = match crate::agent::AgentHost::start(bundle.path(), shares) {
            Ok(agent) => Some(agent),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for the guest agent's hello");
                None
            }
        };
        // The console's socket first: `run --detach` returns once the control socket answers,
        // and a console client that comes right then must find its socket (CI once saw
        // `console.sock` missing just after a detached run had returned).
        let served = console.listen(&bundle.file(CONSOLE_SOCKET)).and_then(|()| {
            crate::control::serve(
                &bundle.file(CONTROL_SOCKET),
                vm.clone(),
                agent.clone(),
                state_file.clone(),
                crate::running_snapshot::SnapshotTarget {
                    vm_name: name.clone(),
                    bundle_dir: bundle.path().to_owned(),
                },
            )
        });
        let (final_answer, served) = match served {
            Ok(answer) => (Some(answer), Ok(())),
            Err(e) => (None, Err(e)),
        };
        let vnc = match serve_vnc(&bundle, &vm) {
            Ok(vnc) => vnc,
            Err(e) => {
                tracing::warn!("cannot serve the display over VNC on {VNC_SOCKET}: {e}");
                None
            }
        };
        let running = RunningVm {
            bundle,
            lock,
            vm,
            console,
            pump,
            final_answer,
            vnc,
        };
        if let Err(source) = served {
            let _ = running.vm.stop();
            let path = running.bundle.path().to_owned();
            running.wait();
            return Err(VmProcessError::Sockets { path, source });
        }
        if resumes {
            if let Err(source) = running.vm.resume() {
                let _ = running.vm.stop();
                running.wait();
                return Err(VmProcessError::Restore {
                    name,
                    path: state_file,
                    source: Box::new(virtkit::MachineStateError::Resume(source)),
                });
            }
            // It runs again: the saved state has served (a second run must boot, not go back
            // to it); the guest's clock lags by the time it was suspended, which the agent sets.
            if let Err(e) = discard_state(&state_file) {
                tracing::warn!("{}", crate::suspend::error_chain(&e));
            }
            if let Some(agent) = &agent {
                agent.set_time_after_restore();
            }
            tracing::info!(vm = name, "resumed from its saved state");
        }
        tracing::info!(vm = name, pid = std::process::id(), "running");
        Ok(running)
    }
}

/// Eight random letters and digits: VNC authentication uses at most eight characters.
fn vnc_password() -> std::io::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

/// Removes the sockets and the PID file a VM process leaves in its bundle while it runs.
fn remove_process_files(bundle: &Bundle) {
    for file in [
        CONTROL_SOCKET,
        CONSOLE_SOCKET,
        VNC_SOCKET,
        VNC_TCP_FILE,
        PID_FILE,
        AGENT_HELLO_SOCKET,
    ] {
        let _ = std::fs::remove_file(bundle.file(file));
    }
}

/// Serves the VM's display (if it has one) over VNC on the bundle's `vnc.sock`: owner-only, so
/// no password (the file's mode is the access control, as for `console.sock`); and on
/// 127.0.0.1 (any free port) with VNC authentication and a password made for this run, both
/// written to the owner-only `vnc.json` for `virtkit vnc`.
fn serve_vnc(bundle: &Bundle, vm: &VirtualMachine) -> std::io::Result<Option<virtkit_vnc::VncServer>> {
    let Some((display, width, height)) = vm.display() else {
        return Ok(None);
    };
    let path = bundle.file(VNC_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = virtkit::unix_socket::bind_owner_only(&path)?;
    let input = crate::vnc_input::VmInput::new(vm.keyboard(), vm.mouse()).with_virtio(
        vm.virtio_keyboard(),
        vm.tablet(),
        Some((display.clone(), u32::from(width), u32::from(height))),
    );
    let server = virtkit_vnc::VncServer::with_spawner(
        crate::vnc_display::DisplayFramebuffer::new(display, u32::from(width), u32::from(height)),
        Arc::new(input),
        format!("virtkit {}", bundle.name()),
        Arc::new(sandboxed_vnc_thread),
    );
    server
        .serve_unix(listener, virtkit_vnc::Security::None)
        .map_err(std::io::Error::other)?;
    let tcp = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let address = tcp.local_addr()?;
    let password = vnc_password()?;
    server
        .serve_tcp(tcp, virtkit_vnc::Security::Password(password.clone()))
        .map_err(std::io::Error::other)?;
    let record = serde_json::json!({ "address": address.to_string(), "password": password });
    let mut file = bundle
        .open_file(VNC_TCP_FILE, Access::Replace)
        .map_err(std::io::Error::other)?;
    file.write_all(record.to_string().as_bytes())?;
    tracing::info!(path = %path.display(), %address, "the display is served over VNC");
    Ok(Some(server))
}

/// The VNC server's threads, each under its seccomp filter (docs/SECURITY.md): they parse what
/// any local client sends.
fn sandboxed_vnc_thread(
    name: &'static str,
    body: Box<dyn FnOnce() + Send>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let role = match name {
        "vnc-accept" => virtkit_sandbox::ThreadRole::VncAccept,
        _ => virtkit_sandbox::ThreadRole::VncClient,
    };
    virtkit_sandbox::Builder::new(role).name(name.into()).spawn(body)
}

/// Removes a saved state file (absent is fine) and syncs its directory, so the removal
/// survives a crash.
fn discard_state(path: &std::path::Path) -> Result<(), VmProcessError> {
    let discard = |source| VmProcessError::Discard {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(discard(e)),
    }
    if let Some(directory) = path.parent() {
        std::fs::File::open(directory)
            .and_then(|d| d.sync_all())
            .map_err(discard)?;
    }
    tracing::info!(path = %path.display(), "discarded the saved state");
    Ok(())
}

impl RunningVm {
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn vm(&self) -> &Arc<VirtualMachine> {
        &self.vm
    }

    /// Waits for the VM to stop; then writes out the last console output, removes the sockets
    /// and the PID file, and releases the bundle's lock. If the machine is still stopping
    /// [`STOP_GRACE`] after a stop, it gives up on the vCPUs that do not answer (see
    /// [`RunningVm::abandon`]); the caller then ends the process, which ends them.
    pub fn wait(mut self) -> StopReason {
        let mut stopping_since: Option<Instant> = None;
        let reason = loop {
            if let Some(reason) = self.vm.wait_timeout(STOP_CHECK_INTERVAL) {
                break reason;
            }
            if self.vm.state() == VmState::Stopping {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STOP_GRACE {
                    return self.abandon();
                }
            }
        };
        if let Some(answer) = &self.final_answer {
            answer.wait_sent(FINAL_ANSWER_WAIT);
        }
        self.pump.finish();
        drop(self.console);
        if let Some(vnc) = self.vnc.take() {
            vnc.shutdown();
        }
        remove_process_files(&self.bundle);
        tracing::info!(vm = self.bundle.name(), reason = %reason, "stopped");
        drop(self.lock);
        reason
    }

    /// The end of a stop the vCPUs did not answer: removes the sockets and the PID file like a
    /// clean end, but neither joins the machine's threads nor waits for the console's last
    /// output (both wait on the stuck vCPU). The process must end right after; its exit ends
    /// the stuck threads.
    fn abandon(self) -> StopReason {
        let reason = StopReason::HostError {
            message: format!(
                "the machine did not end within {} s of the stop: a vCPU does not answer (it is blocked in \
                 the host); the VM process ends without waiting for it",
                STOP_GRACE.as_secs()
            ),
        };
        tracing::error!(vm = self.bundle.name(), "{reason}");
        remove_process_files(&self.bundle);
        let RunningVm {
            lock,
            vm,
            console,
            pump,
            ..
        } = self;
        // Dropping these would join threads that wait on the stuck vCPU.
        std::mem::forget(vm);
        std::mem::forget(console);
        std::mem::forget(pump);
        drop(lock);
        reason
    }
}
