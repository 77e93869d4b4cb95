//! `virtkit get NAME` and `virtkit set NAME`: read and change a VM's CPUs, memory and disk size.

use clap::Args;
use serde_json::json;
use virtkit::{parse_size, BootLoader, VirtualMachineConfiguration};

use crate::commands::vms::{home, human_size, open, print_json, state_of, Format};
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
    });
    match args.format {
        Format::Json => print_json(&value),
        Format::Text => {
            for (k, v) in value.as_object().into_iter().flatten() {
                let text = match (k.as_str(), v) {
                    ("memory" | "disk_size" | "disk_use", v) => {
                        v.as_u64().map(human_size).unwrap_or_default()
                    }
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

pub fn set(args: &SetArgs) -> Result<u8, CliError> {
    if args.cpus.is_none() && args.memory.is_none() && args.disk_size.is_none() {
        return Err(CliError::new(
            "nothing to change: give --cpus, --memory and/or --disk-size",
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
            .map_err(|e| CliError::with_chain(context.clone(), &e))?;
    }
    if let Some(size) = args.disk_size {
        b.grow_disk(size)
            .map_err(|e| CliError::with_chain(context.clone(), &e))?;
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
