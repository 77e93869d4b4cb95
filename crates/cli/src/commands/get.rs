//! `virtkit get NAME` and `virtkit set NAME`: read and change a VM's CPUs, memory and disk size,
//! and a running VM's memory balloon.

use clap::Args;
use serde_json::json;
use virtkit::{parse_size, BootLoader, VirtualMachineConfiguration};

use virtkit_manager::control::{ControlCommand, ControlRequest, ControlResponse};

use crate::commands::vms::{
    ask_request, bundle_error_in, home, human_size, open, print_json, state_of, Format,
};
use crate::exit::CliError;

#[derive(Args)]
pub struct GetArgs {
    pub name: String,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args)]
pub struct SetArgs {
    pub name: String,
    /// Number of vCPUs.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Guest memory, like 4G.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// The boot disk's new size, like 40G (it can only grow).
    #[arg(long, value_parser = parse_size)]
    pub disk_size: Option<u64>,
    /// On a running VM: the memory its balloon takes from the guest, like 512M (0 gives it
    /// all back). The guest's driver gives it in its own time; `virtkit get` shows progress.
    #[arg(long, value_parser = parse_size)]
    pub balloon: Option<u64>,
}

pub fn get(args: &GetArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let c = b.configuration();
    let id = b.machine_identifier();
    let boot = match &c.boot_loader {
        BootLoader::Linux { .. } => "linux",
        BootLoader::Firmware { .. } => "firmware",
    };
    let value = json!({
        "name": b.name(),
        "state": state_of(&b),
        "pid": b.running_pid(),
        "cpus": c.cpu_count,
        "memory": c.memory_size,
        "disk_size": b.disk_size().unwrap_or(0),
        "disk_use": b.disk_usage(),
        "boot": boot,
        "machine_id": id.to_string(),
        "serial_number": id.serial_number(),
        "mac_address": id.mac_address_text(0),
        "machine_model": b.hardware_model().machine,
        "path": b.path(),
        "balloon": balloon_of(&b),
    });
    match args.format {
        Format::Json => print_json(&value),
        Format::Text => {
            for (k, v) in value.as_object().into_iter().flatten() {
                let text = match (k.as_str(), v) {
                    ("memory" | "disk_size" | "disk_use", v) => {
                        v.as_u64().map(human_size).unwrap_or_default()
                    }
                    ("balloon", serde_json::Value::Object(b)) => balloon_text(b),
                    (_, serde_json::Value::String(s)) => s.clone(),
                    (_, serde_json::Value::Null) => "-".into(),
                    (_, v) => v.to_string(),
                };
                println!("{k:<14} {text}");
            }
        }
    }
    Ok(0)
}

/// The running VM's balloon (target, what the guest gave, its memory statistics), if it has one.
fn balloon_of(b: &virtkit_manager::bundle::Bundle) -> serde_json::Value {
    if !b.is_running() {
        return serde_json::Value::Null;
    }
    match ask_request(b, &ControlRequest::new(ControlCommand::Balloon)) {
        Ok(ControlResponse {
            balloon: Some(status),
            ..
        }) => serde_json::to_value(status).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// `takes 512 MiB (given 512 MiB); guest: 1.2 GiB free of 2 GiB`
fn balloon_text(b: &serde_json::Map<String, serde_json::Value>) -> String {
    let size = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_u64()).map(human_size);
    let mut text = format!(
        "takes {} (given {})",
        size(b.get("target_bytes")).unwrap_or_default(),
        size(b.get("actual_bytes")).unwrap_or_default()
    );
    if let Some(stats) = b.get("statistics") {
        if let (Some(free), Some(total)) = (size(stats.get("free_memory")), size(stats.get("total_memory"))) {
            text.push_str(&format!("; guest: {free} free of {total}"));
        }
    }
    text
}

/// Sets the running VM's balloon target.
fn set_balloon(args: &SetArgs, bytes: u64) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let request = ControlRequest {
        target_bytes: Some(bytes),
        ..ControlRequest::new(ControlCommand::Balloon)
    };
    let response = ask_request(&b, &request)?;
    match (response.ok, response.balloon) {
        (true, Some(status)) => {
            println!(
                "`{}`: the balloon takes {} from the guest (it has given {} so far)",
                args.name,
                human_size(status.target_bytes),
                human_size(status.actual_bytes)
            );
            Ok(0)
        }
        _ => Err(CliError::new(format!(
            "cannot set the balloon of `{}`: {}",
            args.name,
            response.error.unwrap_or_else(|| "refused".into())
        ))),
    }
}

pub fn set(args: &SetArgs) -> Result<u8, CliError> {
    if let Some(bytes) = args.balloon {
        if args.cpus.is_some() || args.memory.is_some() || args.disk_size.is_some() {
            return Err(CliError::new(
                "--balloon changes a running VM and the others a stopped one; give them in two commands",
            ));
        }
        return set_balloon(args, bytes);
    }
    if args.cpus.is_none() && args.memory.is_none() && args.disk_size.is_none() {
        return Err(CliError::new(
            "nothing to change: give --cpus, --memory, --disk-size, or --balloon on a running VM",
        ));
    }
    let home = home()?;
    let mut b = open(&home, &args.name)?;
    let context = format!("cannot change the VM `{}`", args.name);
    if args.cpus.is_some() || args.memory.is_some() {
        let mut c = VirtualMachineConfiguration::from_json(&b.configuration().to_json())
            .map_err(|e| CliError::with_chain(context.clone(), &e))?;
        if let Some(cpus) = args.cpus {
            c.cpu_count = cpus;
        }
        if let Some(memory) = args.memory {
            c.memory_size = memory;
        }
        b.set_configuration(c)
            .map_err(|e| bundle_error_in(context.clone(), &e))?;
    }
    if let Some(size) = args.disk_size {
        b.grow_disk(size)
            .map_err(|e| bundle_error_in(context.clone(), &e))?;
    }
    println!(
        "`{}`: {} vCPUs, {} memory, {} disk",
        b.name(),
        b.configuration().cpu_count,
        human_size(b.configuration().memory_size),
        human_size(b.disk_size().unwrap_or(0))
    );
    Ok(0)
}
