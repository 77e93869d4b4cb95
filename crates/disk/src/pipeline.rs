//! Reading and writing at the same time: a reader thread fills buffers while the calling thread
//! writes the previous ones, so an import costs about the slower of the two, not their sum.

use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;

use super::error::DiskImageError;
use super::sparse_writer::SparseWriter;
use super::CHUNK;

/// Buffers of `CHUNK` bytes in flight between the two threads.
const IN_FLIGHT: usize = 3;

enum Piece {
    /// `buf[..len]` is the disk's content at `offset`.
    Data { offset: u64, buf: Vec<u8>, len: usize },
    /// Nothing to write up to `done` (a hole): only progress.
    Skipped { done: u64 },
}

/// The reader's side: hands filled buffers to the writer.
pub(crate) struct Feeder {
    full: SyncSender<Piece>,
    empty: Receiver<Vec<u8>>,
    allocated: usize,
}

impl Feeder {
    /// Has `fill` put the disk's `len` bytes (at most `CHUNK`) at `offset` into a buffer, and
    /// passes it on to be written.
    pub(crate) fn data(
        &mut self,
        offset: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), DiskImageError>,
    ) -> Result<(), DiskImageError> {
        debug_assert!(len <= CHUNK);
        let mut buf = if self.allocated < IN_FLIGHT {
            self.allocated += 1;
            vec![0u8; CHUNK]
        } else {
            self.empty.recv().map_err(|_| writer_stopped())?
        };
        fill(&mut buf[..len])?;
        self.full
            .send(Piece::Data { offset, buf, len })
            .map_err(|_| writer_stopped())
    }

    /// Reports that everything below `done` has been gone through.
    pub(crate) fn skipped(&mut self, done: u64) -> Result<(), DiskImageError> {
        self.full
            .send(Piece::Skipped { done })
            .map_err(|_| writer_stopped())
    }
}

/// The writer gave up (its own error is the one reported); the reader only has to stop.
fn writer_stopped() -> DiskImageError {
    DiskImageError::Io {
        action: "hand data to the writer for",
        path: Default::default(),
        source: io::Error::other("the writer stopped"),
    }
}

/// Runs `read` on a reader thread and writes what it feeds through `writer` on this one,
/// reporting `progress(done, total)`. The writer's error wins over the reader's (which then is
/// only that the writer stopped).
pub(crate) fn pipelined(
    read: impl FnOnce(&mut Feeder) -> Result<(), DiskImageError> + Send,
    writer: &mut SparseWriter<'_>,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), DiskImageError> {
    let (full_tx, full_rx) = sync_channel(IN_FLIGHT);
    let (empty_tx, empty_rx) = sync_channel(IN_FLIGHT);
    thread::scope(|scope| {
        let reader = thread::Builder::new()
            .name("disk-read".to_string())
            .spawn_scoped(scope, move || {
                let mut feeder = Feeder {
                    full: full_tx,
                    empty: empty_rx,
                    allocated: 0,
                };
                read(&mut feeder)
            })
            .map_err(|source| DiskImageError::Io {
                action: "start the reader thread for",
                path: Default::default(),
                source,
            })?;

        let mut written = || -> Result<(), DiskImageError> {
            // Ends when the reader is done and drops its sender.
            for piece in full_rx.iter() {
                match piece {
                    Piece::Data { offset, buf, len } => {
                        writer.write_nonzero(&buf[..len], offset)?;
                        progress(offset + len as u64, total);
                        // The reader may have finished already; then the buffer is just freed.
                        let _ = empty_tx.send(buf);
                    }
                    Piece::Skipped { done } => progress(done, total),
                }
            }
            Ok(())
        };
        let written = written();
        // On a write error, hanging up makes the reader's next hand-over fail, so it stops.
        drop(full_rx);
        drop(empty_tx);
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written.and(read)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::path::Path;

    fn scratch_file(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("virtkit-pipeline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        File::create(&path).unwrap().set_len(64 << 20).unwrap();
        path
    }

    /// Feeds `pieces` chunks of 0x5a bytes, or fails at piece `fail_at`.
    fn reader(
        pieces: u64,
        fail_at: Option<u64>,
    ) -> impl FnOnce(&mut Feeder) -> Result<(), DiskImageError> + Send {
        move |feeder| {
            for i in 0..pieces {
                if Some(i) == fail_at {
                    return Err(DiskImageError::CorruptQcow2 {
                        path: "reader".into(),
                        reason: format!("piece {i}"),
                    });
                }
                feeder.skipped(i * 2 * 4096)?;
                feeder.data(i * 2 * 4096 + 4096, 4096, |buf| {
                    buf.fill(0x5a);
                    Ok(())
                })?;
            }
            Ok(())
        }
    }

    #[test]
    fn data_lands_and_progress_moves_forward() {
        let path = scratch_file("ok");
        let file = File::options().read(true).write(true).open(&path).unwrap();
        let mut writer = SparseWriter::new(&file, &path);
        let mut seen = Vec::new();
        pipelined(reader(100, None), &mut writer, 1 << 20, &mut |done, _| {
            seen.push(done)
        })
        .unwrap();
        assert_eq!(writer.bytes_written(), 100 * 4096);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(seen.last(), Some(&(99 * 8192 + 8192)));
        let back = std::fs::read(&path).unwrap();
        assert!(back[4096..8192].iter().all(|&b| b == 0x5a));
        assert!(back[8192..12288].iter().all(|&b| b == 0));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_reader_error_is_reported() {
        let path = scratch_file("read-error");
        let file = File::options().read(true).write(true).open(&path).unwrap();
        let mut writer = SparseWriter::new(&file, &path);
        let err = pipelined(reader(100, Some(40)), &mut writer, 1 << 20, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("piece 40"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_write_error_stops_the_reader_and_wins() {
        // Opened read-only, so every write fails; the reader would feed far more than fits in
        // flight, so this also checks that it is stopped rather than left blocked.
        let path = scratch_file("write-error");
        let file = File::open(&path).unwrap();
        let mut writer = SparseWriter::new(&file, Path::new("read-only"));
        let err = pipelined(reader(10_000, None), &mut writer, 1 << 30, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().starts_with("cannot write to read-only"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
