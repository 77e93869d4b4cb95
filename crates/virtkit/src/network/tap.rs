//! TAP and bridged attachments: which TAP a card gets, the checks made before the VM starts,
//! and each failure as one sentence that names the fix.
//!
//! - `tap:NAME` opens a queue of the existing TAP `NAME` (made with `ip tuntap add NAME mode
//!   tap`, multi-queue or not); it never creates one and leaves its addresses and state alone.
//! - `tap` creates a TAP for the VM, `vk<pid in hex>n<card index>` (root or `CAP_NET_ADMIN`),
//!   sets it up, and leaves the rest (addresses, a bridge) to the user.
//! - `bridge:BR` creates such a TAP, makes it a port of the bridge `BR` and sets it up.
//!
//! A created TAP is never made persistent: it lives exactly as long as the VM process holds its
//! descriptor, which is close-on-exec and never handed to a helper such as passt. When the VM
//! stops its device is dropped and the TAP disappears, leaving the bridge with it; when the VM
//! process is killed the kernel closes the descriptor and the same happens. The ioctls are in
//! `virtkit_devices::net::tap`.

use std::path::Path;

use rustix::io::Errno;
use virtkit_devices::net::tap::{
    add_to_bridge, interface_exists, queue_holders, set_link_up, valid_name, Tap, TapError, MAX_NAME_LEN,
};

/// Why a TAP or bridged attachment cannot be set up; each message is one sentence naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum TapSetupError {
    #[error("`{name}` is not a usable interface name: it must be 1 to {MAX_NAME_LEN} bytes (IFNAMSIZ) with no `/`, `:` or spaces; choose a shorter or plainer name")]
    BadName { name: String },
    #[error("there is no TAP device {name}; create it first (`ip tuntap add {name} mode tap`, as root), or use `tap` alone to have virtkit create one")]
    NoSuchTap { name: String },
    #[error("{name} is not a TAP device; give a TAP (`ip tuntap add {name} mode tap`), or attach to a bridge with bridge:BRIDGE")]
    NotATap { name: String },
    #[error("TAP {name} is in use by another process{}; stop that VM or give this one another TAP", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy { name: String, pid: Option<u32> },
    #[error("{what} needs root (or CAP_NET_ADMIN and access to /dev/net/tun); run virtkit as root, give an existing TAP you may open with tap:NAME, or use nat")]
    NeedsAdmin { what: &'static str },
    #[error("not permitted to open TAP {name}: it belongs to another user or /dev/net/tun is closed to you; run virtkit as root or as the TAP's owner (`ip tuntap add {name} mode tap user USER`)")]
    NotPermitted { name: String },
    #[error("bridge {bridge} does not exist; create it (`ip link add {bridge} type bridge && ip link set {bridge} up`) or name an existing bridge")]
    NoSuchBridge { bridge: String },
    #[error("{bridge} is not a bridge; name a Linux bridge (`ip link add NAME type bridge`), or use tap:{bridge} if it is a TAP")]
    NotABridge { bridge: String },
    #[error("an interface {name} already exists, so virtkit will not create a TAP of that name; delete it (`ip link del {name}`) if it is left from an earlier run")]
    NameTaken { name: String },
    #[error("cannot set up TAP {name}")]
    Setup {
        name: String,
        #[source]
        source: TapError,
    },
}

/// The name of the TAP created for card `index` of this VM process.
pub fn created_name(index: usize) -> String {
    format!("vk{:x}n{index}", std::process::id())
}

/// Whether this process may create TAP devices: root or `CAP_NET_ADMIN` in effect, and
/// `/dev/net/tun` open to it.
pub fn may_create_taps() -> bool {
    let admin = rustix::process::geteuid().is_root() || has_net_admin();
    admin
        && rustix::fs::access(
            "/dev/net/tun",
            rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
        )
        .is_ok()
}

/// `CAP_NET_ADMIN` (12) in the effective set, from `/proc/self/status`.
fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

fn check_name(name: &str) -> Result<(), TapSetupError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(TapSetupError::BadName {
            name: name.to_owned(),
        })
    }
}

/// `/sys/class/net/NAME`: what sysfs says about an interface (of the network namespace sysfs
/// was mounted in; checks based on it are skipped when it does not show the interface).
fn sysfs(name: &str) -> std::path::PathBuf {
    Path::new("/sys/class/net").join(name)
}

fn exists(name: &str) -> bool {
    // An error here (no socket) is left for the attach to report.
    interface_exists(name).unwrap_or(true)
}

/// The checks for `tap:NAME` made by validation, without side effects: the name, that the
/// interface is there and is a TAP.
pub fn check_existing(name: &str) -> Result<(), TapSetupError> {
    check_name(name)?;
    if !exists(name) {
        return Err(TapSetupError::NoSuchTap {
            name: name.to_owned(),
        });
    }
    if let Ok(flags) = std::fs::read_to_string(sysfs(name).join("tun_flags")) {
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
        if flags & IFF_TAP == 0 {
            return Err(TapSetupError::NotATap {
                name: name.to_owned(),
            });
        }
    } else if sysfs(name).exists() {
        return Err(TapSetupError::NotATap {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Whether another process holds a queue of TAP `name` now (a check for starting a VM, not
/// for its configuration: a bundle for a TAP another VM uses may be made).
fn check_not_busy(name: &str) -> Result<(), TapSetupError> {
    match queue_holders(name).first() {
        Some(&pid) => Err(TapSetupError::Busy {
            name: name.to_owned(),
            pid: Some(pid),
        }),
        None => Ok(()),
    }
}

/// `IFF_TAP` in `/sys/class/net/NAME/tun_flags`.
const IFF_TAP: u32 = 0x0002;

/// The checks for `tap` (a TAP created for the VM), without side effects.
pub fn check_create() -> Result<(), TapSetupError> {
    if may_create_taps() {
        Ok(())
    } else {
        Err(TapSetupError::NeedsAdmin {
            what: "creating a TAP device for the VM",
        })
    }
}

/// The checks for `bridge:BR`, without side effects.
pub fn check_bridge(bridge: &str) -> Result<(), TapSetupError> {
    check_name(bridge)?;
    if !may_create_taps() {
        return Err(TapSetupError::NeedsAdmin {
            what: "a bridged network card (a TAP created and added to the bridge)",
        });
    }
    if !exists(bridge) {
        return Err(TapSetupError::NoSuchBridge {
            bridge: bridge.to_owned(),
        });
    }
    let dir = sysfs(bridge);
    if dir.exists() && !dir.join("bridge").exists() {
        return Err(TapSetupError::NotABridge {
            bridge: bridge.to_owned(),
        });
    }
    Ok(())
}

/// Opens up to `queues` queues of the existing TAP `name` (one if it is single-queue).
pub fn open_existing(name: &str, queues: usize) -> Result<Vec<Tap>, TapSetupError> {
    check_existing(name)?;
    check_not_busy(name)?;
    Tap::open_existing(name)
        .and_then(|tap| tap.with_queues(queues))
        .map_err(|e| classify(name, e))
}

/// Creates the TAP `name` for the VM (multi-queue, `queues` queues opened, set up) and, with
/// `bridge`, makes it a port of that bridge. Nothing is left behind on failure: the TAP goes
/// with its descriptors.
pub fn create(name: &str, bridge: Option<&str>, queues: usize) -> Result<Vec<Tap>, TapSetupError> {
    check_name(name)?;
    match bridge {
        Some(bridge) => check_bridge(bridge)?,
        None => check_create()?,
    }
    if exists(name) {
        return Err(TapSetupError::NameTaken {
            name: name.to_owned(),
        });
    }
    let tap = Tap::open(name, true).map_err(|e| classify(name, e))?;
    if let Some(bridge) = bridge {
        add_to_bridge(bridge, tap.name()).map_err(|e| match &e {
            TapError::Io { source, .. }
                if matches!(
                    Errno::from_io_error(source),
                    Some(Errno::OPNOTSUPP | Errno::INVAL)
                ) =>
            {
                TapSetupError::NotABridge {
                    bridge: bridge.to_owned(),
                }
            }
            TapError::Io { source, .. } if Errno::from_io_error(source) == Some(Errno::NODEV) => {
                TapSetupError::NoSuchBridge {
                    bridge: bridge.to_owned(),
                }
            }
            _ => TapSetupError::Setup {
                name: name.to_owned(),
                source: e,
            },
        })?;
    }
    set_link_up(tap.name()).map_err(|source| TapSetupError::Setup {
        name: name.to_owned(),
        source,
    })?;
    tap.with_queues(queues).map_err(|e| classify(name, e))
}

fn classify(name: &str, e: TapError) -> TapSetupError {
    match e {
        TapError::BadName(name) => TapSetupError::BadName { name },
        TapError::NotFound(name) => TapSetupError::NoSuchTap { name },
        TapError::Busy(name) => TapSetupError::Busy { name, pid: None },
        TapError::Mismatch(name, _) => TapSetupError::NotATap { name },
        TapError::NotPermitted(name, _) => TapSetupError::NotPermitted { name },
        TapError::OpenTun(ref source)
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound
            ) =>
        {
            TapSetupError::NotPermitted {
                name: name.to_owned(),
            }
        }
        other => TapSetupError::Setup {
            name: name.to_owned(),
            source: other,
        },
    }
}
