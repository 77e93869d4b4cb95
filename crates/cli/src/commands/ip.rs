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
            return Err(CliError::new(format!(
                "`{}` has no network card; give it one (`--network nat`)",
                args.name
            )));
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
