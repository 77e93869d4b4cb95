//! `virtkit screenshot NAME FILE.png`: what a running VM's display shows, from its control
//! socket (docs/CONTROL.md, `screenshot`), written as a PNG file.

use std::path::PathBuf;

use clap::Args;
use virtkit_manager::control::{ControlCommand, ControlRequest};

use crate::commands::vms::{ask_request, home, open};
use crate::exit::CliError;

#[derive(Args)]
pub struct ScreenshotArgs {
    pub name: String,
    /// The PNG file to write (replaced if it exists).
    pub file: PathBuf,
}

pub fn run(args: &ScreenshotArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let r = ask_request(&b, &ControlRequest::new(ControlCommand::Screenshot))?;
    let shot = match (r.ok, r.screenshot) {
        (true, Some(shot)) => shot,
        (_, _) => {
            return Err(CliError::new(format!(
                "`{}`: {}",
                args.name,
                r.error.unwrap_or_else(|| "no screenshot in the answer".into())
            )))
        }
    };
    let png = shot
        .png()
        .map_err(|e| CliError::new(format!("`{}`: the screenshot is not base64 ({e})", args.name)))?;
    std::fs::write(&args.file, png)
        .map_err(|e| CliError::with_chain(format!("cannot write {}", args.file.display()), &e))?;
    outln!(
        "wrote {} ({}x{}) from `{}`'s display",
        args.file.display(),
        shot.width,
        shot.height,
        args.name
    );
    Ok(0)
}
