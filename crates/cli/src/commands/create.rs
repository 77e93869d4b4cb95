//! `virtkit create NAME`: a new VM bundle, from a restore image (raw or qcow2) or with an empty
//! disk, booting firmware (default) or a Linux kernel.

use std::path::PathBuf;

use clap::Args;

use crate::commands::network_flags::{self, NetworkChoice};
use virtkit::parse_size;
use virtkit_manager::bundle::{
    Bundle, NewBoot, NewBundle, DEFAULT_EFI_CODE, DEFAULT_EFI_VARS, DEFAULT_FIRMWARE,
};
use virtkit_manager::seed::SeedSettings;

use crate::commands::vms::{bundle_error_in, home, human_size};
use crate::exit::CliError;
use crate::progress::LazyProgress;

#[derive(Args)]
pub struct CreateArgs {
    /// The VM's name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// A restore image to install on the boot disk: a raw or qcow2 disk image file, or the name
    /// of an image in the catalog (`virtkit images`), downloaded and verified first.
    #[arg(long)]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub catalog: crate::commands::images::CatalogArg,
    /// Keep a copy of the restore image in the bundle (a reflink where the file system can).
    #[arg(long, requires = "from")]
    pub keep_image: bool,
    /// The boot disk's size, like 20G: at least the image's [default: the image's, or 20G].
    #[arg(long, value_parser = parse_size)]
    pub disk_size: Option<u64>,
    /// How the boot disk is stored: raw (a sparse file), or qcow2 (layered: the installed
    /// image becomes a read-only layer, so snapshots and clones take no time on any file system).
    #[arg(long, value_name = "raw|qcow2", default_value = "raw", value_parser = ["raw", "qcow2"])]
    pub disk_format: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Guest memory, like 2G.
    #[arg(long, value_parser = parse_size, default_value = "2G")]
    pub memory: u64,
    /// Boot this BIOS firmware from the disk [default: /usr/share/seabios/bios.bin]; with
    /// --efi, this EFI firmware's code [default: /usr/share/OVMF/OVMF_CODE_4M.fd].
    #[arg(long, conflicts_with = "kernel")]
    pub firmware: Option<PathBuf>,
    /// Boot by EFI (OVMF): its variables (boot entries, efibootmgr's changes) live in the
    /// bundle's aux.img and survive power-offs.
    #[arg(long, conflicts_with = "kernel")]
    pub efi: bool,
    /// The variable store aux.img starts as: the VARS file of the --firmware's build
    /// [default: /usr/share/OVMF/OVMF_VARS_4M.fd].
    #[arg(long, value_name = "VARS.fd", requires = "efi")]
    pub efi_vars: Option<PathBuf>,
    /// Boot this Linux kernel directly (copied into the bundle).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// The kernel's initrd (copied into the bundle).
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// The kernel's command line.
    #[arg(long, requires = "kernel", default_value = "console=ttyS0")]
    pub cmdline: String,
    /// A named virtio-console port (the guest's `/dev/virtio-ports/NAME`, such as
    /// org.qemu.guest_agent.0), on a Unix socket in the bundle; `virtkit console NAME --port
    /// PORT` attaches to it. Repeat for more.
    #[arg(long = "port")]
    pub ports: Vec<String>,
    /// A network card: nat (user-mode NAT through passt; the guest gets 10.0.2.15 by DHCP),
    /// tap:NAME (an existing TAP device), tap (a TAP created for the VM, as root),
    /// bridge:BRIDGE (a TAP created and added to the bridge, as root) or none. Repeat for more
    /// cards [default: nat].
    #[arg(long = "network", value_name = "nat|none|tap[:NAME]|bridge:BRIDGE", value_parser = network_flags::parse_network)]
    pub networks: Vec<NetworkChoice>,
    /// An SSH public key for the guest's user (cloud-init): a .pub file; repeat for more
    /// [default: ~/.ssh/*.pub]. Makes a cloud-init seed.
    #[arg(long = "ssh-key", value_name = "FILE.pub")]
    pub ssh_keys: Vec<PathBuf>,
    /// The user cloud-init makes in the guest, with sudo and the keys [default: your login
    /// name, or virtkit for root]. Makes a cloud-init seed.
    #[arg(long)]
    pub user: Option<String>,
    /// The guest's hostname [default: the VM's name]. Makes a cloud-init seed.
    #[arg(long)]
    pub hostname: Option<String>,
    /// More user-data (a #cloud-config or a #! script), merged after virtkit's. Makes a
    /// cloud-init seed.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// No cloud-init seed, even for a firmware boot from an image (which gets one by default).
    #[arg(long, conflicts_with_all = ["ssh_keys", "user", "hostname", "user_data"])]
    pub no_seed: bool,
    /// Publish a guest port on the host through the NAT card (adds one if there is none).
    #[arg(long = "publish", value_name = "[ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]", value_parser = network_flags::parse_publish)]
    pub published: Vec<virtkit::PublishedPort>,
    /// Share a host directory with the guest: PATH[:TAG[:ro]] (the tag defaults to the
    /// directory's name; mount it in the guest with `mount -t virtiofs TAG DIR`). Repeat for
    /// more; `virtkit set NAME --share` replaces them.
    #[arg(long = "share", value_name = "PATH[:TAG[:ro]]", value_parser = virtkit::DirectorySharingDeviceConfiguration::parse_cli)]
    pub shares: Vec<virtkit::DirectorySharingDeviceConfiguration>,
}

/// The cloud-init seed `create` makes: when asked for (a seed option), or by default for a
/// firmware boot from an image (a cloud image: what runs cloud-init); never with `--no-seed`.
/// A Linux-kernel boot gets none unless asked: its initrd decides what runs.
fn seed_for(args: &CreateArgs) -> Result<Option<(SeedSettings, Option<PathBuf>)>, CliError> {
    let asked = !args.ssh_keys.is_empty()
        || args.user.is_some()
        || args.hostname.is_some()
        || args.user_data.is_some();
    let by_default = args.kernel.is_none() && args.from.is_some();
    if args.no_seed || !(asked || by_default) {
        return Ok(None);
    }
    let keys = if args.ssh_keys.is_empty() {
        SeedSettings::default_keys()
    } else {
        args.ssh_keys.clone()
    };
    let settings = SeedSettings::new(
        args.user.as_deref(),
        &keys,
        args.hostname.as_deref(),
        args.user_data.as_deref(),
    )
    .map_err(|e| CliError::new(format!("cannot make the cloud-init seed of `{}`: {e}", args.name)))?;
    if args
        .from
        .as_ref()
        .is_some_and(|f| is_catalog_name(f) && f.to_string_lossy().contains("nocloud"))
    {
        errln!(
            "note: {} has no cloud-init, so the seed (user, key, hostname, agent) does nothing there; the genericcloud image runs it",
            args.from.as_ref().map(|f| f.display().to_string()).unwrap_or_default()
        );
    }
    if settings.ssh_authorized_keys.is_empty() {
        errln!(
            "note: no SSH key for `{}`'s user {} (none in ~/.ssh/*.pub): give one with --ssh-key; `virtkit exec` works without",
            args.name,
            settings.user
        );
    }
    Ok(Some((settings, virtkit_manager::seed::find_agent())))
}

/// `--efi`: OVMF's code and the VARS file `aux.img` starts as, which must be there.
fn efi_boot(args: &CreateArgs) -> Result<NewBoot, CliError> {
    let code = args.firmware.clone().unwrap_or_else(|| DEFAULT_EFI_CODE.into());
    let variables = args.efi_vars.clone().unwrap_or_else(|| DEFAULT_EFI_VARS.into());
    for (file, flag) in [(&code, "--firmware CODE.fd"), (&variables, "--efi-vars VARS.fd")] {
        if !file.is_file() {
            return Err(CliError::new(format!(
                "cannot create `{}`: the EFI firmware file {} does not exist; install Debian's ovmf package (apt-get install ovmf) or give {flag}",
                args.name,
                file.display()
            )));
        }
    }
    Ok(NewBoot::Efi { code, variables })
}

/// `--from NAME` means a catalog image when NAME is no file here and looks like no path.
fn is_catalog_name(from: &std::path::Path) -> bool {
    !from.exists() && from.components().count() == 1 && from.extension().is_none()
}

pub fn run(args: &CreateArgs) -> Result<u8, CliError> {
    let home = home()?;
    let boot = match &args.kernel {
        Some(kernel) => NewBoot::Linux {
            kernel: kernel.clone(),
            initrd: args.initrd.clone(),
            command_line: args.cmdline.clone(),
        },
        None if args.efi => efi_boot(args)?,
        None => NewBoot::Firmware {
            path: args.firmware.clone().unwrap_or_else(|| DEFAULT_FIRMWARE.into()),
        },
    };
    let restore_image = match &args.from {
        Some(from) if is_catalog_name(from) => Some(crate::commands::images::pull_image(
            &from.to_string_lossy(),
            &args.catalog,
            &home,
        )?),
        other => other.clone(),
    };
    network_flags::check_bundle_choices(&args.networks).map_err(CliError::new)?;
    // NAT by default: outbound works with no root and no setup, as tart's and lima's VMs do.
    let networks = if args.networks.is_empty() {
        vec![NetworkChoice::Nat]
    } else {
        args.networks.clone()
    };
    let mut network_devices = Vec::new();
    network_flags::apply(&mut network_devices, &networks, &args.published).map_err(CliError::new)?;
    let seed = seed_for(args)?;
    let spec = NewBundle {
        cpu_count: args.cpus,
        memory_size: args.memory,
        boot,
        restore_image,
        disk_size: args.disk_size,
        keep_restore_image: args.keep_image,
        ports: args.ports.clone(),
        network_devices,
        shares: args.shares.clone(),
        seed,
    };
    let mut progress = LazyProgress::new(format!("create {}", args.name));
    let mut bundle = Bundle::create(&home, &args.name, &spec, &mut |done, total| {
        progress.report(done, total)
    })
    .map_err(|e| bundle_error_in(format!("cannot create the VM `{}`", args.name), &e))?;
    progress.finish();
    if args.disk_format == "qcow2" {
        if let Err(e) = bundle.use_layered_disk() {
            // The VM exists with a raw disk: say so rather than leave a half-made one.
            return Err(bundle_error_in(
                format!(
                    "created `{}`, but cannot make its disk layered (it stays raw; `virtkit snapshot create` will try again)",
                    args.name
                ),
                &e,
            ));
        }
    }
    if network_flags::uses_nat(&bundle.configuration().network_devices) && !network_flags::passt_installed() {
        errln!(
            "note: `{}` has a NAT network card, which needs passt, and passt is not installed: \
             install it (Debian/Ubuntu: apt install passt), or run `virtkit set {} --network none`",
            bundle.name(),
            bundle.name()
        );
    }
    let disk = bundle.disk_size().unwrap_or(0);
    outln!(
        "created `{}`: {} vCPUs, {} memory, {} disk ({} used) in {}",
        bundle.name(),
        args.cpus,
        human_size(args.memory),
        human_size(disk),
        human_size(bundle.disk_usage()),
        bundle.path().display()
    );
    Ok(0)
}
