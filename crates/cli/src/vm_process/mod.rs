//! The process that runs one VM from its bundle — the counterpart of the per-VM service process
//! of Apple's framework. It holds the bundle's lock for its whole life (so a second `run` is
//! refused, and a crash releases it), records its PID, serves `control.sock` and
//! `console.sock`, keeps `console.log`, and ends when the VM stops.

mod console;
mod control;

use std::fs::OpenOptions;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use virtkit::bundle::{Bundle, HardwareModel, CONSOLE_LOG_FILE, CONSOLE_SOCKET, CONTROL_SOCKET, PID_FILE};
use virtkit::{SerialAttachment, StopReason, VirtkitHome, VirtualMachine};

use crate::commands::vms::already_running;
use crate::exit::{exit_code_for, CliError};
use crate::terminal::{forward_stdin_with_escape, stdin_is_terminal, RawMode};
use crate::vm_events::Events;
use console::ConsoleHub;

/// Where the VM's console goes besides the log and the console socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `virtkit run NAME`: the console on this terminal; Ctrl-A x stops the VM.
    Foreground,
    /// The detached process `virtkit run NAME --detach` starts: no terminal.
    Detached,
}

fn bundle_error(e: virtkit::bundle::BundleError) -> CliError {
    CliError::from_error(&e)
}

/// Runs the VM `name` in this process until it stops; returns the exit code.
pub fn run(
    home: &VirtkitHome,
    name: &str,
    mode: Mode,
    seccomp: Option<virtkit_sandbox::SeccompAction>,
) -> Result<u8, CliError> {
    let bundle = Bundle::open(home, name).map_err(bundle_error)?;
    let lock = bundle.lock().map_err(|e| match e {
        virtkit::bundle::BundleError::Running { pid, .. } => already_running(name, pid),
        other => bundle_error(other),
    })?;
    bundle.write_pid(&lock).map_err(bundle_error)?;

    let missing = bundle.hardware_model().missing_on(&HardwareModel::of_this_host());
    if !missing.is_empty() {
        tracing::warn!(
            features = %missing.join(" "),
            "this host's CPU lacks features the VM was created with; a guest that uses them may fail"
        );
    }

    let (guest_in_read, guest_in_write) =
        std::io::pipe().map_err(|e| CliError::with_chain("cannot make the console pipe", &e))?;
    let (guest_out_read, guest_out_write) =
        std::io::pipe().map_err(|e| CliError::with_chain("cannot make the console pipe", &e))?;
    let mut config = bundle.runtime_configuration();
    config.platform.seccomp = seccomp.or(config.platform.seccomp);
    virtkit_sandbox::set_policy(config.platform.seccomp);
    config.serial_ports.clear();
    config = config.with_serial(SerialAttachment::FileHandles {
        read: Some(guest_in_read.into()),
        write: Some(guest_out_write.into()),
    });

    let log_path = bundle.file(CONSOLE_LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log_path)
        .map_err(|e| CliError::with_chain(format!("cannot write {}", log_path.display()), &e))?;
    let interactive = mode == Mode::Foreground && stdin_is_terminal();
    let echo: Option<Box<dyn std::io::Write + Send>> = match mode {
        Mode::Foreground => Some(Box::new(std::io::stdout())),
        Mode::Detached => None,
    };
    let (hub, pump) = ConsoleHub::start(guest_out_read.into(), guest_in_write.into(), log, echo)
        .map_err(|e| CliError::with_chain("cannot start the console", &e))?;

    let events = Events::new();
    if mode == Mode::Foreground {
        if interactive {
            let (quit_tx, quit_rx) = channel();
            let input = forward_stdin_with_escape(quit_tx)
                .map_err(|e| CliError::with_chain("cannot read the terminal", &e))?;
            hub.feed_from(std::fs::File::from(input))
                .map_err(|e| CliError::with_chain("cannot start the console", &e))?;
            events.forward_quit(quit_rx);
        } else {
            hub.feed_from(std::io::stdin())
                .map_err(|e| CliError::with_chain("cannot start the console", &e))?;
        }
    }

    let mut vm =
        VirtualMachine::new(config).map_err(|e| CliError::new(format!("the VM `{name}` cannot run: {e}")))?;
    events.forward_signals()?;
    events.forward_states(&vm);

    let mut raw_mode = None;
    if interactive {
        raw_mode = Some(
            RawMode::enter().map_err(|e| CliError::with_chain("cannot put the terminal in raw mode", &e))?,
        );
        eprint!("virtkit: `{name}` console attached; Ctrl-A x stops the VM\r\n");
    }
    vm.start().map_err(|e| {
        drop(raw_mode.take());
        CliError::with_chain(format!("cannot start the VM `{name}`"), &e)
    })?;
    let vm = Arc::new(vm);
    let control_path = bundle.file(CONTROL_SOCKET);
    let console_path = bundle.file(CONSOLE_SOCKET);
    let served = control::serve(&control_path, vm.clone()).and_then(|_| hub.serve(&console_path));
    if let Err(e) = served {
        let _ = vm.stop();
        vm.wait();
        return Err(CliError::with_chain(
            format!("cannot open the VM's sockets in {}", bundle.path().display()),
            &e,
        ));
    }
    tracing::info!(vm = name, pid = std::process::id(), "running");

    // A detached VM has no terminal that could hang up.
    events.drive(&vm, mode == Mode::Foreground, interactive);
    let reason = vm.wait();
    pump.finish();
    drop(raw_mode);
    for file in [CONTROL_SOCKET, CONSOLE_SOCKET, PID_FILE] {
        let _ = std::fs::remove_file(bundle.file(file));
    }
    tracing::info!(vm = name, reason = %reason, "stopped");
    match (&reason, mode) {
        (StopReason::GuestPoweredOff, _) => {}
        (StopReason::StoppedByHost, Mode::Foreground) => eprintln!("virtkit: stopped"),
        (other, _) => eprintln!("virtkit: {name}: {other}"),
    }
    drop(lock);
    Ok(exit_code_for(&reason))
}

/// How long `run --detach` waits for the VM process to report the VM running.
pub const DETACH_START_TIMEOUT: Duration = Duration::from_secs(30);
