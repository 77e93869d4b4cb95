//! `virtkit`: run and manage virtual machines.
#![forbid(unsafe_code)]

mod commands;
mod exit;
mod terminal;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::{CliError, EXIT_CODES_HELP};

#[derive(Parser)]
#[command(name = "virtkit", version, about = "Run and manage virtual machines on KVM", after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a virtual machine and attach its serial console to this terminal.
    Run(commands::run::RunArgs),
    /// Check a configuration file without running it.
    Validate(commands::validate::ValidateArgs),
    /// Report what this host's KVM is, its limits, and which guests it can run.
    Doctor(commands::doctor::DoctorArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIRTKIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result: Result<u8, CliError> = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Validate(args) => commands::validate::run(&args),
        Command::Doctor(args) => commands::doctor::run(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("virtkit: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
