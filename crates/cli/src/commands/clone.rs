//! `virtkit clone SRC DST`: a copy of a stopped VM with a new machine identifier.

use clap::Args;
use virtkit::disk_image::CloneMethod;

use crate::commands::vms::{home, human_size, open};
use crate::exit::CliError;
use crate::progress::Progress;

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
    let label = format!("clone {}", args.name);
    let mut progress: Option<Progress> = None;
    let mut report = |done: u64, total: u64| {
        progress
            .get_or_insert_with(|| Progress::new(&label, Some(total)))
            .update(done);
    };
    let (copy, method) = src.clone_to(&home, &args.name, &mut report).map_err(|e| {
        CliError::with_chain(format!("cannot clone `{}` to `{}`", args.source, args.name), &e)
    })?;
    if let Some(p) = progress.take() {
        p.finish();
    }
    println!(
        "cloned `{}` to `{}` ({}, {} used), machine id {}",
        args.source,
        copy.name(),
        match method {
            CloneMethod::Reflink => "reflinked: no data copied",
            CloneMethod::SparseCopy => "sparse copy: this file system has no reflinks",
        },
        human_size(copy.disk_usage()),
        copy.machine_identifier()
    );
    Ok(0)
}
