//! `virtkit validate FILE`: parse and check a configuration without running it.

use std::path::PathBuf;

use clap::Args;
use virtkit::{ByteSize, ConfigFileError, VirtualMachineConfiguration};

use crate::exit::{CliError, EXIT_OK};

#[derive(Args)]
pub struct ValidateArgs {
    /// The JSON configuration file.
    pub config: PathBuf,
}

/// Reads and parses a configuration file (at most 1 MiB, never a FIFO or device), with the file
/// name in every error.
pub fn load_config(path: &std::path::Path) -> Result<VirtualMachineConfiguration, CliError> {
    VirtualMachineConfiguration::from_file(path).map_err(|e| match e {
        ConfigFileError::Parse { .. } => CliError::new(format!(
            "{e}; see `virtkit run --help` and the README for the format"
        )),
        _ => CliError::from_error(&e),
    })
}

pub fn run(args: &ValidateArgs) -> Result<u8, CliError> {
    let config = load_config(&args.config)?;
    config
        .validate()
        .map_err(|e| CliError::new(format!("{}: {e}", args.config.display())))?;
    outln!(
        "{} is valid: {} vCPU{}, {} of memory",
        args.config.display(),
        config.cpu_count,
        if config.cpu_count == 1 { "" } else { "s" },
        ByteSize(config.memory_size)
    );
    Ok(EXIT_OK)
}
