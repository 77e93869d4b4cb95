//! `virtkit run`: boot a machine described by flags or a configuration file, with its serial
//! console on this terminal, and exit with a code that says how the guest ended.

use std::path::PathBuf;
use std::sync::mpsc::channel;

use clap::Args;
use virtkit::{
    parse_size, BootLoader, ConsoleDeviceConfiguration, ConsolePortConfiguration,
    DirectorySharingDeviceConfiguration, EntropyDeviceConfiguration, MemoryBalloonConfiguration,
    PublishedPort, SerialAttachment, StopReason, StorageDeviceConfiguration, VirtualMachine,
    VirtualMachineConfiguration, CONFIG_FORMAT_VERSION,
};

use crate::commands::network_flags::{self, NetworkChoice};
use crate::commands::validate::load_config;
use crate::exit::{exit_code_for, CliError};
use crate::terminal::{forward_stdin_with_escape, stdin_is_terminal, RawMode};
use crate::vm_events::Events;
pub use crate::vm_process::ConsoleChoice;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A VM made with `virtkit create` (its bundle has the whole configuration).
    #[arg(conflicts_with_all = ["config", "kernel", "firmware", "efi_vars", "disks", "entropy", "balloon", "ports", "networks", "published", "cpus", "memory", "serial", "vsock"])]
    pub name: Option<String>,
    /// Run the named VM in the background; `virtkit console NAME` attaches to it.
    #[arg(long, requires = "name")]
    pub detach: bool,
    /// With --detach: return only when the guest agent has said hello, waiting at most
    /// SECONDS [default: 60].
    #[arg(long, requires = "detach", num_args = 0..=1, default_missing_value = "60", value_name = "SECONDS")]
    pub wait: Option<u64>,
    /// A JSON configuration file (the same format `virtkit validate` checks).
    #[arg(long, conflicts_with_all = ["kernel", "firmware"])]
    pub config: Option<PathBuf>,
    /// Linux kernel: a bzImage, or a 64- or 32-bit ELF with a Xen PVH note.
    #[arg(long, conflicts_with = "firmware")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk for the kernel.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, requires = "kernel", default_value = "console=ttyS0")]
    pub cmdline: String,
    /// Firmware image to boot from the reset vector: a BIOS, or with --efi-vars an EFI
    /// firmware's code (such as /usr/share/OVMF/OVMF_CODE_4M.fd).
    #[arg(long)]
    pub firmware: Option<PathBuf>,
    /// The EFI variable store the firmware keeps its variables in, used in place (a copy of
    /// the firmware's VARS file, such as /usr/share/OVMF/OVMF_VARS_4M.fd).
    #[arg(long, value_name = "VARS.fd", requires = "firmware")]
    pub efi_vars: Option<PathBuf>,
    /// Number of vCPUs [default: 1, or the configuration's].
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Guest memory, like 512M or 2G [default: 512M, or the configuration's].
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// A disk: PATH[,ro][,cache=uncached][,sync=none][,serial=ID]; repeat for more. Firmware
    /// boots them in the order given.
    #[arg(long = "disk", value_parser = StorageDeviceConfiguration::parse_cli)]
    pub disks: Vec<StorageDeviceConfiguration>,
    /// An entropy device (virtio-rng, the guest's /dev/hwrng), optionally rate-limited:
    /// `--entropy`, or `--entropy RATE[,burst=SIZE]` such as `8K,burst=1K` (bytes per second).
    #[arg(long = "entropy", num_args = 0..=1, default_missing_value = "", value_parser = EntropyDeviceConfiguration::parse_cli)]
    pub entropy: Vec<EntropyDeviceConfiguration>,
    /// A memory balloon (free memory goes back to the host; `virtkit set --balloon` on named VMs).
    #[arg(long)]
    pub balloon: bool,
    /// Which console this terminal (and for a named VM, `virtkit console` and its log) attaches
    /// to: the serial port COM1 (`ttyS0`), or the virtio console (`hvc0`; the guest's command
    /// line needs `console=hvc0`). With `hvc`, COM1 goes to `serial.log` in a named VM's bundle.
    #[arg(long, value_enum, default_value_t)]
    pub console: ConsoleChoice,
    /// A named virtio-console port on a Unix socket: NAME:PATH (the guest's
    /// `/dev/virtio-ports/NAME`, e.g. org.qemu.guest_agent.0); repeat for more.
    #[arg(long = "port", value_parser = parse_port)]
    pub ports: Vec<(String, PathBuf)>,
    /// A network card: nat (user-mode NAT through passt; the guest gets 10.0.2.15 by DHCP),
    /// tap:NAME (an existing TAP device), tap (a TAP created for the VM, as root, deleted when it
    /// stops), bridge:BRIDGE (a TAP created and added to the bridge, as root),
    /// socket:PATH (length-prefixed frames on a Unix stream socket, as passt --socket),
    /// dgram:PATH (one frame per datagram), vfkit:PATH (datagrams after vfkit's greeting, for
    /// gvproxy --listen-vfkit), listen:PATH (a stream socket this VM listens on for one peer,
    /// such as another VM's socket:PATH), fd:N (a connected socket handed over as descriptor N),
    /// or none [default: none]; repeat for more cards.
    #[arg(long = "network", value_name = "nat|none|tap[:NAME]|bridge:BRIDGE|socket:PATH|dgram:PATH|vfkit:PATH|listen:PATH|fd:N", value_parser = network_flags::parse_network)]
    pub networks: Vec<NetworkChoice>,
    /// A host port that reaches the guest through NAT: [ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp],
    /// bound to 127.0.0.1 unless ADDR is given; adds a NAT card if none is given; repeatable.
    #[arg(long = "publish", value_name = "[ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]", value_parser = network_flags::parse_publish)]
    pub published: Vec<PublishedPort>,
    /// A virtio-vsock device (guest CID 3) whose host side listens on the Unix socket PATH:
    /// a host program sends `CONNECT <port>\n` there to reach the guest's port (or runs
    /// `virtkit vsock-proxy PATH PORT`); the guest's connections to host port P go to
    /// `PATH_P`. A named VM always has one, at `vsock.sock` in its bundle.
    #[arg(long, value_name = "PATH")]
    pub vsock: Option<PathBuf>,
    /// Share a host directory with the guest (virtio-fs, served by virtiofsd): PATH[:TAG[:ro]],
    /// the tag defaulting to the directory's name; the guest mounts it with
    /// `mount -t virtiofs TAG DIR` (a named VM's agent mounts it at /mnt/TAG). Repeat for more.
    /// With a named VM, for this run only, besides its own (`virtkit set NAME --share` keeps them).
    #[arg(long = "share", value_name = "PATH[:TAG[:ro]]", value_parser = DirectorySharingDeviceConfiguration::parse_cli)]
    pub shares: Vec<DirectorySharingDeviceConfiguration>,
    /// A display of WIDTHxHEIGHT pixels (a bochs-display: SeaBIOS draws its text console there,
    /// Linux drives it with bochs-drm); `virtkit screenshot NAME FILE.png` shows it. With a named
    /// VM, for this run only.
    #[arg(long, value_name = "WIDTHxHEIGHT", value_parser = virtkit::GraphicsDeviceConfiguration::parse_cli)]
    pub display: Option<virtkit::GraphicsDeviceConfiguration>,
    /// Where COM1 goes: stdio, none, file:PATH or unix:PATH [default: stdio, or the configuration's].
    #[arg(long, value_parser = parse_serial)]
    pub serial: Option<SerialChoice>,
    /// What a VMM thread's syscall outside its seccomp filter does: kill (the default), log, off.
    #[arg(long, value_name = "kill|log|off")]
    pub seccomp: Option<virtkit_sandbox::SeccompAction>,
    /// Start even if the host cannot give the VM its memory (with the running VMs' memory
    /// counted; `VIRTKIT_MEMORY_OVERCOMMIT` sets how far guest memory may exceed the host's).
    #[arg(long)]
    pub force: bool,
    /// A suspended VM (`virtkit suspend`): discard its saved state and boot it anew, rather
    /// than resume it where it was.
    #[arg(long, requires = "name")]
    pub fresh: bool,
    /// When the VM stops, print on standard error the exits that reached the VMM, by reason
    /// and by device: a table, or `--stats json` for one JSON line (docs/CONTROL.md, `exits`).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "text", conflicts_with = "detach", value_name = "text|json")]
    pub stats: Option<crate::commands::vms::Format>,
}

/// Prints the VM's exit statistics on standard error, as `--stats` asked.
pub fn print_exit_statistics(vm: &VirtualMachine, format: crate::commands::vms::Format) {
    let Some(stats) = vm.exit_statistics() else { return };
    match format {
        crate::commands::vms::Format::Json => {
            errln!("{}", serde_json::to_string(&stats).unwrap_or_default())
        }
        crate::commands::vms::Format::Text => errln!(
            "virtkit: {}",
            stats.to_table(crate::commands::stats::TABLE_DEVICES).trim_end()
        ),
    }
}

fn parse_port(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once(':') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_owned(), path.into())),
        _ => Err(format!(
            "`{text}` is not a port; write NAME:PATH, e.g. org.qemu.guest_agent.0:/run/vm/qga.sock"
        )),
    }
}

#[derive(Clone, Debug)]
pub enum SerialChoice {
    None,
    Stdio,
    File(PathBuf),
    Unix(PathBuf),
}

fn parse_serial(text: &str) -> Result<SerialChoice, String> {
    match text {
        "none" => Ok(SerialChoice::None),
        "stdio" => Ok(SerialChoice::Stdio),
        _ => match text.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(SerialChoice::File(path.into())),
            Some(("unix", path)) if !path.is_empty() => Ok(SerialChoice::Unix(path.into())),
            _ => Err(format!(
                "`{text}` is not a serial attachment; use stdio, none, file:PATH or unix:PATH"
            )),
        },
    }
}

const DEFAULT_MEMORY: u64 = 512 << 20;

fn build_config(args: &RunArgs) -> Result<VirtualMachineConfiguration, CliError> {
    let mut config = if let Some(path) = &args.config {
        load_config(path)?
    } else {
        let boot_loader = match (&args.kernel, &args.firmware) {
            (Some(kernel), None) => BootLoader::Linux {
                kernel: kernel.clone(),
                initrd: args.initrd.clone(),
                command_line: args.cmdline.clone(),
            },
            (None, Some(path)) => BootLoader::Firmware {
                path: path.clone(),
                variable_store: args.efi_vars.clone(),
            },
            _ => return Err(CliError::new(
                "nothing to boot: give --kernel (with --initrd and --cmdline), --firmware, or --config FILE",
            )),
        };
        VirtualMachineConfiguration {
            version: CONFIG_FORMAT_VERSION,
            cpu_count: 1,
            memory_size: DEFAULT_MEMORY,
            boot_loader,
            serial_ports: Vec::new(),
            storage_devices: Vec::new(),
            entropy_devices: Vec::new(),
            memory_balloon_devices: Vec::new(),
            console_devices: Vec::new(),
            network_devices: Vec::new(),
            socket_devices: Vec::new(),
            directory_sharing_devices: Vec::new(),
            graphics_devices: Vec::new(),
            keyboards: Vec::new(),
            pointing_devices: Vec::new(),
            platform: virtkit::PlatformConfiguration::default(),
        }
        .with_serial(SerialAttachment::Stdio)
    };
    config.platform.seccomp = args.seccomp.or(config.platform.seccomp);
    config.storage_devices.extend(args.disks.iter().cloned());
    config.entropy_devices.extend(args.entropy.iter().cloned());
    config
        .directory_sharing_devices
        .extend(args.shares.iter().cloned());
    if let Some(display) = &args.display {
        config.add_display(display.clone());
    }
    network_flags::apply(&mut config.network_devices, &args.networks, &args.published)
        .map_err(CliError::new)?;
    if let Some(path) = &args.vsock {
        config.socket_devices.clear();
        config
            .socket_devices
            .push(virtkit::SocketDeviceConfiguration::new(path));
    }
    if args.balloon {
        config
            .memory_balloon_devices
            .push(MemoryBalloonConfiguration::default());
    }
    let mut ports: Vec<ConsolePortConfiguration> = args
        .ports
        .iter()
        .map(|(name, path)| ConsolePortConfiguration::named_socket(name, path))
        .collect();
    if args.console == ConsoleChoice::Hvc {
        // The terminal moves from COM1 to hvc0 (unless --serial says where COM1 goes).
        if args.serial.is_none() {
            config.serial_ports.clear();
        }
        ports.insert(
            0,
            ConsolePortConfiguration::console(Some(SerialAttachment::Stdio)),
        );
    }
    if !ports.is_empty() {
        config.console_devices.push(ConsoleDeviceConfiguration { ports });
    }
    if let Some(cpus) = args.cpus {
        config.cpu_count = cpus;
    }
    if let Some(memory) = args.memory {
        config.memory_size = memory;
    }
    if let Some(choice) = &args.serial {
        config.serial_ports.clear();
        let attachment = match choice {
            SerialChoice::None => None,
            SerialChoice::Stdio => Some(SerialAttachment::Stdio),
            SerialChoice::File(path) => Some(SerialAttachment::File {
                path: path.clone(),
                append: false,
            }),
            SerialChoice::Unix(path) => Some(SerialAttachment::UnixSocket { path: path.clone() }),
        };
        if let Some(a) = attachment {
            config = config.with_serial(a);
        }
    }
    Ok(config)
}

/// The shares with absolute paths: a detached VM process does not run where `run` was typed.
fn absolute_shares(
    shares: &[DirectorySharingDeviceConfiguration],
) -> Result<Vec<DirectorySharingDeviceConfiguration>, CliError> {
    shares
        .iter()
        .map(|s| {
            let path = std::path::absolute(&s.path)
                .map_err(|e| CliError::with_chain(format!("cannot share {}", s.path.display()), &e))?;
            Ok(DirectorySharingDeviceConfiguration { path, ..s.clone() })
        })
        .collect()
}

pub fn run(args: RunArgs) -> Result<u8, CliError> {
    if let Some(name) = &args.name {
        let home = crate::commands::vms::home()?;
        let choices = crate::vm_process::RunChoices {
            console: args.console,
            seccomp: args.seccomp,
            force: args.force,
            fresh: args.fresh,
            stats: args.stats,
            shares: absolute_shares(&args.shares)?,
            display: args.display.clone(),
        };
        return if args.detach {
            crate::commands::detach::run(&home, name, choices, args.wait)
        } else {
            crate::vm_process::run(&home, name, crate::vm_process::Mode::Foreground, choices)
        };
    }
    let mut config = build_config(&args)?;

    virtkit_sandbox::set_policy(config.platform.seccomp);
    // The sandbox's spawner and the allocator's settling start now, beside what follows.
    virtkit_sandbox::start_early();
    let events = Events::new();

    // On a terminal the guest gets raw keystrokes (Ctrl-C included); Ctrl-A x leaves.
    let interactive = stdin_is_terminal() && terminal_attachment(&mut config).is_some();
    let mut raw_mode = None;
    if interactive {
        let (quit_tx, quit_rx) = channel();
        let input = forward_stdin_with_escape(quit_tx)
            .map_err(|e| CliError::with_chain("cannot read the terminal", &e))?;
        let output = std::io::stdout()
            .lock()
            .try_clone_fd()
            .map_err(|e| CliError::with_chain("cannot use standard output", &e))?;
        if let Some(attachment) = terminal_attachment(&mut config) {
            *attachment = SerialAttachment::FileHandles {
                read: Some(input),
                write: Some(output),
            };
        }
        events.forward_quit(quit_rx);
    }

    let memory = config.memory_size;
    let mut vm = VirtualMachine::new(config).map_err(|e| CliError::new(e.to_string()))?;
    if !args.force {
        // The running VMs of the user's home count; this one has no bundle of its own.
        if let Ok(home) = virtkit_manager::VirtkitHome::from_env() {
            virtkit_manager::admission::admit_on_this_host(&home, None, memory)
                .map_err(|e| CliError::new(e.to_string()))?;
        }
    }
    let forwarding = events.catch(&vm)?;
    if interactive {
        raw_mode = Some(
            RawMode::enter().map_err(|e| CliError::with_chain("cannot put the terminal in raw mode", &e))?,
        );
        err!("virtkit: console attached; Ctrl-A x stops the VM\r\n");
    }
    vm.start().map_err(|e| {
        drop(raw_mode.take());
        CliError::with_chain("cannot start the virtual machine", &e)
    })?;
    forwarding.start()?;

    crate::vm_events::resize_consoles(&vm);
    events.drive(&vm, true, true);
    let reason = vm.wait();
    drop(raw_mode);
    match &reason {
        StopReason::GuestPoweredOff => {}
        StopReason::StoppedByHost => errln!("virtkit: stopped"),
        other => errln!("virtkit: {other}"),
    }
    if let Some(format) = args.stats {
        print_exit_statistics(&vm, format);
    }
    Ok(exit_code_for(&reason))
}

/// The console on standard input and output: COM1's, or else the hvc console port's.
fn terminal_attachment(config: &mut VirtualMachineConfiguration) -> Option<&mut SerialAttachment> {
    if let Some(port) = config.serial_ports.first_mut() {
        if matches!(port.attachment, SerialAttachment::Stdio) {
            return Some(&mut port.attachment);
        }
    }
    config
        .console_devices
        .iter_mut()
        .flat_map(|d| d.ports.iter_mut())
        .filter(|p| p.is_console)
        .find_map(|p| {
            p.attachment
                .as_mut()
                .filter(|a| matches!(a, SerialAttachment::Stdio))
        })
}

trait TryCloneFd {
    fn try_clone_fd(&self) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl<T: std::os::fd::AsFd> TryCloneFd for T {
    fn try_clone_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.as_fd().try_clone_to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn serial_choices_parse_and_bad_ones_say_what_is_allowed() {
        assert!(matches!(parse_serial("stdio"), Ok(SerialChoice::Stdio)));
        assert!(matches!(parse_serial("file:/tmp/x"), Ok(SerialChoice::File(p)) if p == Path::new("/tmp/x")));
        assert!(matches!(parse_serial("unix:/run/s"), Ok(SerialChoice::Unix(_))));
        let err = parse_serial("tcp:1234").unwrap_err();
        assert!(err.contains("stdio, none, file:PATH or unix:PATH"), "{err}");
    }
}
