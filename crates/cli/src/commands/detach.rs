//! `virtkit run NAME --detach`: start the VM's own process in the background and return once
//! the VM runs; and `virtkit vm-process NAME`, the hidden command that process runs.

use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Args;
use virtkit_manager::bundle::{Access, CONTROL_SOCKET, STATE_FILE, VMM_LOG_FILE};
use virtkit_manager::{VirtkitHome, HOME_ENV};

use crate::commands::vms::{already_running, home, open, socket_alive, state_of};
use crate::exit::CliError;
use crate::vm_process::{ConsoleChoice, Mode, RunChoices, DETACH_START_TIMEOUT};

#[derive(Args, Debug)]
pub struct VmProcessArgs {
    pub name: String,
    #[arg(long, value_enum, default_value_t)]
    pub console: ConsoleChoice,
    #[arg(long)]
    pub seccomp: Option<virtkit_sandbox::SeccompAction>,
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub fresh: bool,
    /// Shared directories for this run only (absolute paths, from `run NAME --share`).
    #[arg(long = "share", value_parser = virtkit::DirectorySharingDeviceConfiguration::parse_cli)]
    pub shares: Vec<virtkit::DirectorySharingDeviceConfiguration>,
    /// A display for this run only (`run NAME --display WIDTHxHEIGHT`).
    #[arg(long, value_parser = virtkit::GraphicsDeviceConfiguration::parse_cli)]
    pub display: Option<virtkit::GraphicsDeviceConfiguration>,
}

/// The last lines of a log, to explain why a background process ended.
fn tail(path: &std::path::Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f
            .seek(SeekFrom::Start(from))
            .and_then(|_| f.read_to_string(&mut text));
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Whether the state the new VM process reports is the one `run --detach` returns on: not while
/// it builds the machine (`starting`), nor, when it resumes a suspended VM, while the restored
/// machine is still paused: the process serves its sockets before it resumes the machine, and a
/// resume that fails then ends the process, which must be reported as the failure it is.
fn settled(state: &str, resumes: bool) -> bool {
    state != "starting" && !(resumes && state == "paused")
}

pub fn run(home: &VirtkitHome, name: &str, choices: RunChoices, wait: Option<u64>) -> Result<u8, CliError> {
    let b = open(home, name)?;
    if b.is_running() {
        return Err(already_running(name, b.running_pid()));
    }
    let log_path = b.file(VMM_LOG_FILE);
    // Never through a symbolic link a copied-in bundle could hold, never blocking on a FIFO put
    // in its place, and for the owner only.
    let log = b
        .open_file(VMM_LOG_FILE, Access::Append)
        .map_err(|e| crate::commands::vms::bundle_error(&e))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let resumes = !choices.fresh && b.file(STATE_FILE).exists();
    let exe =
        std::env::current_exe().map_err(|e| CliError::with_chain("cannot find the virtkit program", &e))?;
    let mut child = Command::new(exe)
        .arg("vm-process")
        .arg(name)
        .arg("--console")
        .arg(choices.console.as_str())
        .args(choices.seccomp.map(|p| format!("--seccomp={p}")))
        .args(choices.force.then_some("--force"))
        .args(choices.fresh.then_some("--fresh"))
        .args(choices.shares.iter().map(|s| {
            format!(
                "--share={}:{}{}",
                s.path.display(),
                s.tag,
                if s.read_only { ":ro" } else { "" }
            )
        }))
        .args(
            choices
                .display
                .as_ref()
                .map(|d| format!("--display={}x{}", d.width, d.height)),
        )
        .env(HOME_ENV, home.root())
        .env(
            "VIRTKIT_LOG",
            std::env::var("VIRTKIT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| CliError::with_chain("cannot start the VM's process", &e))?;

    let deadline = Instant::now() + DETACH_START_TIMEOUT;
    let control = b.file(CONTROL_SOCKET);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CliError::new(format!(
                "the VM `{name}` did not start ({status}):\n{}",
                tail(&log_path, log_start)
            )));
        }
        if socket_alive(&control) {
            let state = state_of(&b);
            if settled(&state, resumes) {
                if let Some(seconds) = wait {
                    return wait_for_agent(&b, name, seconds);
                }
                outln!(
                    "`{name}`: {state} (process {}); `virtkit console {name}` attaches",
                    child.id()
                );
                return Ok(0);
            }
        }
        if Instant::now() > deadline {
            return Err(CliError::new(format!(
                "the VM `{name}` did not report running within {} s; see `virtkit logs {name} --vmm`",
                DETACH_START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until the VM process reports the guest agent's hello (the agent connects to the
/// host when it starts, so this only asks the local VM process).
fn wait_for_agent(b: &virtkit_manager::bundle::Bundle, name: &str, seconds: u64) -> Result<u8, CliError> {
    let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if !b.is_running() {
            return Err(CliError::new(format!(
                "the VM `{name}` stopped before its guest agent said hello; see `virtkit logs {name}`"
            )));
        }
        if let Ok(r) = crate::commands::vms::ask(b, virtkit_manager::control::ControlCommand::State) {
            if let Some(agent) = r.agent {
                outln!(
                    "`{name}`: running, agent up (virtkit-agent {} on `{}`); `virtkit exec {name} -- CMD` runs commands",
                    agent.version,
                    agent.hostname
                );
                return Ok(0);
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(format!(
                "the guest agent of `{name}` did not say hello within {seconds} s; the VM keeps running: see \
                 `virtkit logs {name}` (is virtkit-agent started in the guest? docs/AGENT.md), or wait longer with \
                 `--wait SECONDS`"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The background process: its own session, so the terminal that started it can close.
pub fn vm_process(args: &VmProcessArgs) -> Result<u8, CliError> {
    if let Err(e) = virtkit_sandbox::close_inherited_descriptors() {
        tracing::warn!(error = %e, "cannot close the descriptors this process inherited");
    }
    let _ = rustix::process::setsid();
    let home = home()?;
    let choices = RunChoices {
        console: args.console,
        seccomp: args.seccomp,
        force: args.force,
        fresh: args.fresh,
        // `virtkit stats NAME` asks a detached VM while it runs.
        stats: None,
        shares: args.shares.clone(),
        display: args.display.clone(),
    };
    crate::vm_process::run(&home, &args.name, Mode::Detached, choices)
}

#[cfg(test)]
mod tests {
    use super::settled;

    #[test]
    fn a_resumed_vm_is_reported_once_it_runs_not_while_it_is_restored_paused() {
        assert!(!settled("starting", false) && !settled("starting", true));
        assert!(settled("running", false) && settled("running", true));
        // A boot reports what it finds; a resume waits until the restored machine runs.
        assert!(settled("paused", false));
        assert!(!settled("paused", true));
        assert!(settled("stopped", true) && settled("unresponsive", true));
    }
}
