//! Disks: a virtio-blk device per entry, backed by a disk image file or a host block device.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
pub use virtkit_devices::block::{CacheMode, SyncMode};

/// A virtio-blk disk, as Apple's `VZVirtioBlockDeviceConfiguration` with a disk image attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct StorageDeviceConfiguration {
    /// A raw image file (sparse is fine) or a host block device.
    pub path: PathBuf,
    /// The guest sees a read-only disk; its writes fail with an I/O error.
    #[serde(default)]
    pub read_only: bool,
    /// `cached` (default) or `uncached` (O_DIRECT).
    #[serde(default)]
    pub caching: CacheMode,
    /// `full` (default: a guest flush reaches stable storage) or `none` (scratch disks only).
    #[serde(default)]
    pub synchronization: SyncMode,
    /// The serial the guest reads (at most 20 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    /// How the file stores the disk: `raw` (default) or `qcow2` (with its backing chain). Always
    /// given, never guessed from the file's first bytes, which the guest can write.
    #[serde(default, skip_serializing_if = "DiskImageFormat::is_raw")]
    pub format: DiskImageFormat,
}

/// How a disk image file stores the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskImageFormat {
    /// The file (or block device) is the disk, byte for byte.
    #[default]
    Raw,
    /// QEMU's copy-on-write format: the disk's data in clusters, the rest read through to a
    /// backing image.
    Qcow2,
}

impl DiskImageFormat {
    fn is_raw(&self) -> bool {
        *self == DiskImageFormat::Raw
    }
}

impl StorageDeviceConfiguration {
    /// A writable disk with the safe defaults.
    pub fn disk_image(path: impl Into<PathBuf>) -> Self {
        StorageDeviceConfiguration {
            path: path.into(),
            read_only: false,
            caching: CacheMode::default(),
            synchronization: SyncMode::default(),
            identifier: None,
            format: DiskImageFormat::Raw,
        }
    }

    /// Parses the CLI form `PATH[,ro][,cache=uncached][,sync=none][,serial=ID][,format=qcow2]`.
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(|| {
            format!("`{text}` has no path; write PATH[,ro][,cache=uncached][,sync=none][,serial=ID][,format=qcow2]")
        })?;
        let mut disk = StorageDeviceConfiguration::disk_image(path);
        for option in parts {
            match option.split_once('=') {
                None if option == "ro" || option == "readonly" => disk.read_only = true,
                Some(("cache", "cached")) => disk.caching = CacheMode::Cached,
                Some(("cache", "uncached")) => disk.caching = CacheMode::Uncached,
                Some(("sync", "full")) => disk.synchronization = SyncMode::Full,
                Some(("sync", "none")) => disk.synchronization = SyncMode::None,
                Some(("serial", id)) => disk.identifier = Some(id.to_owned()),
                Some(("format", "raw")) => disk.format = DiskImageFormat::Raw,
                Some(("format", "qcow2")) => disk.format = DiskImageFormat::Qcow2,
                _ => {
                    return Err(format!(
                        "`{option}` is not a disk option; use ro, cache=cached|uncached, sync=full|none, serial=ID or format=raw|qcow2"
                    ))
                }
            }
        }
        Ok(disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_form_parses_every_option_and_defaults_are_safe() {
        let d = StorageDeviceConfiguration::parse_cli("disk.img").unwrap();
        assert_eq!(
            (d.read_only, d.caching, d.synchronization),
            (false, CacheMode::Cached, SyncMode::Full)
        );
        let d = StorageDeviceConfiguration::parse_cli("/d/data.img,ro,cache=uncached,sync=none,serial=abc")
            .unwrap();
        assert!(d.read_only);
        assert_eq!(d.caching, CacheMode::Uncached);
        assert_eq!(d.synchronization, SyncMode::None);
        assert_eq!(d.identifier.as_deref(), Some("abc"));
        let err = StorageDeviceConfiguration::parse_cli("disk.img,fast").unwrap_err();
        assert!(err.contains("`fast` is not a disk option"), "{err}");
        assert!(StorageDeviceConfiguration::parse_cli(",ro").is_err());
    }

    #[test]
    fn json_uses_the_documented_names() {
        let d: StorageDeviceConfiguration = serde_json::from_str(
            r#"{"path": "/d.img", "read_only": true, "caching": "uncached", "synchronization": "none"}"#,
        )
        .unwrap();
        assert!(d.read_only);
        assert_eq!(d.caching, CacheMode::Uncached);
        assert!(
            serde_json::from_str::<StorageDeviceConfiguration>(r#"{"path": "/d.img", "cache": "x"}"#)
                .is_err()
        );
    }
}
