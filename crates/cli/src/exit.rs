//! Exit codes and the CLI's error type: one sentence, with the cause chain and the fix.

use virtkit::StopReason;

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_GUEST_RESET: u8 = 3;
pub const EXIT_GUEST_CRASHED: u8 = 4;
pub const EXIT_KVM_INTERNAL_ERROR: u8 = 5;

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  the guest powered off (or the VM was stopped on request)
  1  error: bad configuration or arguments' values, or the host failed
  2  usage error: unknown command or flag
  3  the guest reset the machine (reboot)
  4  the guest crashed (kernel panic or triple fault)
  5  KVM stopped the guest with an internal error (on PVM hosts: a stock kernel)
`virtkit exec` exits with the command's code (128+N when signal N ended it), or:
  125  virtkit or the guest agent could not run it (VM not running, no agent, no such user)
  126  the command cannot be executed in the guest
  127  the command does not exist in the guest
  255  the agent disconnected before the command ended";

/// Maps how a VM ended to the process exit code.
pub fn exit_code_for(reason: &StopReason) -> u8 {
    match reason {
        StopReason::GuestPoweredOff | StopReason::StoppedByHost => EXIT_OK,
        StopReason::GuestReset => EXIT_GUEST_RESET,
        StopReason::GuestCrashed { .. } => EXIT_GUEST_CRASHED,
        StopReason::KvmInternalError { .. } => EXIT_KVM_INTERNAL_ERROR,
        StopReason::HostError { .. } => EXIT_ERROR,
    }
}

/// An error the CLI reports before exiting.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: EXIT_ERROR,
        }
    }

    /// `context`, then every cause in the chain.
    pub fn with_chain(context: impl Into<String>, e: &dyn std::error::Error) -> CliError {
        let mut message = context.into();
        let mut next: Option<&dyn std::error::Error> = Some(e);
        while let Some(err) = next {
            let text = err.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            next = err.source();
        }
        CliError::new(message)
    }

    /// The error and every cause in its chain, without a context of our own.
    pub fn from_error(e: &dyn std::error::Error) -> CliError {
        let mut error = CliError::with_chain(e.to_string(), e);
        // `with_chain` repeats nothing already in the message, so this is the chain once.
        error.message = error.message.trim_start_matches(": ").to_owned();
        error
    }

    /// `message`, exiting with `code` (as `exec` does for its own failures).
    pub fn with_code(message: impl Into<String>, code: u8) -> CliError {
        CliError {
            message: message.into(),
            code,
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.code
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stop_reason_has_its_documented_code() {
        assert_eq!(exit_code_for(&StopReason::GuestPoweredOff), 0);
        assert_eq!(exit_code_for(&StopReason::GuestReset), 3);
        assert_eq!(
            exit_code_for(&StopReason::GuestCrashed {
                detail: String::new()
            }),
            4
        );
        let ie = StopReason::KvmInternalError {
            vcpu: 0,
            suberror: 1,
            rip: 0,
            pvm_host: true,
        };
        assert_eq!(exit_code_for(&ie), 5);
        for code in ["0 ", "1 ", "2 ", "3 ", "4 ", "5 "] {
            assert!(EXIT_CODES_HELP.contains(code));
        }
    }
}
