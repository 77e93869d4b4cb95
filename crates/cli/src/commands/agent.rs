//! What the commands that talk to the guest agent share: finding the running VM and its
//! agent, and turning the agent's failures into one sentence with the fix and an exit code.

use virtkit_agent_protocol::ErrorKind;
use virtkit_manager::agent::{AgentClient, AgentError};
use virtkit_manager::bundle::Bundle;
use virtkit_manager::control::ControlCommand;

use crate::commands::vms::{ask, home, open};
use crate::exit::{CliError, EXIT_ERROR};

/// `exec`: virtkit or the agent could not run the command.
pub const EXIT_EXEC_FAILED: u8 = 125;
/// `exec`: the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// `exec`: no such command in the guest.
pub const EXIT_NOT_FOUND: u8 = 127;
/// `exec`: the agent disconnected before the command ended.
pub const EXIT_DISCONNECTED: u8 = 255;

/// The running VM `name` and a client for its agent; `code` is the exit code of a failure.
pub fn connect(name: &str, code: u8) -> Result<(Bundle, AgentClient), CliError> {
    let home = home()?;
    let b = open(&home, name)?;
    if !b.is_running() {
        return Err(CliError::with_code(
            format!("the VM `{name}` is not running; start it with `virtkit run {name} --detach --wait`"),
            code,
        ));
    }
    let client = AgentClient::new(b.path());
    Ok((b, client))
}

/// Whether the running VM's agent said hello.
pub fn agent_up(b: &Bundle) -> bool {
    ask(b, ControlCommand::State).is_ok_and(|r| r.agent.is_some())
}

/// One sentence for an agent failure, with what to do; exec's exit codes where they apply.
pub fn agent_error(b: &Bundle, e: AgentError, exec: bool) -> CliError {
    let name = b.name();
    let code = if exec { EXIT_EXEC_FAILED } else { EXIT_ERROR };
    match e {
        AgentError::NoVsock(_) => CliError::with_code(
            format!(
                "the VM `{name}` has no vsock device, so its guest agent cannot be reached; the agent needs one \
                 (docs/AGENT.md)"
            ),
            code,
        ),
        AgentError::NoAgent(_) | AgentError::Connect { .. } => {
            let why = if agent_up(b) {
                "it said hello earlier but does not answer now: it may have stopped or the guest is shutting down; \
                 see `virtkit logs NAME`"
                    .replace("NAME", name)
            } else {
                format!(
                    "it has not said hello since the VM started: the guest may still be booting (`virtkit run {name} \
                     --detach --wait` waits for it), or virtkit-agent is not installed or not started in the guest \
                     (docs/AGENT.md)"
                )
            };
            CliError::with_code(format!("the guest agent of `{name}` is not up: {why}"), code)
        }
        AgentError::Refused(kind, text) => {
            let code = match (exec, kind) {
                (true, ErrorKind::NotFound) => EXIT_NOT_FOUND,
                (true, ErrorKind::NotExecutable) => EXIT_NOT_EXECUTABLE,
                _ => code,
            };
            CliError::with_code(format!("`{name}`: {text}"), code)
        }
        AgentError::Disconnected => CliError::with_code(
            format!(
                "the guest agent of `{name}` disconnected before it answered (the guest may be shutting down, or \
                 the agent stopped); see `virtkit logs {name}`"
            ),
            if exec { EXIT_DISCONNECTED } else { EXIT_ERROR },
        ),
        other => {
            let mut error = CliError::with_chain(format!("`{name}`: the guest agent failed"), &other);
            if exec {
                error = CliError::with_code(error.to_string(), EXIT_EXEC_FAILED);
            }
            error
        }
    }
}
