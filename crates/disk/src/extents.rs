//! The data extents of a sparse file, found with `SEEK_DATA` / `SEEK_HOLE`.

use std::fs::File;
use std::io;
use std::ops::Range;

use rustix::fs::{seek, SeekFrom};
use rustix::io::Errno;

/// Iterates over the byte ranges of `file` (below `len`) that hold data; holes are skipped.
/// A file system without `SEEK_DATA` support reports the whole file as one extent, which is
/// what the kernel's generic implementation does too.
pub(crate) struct DataExtents<'a> {
    file: &'a File,
    pos: u64,
    len: u64,
    seek_works: bool,
}

impl<'a> DataExtents<'a> {
    pub(crate) fn new(file: &'a File, len: u64) -> DataExtents<'a> {
        DataExtents {
            file,
            pos: 0,
            len,
            seek_works: true,
        }
    }

    fn rest_is_data(&mut self) -> Option<io::Result<Range<u64>>> {
        let extent = self.pos..self.len;
        self.pos = self.len;
        Some(Ok(extent))
    }
}

impl Iterator for DataExtents<'_> {
    type Item = io::Result<Range<u64>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.len {
            return None;
        }
        if !self.seek_works {
            return self.rest_is_data();
        }
        let start = match seek(self.file, SeekFrom::Data(self.pos)) {
            Ok(start) => start,
            // No data at or after `pos`: the rest is a hole.
            Err(Errno::NXIO) => {
                self.pos = self.len;
                return None;
            }
            Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                self.seek_works = false;
                return self.rest_is_data();
            }
            Err(e) => return Some(Err(e.into())),
        };
        if start >= self.len {
            self.pos = self.len;
            return None;
        }
        let end = match seek(self.file, SeekFrom::Hole(start)) {
            Ok(end) => end.min(self.len),
            // The file shrank between the two calls: nothing more to copy.
            Err(Errno::NXIO) => self.len,
            Err(e) => return Some(Err(e.into())),
        };
        self.pos = end;
        Some(Ok(start..end))
    }
}
