//! `virtkit list`: every VM with its state, CPUs, memory, disk size, disk use and (running) its
//! first IP address.

use clap::Args;
use serde_json::json;
use virtkit_manager::bundle::Bundle;

use crate::commands::vms::{home, human_size, print_json, state_of, Format};
use crate::exit::CliError;

#[derive(Args)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn run(args: &ListArgs) -> Result<u8, CliError> {
    let home = home()?;
    let vms = Bundle::list(&home).map_err(|e| crate::commands::vms::bundle_error(&e))?;
    let rows: Vec<serde_json::Value> = vms
        .iter()
        .map(|(name, bundle)| match bundle {
            Ok(b) => json!({
                "name": name,
                "state": state_of(b),
                "cpus": b.configuration().cpu_count,
                "memory": b.configuration().memory_size,
                "disk_size": b.disk_size().unwrap_or(0),
                "disk_use": b.disk_usage(),
                "pid": b.running_pid(),
                "ip": crate::commands::ip::first_address(b),
            }),
            Err(e) => json!({"name": name, "state": "damaged", "error": e.to_string()}),
        })
        .collect();
    match args.format {
        Format::Json => print_json(&json!(rows)),
        Format::Text => {
            outln!(
                "{:<20} {:<9} {:>4} {:>9} {:>9} {:>9}  {}",
                "NAME",
                "STATE",
                "CPUS",
                "MEMORY",
                "DISK",
                "USED",
                "IP"
            );
            for r in &rows {
                let size = |k: &str| r[k].as_u64().map(human_size).unwrap_or_else(|| "-".into());
                outln!(
                    "{:<20} {:<9} {:>4} {:>9} {:>9} {:>9}  {}",
                    r["name"].as_str().unwrap_or(""),
                    r["state"].as_str().unwrap_or(""),
                    r["cpus"]
                        .as_u64()
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    size("memory"),
                    size("disk_size"),
                    size("disk_use"),
                    r["ip"].as_str().unwrap_or("-"),
                );
                if let Some(e) = r["error"].as_str() {
                    outln!("  {e}");
                }
            }
        }
    }
    Ok(0)
}
