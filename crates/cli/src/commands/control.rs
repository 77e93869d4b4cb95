//! `virtkit stop`, `pause` and `resume`: through the VM process's control socket.

use std::time::{Duration, Instant};

use clap::Args;
use virtkit_manager::control::ControlCommand;

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
    println!("`{}`: {state}", args.name);
    Ok(0)
}

pub fn resume(args: &NameArg) -> Result<u8, CliError> {
    let state = expect_ok(&args.name, ControlCommand::Resume)?;
    println!("`{}`: {state}", args.name);
    Ok(0)
}

/// Asks the guest to shut down (the ACPI power button), waits up to the timeout for the VM
/// process to end, then stops the VM at once.
pub fn stop(args: &StopArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    if !b.is_running() {
        println!("`{}` is not running", args.name);
        return Ok(0);
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let graceful = match ask(&b, ControlCommand::RequestStop) {
        Ok(r) if r.ok => true,
        // A paused guest cannot answer the power button, nor can one still starting.
        Ok(_) | Err(_) => false,
    };
    if graceful {
        while b.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !b.is_running() {
            println!("`{}`: stopped (the guest shut down)", args.name);
            return Ok(0);
        }
    }
    // Forced: the process may end between the check and the request; that is a stop too.
    let _ = ask(&b, ControlCommand::Stop);
    let forced_deadline = Instant::now() + Duration::from_secs(10);
    while b.is_running() && Instant::now() < forced_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if b.is_running() {
        return Err(CliError::new(format!(
            "`{}` did not stop; its process {} may be stuck: kill it",
            args.name,
            b.running_pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into())
        )));
    }
    if graceful {
        println!("`{}`: stopped (forced after {} s)", args.name, args.timeout);
    } else {
        println!("`{}`: stopped (forced)", args.name);
    }
    Ok(0)
}
