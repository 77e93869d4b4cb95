//! Named snapshots of a stopped or suspended VM: a frozen disk layer, the configuration of that
//! moment and, when suspended, its saved machine state, listed in `snapshots.json`.
//!
//! Taking one freezes `disk.img` (`layers::freeze`: O(1), whatever the disk's size) and then
//! records it; restoring one puts a new empty active layer over the snapshot's layer and its
//! configuration back; deleting one forgets it and removes only the layers no chain needs any
//! more, so every other snapshot stays whole (a deleted snapshot's layer stays while a later
//! snapshot or the active disk reads through it). Each step that changes the record writes it
//! atomically after the disk side is whole, so a power loss leaves the previous state usable.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use virtkit::{DiskImageFormat, VirtualMachineConfiguration};

use super::atomic::write_atomic;
use super::layers;
use super::{io_error, Bundle, BundleError, CONFIG_FILE, DISK_FILE, STATE_FILE};

/// The bundle's list of snapshots.
pub const SNAPSHOTS_FILE: &str = "snapshots.json";
/// The longest snapshot name.
pub const MAX_SNAPSHOT_NAME: usize = 64;

/// One snapshot as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub name: String,
    /// The frozen layer holding the disk as it was.
    pub layer: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Bytes the layer takes on the host's disk (what the disk changed before the snapshot).
    pub bytes: u64,
    /// The configuration of that moment (as stored).
    pub config: serde_json::Value,
    /// The saved machine state of that moment, when the VM was suspended: a file in the bundle
    /// (a hard link to the `state.vksave` it had, which is never written in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotList {
    snapshots: Vec<Snapshot>,
}

fn check_snapshot_name(name: &str) -> Result<(), BundleError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SNAPSHOT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(BundleError::BadName(format!(
            "`{name}` is not a snapshot name; use 1 to {MAX_SNAPSHOT_NAME} letters, digits, `-`, `_` or `.`, not starting with `.`"
        )))
    }
}

impl Bundle {
    pub(crate) fn disk_format(&self) -> DiskImageFormat {
        self.config
            .storage_devices
            .iter()
            .find(|d| d.path == std::path::Path::new(DISK_FILE))
            .map(|d| d.format)
            .unwrap_or_default()
    }

    fn read_snapshots(&self) -> Result<SnapshotList, BundleError> {
        let path = self.file(SNAPSHOTS_FILE);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(SnapshotList::default());
        }
        let text = super::files::read_small(&self.path, &self.name, SNAPSHOTS_FILE)?;
        serde_json::from_str(&text).map_err(|e| BundleError::Damaged {
            name: self.name.clone(),
            problem: format!("{SNAPSHOTS_FILE} cannot be read ({e})"),
        })
    }

    fn write_snapshots(&self, list: &SnapshotList) -> Result<(), BundleError> {
        let path = self.file(SNAPSHOTS_FILE);
        let text = serde_json::to_string_pretty(list).expect("a snapshot list serializes");
        write_atomic(&path, text.as_bytes()).map_err(io_error("write", &path))
    }

    /// The VM's snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, BundleError> {
        Ok(self.read_snapshots()?.snapshots)
    }

    /// Takes a snapshot named `name` of the stopped VM's disk and configuration. A raw disk
    /// becomes a layered one (qcow2 over the raw file) from then on.
    pub fn snapshot_create(&mut self, name: &str) -> Result<Snapshot, BundleError> {
        check_snapshot_name(name)?;
        let _lock = self.lock()?;
        let mut list = self.read_snapshots()?;
        if list.snapshots.iter().any(|s| s.name == name) {
            return Err(BundleError::Refused(format!(
                "`{}` already has a snapshot named `{name}`; delete it first or choose another name",
                self.name
            )));
        }
        let layer = self.freeze_disk()?.layer;
        // A suspended VM's memory goes with its disk: the snapshot keeps the state file too.
        let state = if self.file(STATE_FILE).is_file() {
            let kept = format!("snapshot-{name}.vksave");
            let _ = std::fs::remove_file(self.file(&kept));
            std::fs::hard_link(self.file(STATE_FILE), self.file(&kept))
                .map_err(io_error("link", &self.file(&kept)))?;
            Some(kept)
        } else {
            None
        };
        let snapshot = self.record(name, layer, state);
        list.snapshots.push(snapshot.clone());
        self.write_snapshots(&list)?;
        Ok(snapshot)
    }

    /// Makes the stopped VM's boot disk layered (qcow2 over its raw file, which becomes the first,
    /// read-only layer), so snapshots and clones are O(1); nothing if it already is.
    pub fn use_layered_disk(&mut self) -> Result<(), BundleError> {
        let _lock = self.lock()?;
        if self.disk_format() == DiskImageFormat::Raw {
            self.freeze_disk()?;
        }
        Ok(())
    }

    /// Freezes the boot disk into a new layer (the caller holds the lock); a raw disk becomes
    /// layered, and the configuration says so (written before the new `disk.img` takes its
    /// place: a freeze cut short in between is recognised when the bundle is opened).
    fn freeze_disk(&mut self) -> Result<layers::Frozen, BundleError> {
        let format = self.disk_format();
        layers::chain(&self.path, &self.name, format)?;
        let mut layered = None;
        let frozen = layers::freeze(&self.path, format, || {
            if format == DiskImageFormat::Raw {
                let mut config = VirtualMachineConfiguration::from_json(&self.config.to_json())
                    .expect("a stored configuration reads back");
                for disk in &mut config.storage_devices {
                    if disk.path == std::path::Path::new(DISK_FILE) {
                        disk.format = DiskImageFormat::Qcow2;
                    }
                }
                let path = self.file(CONFIG_FILE);
                write_atomic(&path, config.to_json().as_bytes()).map_err(io_error("write", &path))?;
                layered = Some(config);
            }
            Ok(())
        });
        match frozen {
            Ok(frozen) => {
                if let Some(config) = layered {
                    self.config = config;
                }
                Ok(frozen)
            }
            Err(e) => {
                if layered.is_some() {
                    // The old disk.img stayed: so must the configuration that reads it as raw.
                    let path = self.file(CONFIG_FILE);
                    let _ = write_atomic(&path, self.config.to_json().as_bytes());
                }
                Err(e)
            }
        }
    }

    /// Takes snapshot `name` of the VM whose process calls this: the VM runs or is paused, and
    /// the process holds the bundle's lock (so this takes none). `save` writes the paused
    /// machine's state to the file it is given; `reopen` then moves the VM's boot disk (index
    /// `disk_index` in its storage devices) onto the configuration it is given, the new
    /// active layer. If anything fails, the disk and the configuration are as before, the VM's
    /// disk is reopened on its old file, and no snapshot is recorded.
    pub(crate) fn snapshot_create_in_vm_process(
        &mut self,
        name: &str,
        save: impl FnOnce(&std::path::Path) -> Result<(), String>,
        reopen: impl Fn(&virtkit::StorageDeviceConfiguration) -> Result<(), String>,
    ) -> Result<Snapshot, String> {
        check_snapshot_name(name).map_err(|e| e.to_string())?;
        let mut list = self.read_snapshots().map_err(|e| e.to_string())?;
        if list.snapshots.iter().any(|s| s.name == name) {
            return Err(format!(
                "`{}` already has a snapshot named `{name}`; delete it first or choose another name",
                self.name
            ));
        }
        let kept = format!("snapshot-{name}.vksave");
        save(&self.file(&kept))?;
        let forget_state = |bundle: &Bundle| {
            let _ = std::fs::remove_file(bundle.file(&kept));
        };
        let before = self.config.to_json();
        let old_disk = self.boot_disk_at_run_time();
        let frozen = match self.freeze_disk() {
            Ok(frozen) => frozen,
            Err(e) => {
                forget_state(self);
                return Err(e.to_string());
            }
        };
        if frozen.replaced {
            if let Err(e) = reopen(&self.boot_disk_at_run_time()) {
                // Back as it was: the layer is disk.img again, read as before.
                let undone = layers::unfreeze(&self.path, &frozen.layer).and_then(|()| {
                    let path = self.file(CONFIG_FILE);
                    write_atomic(&path, before.as_bytes()).map_err(io_error("write", &path))
                });
                self.config = VirtualMachineConfiguration::from_json(&before).expect("it was read before");
                forget_state(self);
                let back = undone.map_err(|e| e.to_string()).and_then(|()| reopen(&old_disk));
                return Err(match back {
                    Ok(()) => e,
                    Err(again) => format!("{e}; and the disk's old file could not be opened again ({again}): the VM's disk fails every request until it is stopped"),
                });
            }
        }
        let snapshot = self.record(name, frozen.layer, Some(kept));
        list.snapshots.push(snapshot.clone());
        self.write_snapshots(&list).map_err(|e| e.to_string())?;
        Ok(snapshot)
    }

    /// The record of snapshot `name` taken now: its layer's size, the configuration of this
    /// moment and the saved state kept with it, if any.
    fn record(&self, name: &str, layer: String, state: Option<String>) -> Snapshot {
        let bytes = std::fs::metadata(self.file(&layer))
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        Snapshot {
            name: name.to_owned(),
            layer,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            bytes,
            config: serde_json::from_str(&self.config.to_json()).expect("a configuration is JSON"),
            state,
        }
    }

    /// Where the boot disk's storage device is in the VM's storage devices, and its
    /// configuration as the VM process uses it (the path made absolute).
    pub(crate) fn boot_disk_index(&self) -> Option<usize> {
        self.config
            .storage_devices
            .iter()
            .position(|d| d.path == std::path::Path::new(DISK_FILE))
    }

    fn boot_disk_at_run_time(&self) -> virtkit::StorageDeviceConfiguration {
        let index = self.boot_disk_index().expect("a bundle has its disk.img");
        let mut disk = self.config.storage_devices[index].clone();
        disk.path = self.file(DISK_FILE);
        disk
    }

    /// Puts the stopped VM's disk and configuration back as snapshot `name` had them; what the
    /// disk held since is discarded.
    pub fn snapshot_restore(&mut self, name: &str) -> Result<(), BundleError> {
        let _lock = self.lock()?;
        let list = self.read_snapshots()?;
        let snapshot = self.find_snapshot(&list, name)?;
        let config = VirtualMachineConfiguration::from_json(&snapshot.config.to_string()).map_err(|e| {
            BundleError::Damaged {
                name: self.name.clone(),
                problem: format!("the configuration of snapshot `{name}` cannot be read ({e})"),
            }
        })?;
        if !layers::is_layer_name(&snapshot.layer) || !self.file(&snapshot.layer).is_file() {
            return Err(BundleError::Damaged {
                name: self.name.clone(),
                problem: format!("the layer of snapshot `{name}` ({}) is missing", snapshot.layer),
            });
        }
        let kept_state = match &snapshot.state {
            Some(kept) if !self.file(kept).is_file() => {
                return Err(BundleError::Damaged {
                    name: self.name.clone(),
                    problem: format!("the saved machine state of snapshot `{name}` ({kept}) is missing"),
                })
            }
            other => other.clone(),
        };
        let size = layers_size(&self.path, &snapshot.layer)?;
        layers::reset_to(&self.path, &snapshot.layer, size)?;
        // The state of the moment comes back with the disk (the VM is suspended there), and a
        // state saved since is dropped: it was of a disk that is gone.
        let state = self.file(STATE_FILE);
        let _ = std::fs::remove_file(&state);
        if let Some(kept) = &kept_state {
            std::fs::hard_link(self.file(kept), &state).map_err(io_error("link", &state))?;
        }
        let path = self.file(CONFIG_FILE);
        write_atomic(&path, config.to_json().as_bytes()).map_err(io_error("write", &path))?;
        self.config = config;
        self.remove_unused_layers(&list)?;
        Ok(())
    }

    /// Forgets snapshot `name`; its layer goes only when nothing reads through it any more.
    pub fn snapshot_delete(&mut self, name: &str) -> Result<(), BundleError> {
        let _lock = self.lock()?;
        let mut list = self.read_snapshots()?;
        let snapshot = self.find_snapshot(&list, name)?;
        list.snapshots.retain(|s| s.name != name);
        self.write_snapshots(&list)?;
        if let Some(kept) = &snapshot.state {
            let _ = std::fs::remove_file(self.file(kept));
        }
        self.remove_unused_layers(&list)
    }

    fn find_snapshot(&self, list: &SnapshotList, name: &str) -> Result<Snapshot, BundleError> {
        list.snapshots
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| {
                BundleError::Refused(format!(
                    "`{}` has no snapshot named `{name}`; `virtkit snapshot list {}` shows them",
                    self.name, self.name
                ))
            })
    }

    /// Removes the layers that neither the active disk nor any snapshot reads through.
    fn remove_unused_layers(&self, list: &SnapshotList) -> Result<(), BundleError> {
        let mut keep = layers::chain(&self.path, &self.name, self.disk_format())?;
        for snapshot in &list.snapshots {
            keep.push(snapshot.layer.clone());
            keep.extend(layers::chain_from(&self.path, &self.name, &snapshot.layer)?);
        }
        layers::remove_unused(&self.path, &keep);
        Ok(())
    }
}

/// The virtual size of a layer (qcow2 header, or a raw layer's length).
fn layers_size(dir: &std::path::Path, layer: &str) -> Result<u64, BundleError> {
    let path = dir.join(layer);
    let file = std::fs::File::open(&path).map_err(io_error("read", &path))?;
    if layer.ends_with(".img") {
        return Ok(file.metadata().map_err(io_error("read", &path))?.len());
    }
    let header =
        virtkit_disk::read_qcow2_header(&file).map_err(io_error("read the qcow2 header of", &path))?;
    Ok(header.virtual_size)
}
