//! Running a named VM in this process (`virtkit run NAME`, and the detached `virtkit
//! vm-process NAME`): the VM manager's `PreparedVm`/`RunningVm` do the work; this adds the
//! terminal (raw mode, Ctrl-A x, signals), the messages and the exit code.

use std::sync::mpsc::channel;
use std::time::Duration;

use virtkit::StopReason;
use virtkit_manager::bundle::BundleError;
use virtkit_manager::vm_process::{PreparedVm, VmConsole, VmProcessError, VmProcessOptions};
use virtkit_manager::VirtkitHome;

use crate::commands::vms::{already_running, bundle_error};
use crate::exit::{exit_code_for, CliError};
use crate::terminal::{forward_stdin_with_escape, stdin_is_terminal, RawMode};
use crate::vm_events::Events;

/// Where the VM's console goes besides the log and the console socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `virtkit run NAME`: the console on this terminal; Ctrl-A x stops the VM.
    Foreground,
    /// The detached process `virtkit run NAME --detach` starts: no terminal.
    Detached,
}

/// Which of the guest's consoles the VM's console (terminal, `console.log`, `console.sock`) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConsoleChoice {
    /// The serial port COM1 (`ttyS0` in Linux).
    #[default]
    Serial,
    /// The virtio console's first port (`hvc0`); COM1 then goes to `serial.log`.
    Hvc,
}

impl ConsoleChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleChoice::Serial => "serial",
            ConsoleChoice::Hvc => "hvc",
        }
    }
}

impl From<ConsoleChoice> for VmConsole {
    fn from(choice: ConsoleChoice) -> VmConsole {
        match choice {
            ConsoleChoice::Serial => VmConsole::Serial,
            ConsoleChoice::Hvc => VmConsole::Hvc,
        }
    }
}

fn vm_process_error(name: &str, e: VmProcessError) -> CliError {
    match e {
        VmProcessError::Bundle(BundleError::Running { pid, .. }) => already_running(name, pid),
        VmProcessError::Bundle(e) => bundle_error(&e),
        VmProcessError::Admission(e) => CliError::new(e.to_string()),
        // The validation error says it all; its causes are the issues it lists.
        e @ VmProcessError::Invalid { .. } => CliError::new(e.to_string()),
        e => CliError::from_error(&e),
    }
}

/// What `virtkit run NAME` was told, for this process or the detached one.
#[derive(Debug, Clone)]
pub struct RunChoices {
    pub console: ConsoleChoice,
    pub seccomp: Option<virtkit_sandbox::SeccompAction>,
    /// Start even if the host cannot give the VM its memory.
    pub force: bool,
    /// Discard a suspended VM's saved state and boot anew (`run --fresh`).
    pub fresh: bool,
    /// Print the exit statistics when the VM stops (`run --stats`).
    pub stats: Option<crate::commands::vms::Format>,
    /// Shared directories for this run only, besides the VM's own (`run NAME --share`).
    pub shares: Vec<virtkit::DirectorySharingDeviceConfiguration>,
    /// A display for this run only (`run NAME --display`).
    pub display: Option<virtkit::GraphicsDeviceConfiguration>,
}

/// Runs the VM `name` in this process until it stops; returns the exit code.
pub fn run(home: &VirtkitHome, name: &str, mode: Mode, choices: RunChoices) -> Result<u8, CliError> {
    let RunChoices {
        console,
        seccomp,
        force,
        fresh,
        stats,
        shares,
        display,
    } = choices;
    let interactive = mode == Mode::Foreground && stdin_is_terminal();
    if let Some(policy) = seccomp {
        // Before this process's first filtered thread (the terminal's reader).
        virtkit_sandbox::set_policy(Some(policy));
    }
    let mut options = VmProcessOptions {
        console: console.into(),
        seccomp,
        force,
        fresh,
        extra_shares: shares,
        display,
        ..VmProcessOptions::default()
    };
    let events = Events::new();
    if mode == Mode::Foreground {
        options.echo = Some(Box::new(std::io::stdout()));
        if interactive {
            let (quit_tx, quit_rx) = channel();
            let input = forward_stdin_with_escape(quit_tx)
                .map_err(|e| CliError::with_chain("cannot read the terminal", &e))?;
            options.input = Some(Box::new(std::fs::File::from(input)));
            events.forward_quit(quit_rx);
        } else {
            options.input = Some(Box::new(std::io::stdin()));
        }
    }

    let prepared = PreparedVm::open(home, name, options).map_err(|e| vm_process_error(name, e))?;
    let forwarding = events.catch(prepared.vm())?;

    let mut raw_mode = None;
    if interactive {
        raw_mode = Some(
            RawMode::enter().map_err(|e| CliError::with_chain("cannot put the terminal in raw mode", &e))?,
        );
        err!("virtkit: `{name}` console attached; Ctrl-A x stops the VM\r\n");
    }
    let running = prepared.start().map_err(|e| {
        drop(raw_mode.take());
        vm_process_error(name, e)
    })?;
    if let Err(e) = forwarding.start() {
        // The guest runs: stop it, and let `wait` clean the bundle up (sockets, PID file, lock).
        let _ = running.vm().stop();
        running.wait();
        drop(raw_mode);
        return Err(e);
    }

    if interactive {
        crate::vm_events::resize_consoles(running.vm());
    }
    // A detached VM has no terminal that could hang up.
    events.drive(running.vm(), mode == Mode::Foreground, interactive);
    let vm = running.vm().clone();
    let reason = running.wait();
    drop(raw_mode);
    if let Some(format) = stats {
        crate::commands::run::print_exit_statistics(&vm, format);
    }
    drop(vm);
    match (&reason, mode) {
        (StopReason::GuestPoweredOff, _) => {}
        (StopReason::StoppedByHost, Mode::Foreground) => errln!("virtkit: stopped"),
        (other, _) => errln!("virtkit: {name}: {other}"),
    }
    Ok(exit_code_for(&reason))
}

/// How long `run --detach` waits for the VM process to report the VM running.
pub const DETACH_START_TIMEOUT: Duration = Duration::from_secs(30);
