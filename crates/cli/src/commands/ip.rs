//! `virtkit ip NAME`: the guest's addresses, as its network cards saw it use them (the DHCP ACK
//! it received, the ARP and NDP it sent, its own packets), read from the VM process. Nothing here
//! asks the guest or a DHCP server's lease file: only this guest can send on its card, so what
//! the card saw is right for NAT, TAP and bridged alike.

use std::time::{Duration, Instant};

use clap::Args;
use virtkit::NicAddresses;
use virtkit_manager::control::{ControlCommand, ControlRequest};

use crate::commands::vms::{ask_request, home, open, print_json, Format};
use crate::exit::CliError;

#[derive(Args)]
pub struct IpArgs {
    pub name: String,
    /// Wait up to this many seconds for the guest to take an address (from its DHCP ACK, ARP or
    /// traffic); without it, a NAT card's address is printed before the guest confirms it.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<u64>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// The address to print for a card: what the guest uses, or under NAT the one it will get.
pub fn address(nic: &NicAddresses, confirmed_only: bool) -> Option<String> {
    nic.ipv4
        .or(if confirmed_only { None } else { nic.expected_ipv4 })
        .map(|a| a.to_string())
        .or_else(|| nic.ipv6.first().map(|a| a.to_string()))
}

/// The running VM's first address (as `virtkit ip` prints it without `--wait`), if it has one.
pub fn first_address(bundle: &virtkit_manager::bundle::Bundle) -> Option<String> {
    if !bundle.is_running() {
        return None;
    }
    let r = ask_request(bundle, &ControlRequest::new(ControlCommand::Addresses)).ok()?;
    r.addresses?.iter().find_map(|n| address(n, false))
}

/// A VM without a network card: its guest agent lists the guest's interfaces (a guest may
/// have others, such as a device passed through, that no card of ours watches).
fn from_agent(b: &virtkit_manager::bundle::Bundle, args: &IpArgs) -> Result<u8, CliError> {
    let client = virtkit_manager::agent::AgentClient::new(b.path());
    let report = client.ip().map_err(|e| {
        let e = crate::commands::agent::agent_error(b, e, false);
        CliError::new(format!(
            "`{}` has no network card to watch, and {e}; give it a card (`--network nat`) or start its agent",
            args.name
        ))
    })?;
    let first = report
        .interfaces
        .iter()
        .filter(|i| !i.loopback)
        .flat_map(|i| i.addresses.iter())
        .map(|a| a.address.clone())
        .min_by_key(|a| (a.contains(':'), a.starts_with("fe80")));
    match args.format {
        Format::Json => {
            print_json(&serde_json::json!({"source": "agent", "interfaces": report.interfaces}));
            Ok(0)
        }
        Format::Text => match first {
            Some(a) => {
                outln!("{a}");
                Ok(0)
            }
            None => Err(CliError::new(format!(
                "`{}` has no address: its guest agent reports no interface but the loopback with one",
                args.name
            ))),
        },
    }
}

pub fn run(args: &IpArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let deadline = args.wait.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let r = ask_request(&b, &ControlRequest::new(ControlCommand::Addresses))?;
        if !r.ok {
            return Err(CliError::new(format!(
                "`{}`: {}",
                args.name,
                r.error.unwrap_or_else(|| "refused".into())
            )));
        }
        let nics = r.addresses.unwrap_or_default();
        if nics.is_empty() {
            return from_agent(&b, args);
        }
        let found = nics.iter().find_map(|n| address(n, deadline.is_some()));
        match (found, deadline) {
            (Some(first), _) => {
                match args.format {
                    Format::Json => print_json(&serde_json::json!(nics)),
                    Format::Text => outln!("{first}"),
                }
                return Ok(0);
            }
            (None, Some(d)) if Instant::now() < d => std::thread::sleep(Duration::from_millis(100)),
            (None, _) => {
                return Err(CliError::new(format!(
                    "`{}` has no address yet{}; is its network up? (`virtkit ip {} --wait 60` waits for it)",
                    args.name,
                    args.wait.map(|s| format!(" after {s} s")).unwrap_or_default(),
                    args.name
                )))
            }
        }
    }
}
