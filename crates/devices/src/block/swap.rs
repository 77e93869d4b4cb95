//! A disk whose backend can be replaced while the device sleeps: what a snapshot of a running VM
//! needs, since its boot disk becomes a new qcow2 layer over the file the device had open.
//!
//! [`AnyDisk`] is any backend behind one box (raw files and qcow2 chains in the same device
//! type); [`Block::replace_disk`] swaps it when no worker has the handler. The old backend is
//! dropped before the new one opens, so its `flock` on the file (which becomes a read-only layer
//! the new chain locks shared) is gone by then; meanwhile the device holds a [`ClosedDisk`].

use std::io;

use super::backend::{DiskBackend, DiskCompletion, DiskOp, Started};
use super::device::Block;
use vmm_sys_util::eventfd::EventFd;

/// Any disk backend, boxed: the type the VM's disks are attached with.
pub type AnyDisk = Box<dyn DiskBackend>;

impl DiskBackend for AnyDisk {
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        (**self).write_at(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        (**self).discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        (**self).write_zeroes(offset, len, may_unmap)
    }
    fn write_back(&mut self) -> io::Result<()> {
        (**self).write_back()
    }
    fn start(&mut self, tag: u64, op: DiskOp) -> Started {
        (**self).start(tag, op)
    }
    fn submit(&mut self) {
        (**self).submit()
    }
    fn reap(&mut self, done: &mut Vec<DiskCompletion>, wait: bool) {
        (**self).reap(done, wait)
    }
    fn in_flight(&self) -> usize {
        (**self).in_flight()
    }
    fn guest_io_alignment(&self) -> Option<usize> {
        (**self).guest_io_alignment()
    }
    fn completion_event(&self) -> Option<&EventFd> {
        (**self).completion_event()
    }
}

/// The backend of a disk between two files: every request fails with an I/O error (the guest
/// sees `VIRTIO_BLK_S_IOERR`), which happens only if no file could be opened again.
#[derive(Debug)]
pub struct ClosedDisk {
    capacity: u64,
}

impl ClosedDisk {
    pub fn new(capacity: u64) -> ClosedDisk {
        ClosedDisk { capacity }
    }

    fn closed() -> io::Error {
        io::Error::other("the disk's file is closed (a replacement could not be opened)")
    }
}

impl DiskBackend for ClosedDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn read_at(&mut self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        Err(ClosedDisk::closed())
    }
    fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
        Err(ClosedDisk::closed())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(ClosedDisk::closed())
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(ClosedDisk::closed())
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64, _may_unmap: bool) -> io::Result<()> {
        Err(ClosedDisk::closed())
    }
}

/// Why a disk's backend could not be replaced.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceDiskError {
    #[error("the disk is in use by its worker; pause the VM first")]
    Running,
    #[error("the new disk has {new} bytes where the guest sees {old}; a replacement must be the same size")]
    SizeChanged { old: u64, new: u64 },
    #[error(transparent)]
    Open(#[from] super::backend::DiskOpenError),
}

impl Block<AnyDisk> {
    /// Closes the backend and puts the one `open` returns in its place. The device must not be
    /// running (asleep, or never started); the new backend must have the same capacity. If
    /// `open` fails (or its disk's size differs), the device keeps a [`ClosedDisk`] and the
    /// caller may try again with another file.
    pub fn replace_disk(
        &mut self,
        open: impl FnOnce() -> Result<AnyDisk, super::backend::DiskOpenError>,
    ) -> Result<(), ReplaceDiskError> {
        let handler = self.handler_mut().ok_or(ReplaceDiskError::Running)?;
        let old = handler.disk.capacity();
        // The old file is closed (and unlocked) before the new one opens.
        drop(std::mem::replace(
            &mut handler.disk,
            Box::new(ClosedDisk::new(old)),
        ));
        let disk = open()?;
        if disk.capacity() != old {
            return Err(ReplaceDiskError::SizeChanged {
                old,
                new: disk.capacity(),
            });
        }
        handler.disk = disk;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemoryDisk;

    fn filled(size: usize, byte: u8) -> AnyDisk {
        let mut disk = MemoryDisk::new(size);
        disk.write_at(0, &vec![byte; size]).unwrap();
        Box::new(disk)
    }

    fn block(size: usize, byte: u8) -> Block<AnyDisk> {
        Block::new(filled(size, byte), false, None).unwrap()
    }

    #[test]
    fn an_idle_disk_is_replaced_and_reads_the_new_backend() {
        let mut device = block(4096, 1);
        device.replace_disk(|| Ok(filled(4096, 2))).unwrap();
        let mut buf = [0u8; 512];
        device.handler_mut().unwrap().disk.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [2; 512]);
    }

    #[test]
    fn a_failed_open_or_another_size_leaves_a_closed_disk_that_fails_every_request() {
        let mut device = block(4096, 1);
        let err = device.replace_disk(|| Ok(filled(8192, 2))).unwrap_err();
        assert!(
            matches!(err, ReplaceDiskError::SizeChanged { old: 4096, new: 8192 }),
            "{err}"
        );
        let disk = &mut device.handler_mut().unwrap().disk;
        assert_eq!(disk.capacity(), 4096);
        assert!(disk.read_at(0, &mut [0u8; 512]).is_err());
        assert!(disk.write_at(0, &[0u8; 512]).is_err());
        assert!(disk.flush().is_err());
        // A second try with the right size puts the device back in service.
        device.replace_disk(|| Ok(filled(4096, 3))).unwrap();
        let mut buf = [0u8; 512];
        device.handler_mut().unwrap().disk.read_at(512, &mut buf).unwrap();
        assert_eq!(buf, [3; 512]);
    }
}
