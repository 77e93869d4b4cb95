//! Shared directories, as Apple's `VZVirtioFileSystemDeviceConfiguration`: each share is a
//! virtio-fs device (`virtkit_devices::fs`) whose requests a virtiofsd of its own serves from the
//! host directory, through the vhost-user frontend. The guest mounts it by tag
//! (`mount -t virtiofs TAG DIR`).
//!
//! virtiofsd is a helper process of the VM process (`virtkit_sandbox::helper_process`): its own
//! session, only its socket passed, `PR_SET_PDEATHSIG`, stopped when the device manager drops.
//! Its socket is a listener we bind in a fresh 0700 directory, connect to at once (the
//! connection waits in the backlog, so ours is the one virtiofsd accepts) and remove before
//! virtiofsd starts: no socket file is left for anyone else to reach, and when the VM process
//! dies, even by `kill -9`, the kernel closes our end and virtiofsd exits with it (the death
//! signal alone does not reach the process virtiofsd forks into its namespace sandbox).
//!
//! Sandbox and ownership: as root, virtiofsd gets `--sandbox namespace` (mount, PID and network
//! namespaces, pivoted into the share), falling back to `chroot` where namespaces or
//! `pivot_root` are not available (an initramfs root), then `none`; its seccomp filter stays on.
//! Files keep their owners as the guest sets them (guest uid N is host uid N), as with QEMU.
//! As another user, virtiofsd runs `--sandbox none` with that user's rights and
//! `--translate-uid/--translate-gid squash-guest:0:<our uid/gid>:…`: every guest uid and gid
//! becomes ours, so every file the guest creates belongs to the user who ran virtkit (lima's
//! and colima's users' request; without the squash virtiofsd would try to switch to the guest's
//! uid, which an unprivileged process cannot, and the guest's creates would fail), and files
//! that user cannot read stay unreadable. Host uids reach the guest unchanged, so the guest's
//! own permission checks agree best when its user has the host user's uid.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtkit_devices::fs::{check_tag, FileSystem, PCI_CLASS};
use virtkit_devices::vhost_user::VhostUserConnection;
use virtkit_machine::Machine;
use virtkit_sandbox::{HelperCommand, HelperError, HelperLog, HelperProcess};
use virtkit_virtio::transport::pci::attach as attach_pci;

use super::{DeviceError, DeviceManager};
use crate::validate::Issues;

/// Where virtkit looks for virtiofsd, after `$VIRTKIT_VIRTIOFSD` and `PATH`.
pub const VIRTIOFSD_LOCATIONS: [&str; 2] = ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];
/// The environment variable naming the virtiofsd to run.
pub const VIRTIOFSD_ENV: &str = "VIRTKIT_VIRTIOFSD";
/// Request queues per share (plus the high-priority queue).
const REQUEST_QUEUES: u16 = 1;

/// A host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct DirectorySharingDeviceConfiguration {
    /// The name the guest mounts it by (at most 36 bytes, unique in the machine).
    pub tag: String,
    /// The host directory.
    pub path: PathBuf,
    /// The guest's writes fail with EROFS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl DirectorySharingDeviceConfiguration {
    /// Parses the CLI form `PATH[:TAG[:ro]]`; the tag defaults to the directory's name.
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let path = PathBuf::from(parts.next().unwrap_or_default());
        if path.as_os_str().is_empty() {
            return Err("give the directory to share: --share PATH[:TAG[:ro]]".into());
        }
        let tag = match parts.next() {
            Some(tag) if !tag.is_empty() => tag.to_string(),
            _ => default_tag(&path)?,
        };
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some("rw") => false,
            Some(other) => {
                return Err(format!(
                    "`{other}` is not a share mode; write PATH[:TAG[:ro]] (ro: read-only, rw: read-write)"
                ))
            }
        };
        if let Some(extra) = parts.next() {
            return Err(format!(
                "`{extra}` after the mode is not understood; write PATH[:TAG[:ro]] (a path with `:` cannot be shared from the command line: use --config)"
            ));
        }
        Ok(DirectorySharingDeviceConfiguration { tag, path, read_only })
    }
}

/// The tag a share gets when none is given: the directory's own name (`/` has none).
fn default_tag(path: &Path) -> Result<String, String> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let name = absolute
        .components()
        .rev()
        .find_map(|c| match c {
            std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .ok_or_else(|| format!("{} has no name to use as its tag; write PATH:TAG", path.display()))?;
    Ok(name)
}

pub(super) fn validate(devices: &[DirectorySharingDeviceConfiguration], issues: &mut Issues) {
    for (i, share) in devices.iter().enumerate() {
        let field = |name: &str| format!("directory_sharing_devices[{i}].{name}");
        match std::fs::metadata(&share.path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => issues.add(
                &field("path"),
                format!(
                    "{} is not a directory; share a directory (the one that holds this file)",
                    share.path.display()
                ),
            ),
            Err(e) => issues.add(
                &field("path"),
                format!(
                    "{} cannot be shared ({e}); give an existing directory",
                    share.path.display()
                ),
            ),
        }
        if let Err(e) = check_tag(&share.tag) {
            issues.add(&field("tag"), e.to_string());
        }
        if let Some(j) = devices[..i].iter().position(|other| other.tag == share.tag) {
            issues.add(
                &field("tag"),
                format!(
                    "the tag `{}` is already directory_sharing_devices[{j}]'s; give each share its own tag",
                    share.tag
                ),
            );
        }
    }
}

/// Why virtiofsd could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error("virtiofsd is not installed: build it with `cargo install virtiofsd` (needs libseccomp-dev and libcap-ng-dev; scripts/build-virtiofsd.sh in virtkit's tree does it), install your distribution's virtiofsd package, or point {VIRTIOFSD_ENV} at one")]
    NotInstalled,
    #[error("{} is QEMU's old C virtiofsd, which virtkit does not drive; install the Rust virtiofsd (`cargo install virtiofsd`) or point {VIRTIOFSD_ENV} at one", .0.display())]
    OldDaemon(PathBuf),
    #[error("cannot make virtiofsd's socket: {0}")]
    Socket(#[source] io::Error),
    #[error(transparent)]
    Helper(#[from] HelperError),
    #[error("virtiofsd did not start for {path} ({reason}); {hint}")]
    Failed {
        path: PathBuf,
        reason: String,
        hint: String,
    },
}

/// The Rust virtiofsd's `--help` names `--shared-dir`; QEMU's C daemon takes `-o source=`.
fn is_rust_virtiofsd(program: &Path) -> bool {
    std::process::Command::new(program)
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).contains("--shared-dir"))
}

/// Finds virtiofsd: `$VIRTKIT_VIRTIOFSD`, `virtiofsd` on `PATH`, then [`VIRTIOFSD_LOCATIONS`].
pub fn find_virtiofsd() -> Result<PathBuf, VirtiofsdError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os(VIRTIOFSD_ENV).filter(|p| !p.is_empty()) {
        // Named explicitly: it is the one, or nothing.
        let path = PathBuf::from(path);
        return match virtkit_sandbox::find_program(&path) {
            Some(found) if is_rust_virtiofsd(&found) => Ok(found),
            Some(found) => Err(VirtiofsdError::OldDaemon(found)),
            None => Err(VirtiofsdError::NotInstalled),
        };
    }
    candidates.extend(virtkit_sandbox::find_program(Path::new("virtiofsd")));
    candidates.extend(
        VIRTIOFSD_LOCATIONS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file()),
    );
    let mut old = None;
    for candidate in candidates {
        if is_rust_virtiofsd(&candidate) {
            return Ok(candidate);
        }
        old.get_or_insert(candidate);
    }
    Err(old.map_or(VirtiofsdError::NotInstalled, VirtiofsdError::OldDaemon))
}

/// The virtiofsd sandboxes to try, strongest first: namespaces need root (and `pivot_root`,
/// which an initramfs root lacks), `chroot` needs root.
fn sandboxes() -> &'static [&'static str] {
    if rustix::process::geteuid().is_root() {
        &["namespace", "chroot", "none"]
    } else {
        &["none"]
    }
}

/// virtiofsd's uid/gid options: none as root (the guest's owners are kept), every guest id
/// squashed to ours otherwise (see the module documentation).
fn id_translation() -> Vec<String> {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return Vec::new();
    }
    let gid = rustix::process::getegid();
    // Guest ids 0..=u32::MAX-1 (the count is a u32; u32::MAX itself is "no id").
    vec![
        format!("--translate-uid=squash-guest:0:{}:4294967295", uid.as_raw()),
        format!("--translate-gid=squash-guest:0:{}:4294967295", gid.as_raw()),
    ]
}

/// virtiofsd's log file name for a share: `virtiofsd-<tag>.log`, the tag's unusual characters
/// replaced.
pub fn virtiofsd_log_name(tag: &str) -> String {
    let safe: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("virtiofsd-{safe}.log")
}

/// A listener no other process can reach, and our connection to it already queued.
fn private_socket(tag_index: usize) -> io::Result<(UnixListener, UnixStream)> {
    let dir = std::env::temp_dir().join(format!(
        "virtkit-fs-{}-{tag_index}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let path = dir.join("s");
    let result = UnixListener::bind(&path).and_then(|listener| {
        let stream = UnixStream::connect(&path)?;
        Ok((listener, stream))
    });
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    result
}

/// The descriptor number virtiofsd gets its listening socket as.
const VIRTIOFSD_FD: i32 = 3;

/// Starts virtiofsd for `share` with `sandbox`, and negotiates with it.
fn start_virtiofsd(
    program: &Path,
    share: &DirectorySharingDeviceConfiguration,
    index: usize,
    sandbox: &str,
    log: &HelperLog,
) -> Result<(HelperProcess, VhostUserConnection), VirtiofsdError> {
    let (listener, stream) = private_socket(index).map_err(VirtiofsdError::Socket)?;
    let mut command = HelperCommand::new(program)
        .arg(format!("--fd={VIRTIOFSD_FD}"))
        .arg("--shared-dir")
        .arg(&share.path)
        .args(["--cache", "auto", "--sandbox", sandbox, "--log-level", "info"])
        .pass_fd(listener.into(), VIRTIOFSD_FD)
        .log(log.clone());
    if share.read_only {
        command = command.arg("--readonly");
    }
    command = command.args(id_translation());
    let mut helper = command.spawn()?;
    match VhostUserConnection::from_stream(stream, 1 + usize::from(REQUEST_QUEUES)) {
        Ok(connection) => Ok((helper, connection)),
        Err(e) => {
            let exited = helper.try_wait().ok().flatten();
            let reason = match exited {
                Some(status) => format!("it exited with {status}"),
                None => e.to_string(),
            };
            let hint = match log {
                HelperLog::File(path) => format!("its messages are in {}", path.display()),
                HelperLog::Null => "run it by hand to see why".to_string(),
            };
            Err(VirtiofsdError::Failed {
                path: share.path.clone(),
                reason,
                hint,
            })
        }
    }
}

pub(super) fn attach(
    manager: &DeviceManager,
    machine: &Machine,
    devices: &[DirectorySharingDeviceConfiguration],
    log_directory: Option<&Path>,
) -> Result<(), DeviceError> {
    if devices.is_empty() {
        return Ok(());
    }
    let failed = |tag: &str, e: &dyn std::fmt::Display| DeviceError::DirectorySharing {
        tag: tag.to_string(),
        message: e.to_string(),
    };
    let program = find_virtiofsd().map_err(|e| failed(&devices[0].tag, &e))?;
    for (index, share) in devices.iter().enumerate() {
        let log = log_directory.map_or(HelperLog::Null, |dir| {
            HelperLog::File(dir.join(virtiofsd_log_name(&share.tag)))
        });
        let mut started = None;
        let mut last_error = None;
        for sandbox in sandboxes() {
            match start_virtiofsd(&program, share, index, sandbox, &log) {
                Ok(pair) => {
                    started = Some(pair);
                    break;
                }
                Err(e @ VirtiofsdError::Failed { .. }) => {
                    tracing::warn!(
                        tag = share.tag,
                        sandbox,
                        "virtiofsd: {e}; trying a weaker sandbox"
                    );
                    last_error = Some(e);
                }
                Err(e) => return Err(failed(&share.tag, &e)),
            }
        }
        let Some((helper, connection)) = started else {
            let e = last_error.map_or_else(|| "no sandbox to try".to_string(), |e| e.to_string());
            return Err(failed(&share.tag, &e));
        };
        manager.add_helper(helper);
        let device =
            FileSystem::new(&share.tag, REQUEST_QUEUES, connection).map_err(|e| failed(&share.tag, &e))?;
        let attached = attach_pci(machine, device, PCI_CLASS).map_err(|source| DeviceError::Attach {
            what: format!("shared directory `{}`", share.tag),
            source,
        })?;
        manager.add("fs", attached);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_form_defaults_the_tag_to_the_directory_name() {
        let share = DirectorySharingDeviceConfiguration::parse_cli("/home/me/src").unwrap();
        assert_eq!((share.tag.as_str(), share.read_only), ("src", false));
        let share = DirectorySharingDeviceConfiguration::parse_cli("/srv/data/:data:ro").unwrap();
        assert_eq!((share.tag.as_str(), share.read_only), ("data", true));
        assert_eq!(share.path, PathBuf::from("/srv/data/"));
        let share = DirectorySharingDeviceConfiguration::parse_cli("/srv/x::ro").unwrap();
        assert_eq!(share.tag, "x", "an empty tag is the default one");
        assert!(DirectorySharingDeviceConfiguration::parse_cli("/srv/x:x:rx")
            .unwrap_err()
            .contains("`rx` is not a share mode"));
        assert!(DirectorySharingDeviceConfiguration::parse_cli("").is_err());
        assert!(DirectorySharingDeviceConfiguration::parse_cli("/")
            .unwrap_err()
            .contains("PATH:TAG"));
    }

    #[test]
    fn validation_names_each_problem_and_its_fix() {
        let dir = std::env::temp_dir().join(format!("virtkit-share-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let share = |tag: &str, path: &Path| DirectorySharingDeviceConfiguration {
            tag: tag.into(),
            path: path.to_path_buf(),
            read_only: false,
        };
        let shares = [
            share("ok", &dir),
            share("missing", &dir.join("nope")),
            share("file", &file),
            share("ok", &dir),
            share("", &dir),
            share(&"t".repeat(37), &dir),
        ];
        let mut issues = Issues(Vec::new());
        validate(&shares, &mut issues);
        let found: Vec<(String, String)> = issues.0.into_iter().map(|i| (i.field, i.message)).collect();
        let has = |field: &str, text: &str| found.iter().any(|(f, m)| f == field && m.contains(text));
        assert!(
            has("directory_sharing_devices[1].path", "give an existing directory"),
            "{found:?}"
        );
        assert!(
            has("directory_sharing_devices[2].path", "is not a directory"),
            "{found:?}"
        );
        assert!(
            has(
                "directory_sharing_devices[3].tag",
                "already directory_sharing_devices[0]'s"
            ),
            "{found:?}"
        );
        assert!(
            has("directory_sharing_devices[4].tag", "cannot be empty"),
            "{found:?}"
        );
        assert!(has("directory_sharing_devices[5].tag", "at most 36"), "{found:?}");
        assert_eq!(found.len(), 5, "{found:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn log_names_keep_only_plain_characters() {
        assert_eq!(virtiofsd_log_name("src"), "virtiofsd-src.log");
        assert_eq!(virtiofsd_log_name("../x y"), "virtiofsd-.._x_y.log");
    }

    #[test]
    fn the_private_socket_leaves_no_file_and_our_connection_is_first() {
        let (listener, mut ours) = private_socket(0).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        use std::io::{Read, Write};
        ours.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        let address = listener.local_addr().unwrap();
        let path = address.as_pathname().expect("bound to a path").to_path_buf();
        assert!(!path.exists() && !path.parent().unwrap().exists());
    }
}
