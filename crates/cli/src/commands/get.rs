//! `virtkit get NAME` and `virtkit set NAME`: read and change a VM's CPUs, memory, disk size,
//! extra disks, recorded external paths and machine identity, and a running VM's memory balloon.

use clap::Args;
use serde_json::json;
use std::path::PathBuf;

use virtkit::{parse_size, BootLoader, StorageDeviceConfiguration, VirtualMachineConfiguration};

use virtkit_manager::bundle::Change;
use virtkit_manager::control::{ControlCommand, ControlRequest, ControlResponse};

use crate::commands::network_flags::{self, NetworkChoice};
use crate::commands::vms::{
    ask_request, bundle_error_in, home, human_size, open, print_json, state_of, Format,
};
use crate::exit::CliError;

#[derive(Args)]
pub struct GetArgs {
    pub name: String,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args)]
pub struct SetArgs {
    pub name: String,
    /// Number of vCPUs.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Guest memory, like 4G.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// The boot disk's new size, like 40G (it can only grow).
    #[arg(long, value_parser = parse_size)]
    pub disk_size: Option<u64>,
    /// Attach another disk: PATH[,ro][,cache=uncached][,sync=none][,serial=ID]. The path is
    /// recorded as one the VM may use outside its bundle (`virtkit get` lists them). Repeat for
    /// more.
    #[arg(long = "add-disk", value_parser = StorageDeviceConfiguration::parse_cli)]
    pub add_disks: Vec<StorageDeviceConfiguration>,
    /// Trust a path outside the bundle that the VM's config.json already names (after editing
    /// it by hand): record it so `run` uses it. Repeat for more.
    #[arg(long = "allow-path")]
    pub allow_paths: Vec<PathBuf>,
    /// Give the VM a new machine identifier (new SMBIOS UUID, serial and MAC addresses), as a
    /// bundle copied by hand needs before it runs beside its original.
    #[arg(long)]
    pub new_identity: bool,
    /// Replace the VM's network cards: nat, tap:NAME, tap, bridge:BRIDGE or none, one card per
    /// flag (each keeps the MAC derived from the machine id for its place).
    #[arg(long = "network", value_name = "nat|none|tap[:NAME]|bridge:BRIDGE", value_parser = network_flags::parse_network)]
    pub networks: Vec<NetworkChoice>,
    /// Publish a guest port on the host through the NAT card (adds one if there is none).
    #[arg(long = "publish", value_name = "[ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]", value_parser = network_flags::parse_publish)]
    pub published: Vec<virtkit::PublishedPort>,
    /// On a running VM: the memory its balloon takes from the guest, like 512M (0 gives it
    /// all back). The guest's driver gives it in its own time; `virtkit get` shows progress.
    #[arg(long, value_parser = parse_size)]
    pub balloon: Option<u64>,
    /// Replace the VM's shared directories: PATH[:TAG[:ro]] each (the tag defaults to the
    /// directory's name); the paths are recorded as ones the VM may use. Repeat for more.
    #[arg(long = "share", value_name = "PATH[:TAG[:ro]]", value_parser = virtkit::DirectorySharingDeviceConfiguration::parse_cli)]
    pub shares: Vec<virtkit::DirectorySharingDeviceConfiguration>,
    /// Remove every shared directory.
    #[arg(long, conflicts_with = "shares")]
    pub no_shares: bool,
}

pub fn get(args: &GetArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let c = b.configuration();
    let id = b.machine_identifier();
    let boot = match &c.boot_loader {
        BootLoader::Linux { .. } => "linux",
        BootLoader::Firmware {
            variable_store: Some(_),
            ..
        } => "efi",
        BootLoader::Firmware { .. } => "firmware",
    };
    let value = json!({
        "name": b.name(),
        "state": state_of(&b),
        "pid": b.running_pid(),
        "cpus": c.cpu_count,
        "memory": c.memory_size,
        "disk_size": b.disk_size().unwrap_or(0),
        "disk_use": b.disk_usage(),
        "boot": boot,
        "machine_id": id.to_string(),
        "serial_number": id.serial_number(),
        "mac_address": id.mac_address_text(0),
        "network": network_of(c, &id),
        "shares": c.directory_sharing_devices.iter().map(|s| json!({
            "tag": s.tag,
            "path": s.path,
            "read_only": s.read_only,
        })).collect::<Vec<_>>(),
        "seed": seed_of(&b),
        "machine_model": b.hardware_model().machine,
        "path": b.path(),
        "external_paths": b.external_paths(),
        "balloon": balloon_of(&b),
        "vsock": vsock_of(&b),
        "agent": agent_of(&b),
    });
    match args.format {
        Format::Json => print_json(&value),
        Format::Text => {
            for (k, v) in value.as_object().into_iter().flatten() {
                let text = match (k.as_str(), v) {
                    ("memory" | "disk_size" | "disk_use", v) => {
                        v.as_u64().map(human_size).unwrap_or_default()
                    }
                    ("balloon", serde_json::Value::Object(b)) => balloon_text(b),
                    ("vsock", v) => format!("cid {} {}", v["guest_cid"], v["socket"].as_str().unwrap_or("-")),
                    ("seed", serde_json::Value::Object(s)) => format!(
                        "cloud-init: user {}, {} SSH key(s), hostname {}{}{}",
                        s.get("user").and_then(|v| v.as_str()).unwrap_or("-"),
                        s.get("ssh_keys").and_then(|v| v.as_u64()).unwrap_or(0),
                        s.get("hostname").and_then(|v| v.as_str()).unwrap_or("-"),
                        if s.get("user_data").and_then(|v| v.as_bool()).unwrap_or(false) {
                            ", own user-data"
                        } else {
                            ""
                        },
                        if s.get("agent").and_then(|v| v.as_bool()).unwrap_or(false) {
                            ", guest agent"
                        } else {
                            ", no guest agent"
                        },
                    ),
                    ("external_paths", serde_json::Value::Array(paths)) if !paths.is_empty() => paths
                        .iter()
                        .filter_map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join("\n               "),
                    ("shares", serde_json::Value::Array(shares)) if !shares.is_empty() => shares
                        .iter()
                        .map(|s| {
                            format!(
                                "{} {}{}",
                                s["tag"].as_str().unwrap_or("-"),
                                s["path"].as_str().unwrap_or("-"),
                                if s["read_only"].as_bool().unwrap_or(false) {
                                    " (read-only)"
                                } else {
                                    ""
                                }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n               "),
                    ("external_paths", _) | ("network", _) | ("shares", _)
                        if v.as_array().is_some_and(|a| a.is_empty()) =>
                    {
                        "-".into()
                    }
                    ("network", serde_json::Value::Array(cards)) => cards
                        .iter()
                        .map(card_text)
                        .collect::<Vec<_>>()
                        .join("\n               "),
                    (_, serde_json::Value::String(s)) => s.clone(),
                    (_, serde_json::Value::Null) => "-".into(),
                    (_, v) => v.to_string(),
                };
                outln!("{k:<14} {text}");
            }
        }
    }
    Ok(0)
}

/// The socket device: the guest's CID and the host socket (`vsock.sock` in the bundle unless
/// the configuration names another), whether or not the VM runs.
fn vsock_of(b: &virtkit_manager::bundle::Bundle) -> serde_json::Value {
    let c = b.configuration();
    let (cid, path) = match c.socket_devices.first() {
        Some(d) if d.uds_path.is_relative() => (d.guest_cid, b.path().join(&d.uds_path)),
        Some(d) => (d.guest_cid, d.uds_path.clone()),
        None => (
            virtkit::DEFAULT_GUEST_CID,
            b.file(virtkit_manager::bundle::VSOCK_SOCKET),
        ),
    };
    json!({ "guest_cid": cid, "socket": path })
}

/// `02:00:00:12:34:56 nat 127.0.0.1:2222->22/tcp`
fn card_text(card: &serde_json::Value) -> String {
    let mut text = format!(
        "{} {}",
        card["mac"].as_str().unwrap_or("-"),
        card["attachment"].as_str().unwrap_or("")
    );
    for p in card["published"].as_array().into_iter().flatten() {
        let host = p["host_address"].as_str().unwrap_or("");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        text.push_str(&format!(
            " {host}:{}->{}/{}",
            p["host_port"],
            p["guest_port"],
            p["protocol"].as_str().unwrap_or("tcp")
        ));
    }
    text
}

/// The cloud-init seed's user, keys, hostname and whether it carries the agent.
fn seed_of(b: &virtkit_manager::bundle::Bundle) -> serde_json::Value {
    match virtkit_manager::seed::SeedSettings::load(b.path()) {
        Ok(Some(s)) => json!({
            "user": s.user,
            "ssh_keys": s.ssh_authorized_keys.len(),
            "hostname": s.hostname.unwrap_or_else(|| virtkit_manager::seed::hostname_for(b.name())),
            "agent": s.written_for.is_some_and(|w| w.agent),
            "user_data": s.extra_user_data.is_some(),
        }),
        Ok(None) => serde_json::Value::Null,
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// Each network card: its MAC address, attachment and published ports.
fn network_of(c: &VirtualMachineConfiguration, id: &virtkit::MachineIdentifier) -> serde_json::Value {
    let cards: Vec<serde_json::Value> = c
        .network_devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let published = match &d.attachment {
                virtkit::NetworkAttachment::Nat { published } => published
                    .iter()
                    .map(|p| serde_json::to_value(p).unwrap_or_default())
                    .collect(),
                _ => Vec::new(),
            };
            json!({
                "mac": d.mac_address(i, Some(id)),
                "attachment": network_flags::describe(&d.attachment),
                "published": published,
            })
        })
        .collect();
    json!(cards)
}

/// The running VM's balloon (target, what the guest gave, its memory statistics), if it has one.
fn balloon_of(b: &virtkit_manager::bundle::Bundle) -> serde_json::Value {
    if !b.is_running() {
        return serde_json::Value::Null;
    }
    match ask_request(b, &ControlRequest::new(ControlCommand::Balloon)) {
        Ok(ControlResponse {
            balloon: Some(status),
            ..
        }) => serde_json::to_value(status).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// `takes 512 MiB (given 512 MiB); guest: 1.2 GiB free of 2 GiB`
fn balloon_text(b: &serde_json::Map<String, serde_json::Value>) -> String {
    let size = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_u64()).map(human_size);
    let mut text = format!(
        "takes {} (given {})",
        size(b.get("target_bytes")).unwrap_or_default(),
        size(b.get("actual_bytes")).unwrap_or_default()
    );
    if let Some(stats) = b.get("statistics") {
        if let (Some(free), Some(total)) = (size(stats.get("free_memory")), size(stats.get("total_memory"))) {
            text.push_str(&format!("; guest: {free} free of {total}"));
        }
    }
    text
}

/// Sets the running VM's balloon target.
fn set_balloon(args: &SetArgs, bytes: u64) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let request = ControlRequest {
        target_bytes: Some(bytes),
        ..ControlRequest::new(ControlCommand::Balloon)
    };
    let response = ask_request(&b, &request)?;
    match (response.ok, response.balloon) {
        (true, Some(status)) => {
            outln!(
                "`{}`: the balloon takes {} from the guest (it has given {} so far)",
                args.name,
                human_size(status.target_bytes),
                human_size(status.actual_bytes)
            );
            Ok(0)
        }
        _ => Err(CliError::new(format!(
            "cannot set the balloon of `{}`: {}",
            args.name,
            response.error.unwrap_or_else(|| "refused".into())
        ))),
    }
}

pub fn set(args: &SetArgs) -> Result<u8, CliError> {
    let changes_config = args.cpus.is_some()
        || args.memory.is_some()
        || args.disk_size.is_some()
        || !args.add_disks.is_empty()
        || !args.allow_paths.is_empty()
        || args.new_identity
        || !args.networks.is_empty()
        || !args.published.is_empty()
        || !args.shares.is_empty()
        || args.no_shares;
    if let Some(bytes) = args.balloon {
        if changes_config {
            return Err(CliError::new(
                "--balloon changes a running VM and the others a stopped one; give them in two commands",
            ));
        }
        return set_balloon(args, bytes);
    }
    if !changes_config {
        return Err(CliError::new(
            "nothing to change: give --cpus, --memory, --disk-size, --add-disk, --allow-path, \
             --new-identity, --network, --publish, --share, --no-shares, or --balloon on a running VM",
        ));
    }
    let home = home()?;
    let mut b = open(&home, &args.name)?;
    let context = format!("cannot change the VM `{}`", args.name);
    let mut c = VirtualMachineConfiguration::from_json(&b.configuration().to_json())
        .map_err(|e| CliError::with_chain(context.clone(), &e))?;
    if let Some(cpus) = args.cpus {
        c.cpu_count = cpus;
    }
    if let Some(memory) = args.memory {
        c.memory_size = memory;
    }
    if !args.networks.is_empty() || !args.published.is_empty() {
        network_flags::check_bundle_choices(&args.networks)
            .map_err(|e| CliError::new(format!("{context}: {e}")))?;
        if !args.networks.is_empty() {
            c.network_devices.clear();
        }
        network_flags::apply(&mut c.network_devices, &args.networks, &args.published)
            .map_err(|e| CliError::new(format!("{context}: {e}")))?;
    }
    let mut record = Vec::new();
    for disk in &args.add_disks {
        let mut disk = disk.clone();
        disk.path = absolute(&disk.path)?;
        record.push(disk.path.clone());
        c.storage_devices.push(disk);
    }
    if !args.shares.is_empty() || args.no_shares {
        c.directory_sharing_devices.clear();
    }
    for share in &args.shares {
        let mut share = share.clone();
        share.path = absolute(&share.path)?;
        record.push(share.path.clone());
        c.directory_sharing_devices.push(share);
    }
    for path in &args.allow_paths {
        let path = absolute(path)?;
        if !names_path(&c, &path) {
            return Err(CliError::new(format!(
                "{context}: its configuration does not name {}, so there is nothing to allow; \
                 `--add-disk` attaches a new disk",
                path.display()
            )));
        }
        record.push(path);
    }
    // One change, checked whole before anything is written: a refused part changes nothing.
    b.change(Change {
        config: Some(c),
        disk_size: args.disk_size,
        record,
        new_identity: args.new_identity,
    })
    .map_err(|e| bundle_error_in(context.clone(), &e))?;
    outln!(
        "`{}`: {} vCPUs, {} memory, {} disk{}",
        b.name(),
        b.configuration().cpu_count,
        human_size(b.configuration().memory_size),
        human_size(b.disk_size().unwrap_or(0)),
        if args.new_identity {
            format!(", new machine id {}", b.machine_identifier())
        } else {
            String::new()
        }
    );
    Ok(0)
}

/// A path given on the command line, made absolute (a bundle's relative paths are its own files).
fn absolute(path: &std::path::Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path).map_err(|e| CliError::with_chain(format!("cannot find {}", path.display()), &e))
}

/// Whether the stored configuration names `path` (as written in it).
fn names_path(c: &VirtualMachineConfiguration, path: &std::path::Path) -> bool {
    let in_boot = match &c.boot_loader {
        BootLoader::Linux { kernel, initrd, .. } => kernel == path || initrd.as_deref() == Some(path),
        BootLoader::Firmware {
            path: p,
            variable_store,
        } => p == path || variable_store.as_deref() == Some(path),
    };
    in_boot || c.storage_devices.iter().any(|d| d.path == path)
}

/// The guest agent of a running VM, once it said hello.
fn agent_of(b: &virtkit_manager::bundle::Bundle) -> serde_json::Value {
    if !b.is_running() {
        return serde_json::Value::Null;
    }
    match crate::commands::vms::ask(b, virtkit_manager::control::ControlCommand::State) {
        Ok(r) => serde_json::to_value(r.agent).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}
