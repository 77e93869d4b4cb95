//! Layered boot disks: the bundle's `disk.img` as a qcow2 image over read-only layers.
//!
//! ```text
//! <bundle>/
//!   disk.img                  the active layer: qcow2, takes every write
//!   layer-<16 hex>.qcow2      frozen layers (0400), each the backing image of the next
//!   layer-<16 hex>.img        the first layer when the disk was raw
//! ```
//!
//! Freezing the active disk (a snapshot, a clone) is O(1) on every file system: `disk.img` gets a
//! second name `layer-<id>`, a new empty qcow2 image backed by it is renamed over `disk.img`,
//! and from then on nothing writes the layer. A crash before the rename leaves the old
//! `disk.img` in place (and a stray layer name for the same file, removed by the next cleanup);
//! after it, the new chain is whole.
//!
//! Every backing name in the chain must be a sibling `layer-<16 hex>.{qcow2,img}` that is a
//! regular file: a bundle is trusted only as far as it should be (docs/BUNDLES.md), and a qcow2
//! header naming `/etc/shadow` as its backing file must not give the guest the host's file.
//! Frozen layers never change, so a clone hard-links them instead of copying.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use virtkit::DiskImageFormat;
use virtkit_disk::{create_qcow2_layer, ImageFormat};

use super::{io_error, BundleError, DISK_FILE};

/// What a layer's file name starts with.
pub const LAYER_PREFIX: &str = "layer-";
/// A chain longer than this is refused as damaged.
pub const MAX_LAYERS: usize = 64;

/// Whether `name` is a layer's file name: `layer-` + 16 lowercase hex digits + `.qcow2`/`.img`.
pub fn is_layer_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(LAYER_PREFIX) else {
        return false;
    };
    let Some((id, ext)) = rest.split_once('.') else {
        return false;
    };
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (ext == "qcow2" || ext == "img")
}

/// A new layer name for a disk of `format`.
fn new_layer_name(format: DiskImageFormat) -> Result<String, BundleError> {
    let mut id = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(io_error("read", Path::new("/dev/urandom")))?;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let ext = match format {
        DiskImageFormat::Raw => "img",
        DiskImageFormat::Qcow2 => "qcow2",
    };
    Ok(format!("{LAYER_PREFIX}{hex}.{ext}"))
}

/// The backing name in the qcow2 header of `file`, and its virtual size.
fn qcow2_header(file: &File) -> std::io::Result<(Option<String>, u64)> {
    virtkit_disk::read_qcow2_header(file).map(|h| (h.backing, h.virtual_size))
}

/// The disk's size as the guest sees it: the file's length for raw, the header's for qcow2.
pub(crate) fn virtual_size(dir: &Path, format: DiskImageFormat) -> Result<u64, BundleError> {
    let path = dir.join(DISK_FILE);
    let file = File::open(&path).map_err(io_error("read", &path))?;
    match format {
        DiskImageFormat::Raw => Ok(file.metadata().map_err(io_error("read", &path))?.len()),
        DiskImageFormat::Qcow2 => Ok(qcow2_header(&file)
            .map_err(io_error("read the qcow2 header of", &path))?
            .1),
    }
}

/// The layers `disk.img` reads through, nearest first, each checked: a sibling with a layer's
/// name, a regular file (not a link), qcow2 down to at most one raw layer at the bottom.
pub(crate) fn chain(dir: &Path, vm: &str, format: DiskImageFormat) -> Result<Vec<String>, BundleError> {
    match format {
        DiskImageFormat::Raw => Ok(Vec::new()),
        DiskImageFormat::Qcow2 => chain_from(dir, vm, DISK_FILE),
    }
}

/// The layers the qcow2 image `start` (in `dir`) reads through, checked as [`chain`] does.
pub(crate) fn chain_from(dir: &Path, vm: &str, start: &str) -> Result<Vec<String>, BundleError> {
    let damaged = |problem: String| BundleError::Damaged {
        name: vm.to_owned(),
        problem,
    };
    let mut layers = Vec::new();
    if start.ends_with(".img") && start != DISK_FILE {
        // A raw layer reads through to nothing.
        return Ok(layers);
    }
    let mut current = start.to_owned();
    loop {
        let path = dir.join(&current);
        let file = File::open(&path).map_err(io_error("read", &path))?;
        if current != start && !current.ends_with(".qcow2") {
            // A raw layer ends the chain.
            return Ok(layers);
        }
        let (backing, _) = qcow2_header(&file)
            .map_err(|e| damaged(format!("{current} is not a usable qcow2 image ({e})")))?;
        let Some(backing) = backing else { return Ok(layers) };
        if !is_layer_name(&backing) {
            return Err(damaged(format!(
                "{current} reads through to `{backing}`, which is not one of the bundle's layers \
                 (a layer is a file named layer-<16 hex digits>.qcow2 or .img beside disk.img)"
            )));
        }
        match std::fs::symlink_metadata(dir.join(&backing)) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(damaged(format!("the layer {backing} is not a regular file"))),
            Err(_) => {
                return Err(damaged(format!(
                    "the layer {backing} that {current} reads through to is missing"
                )))
            }
        }
        if layers.len() >= MAX_LAYERS {
            return Err(damaged(format!(
                "its disk has more than {MAX_LAYERS} layers (a loop?)"
            )));
        }
        layers.push(backing.clone());
        current = backing;
    }
}

/// What [`freeze`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frozen {
    /// The layer the active disk now reads through.
    pub layer: String,
    /// Whether `disk.img` was replaced by a new active layer (false: it had no data of its own,
    /// and its backing layer is the one returned).
    pub replaced: bool,
}

/// Freezes `disk.img`: it becomes the returned read-only layer and a new, empty qcow2
/// `disk.img` reads through to it. Nothing may write `disk.img` meanwhile (the VM is stopped,
/// or paused with its disks asleep); the caller holds the lock. `before_switch` runs once the
/// layer has its name and before the new `disk.img` takes the place of the old one (the
/// configuration of a raw disk says qcow2 from then on: see [`interrupted_freeze`]).
pub(crate) fn freeze(
    dir: &Path,
    format: DiskImageFormat,
    before_switch: impl FnOnce() -> Result<(), BundleError>,
) -> Result<Frozen, BundleError> {
    // An active layer with nothing in it yet adds nothing: its backing layer already is what a
    // freeze would make, so use that (the chain does not grow by one per clone or snapshot).
    if format == DiskImageFormat::Qcow2 {
        let disk = dir.join(DISK_FILE);
        let file = File::open(&disk).map_err(io_error("read", &disk))?;
        if let Ok((Some(backing), _)) = qcow2_header(&file) {
            let has_data = virtkit_disk::qcow2_layer_has_data(&disk).map_err(|source| BundleError::Disk {
                path: disk.clone(),
                source,
            })?;
            if !has_data && is_layer_name(&backing) {
                return Ok(Frozen {
                    layer: backing,
                    replaced: false,
                });
            }
        }
    }
    let size = virtual_size(dir, format)?;
    let layer = new_layer_name(format)?;
    let disk = dir.join(DISK_FILE);
    let layer_path = dir.join(&layer);
    std::fs::hard_link(&disk, &layer_path).map_err(io_error("link", &layer_path))?;
    if let Err(e) = before_switch().and_then(|()| reset_to(dir, &layer, size)) {
        let _ = std::fs::remove_file(&layer_path);
        return Err(e);
    }
    // Nothing writes a frozen layer again; read-only says so to every other program too.
    let _ = std::fs::set_permissions(&layer_path, std::fs::Permissions::from_mode(0o400));
    Ok(Frozen {
        layer,
        replaced: true,
    })
}

/// Undoes a [`freeze`] that replaced `disk.img` (nothing has written the new one): the layer
/// becomes `disk.img` again.
pub(crate) fn unfreeze(dir: &Path, layer: &str) -> Result<(), BundleError> {
    let disk = dir.join(DISK_FILE);
    let layer_path = dir.join(layer);
    let _ = std::fs::set_permissions(&layer_path, std::fs::Permissions::from_mode(0o600));
    std::fs::rename(&layer_path, &disk).map_err(io_error("rename into place", &disk))?;
    virtkit_disk::durable::sync_dir(dir).map_err(io_error("sync", dir))
}

/// Whether a freeze of a raw `disk.img` was cut short (a crash or a power loss) after the
/// configuration was switched to qcow2 and before the new `disk.img` took its place: then
/// `disk.img` is still the raw file, with a second name `layer-<id>.img`, and must be read as
/// raw. Only the freeze makes such a link, and a guest cannot make one, so the file's identity
/// decides rather than its bytes.
pub(crate) fn interrupted_freeze(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(disk) = std::fs::symlink_metadata(dir.join(DISK_FILE)) else {
        return false;
    };
    if disk.nlink() < 2 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        name.ends_with(".img")
            && is_layer_name(&name)
            && entry
                .metadata()
                .is_ok_and(|m| m.dev() == disk.dev() && m.ino() == disk.ino())
    })
}

/// Replaces `disk.img` with a new, empty qcow2 image reading through to `layer` (discarding
/// what the active disk held since).
pub(crate) fn reset_to(dir: &Path, layer: &str, size: u64) -> Result<(), BundleError> {
    let disk = dir.join(DISK_FILE);
    let next = dir.join("disk.img.next");
    let _ = std::fs::remove_file(&next);
    let format = if layer.ends_with(".img") {
        ImageFormat::Raw
    } else {
        ImageFormat::Qcow2
    };
    let made = create_qcow2_layer(&next, size, Some((layer, format)))
        .map_err(|source| BundleError::Disk {
            path: next.clone(),
            source,
        })
        .and_then(|()| {
            std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600))
                .map_err(io_error("restrict the permissions of", &next))
        })
        .and_then(|()| std::fs::rename(&next, &disk).map_err(io_error("rename into place", &disk)))
        .and_then(|()| virtkit_disk::durable::sync_dir(dir).map_err(io_error("sync", dir)));
    if made.is_err() {
        let _ = std::fs::remove_file(&next);
    }
    made
}

/// Removes every layer file of the bundle that `keep` (the chains still in use) does not name.
pub(crate) fn remove_unused(dir: &Path, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_layer_name(&name) && !keep.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_are_recognised_and_nothing_else_is() {
        assert!(is_layer_name("layer-0123456789abcdef.qcow2"));
        assert!(is_layer_name("layer-0123456789abcdef.img"));
        for bad in [
            "layer-0123456789abcde.qcow2",
            "layer-0123456789ABCDEF.qcow2",
            "layer-0123456789abcdef.raw",
            "../layer-0123456789abcdef.qcow2",
            "/etc/shadow",
            "disk.img",
            "layer-0123456789abcdef.qcow2/x",
        ] {
            assert!(!is_layer_name(bad), "{bad}");
        }
    }
}
