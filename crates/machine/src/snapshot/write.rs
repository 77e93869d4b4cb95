//! Writing a state file atomically: into a temporary file beside it, synced, then renamed over
//! the path, so a crash or a full disk leaves the previous file (or none), never half of one.

use std::fs::File;
use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;

use super::format::{encode_metadata, Header, Metadata};
use super::{memory, SaveSummary, SnapshotError};

/// `.<name>.tmp-<pid>` beside `path`.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

pub(crate) fn write_state_file(
    path: &Path,
    metadata: &Metadata,
    guest_memory: &GuestMemoryMmap,
) -> Result<SaveSummary, SnapshotError> {
    let bytes = encode_metadata(metadata).map_err(SnapshotError::Encode)?;
    // A restore refuses more (as damage): refuse to write a file that could not be read back.
    if bytes.len() as u64 > super::format::MAX_METADATA_LEN {
        return Err(SnapshotError::MetadataTooLarge {
            len: bytes.len() as u64,
            max: super::format::MAX_METADATA_LEN,
        });
    }
    let memory_len: u64 = metadata.memory.iter().map(|r| r.size).sum();
    let header = Header::for_metadata(&bytes, memory_len);
    let temporary = temporary_path(path);
    let written = write_parts(&temporary, &header, &bytes, guest_memory)
        .and_then(|pages| std::fs::rename(&temporary, path).map(|()| pages))
        .and_then(|pages| sync_directory(path).map(|()| pages));
    match written {
        Ok(memory_pages_written) => Ok(SaveSummary {
            memory_pages_written,
            file_len: header.memory_offset + header.memory_len,
        }),
        Err(source) => {
            let _ = std::fs::remove_file(&temporary);
            Err(SnapshotError::Write {
                path: path.to_owned(),
                source,
            })
        }
    }
}

fn write_parts(
    path: &Path,
    header: &Header,
    metadata: &[u8],
    guest_memory: &GuestMemoryMmap,
) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // The full length first: the memory pages not written stay holes that read as zeros.
    file.set_len(header.memory_offset + header.memory_len)?;
    file.write_all_at(&header.encode(), 0)?;
    file.write_all_at(metadata, header.metadata_offset)?;
    let pages = memory::write_sparse(guest_memory, &file, header.memory_offset)?;
    file.sync_all()?;
    Ok(pages)
}

/// Makes the rename durable.
fn sync_directory(path: &Path) -> std::io::Result<()> {
    let directory = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}
