//! `virtkit stop`, `pause`, `resume` and `suspend`: through the VM process's control socket.

use std::time::{Duration, Instant};

use clap::Args;
use virtkit_manager::bundle::{Bundle, CONSOLE_SOCKET, CONTROL_SOCKET, PID_FILE};
use virtkit_manager::control::ControlCommand;
use virtkit_manager::vm_process::STOP_GRACE;

use crate::commands::vms::{ask, home, open};
use crate::exit::CliError;

#[derive(Args)]
pub struct StopArgs {
    pub name: String,
    /// Seconds to wait for the guest to shut down before stopping it at once.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Args)]
pub struct NameArg {
    pub name: String,
}

fn expect_ok(name: &str, command: ControlCommand) -> Result<String, CliError> {
    let home = home()?;
    let b = open(&home, name)?;
    let r = ask(&b, command)?;
    if r.ok {
        Ok(r.state.unwrap_or_default())
    } else {
        Err(CliError::new(format!(
            "`{name}`: {}",
            r.error.unwrap_or_else(|| "refused".into())
        )))
    }
}

pub fn pause(args: &NameArg) -> Result<u8, CliError> {
    let state = expect_ok(&args.name, ControlCommand::Pause)?;
    outln!("`{}`: {state}", args.name);
    Ok(0)
}

pub fn resume(args: &NameArg) -> Result<u8, CliError> {
    let state = expect_ok(&args.name, ControlCommand::Resume)?;
    outln!("`{}`: {state}", args.name);
    Ok(0)
}

/// How long `suspend` waits for the VM process to end once its state is saved (it stops the
/// machine, as a `stop` does).
const SUSPEND_END_WAIT: Duration = FORCED_WAIT;

/// Saves the VM's whole state into its bundle (`state.vksave`) and ends its process; the next
/// `virtkit run NAME` resumes it where it was.
pub fn suspend(args: &NameArg) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let name = &args.name;
    let r = ask(&b, ControlCommand::Suspend)?;
    if !r.ok {
        return Err(CliError::new(format!(
            "`{name}`: {}",
            r.error.unwrap_or_else(|| "refused".into())
        )));
    }
    if !wait_until_ended(&b, Instant::now() + SUSPEND_END_WAIT) {
        // The state is saved; the machine did not end: end it as `stop` would.
        return kill_stuck(&b, name);
    }
    outln!(
        "`{name}`: suspended; `virtkit run {name}` resumes it, `virtkit run {name} --fresh` boots it anew"
    );
    Ok(0)
}

/// How long `stop` waits for the VM process after sending `stop` before it kills the process.
/// Longer than the process's own grace ([`STOP_GRACE`]): a process whose vCPU is stuck ends
/// itself first, and is killed only if even that fails.
const FORCED_WAIT: Duration = Duration::from_secs(STOP_GRACE.as_secs() + 5);

/// How long `stop` waits for a killed process to let go of the bundle.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often [`wait_until_ended`] looks first, and at most: a VM process that was told to stop
/// usually ends within milliseconds (a fixed 50 ms was most of `virtkit suspend`'s time), one
/// whose guest shuts down takes seconds.
const END_POLL_FIRST: Duration = Duration::from_millis(1);
const END_POLL_MAX: Duration = Duration::from_millis(50);

/// Waits until the bundle's process ends or `deadline` passes; returns whether it ended. Looks
/// again after 1 ms, then twice as long each time, up to every 50 ms.
fn wait_until_ended(b: &Bundle, deadline: Instant) -> bool {
    let mut interval = END_POLL_FIRST;
    while b.is_running() {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(END_POLL_MAX);
    }
    true
}

/// Removes what a VM process that did not end cleanly left in the bundle: its sockets and PID
/// file (the next `run` would replace them; `stop` says the VM is stopped, so they go now).
fn remove_leftovers(b: &Bundle) {
    if b.is_running() {
        return;
    }
    for file in [CONTROL_SOCKET, CONSOLE_SOCKET, PID_FILE, "vsock.sock_1025"] {
        let _ = std::fs::remove_file(b.file(file));
    }
}

/// What `stop` prints once the process has ended: `how` it ended, unless the process left its
/// PID file behind. A VM process removes its PID file before it lets go of the bundle, so one
/// left behind means it was killed (by a signal, the OOM killer) rather than stopping the VM.
fn report_ended(b: &Bundle, name: &str, pid: Option<u32>, how: &str) -> Result<u8, CliError> {
    if b.file(PID_FILE).exists() {
        remove_leftovers(b);
        outln!(
            "`{name}`: stopped: its process{} was killed before it could stop the VM",
            pid.map(|p| format!(" {p}")).unwrap_or_default()
        );
    } else {
        outln!("`{name}`: stopped ({how})");
    }
    Ok(0)
}

/// Asks the guest to shut down (the ACPI power button), waits up to the timeout for the VM
/// process to end, then stops the VM at once; if the process does not end after that either
/// (a vCPU blocked in the host), kills it. The VM is stopped when this returns `Ok`.
pub fn stop(args: &StopArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let name = &args.name;
    if !b.is_running() {
        outln!("`{name}` is not running");
        return Ok(0);
    }
    let pid = b.running_pid();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    // The guest agent, when it is up, shuts the guest down itself; else the power button.
    let by_agent = crate::commands::agent::agent_up(&b)
        && virtkit_manager::agent::AgentClient::new(b.path())
            .shutdown(false)
            .inspect_err(|e| tracing::info!(error = %e, "the agent did not take the shutdown; pressing the power button"))
            .is_ok();
    let graceful = by_agent
        || match ask(&b, ControlCommand::RequestStop) {
            Ok(r) if r.ok => true,
            // A paused guest cannot answer the power button, nor can one still starting.
            Ok(_) | Err(_) => false,
        };
    if graceful && wait_until_ended(&b, deadline) {
        let how = if by_agent {
            "the guest shut down through its agent"
        } else {
            "the guest shut down"
        };
        return report_ended(&b, name, pid, how);
    }
    // Forced: the process may end between the check and the request; that is a stop too.
    let _ = ask(&b, ControlCommand::Stop);
    let how = if graceful {
        format!("forced after {} s", args.timeout)
    } else {
        "forced".to_owned()
    };
    if wait_until_ended(&b, Instant::now() + FORCED_WAIT) {
        return report_ended(&b, name, pid, &how);
    }
    kill_stuck(&b, name)
}

/// The last resort: the process did not end within [`FORCED_WAIT`] of the stop; SIGKILL it.
fn kill_stuck(b: &Bundle, name: &str) -> Result<u8, CliError> {
    // Read again: the PID of the process that holds the bundle now, so no other process is hit.
    let Some(pid) = b.running_pid() else {
        if !b.is_running() {
            remove_leftovers(b);
            outln!("`{name}`: stopped (forced)");
            return Ok(0);
        }
        return Err(CliError::new(format!(
            "`{name}` did not stop within {} s and its bundle has no PID file to say which process runs it; \
             find the `virtkit vm-process {name}` process and kill it",
            FORCED_WAIT.as_secs()
        )));
    };
    let target = rustix::process::Pid::from_raw(pid as i32);
    if let Some(target) = target {
        if let Err(e) = rustix::process::kill_process(target, rustix::process::Signal::KILL) {
            return Err(CliError::new(format!(
                "`{name}` did not stop within {} s and its process {pid} cannot be killed ({e}); kill it as its owner or root",
                FORCED_WAIT.as_secs()
            )));
        }
    }
    if !wait_until_ended(b, Instant::now() + KILL_WAIT) {
        return Err(CliError::new(format!(
            "`{name}`: its process {pid} did not end even after SIGKILL (it may be stuck in the kernel); \
             see `ps -o stat,wchan -p {pid}`"
        )));
    }
    remove_leftovers(b);
    outln!(
        "`{name}`: stopped (killed its process {pid}: it did not end within {} s of the stop, a vCPU did not answer)",
        FORCED_WAIT.as_secs()
    );
    Ok(0)
}
