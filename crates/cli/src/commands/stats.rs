//! `virtkit stats NAME`: the exits that reached a running VM's VMM, by vCPU and reason and by
//! device, from its control socket (docs/CONTROL.md, `stats`).

use clap::Args;
use virtkit::ExitStatistics;
use virtkit_manager::control::{ControlCommand, ControlRequest};

use crate::commands::vms::{ask_request, home, open, print_json, Format};
use crate::exit::CliError;

/// How many device ranges the table shows.
pub const TABLE_DEVICES: usize = 12;

#[derive(Args)]
pub struct StatsArgs {
    pub name: String,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn run(args: &StatsArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let r = ask_request(&b, &ControlRequest::new(ControlCommand::Stats))?;
    if !r.ok {
        return Err(CliError::new(format!(
            "`{}`: {}",
            args.name,
            r.error.unwrap_or_else(|| "refused".into())
        )));
    }
    let stats = r.exits.map(|b| *b).unwrap_or_default();
    print(&stats, args.format);
    Ok(0)
}

/// Prints `stats` on standard output.
pub fn print(stats: &ExitStatistics, format: Format) {
    match format {
        Format::Json => print_json(&serde_json::to_value(stats).unwrap_or_default()),
        Format::Text => outln!("{}", stats.to_table(TABLE_DEVICES).trim_end()),
    }
}
