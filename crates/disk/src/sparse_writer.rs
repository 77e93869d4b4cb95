//! Writing only the non-zero parts of a buffer, so all-zero blocks stay holes.

use std::fs::File;
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{fadvise, Advice};

use super::error::{io_error, DiskImageError};

/// Zero detection granularity: the usual file system block, so a skipped block is a whole hole.
const ZERO_BLOCK: u64 = 4096;

/// After this many bytes, ask the kernel to start writing them out (see [`SparseWriter`]).
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Writes into a freshly created (all-hole) file, skipping every 4 KiB block, aligned to the
/// file's offsets, that is all zeroes. Consecutive non-zero blocks go out as one write.
///
/// Every [`WRITEBACK_EVERY`] bytes it advises the kernel that the range just written is not
/// needed (`POSIX_FADV_DONTNEED`), which starts its writeback without waiting for it: the disk
/// writes overlap the rest of the import, the final `fsync` has little left to do, and a large
/// import does not push everything else out of the page cache.
pub(crate) struct SparseWriter<'a> {
    file: &'a File,
    path: &'a Path,
    bytes_written: u64,
    /// Written range not yet handed to writeback, and its byte count.
    unflushed: Option<(u64, u64)>,
    unflushed_bytes: u64,
}

impl<'a> SparseWriter<'a> {
    pub(crate) fn new(file: &'a File, path: &'a Path) -> SparseWriter<'a> {
        SparseWriter {
            file,
            path,
            bytes_written: 0,
            unflushed: None,
            unflushed_bytes: 0,
        }
    }

    /// Bytes actually written so far.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Puts `data` at `offset`, leaving its all-zero blocks unwritten.
    pub(crate) fn write_nonzero(&mut self, data: &[u8], offset: u64) -> Result<(), DiskImageError> {
        let mut run_start: Option<usize> = None;
        let mut pos = 0usize;
        while pos < data.len() {
            // The block containing `offset + pos` ends at the next multiple of ZERO_BLOCK.
            let absolute = offset + pos as u64;
            let block_end = (absolute / ZERO_BLOCK + 1) * ZERO_BLOCK;
            let end = data.len().min(pos + (block_end - absolute) as usize);
            if is_zero(&data[pos..end]) {
                if let Some(start) = run_start.take() {
                    self.write(&data[start..pos], offset + start as u64)?;
                }
            } else if run_start.is_none() {
                run_start = Some(pos);
            }
            pos = end;
        }
        if let Some(start) = run_start {
            self.write(&data[start..], offset + start as u64)?;
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8], offset: u64) -> Result<(), DiskImageError> {
        self.file
            .write_all_at(data, offset)
            .map_err(io_error("write to", self.path))?;
        let len = data.len() as u64;
        self.bytes_written += len;
        let (start, end) = self.unflushed.unwrap_or((offset, offset + len));
        self.unflushed = Some((start.min(offset), end.max(offset + len)));
        self.unflushed_bytes += len;
        if self.unflushed_bytes >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(())
    }

    /// Starts writeback of the range written since the last call. Only advice: a failure here
    /// changes nothing, and write errors still surface at the final `fsync`.
    fn start_writeback(&mut self) {
        if let Some((start, end)) = self.unflushed.take() {
            if let Err(e) = fadvise(self.file, start, NonZeroU64::new(end - start), Advice::DontNeed) {
                tracing::debug!("posix_fadvise(DONTNEED) on {}: {e}", self.path.display());
            }
        }
        self.unflushed_bytes = 0;
    }
}

/// Whether every byte is zero. An OR over the block, without an early exit, so the compiler
/// vectorises it; blocks are small enough that finishing one costs nothing.
fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, &b| acc | b) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_are_skipped_and_data_lands_in_place() {
        let dir = std::env::temp_dir().join(format!("virtkit-sparse-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        let _ = std::fs::remove_file(&path);
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let size = 8 * 1024 * 1024u64;
        file.set_len(size).unwrap();

        // A buffer starting mid-block (offset 1000): a non-zero byte in the first partial block,
        // zero blocks, two adjacent non-zero blocks, more zeroes, a non-zero last byte.
        let offset = 1000u64;
        let mut data = vec![0u8; 6 * 1024 * 1024];
        data[10] = 1;
        let two = (3 * 4096 - offset) as usize;
        data[two] = 2;
        data[two + 4096 + 7] = 3;
        let last = data.len() - 1;
        data[last] = 4;

        let mut writer = SparseWriter::new(&file, &path);
        writer.write_nonzero(&data, offset).unwrap();
        // Blocks written: [0, 4096) (holds offset 1010), [12288, 20480), and the last block.
        let last_abs = offset + last as u64;
        let last_block_len = last_abs + 1 - last_abs / 4096 * 4096;
        assert_eq!(writer.bytes_written(), (4096 - offset) + 8192 + last_block_len);

        let mut back = vec![0u8; size as usize];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[offset as usize..offset as usize + data.len()], &data[..]);
        assert!(back[..offset as usize].iter().all(|&b| b == 0));
        // 8 MiB long, a few blocks allocated.
        let meta = std::fs::metadata(&path).unwrap();
        assert!(
            meta.blocks() * 512 <= 64 * 1024,
            "{} bytes allocated",
            meta.blocks() * 512
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn is_zero_sees_any_bit() {
        assert!(is_zero(&[0; 4096]));
        assert!(is_zero(&[]));
        for at in [0, 1, 2047, 4095] {
            let mut block = [0u8; 4096];
            block[at] = 0x80;
            assert!(!is_zero(&block), "byte {at}");
        }
    }
}
