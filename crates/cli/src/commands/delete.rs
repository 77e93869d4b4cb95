//! `virtkit delete NAME`: remove a stopped VM and everything in its bundle.

use clap::Args;

use crate::commands::vms::{bundle_error_in, home, open};
use crate::exit::CliError;

#[derive(Args)]
pub struct DeleteArgs {
    pub name: String,
}

pub fn run(args: &DeleteArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    b.delete()
        .map_err(|e| bundle_error_in(format!("cannot delete the VM `{}`", args.name), &e))?;
    outln!("deleted `{}`", args.name);
    Ok(0)
}
