//! The qcow2 header, checked before imago reads the image.
//!
//! imago reads past the end of the file as zeroes, so an L1 table or L2 table that lies beyond
//! the end of a truncated or damaged file would silently import as an empty disk. These checks
//! turn that, and the features the importer refuses (backing files, external data files,
//! encryption), into clear errors before any data is copied. The layout is QEMU's
//! `docs/interop/qcow2.txt`; all numbers are big-endian.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::{io_error, DiskImageError};

/// The first four bytes of every qcow file: "QFI\xfb".
pub(crate) const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Length of the version 2 header; version 3 adds fields up to byte 104.
const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;

/// Bits 9..55 of an L1 entry: the offset of the L2 table.
const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// QEMU refuses L1 tables above 32 MiB; so do we (it also bounds the memory read here).
const MAX_L1_BYTES: u64 = 32 << 20;

/// Cluster sizes QEMU can make: 512 bytes to 2 MiB.
const CLUSTER_BITS: std::ops::RangeInclusive<u32> = 9..=21;

/// Incompatible feature bits (header byte 72, version 3).
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

/// What the importer needs from a checked qcow2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Qcow2Header {
    pub version: u32,
    pub cluster_size: u64,
    pub virtual_size: u64,
}

/// Reads and checks the header of the qcow2 file `file` (`file_len` bytes long): the version,
/// the cluster size, refused features, and that the L1 table, the refcount table and every L2
/// table the L1 table names lie inside the file.
pub(crate) fn read_header(file: &File, path: &Path, file_len: u64) -> Result<Qcow2Header, DiskImageError> {
    let corrupt = |reason: String| DiskImageError::CorruptQcow2 {
        path: path.to_owned(),
        reason,
    };
    let unsupported = |feature: String| DiskImageError::UnsupportedQcow2 {
        path: path.to_owned(),
        feature,
    };

    let mut head = [0u8; V3_HEADER_LEN + 1];
    let head_len = read_prefix(file, &mut head).map_err(io_error("read the header of", path))?;
    let head = &head[..head_len];
    if head_len < V2_HEADER_LEN {
        return Err(corrupt(format!(
            "the file is {head_len} bytes long, shorter than a qcow2 header ({V2_HEADER_LEN} bytes)"
        )));
    }
    let be32 = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().expect("4 bytes"));
    let be64 = |at: usize| u64::from_be_bytes(head[at..at + 8].try_into().expect("8 bytes"));

    let version = be32(4);
    match version {
        2 => {}
        3 if head_len >= V3_HEADER_LEN => {}
        3 => {
            return Err(corrupt(format!(
                "the file is {head_len} bytes long, shorter than a qcow2 version 3 header \
                 ({V3_HEADER_LEN} bytes)"
            )))
        }
        other => {
            return Err(unsupported(format!(
                "qcow2 version {other} (only versions 2 and 3 are read)"
            )))
        }
    }

    let cluster_bits = be32(20);
    if !CLUSTER_BITS.contains(&cluster_bits) {
        return Err(corrupt(format!(
            "the cluster size is 2^{cluster_bits} bytes; qcow2 clusters are 512 bytes to 2 MiB"
        )));
    }
    let cluster_size = 1u64 << cluster_bits;
    let virtual_size = be64(24);

    if be32(32) != 0 {
        return Err(unsupported("encryption".to_string()));
    }

    let backing_offset = be64(8);
    if backing_offset != 0 {
        let backing_len = be32(16);
        let end = backing_offset.checked_add(u64::from(backing_len));
        if backing_len > 1023 || end.is_none_or(|end| end > cluster_size) {
            return Err(corrupt(format!(
                "the backing file name ({backing_len} bytes at offset {backing_offset}) does not fit \
                 in the header cluster"
            )));
        }
        let name = backing_file_name(file, backing_offset, backing_len);
        return Err(unsupported(match name {
            Some(name) => format!("the backing file `{name}`"),
            None => "a backing file".to_string(),
        }));
    }

    if version >= 3 {
        check_incompatible_features(be64(72), head.get(V3_HEADER_LEN).copied(), be32(100)).map_err(
            |problem| match problem {
                FeatureProblem::Corrupt(reason) => corrupt(reason),
                FeatureProblem::Unsupported(feature) => unsupported(feature),
            },
        )?;
    }

    // The L1 table: inside the file, big enough for the virtual size.
    let l1_entries = u64::from(be32(36));
    let l1_offset = be64(40);
    let l1_bytes = l1_entries * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(corrupt(format!(
            "the L1 table has {l1_entries} entries, more than QEMU allows ({})",
            MAX_L1_BYTES / 8
        )));
    }
    let bytes_per_l2_table = cluster_size * (cluster_size / 8);
    let needed_entries = virtual_size.div_ceil(bytes_per_l2_table);
    if l1_entries < needed_entries {
        return Err(corrupt(format!(
            "the L1 table has {l1_entries} entries, but a disk of {virtual_size} bytes needs \
             {needed_entries}"
        )));
    }
    check_table("the L1 table", l1_offset, l1_bytes, cluster_size, file_len).map_err(corrupt)?;

    // The refcount table: not read by an import, but a pointer past the end means damage.
    let refcount_offset = be64(48);
    let refcount_bytes = u64::from(be32(56)) * cluster_size;
    check_table(
        "the refcount table",
        refcount_offset,
        refcount_bytes,
        cluster_size,
        file_len,
    )
    .map_err(corrupt)?;

    // Every L2 table the L1 table points to.
    let mut l1 = vec![0u8; l1_bytes as usize];
    file.read_exact_at(&mut l1, l1_offset)
        .map_err(io_error("read the L1 table of", path))?;
    for (index, entry) in l1.chunks_exact(8).enumerate() {
        let entry = u64::from_be_bytes(entry.try_into().expect("8 bytes"));
        let l2_offset = entry & L1_OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        check_table(
            &format!("L1 entry {index}'s L2 table"),
            l2_offset,
            cluster_size,
            cluster_size,
            file_len,
        )
        .map_err(corrupt)?;
    }

    Ok(Qcow2Header {
        version,
        cluster_size,
        virtual_size,
    })
}

/// Reads as much of the start of `file` as fits in `buf`; returns how many bytes were read.
pub(crate) fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A table of `bytes` bytes at `offset` must be cluster-aligned and end inside the file.
fn check_table(what: &str, offset: u64, bytes: u64, cluster_size: u64, file_len: u64) -> Result<(), String> {
    if bytes == 0 {
        return Ok(());
    }
    if !offset.is_multiple_of(cluster_size) {
        return Err(format!(
            "{what} is at offset {offset}, which is not a multiple of the cluster size {cluster_size}"
        ));
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(format!(
            "{what} ({bytes} bytes at offset {offset}) lies beyond the end of the file \
             ({file_len} bytes); the file is truncated or its metadata is damaged"
        )),
    }
}

enum FeatureProblem {
    Corrupt(String),
    Unsupported(String),
}

/// Version 3 incompatible feature bits: the ones an importer can live with are none; each gets a
/// name a person can act on. `compression_type` is header byte 104 when the header has it.
fn check_incompatible_features(
    features: u64,
    compression_type: Option<u8>,
    header_length: u32,
) -> Result<(), FeatureProblem> {
    if features & INCOMPAT_CORRUPT != 0 {
        return Err(FeatureProblem::Corrupt(
            "QEMU marked it corrupt (incompatible feature bit 1)".to_string(),
        ));
    }
    let mut refused = Vec::new();
    if features & INCOMPAT_DIRTY != 0 {
        refused.push("lazy refcounts and was not closed cleanly (the dirty bit is set)".to_string());
    }
    if features & INCOMPAT_DATA_FILE != 0 {
        refused.push("an external data file".to_string());
    }
    if features & INCOMPAT_COMPRESSION_TYPE != 0 {
        let kind = match compression_type.filter(|_| header_length as usize > V3_HEADER_LEN) {
            Some(1) => "zstd compression".to_string(),
            Some(other) => format!("compression type {other}"),
            None => "a compression type field".to_string(),
        };
        refused.push(kind);
    }
    if features & INCOMPAT_EXTENDED_L2 != 0 {
        refused.push("extended L2 entries (subclusters)".to_string());
    }
    let unknown = features
        & !(INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION_TYPE
            | INCOMPAT_EXTENDED_L2);
    if unknown != 0 {
        refused.push(format!("unknown incompatible features {unknown:#x}"));
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(FeatureProblem::Unsupported(refused.join(" and ")))
    }
}

/// The backing file's name, if it is not empty and can be read (only for the message).
fn backing_file_name(file: &File, offset: u64, len: u32) -> Option<String> {
    if len == 0 {
        return None;
    }
    let mut name = vec![0u8; len as usize];
    file.read_exact_at(&mut name, offset).ok()?;
    Some(String::from_utf8_lossy(&name).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompatible_features_are_named() {
        assert!(check_incompatible_features(0, None, 104).is_ok());
        let refused = |features, ct, len| match check_incompatible_features(features, ct, len) {
            Err(FeatureProblem::Unsupported(text)) => text,
            Err(FeatureProblem::Corrupt(text)) => format!("corrupt: {text}"),
            Ok(()) => "ok".to_string(),
        };
        assert!(refused(INCOMPAT_CORRUPT | INCOMPAT_DIRTY, None, 104).starts_with("corrupt: "));
        assert!(refused(INCOMPAT_DIRTY, None, 104).contains("dirty"));
        assert!(refused(INCOMPAT_DATA_FILE, None, 104).contains("external data file"));
        assert!(refused(INCOMPAT_COMPRESSION_TYPE, Some(1), 112).contains("zstd"));
        assert!(refused(INCOMPAT_COMPRESSION_TYPE, Some(1), 104).contains("compression type field"));
        assert!(refused(INCOMPAT_EXTENDED_L2, None, 104).contains("subclusters"));
        assert!(refused(1 << 40, None, 104).contains("0x10000000000"));
    }

    #[test]
    fn tables_must_be_aligned_and_inside_the_file() {
        assert!(check_table("t", 65536, 8, 65536, 65536 * 2).is_ok());
        assert!(check_table("t", 0, 0, 65536, 0).is_ok());
        let past = check_table("t", 65536, 65536, 65536, 65536 + 100).unwrap_err();
        assert!(past.contains("beyond the end of the file"), "{past}");
        let overflow = check_table("t", u64::MAX - 65535, 65536 * 2, 65536, 1 << 40).unwrap_err();
        assert!(overflow.contains("beyond the end"), "{overflow}");
        assert!(check_table("t", 512, 8, 65536, 1 << 20)
            .unwrap_err()
            .contains("multiple"));
    }
}
