//! Changing a stopped VM (`virtkit set`): all or nothing. The whole new state is checked before
//! anything is written; then the disk is grown, the record of external paths, the machine
//! identifier and the configuration are written (each atomically), and a failure part way
//! undoes what was already done, so the bundle is left as it was.

use std::path::PathBuf;

use virtkit::{MachineIdentifier, VirtualMachineConfiguration};

use super::atomic::write_atomic;
use super::{external, io_error, Access, Bundle, BundleError, CONFIG_FILE, DISK_FILE, MACHINE_ID_FILE};

/// What to change; `Change::default()` changes nothing.
#[derive(Debug, Default)]
pub struct Change {
    /// The new configuration (paths as stored, relative to the bundle).
    pub config: Option<VirtualMachineConfiguration>,
    /// The boot disk's new size: at least the current one.
    pub disk_size: Option<u64>,
    /// Paths outside the bundle to record as ones the configuration may name. Each was given
    /// deliberately by the user (`set --add-disk`, `set --allow-path`).
    pub record: Vec<PathBuf>,
    /// A new machine identifier (for a bundle copied by hand).
    pub new_identity: bool,
}

fn copy(config: &VirtualMachineConfiguration) -> VirtualMachineConfiguration {
    // A stored configuration has no file handles, so the JSON round trip is a faithful copy.
    VirtualMachineConfiguration::from_json(&config.to_json()).expect("a configuration reads back")
}

impl Bundle {
    /// Applies `change` while holding the bundle's lock (refused if the VM runs).
    pub fn change(&mut self, change: Change) -> Result<(), BundleError> {
        let _lock = self.lock()?;
        let config = change.config.unwrap_or_else(|| copy(&self.config));
        let mut record = self.external.clone();
        for p in change.record {
            if !record.contains(&p) {
                record.push(p);
            }
        }

        // Check everything first.
        external::check(&self.path, &self.name, &config, &record)?;
        let old_config = std::mem::replace(&mut self.config, config);
        let checked = self.resolved_configuration().validate();
        let config = std::mem::replace(&mut self.config, old_config);
        checked?;
        let current = self.disk_size()?;
        let new_size = change.disk_size.unwrap_or(current);
        if new_size != current && self.disk_format() == virtkit::DiskImageFormat::Qcow2 {
            return Err(BundleError::Refused(format!(
                "the disk of `{}` is layered (qcow2), and growing a layered disk is not supported yet; \
                 clone a VM with a raw disk instead, or keep this size",
                self.name
            )));
        }
        if new_size < current {
            return Err(BundleError::Refused(format!(
                "the disk of `{}` is {current} bytes; it can grow but not shrink (asked for {new_size})",
                self.name
            )));
        }
        let new_id = if change.new_identity {
            Some(
                MachineIdentifier::random()
                    .map_err(io_error("read", std::path::Path::new("/dev/urandom")))?,
            )
        } else {
            None
        };

        // Then write, undoing on failure.
        let disk = if new_size > current {
            Some(self.open_file(DISK_FILE, Access::ReadWrite)?)
        } else {
            None
        };
        let disk_path = self.file(DISK_FILE);
        let undo_disk = || {
            if let Some(d) = &disk {
                // Nothing was written past `current` yet, so cutting it off loses nothing.
                let _ = d.set_len(current).and_then(|_| d.sync_all());
            }
        };
        if let Some(d) = &disk {
            if let Err(e) = d.set_len(new_size).and_then(|_| d.sync_all()) {
                undo_disk();
                return Err(io_error("grow", &disk_path)(e));
            }
        }
        let record_changed = record != self.external;
        if record_changed {
            if let Err(e) = external::write(&self.path, &record) {
                undo_disk();
                return Err(e);
            }
        }
        let undo_record = || {
            if record_changed {
                let _ = external::write(&self.path, &self.external);
            }
        };
        if let Some(id) = new_id {
            let path = self.file(MACHINE_ID_FILE);
            if let Err(e) = write_atomic(&path, format!("{id}\n").as_bytes()) {
                undo_record();
                undo_disk();
                return Err(io_error("write", &path)(e));
            }
        }
        let undo_id = || {
            if new_id.is_some() {
                let _ = write_atomic(
                    &self.file(MACHINE_ID_FILE),
                    format!("{}\n", self.machine_id).as_bytes(),
                );
            }
        };
        if config.to_json() != self.config.to_json() {
            let path = self.file(CONFIG_FILE);
            if let Err(e) = write_atomic(&path, config.to_json().as_bytes()) {
                undo_id();
                undo_record();
                undo_disk();
                return Err(io_error("write", &path)(e));
            }
        }
        self.config = config;
        self.external = record;
        if let Some(id) = new_id {
            self.machine_id = id;
        }
        Ok(())
    }
}
