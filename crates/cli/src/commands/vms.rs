//! What the VM-manager commands share: finding virtkit's home, opening bundles, asking a running
//! VM's process for its state, and the `--format` option.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use virtkit_manager::bundle::{Bundle, BundleError, CONTROL_SOCKET};
use virtkit_manager::control::{
    ControlClient, ControlCommand, ControlRequest, ControlResponse, QUIET_EVICT_AFTER,
};
use virtkit_manager::VirtkitHome;

use crate::exit::CliError;

/// How a command prints what it found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// For scripts: one JSON document on standard output.
    Json,
}

pub fn home() -> Result<VirtkitHome, CliError> {
    VirtkitHome::from_env().map_err(|e| CliError::from_error(&e))
}

pub fn open(home: &VirtkitHome, name: &str) -> Result<Bundle, CliError> {
    Bundle::open(home, name).map_err(|e| bundle_error(&e))
}

/// The command that helps with a bundle error, where there is one.
fn bundle_hint(e: &BundleError) -> Option<String> {
    match e {
        BundleError::NotFound { .. } => Some("`virtkit list` shows the VMs there".into()),
        BundleError::Exists { name } => {
            Some(format!("choose another name, or `virtkit delete {name}` first"))
        }
        BundleError::Running { name, .. } => Some(format!("stop it first with `virtkit stop {name}`")),
        BundleError::CaseClash { .. } => Some("choose another name".into()),
        BundleError::SameIdentity { name, other } => Some(format!(
            "give it a new identity with `virtkit set {name} --new-identity` (new SMBIOS UUID, serial \
             and MAC addresses), or stop `{other}` first; `virtkit clone` makes copies with their own"
        )),
        BundleError::Unrecorded { name, path, .. } => Some(format!(
            "if you trust that file, record it with `virtkit set {name} --allow-path {}`, otherwise fix \
             config.json; `virtkit get {name}` lists the paths recorded",
            path.display()
        )),
        _ => None,
    }
}

fn with_hint(error: CliError, e: &BundleError) -> CliError {
    match bundle_hint(e) {
        Some(hint) => CliError::new(format!("{error}; {hint}")),
        None => error,
    }
}

/// A bundle error and its causes, with the command that helps.
pub fn bundle_error(e: &BundleError) -> CliError {
    with_hint(CliError::from_error(e), e)
}

/// `context`, then a bundle error and its causes, with the command that helps.
pub fn bundle_error_in(context: impl Into<String>, e: &BundleError) -> CliError {
    with_hint(CliError::with_chain(context, e), e)
}

/// The state of a VM: `suspended` (its saved state waits for the next run) or `stopped` when no
/// process holds its bundle, else what its process says.
pub fn state_of(bundle: &Bundle) -> String {
    if !bundle.is_running() {
        if bundle.file(virtkit_manager::bundle::STATE_FILE).exists() {
            return virtkit_manager::suspend::SUSPENDED.into();
        }
        return "stopped".into();
    }
    match ask(bundle, ControlCommand::State) {
        Ok(ControlResponse { state: Some(s), .. }) => s,
        // The process holds the lock but has no socket yet: it is building the machine.
        _ if !bundle.file(CONTROL_SOCKET).exists() => "starting".into(),
        // It has a socket but gave no state (it refused: too many clients, or it is ending).
        _ => "unresponsive".into(),
    }
}

/// Why a VM cannot be run again: it runs already (in process `pid`, if known).
pub fn already_running(name: &str, pid: Option<u32>) -> CliError {
    CliError::new(format!(
        "the VM `{name}` is already running{}; `virtkit console {name}` attaches to it, `virtkit stop {name}` stops it",
        pid.map(|p| format!(" (process {p})")).unwrap_or_default()
    ))
}

/// Sends one command to a running VM's process.
pub fn ask(bundle: &Bundle, command: ControlCommand) -> Result<ControlResponse, CliError> {
    ask_request(bundle, &ControlRequest::new(command))
}

/// Sends `request` to the running VM's process.
pub fn ask_request(bundle: &Bundle, request: &ControlRequest) -> Result<ControlResponse, CliError> {
    let path = bundle.file(CONTROL_SOCKET);
    if !bundle.is_running() {
        return Err(CliError::new(format!(
            "the VM `{}` is not running; start it with `virtkit run {} --detach`",
            bundle.name(),
            bundle.name()
        )));
    }
    // At its client cap the server refuses a new client until one of the others has been quiet
    // a moment (QUIET_EVICT_AFTER); a command waits that out rather than fail.
    let deadline = Instant::now() + QUIET_EVICT_AFTER * 3;
    loop {
        let mut client = ControlClient::connect(&path).map_err(|e| CliError::from_error(&e))?;
        let response = client.request(request).map_err(|e| CliError::from_error(&e))?;
        let refused = !response.ok
            && response
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("too many control connections"));
        if !refused || Instant::now() >= deadline {
            return Ok(response);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sizes for people: 512 MiB, 20 GiB, 1.5 GiB.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() < 0.05 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Prints a JSON value on standard output.
pub fn print_json(value: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Whether a path exists and is a socket something listens on.
pub fn socket_alive(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(512 << 20), "512 MiB");
        assert_eq!(human_size(20 << 30), "20 GiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(4096), "4 KiB");
    }
}
