//! `virtkit`: run and manage virtual machines.
#![forbid(unsafe_code)]

#[macro_use]
mod output;

mod commands;
mod exit;
mod logging;
mod progress;
mod terminal;
mod vm_events;
mod vm_process;

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
    /// Make a new VM: a bundle with its disk (installed from a raw or qcow2 image) and settings.
    Create(commands::create::CreateArgs),
    /// List the VMs with their state, CPUs, memory and disk.
    List(commands::list::ListArgs),
    /// Show one VM's settings and identity.
    Get(commands::get::GetArgs),
    /// Change a stopped VM's CPUs, memory or disk size.
    Set(commands::get::SetArgs),
    /// Ask a running VM's guest to shut down; stop it at once after the timeout.
    Stop(commands::control::StopArgs),
    /// Pause a running VM.
    Pause(commands::control::NameArg),
    /// Resume a paused VM.
    Resume(commands::control::NameArg),
    /// Save a VM's whole state into its bundle and end it; `run` resumes it.
    Suspend(commands::control::NameArg),
    /// Attach this terminal to a running VM's serial console.
    Console(commands::console::ConsoleArgs),
    /// Print a running VM's IP address (`--wait S` for the guest to take one; `--format json`:
    /// every network card with its MAC and addresses).
    Ip(commands::ip::IpArgs),
    /// Connect standard input and output to a running VM's vsock port (through its
    /// `vsock.sock`; an ssh ProxyCommand).
    VsockProxy(commands::vsock_proxy::VsockProxyArgs),
    /// Log in to a VM with ssh through its vsock (no network needed), as its cloud-init user;
    /// `--print-config` prints an ssh_config block for other tools.
    Ssh(commands::ssh::SshArgs),
    /// Run a command in a running VM's guest through its agent (`-- CMD ARGS...`).
    Exec(commands::exec::ExecArgs),
    /// Copy files and directories to or from a running VM's guest: `virtkit cp SRC NAME:DEST`,
    /// `virtkit cp NAME:SRC DEST`.
    Cp(commands::cp::CpArgs),
    /// Print the exits that reached a running VM's VMM so far, by vCPU and reason and by device.
    Stats(commands::stats::StatsArgs),
    /// Save what a running VM's display shows as a PNG file.
    Screenshot(commands::screenshot::ScreenshotArgs),
    /// Print the Unix socket a running VM's display is served on over VNC.
    Vnc(commands::vnc::VncArgs),
    /// Print a VM's console output (of the current or last run).
    Logs(commands::logs::LogsArgs),
    /// Copy a stopped VM, with a new machine identifier (reflinked where the file system can).
    Clone(commands::clone::CloneArgs),
    /// Delete a stopped VM.
    Delete(commands::delete::DeleteArgs),
    /// Take, list, restore and delete named snapshots of a VM (running, paused, suspended or stopped).
    Snapshot(commands::snapshot::SnapshotArgs),
    /// List the restore-image catalog, or pull (download and verify) an image from it.
    Images(commands::images::ImagesArgs),
    /// The process of a detached VM (started by `run --detach`).
    #[command(hide = true)]
    VmProcess(commands::detach::VmProcessArgs),
}

/// Where this command's log goes: the detached VM process's is its bundle's `vmm.log`.
fn log_target(command: &Command) -> logging::LogTarget {
    if let Command::VmProcess(args) = command {
        // A bad name is refused later, by the bundle; the log stays on standard error until then.
        if virtkit_manager::bundle::check_name(&args.name).is_err() {
            return logging::LogTarget::Stderr;
        }
        if let Ok(home) = virtkit_manager::VirtkitHome::from_env() {
            let path = home
                .vms_dir()
                .join(&args.name)
                .join(virtkit_manager::bundle::VMM_LOG_FILE);
            return logging::LogTarget::RotatedStderr { path };
        }
    }
    logging::LogTarget::Stderr
}

/// The command line, parsed. A VM's own start (`run`, and the `vm-process` that `run --detach`
/// starts) is first parsed by its subcommand's parser alone: building the whole tree, every
/// subcommand's arguments, cost ~0.3 ms of each start here, a tenth of the tiny guest's time to
/// its first output (bench/RESULTS.md). Whatever that parser refuses, a mistake or `--help`
/// included, goes through the whole tree, so every message and help text is the same.
fn parse_command_line() -> Cli {
    parse_start_alone(std::env::args_os()).unwrap_or_else(Cli::parse)
}

fn parse_start_alone(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<Cli> {
    let mut args = args.into_iter();
    let _binary = args.next()?;
    let subcommand = args.next()?;
    let command = match subcommand.to_str()? {
        "run" => Command::Run(parse_alone("run", args)?),
        "vm-process" => Command::VmProcess(parse_alone("vm-process", args)?),
        _ => return None,
    };
    Some(Cli { command })
}

/// `args` (after the subcommand's name) parsed by subcommand `name`'s parser alone.
fn parse_alone<T: clap::Args + clap::FromArgMatches>(
    name: &'static str,
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Option<T> {
    let matches = T::augment_args(clap::Command::new(name))
        .try_get_matches_from(std::iter::once(std::ffi::OsString::from(name)).chain(args))
        .ok()?;
    T::from_arg_matches(&matches).ok()
}

fn main() -> ExitCode {
    let cli = parse_command_line();
    logging::init(log_target(&cli.command));
    let result: Result<u8, CliError> = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Validate(args) => commands::validate::run(&args),
        Command::Doctor(args) => commands::doctor::run(&args),
        Command::Create(args) => commands::create::run(&args),
        Command::List(args) => commands::list::run(&args),
        Command::Get(args) => commands::get::get(&args),
        Command::Set(args) => commands::get::set(&args),
        Command::Stop(args) => commands::control::stop(&args),
        Command::Pause(args) => commands::control::pause(&args),
        Command::Resume(args) => commands::control::resume(&args),
        Command::Suspend(args) => commands::control::suspend(&args),
        Command::Console(args) => commands::console::run(&args),
        Command::Logs(args) => commands::logs::run(&args),
        Command::Ip(args) => commands::ip::run(&args),
        Command::Stats(args) => commands::stats::run(&args),
        Command::Screenshot(args) => commands::screenshot::run(&args),
        Command::Vnc(args) => commands::vnc::run(&args),
        Command::VsockProxy(args) => commands::vsock_proxy::run(&args),
        Command::Ssh(args) => commands::ssh::run(&args),
        Command::Exec(args) => commands::exec::run(&args),
        Command::Cp(args) => commands::cp::run(&args),
        Command::Clone(args) => commands::clone::run(&args),
        Command::Delete(args) => commands::delete::run(&args),
        Command::Snapshot(args) => commands::snapshot::run(&args),
        Command::Images(args) => commands::images::run(&args),
        Command::VmProcess(args) => commands::detach::vm_process(&args),
    };
    logging::finish();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            errln!("virtkit: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("virtkit")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// What the whole tree makes of `args`, for comparison.
    fn by_the_whole_tree(args: &[&str]) -> String {
        match Cli::try_parse_from(argv(args))
            .expect("the whole tree parses it")
            .command
        {
            Command::Run(run) => format!("{run:?}"),
            Command::VmProcess(process) => format!("{process:?}"),
            _ => panic!("not a start"),
        }
    }

    fn alone(args: &[&str]) -> Option<String> {
        parse_start_alone(argv(args)).map(|cli| match cli.command {
            Command::Run(run) => format!("{run:?}"),
            Command::VmProcess(process) => format!("{process:?}"),
            _ => panic!("not a start"),
        })
    }

    #[test]
    fn a_start_parsed_alone_is_what_the_whole_tree_makes_of_it() {
        for args in [
            &["run", "--kernel", "k.elf"][..],
            &[
                "run", "--kernel", "k.elf", "--cpus", "2", "--memory", "128M", "--serial", "stdio",
            ],
            &[
                "run",
                "--kernel",
                "vmlinuz",
                "--initrd",
                "i.gz",
                "--cmdline",
                "console=ttyS0 quiet",
                "--stats",
            ],
            &["run", "web", "--detach"],
            &["run", "web", "--seccomp", "log"],
            &["vm-process", "web", "--fresh"],
            &[
                "vm-process",
                "web",
                "--console",
                "hvc",
                "--display",
                "800x600",
                "--seccomp",
                "off",
            ],
        ] {
            assert_eq!(
                alone(args).as_deref(),
                Some(by_the_whole_tree(args).as_str()),
                "{args:?}"
            );
        }
    }

    #[test]
    fn what_a_start_alone_refuses_or_does_not_parse_goes_to_the_whole_tree() {
        for args in [
            &["run", "--help"][..],
            &["run", "--no-such-option"],
            &["run", "--cpus", "many"],
            &["run", "--version"],
            &["list"],
            &["--version"],
            &[],
        ] {
            assert!(alone(args).is_none(), "{args:?}");
        }
    }
}
