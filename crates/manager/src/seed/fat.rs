//! The seed volume: a FAT file system labelled `CIDATA`, as cloud-init's NoCloud data source
//! looks for, made with the `fatfs` crate (no `mkfs.vfat`, no loop mount) and written whole to
//! a temporary file renamed into place, so a VM never sees half a seed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};

/// The label NoCloud finds the volume by (11 bytes, space-padded).
const LABEL: [u8; 11] = *b"CIDATA     ";
const MIB: u64 = 1 << 20;
/// The smallest volume: room for the file system's own tables.
const MIN_SIZE: u64 = 2 * MIB;

/// A file for the seed's root directory.
#[derive(Debug, Clone)]
pub struct SeedFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl SeedFile {
    pub fn text(name: &str, text: String) -> SeedFile {
        SeedFile {
            name: name.into(),
            bytes: text.into_bytes(),
        }
    }
}

/// Writes a FAT volume labelled `CIDATA` holding `files` at `path` (replacing what is there).
pub fn write_seed_image(path: &Path, files: &[SeedFile]) -> io::Result<()> {
    let content: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
    // Room for the tables and clusters' slack: an eighth more, and at least 2 MiB.
    let size = (content + content / 8 + MIN_SIZE).next_multiple_of(MIB);
    let tmp = path.with_extension("img.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let result = (|| {
        file.set_len(size)?;
        fatfs::format_volume(&mut file, FormatVolumeOptions::new().volume_label(LABEL))?;
        file.seek(SeekFrom::Start(0))?;
        {
            let fs = FileSystem::new(&mut file, FsOptions::new())?;
            {
                let root = fs.root_dir();
                for f in files {
                    let mut out = root.create_file(&f.name)?;
                    out.truncate()?;
                    out.write_all(&f.bytes)?;
                    out.flush()?;
                }
            }
            fs.unmount()?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads the file `name` from the seed volume at `path` (tests and `virtkit get`).
pub fn read_seed_file(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let fs = FileSystem::new(file, FsOptions::new())?;
    let mut bytes = Vec::new();
    fs.root_dir().open_file(name)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}
