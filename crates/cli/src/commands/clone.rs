//! `virtkit clone SRC DST`: a copy of a stopped VM with a new machine identifier.

use clap::Args;
use virtkit_manager::bundle::CloneMethod;

use crate::commands::vms::{bundle_error_in, home, human_size, open};
use crate::exit::CliError;
use crate::progress::LazyProgress;

#[derive(Args)]
pub struct CloneArgs {
    /// The VM to copy (it must be stopped).
    pub source: String,
    /// The new VM's name.
    pub name: String,
}

pub fn run(args: &CloneArgs) -> Result<u8, CliError> {
    let home = home()?;
    let src = open(&home, &args.source)?;
    let mut progress = LazyProgress::new(format!("clone {}", args.name));
    let (copy, method) = src
        .clone_to(&home, &args.name, &mut |done, total| progress.report(done, total))
        .map_err(|e| bundle_error_in(format!("cannot clone `{}` to `{}`", args.source, args.name), &e))?;
    progress.finish();
    outln!(
        "cloned `{}` to `{}` ({}, {} used), machine id {}",
        args.source,
        copy.name(),
        match method {
            CloneMethod::Reflink => "reflinked: no data copied",
            CloneMethod::SparseCopy => "sparse copy: this file system has no reflinks",
            CloneMethod::Layered => "layered: a new qcow2 layer over the shared, frozen ones",
        },
        human_size(copy.disk_usage()),
        copy.machine_identifier()
    );
    Ok(0)
}
