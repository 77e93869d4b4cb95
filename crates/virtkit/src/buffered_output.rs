//! A writer that never blocks its caller: bytes go into a bounded buffer and a thread of its own
//! writes them to the real sink (a terminal, a pipe, a file, standard error). A vCPU writing the
//! serial port, or any thread logging, must never wait on a host write: a terminal held with
//! Ctrl-S, a pipe nobody reads (`virtkit run ... | less` left waiting) or a slow disk would
//! freeze the guest. When the buffer is full the newest bytes are dropped and counted; a sink
//! that fails (`EPIPE`, `ENOSPC`) loses those bytes, counted too, and is tried again with the
//! next ones (a full disk can get space back).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many bytes the serial port's output may have waiting for its sink.
pub const SERIAL_OUTPUT_BUFFER: usize = 1 << 20;

/// How long dropping a [`BufferedOutput`] waits for what is buffered to be written: the last
/// lines a guest printed before it stopped must reach the terminal, but a sink that stays blocked
/// must not keep the machine from stopping.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest piece handed to the sink in one write.
const CHUNK: usize = 64 * 1024;

/// How long the thread waits, once a first byte has come, for the rest of its line before
/// writing what it has: a serial port gets one byte per port write, and a line written as it
/// comes cost a wake-up of this thread and a write to the sink for every byte (21 of each for
/// the bench's smoke line, ~0.3 ms of its first output). A prompt or an echoed keystroke with
/// no newline waits this long, which nobody sees.
const LINGER: Duration = Duration::from_millis(1);

/// What the thread writes at once without waiting for a newline.
const LINGER_BYTES: usize = 4096;

/// What the drain thread is doing, so that a writer wakes it only when it must.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Drainer {
    /// Writing, or about to look at the buffer: no need to wake it.
    #[default]
    Busy,
    /// Asleep until a byte comes.
    Idle,
    /// Holding less than a line, waiting (for at most [`LINGER`]) for its newline.
    Lingering,
}

#[derive(Default)]
struct Buffer {
    bytes: VecDeque<u8>,
    /// The thread is writing a chunk it took out.
    in_flight: bool,
    /// The writer dropped: write what is left, then end.
    closed: bool,
    /// The thread wrote everything and ended.
    done: bool,
    drainer: Drainer,
    /// Callers of `flush_for` waiting: the thread writes at once, without lingering.
    flushing: usize,
}

struct Shared {
    buffer: Mutex<Buffer>,
    changed: Condvar,
    capacity: usize,
    /// Bytes that never reached the sink: the buffer was full, or the sink failed.
    dropped: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the thread writes without waiting for a newline (less than a full buffer).
    fn linger_bytes(&self) -> usize {
        LINGER_BYTES.min(self.capacity)
    }
}

/// How the thread that drains a [`BufferedOutput`] starts.
pub enum DrainThread {
    /// With a seccomp filter for its role (write only): a VM's threads.
    Sandboxed(virtkit_sandbox::ThreadRole),
    /// Without one: a sink that may reopen files (a log that rotates).
    Plain,
}

/// See the module documentation. Clones share the buffer; the thread ends (after writing what is
/// left, for at most a couple of seconds) when the last clone is dropped.
#[derive(Clone)]
pub struct BufferedOutput {
    shared: Arc<Shared>,
    _owner: Arc<DrainOnDrop>,
}

/// Closes the buffer and waits for the drain when the last [`BufferedOutput`] goes.
struct DrainOnDrop {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl BufferedOutput {
    /// Starts the thread `name` that writes to `sink`; at most `capacity` bytes wait.
    pub fn spawn(
        sink: impl Write + Send + 'static,
        capacity: usize,
        name: &str,
        thread: DrainThread,
    ) -> io::Result<BufferedOutput> {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::default()),
            changed: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
        });
        let drain_shared = shared.clone();
        let body = move || drain(&drain_shared, sink);
        let handle = match thread {
            DrainThread::Sandboxed(role) => virtkit_sandbox::Builder::new(role)
                .name(name.into())
                .spawn(body)?,
            DrainThread::Plain => std::thread::Builder::new().name(name.into()).spawn(body)?,
        };
        Ok(BufferedOutput {
            _owner: Arc::new(DrainOnDrop {
                shared: shared.clone(),
                thread: Mutex::new(Some(handle)),
            }),
            shared,
        })
    }

    /// Bytes that never reached the sink so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` until everything written so far reached the sink (or was dropped);
    /// whether it did.
    pub fn flush_for(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut b = self.shared.lock();
        // A lingering thread writes what it has now.
        b.flushing += 1;
        if b.drainer == Drainer::Lingering {
            b.drainer = Drainer::Busy;
            self.shared.changed.notify_all();
        }
        let mut flushed = true;
        while (!b.bytes.is_empty() || b.in_flight) && !b.done {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                flushed = false;
                break;
            };
            b = self
                .shared
                .changed
                .wait_timeout(b, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        b.flushing -= 1;
        flushed
    }
}

impl Write for BufferedOutput {
    /// Takes every byte: what does not fit is dropped and counted, never waited for.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut b = self.shared.lock();
        let room = self.shared.capacity.saturating_sub(b.bytes.len());
        let kept = bytes.len().min(room);
        b.bytes.extend(&bytes[..kept]);
        // The first byte wakes an idle thread; a lingering one wants the line's end (or a
        // buffer worth writing at once); a busy one looks again by itself.
        let wake = kept > 0
            && match b.drainer {
                Drainer::Idle => true,
                Drainer::Lingering => {
                    bytes[..kept].contains(&b'\n')
                        || b.bytes.len() >= self.shared.linger_bytes()
                        || kept < bytes.len()
                }
                Drainer::Busy => false,
            };
        if wake {
            b.drainer = Drainer::Busy;
        }
        drop(b);
        if kept < bytes.len() {
            self.shared
                .dropped
                .fetch_add((bytes.len() - kept) as u64, Ordering::Relaxed);
        }
        if wake {
            self.shared.changed.notify_all();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The thread's body: hands the buffered bytes to `sink` until the writers are gone.
fn drain(shared: &Shared, mut sink: impl Write) {
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        {
            let mut b = shared.lock();
            while b.bytes.is_empty() && !b.closed {
                b.drainer = Drainer::Idle;
                b = shared.changed.wait(b).unwrap_or_else(|p| p.into_inner());
            }
            if b.bytes.is_empty() {
                b.done = true;
                shared.changed.notify_all();
                return;
            }
            // Less than a line: wait a little for the rest of it (see LINGER).
            let deadline = Instant::now() + LINGER;
            while !b.closed
                && b.flushing == 0
                && b.bytes.len() < shared.linger_bytes()
                && !b.bytes.contains(&b'\n')
            {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                b.drainer = Drainer::Lingering;
                b = shared
                    .changed
                    .wait_timeout(b, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            b.drainer = Drainer::Busy;
            let n = b.bytes.len().min(CHUNK);
            chunk.clear();
            chunk.extend(b.bytes.drain(..n));
            b.in_flight = true;
        }
        if sink.write_all(&chunk).and_then(|()| sink.flush()).is_err() {
            shared.dropped.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        // Wake a `flush_for` waiting for the buffer to empty.
        shared.lock().in_flight = false;
        shared.changed.notify_all();
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut b = self.shared.lock();
        while !b.done {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                // The sink stays blocked: leave the thread to it rather than hang the caller.
                return;
            };
            b = self
                .shared
                .changed
                .wait_timeout(b, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(b);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_sink_nobody_reads_never_blocks_the_writer_and_the_excess_is_counted() {
        // A pipe whose reader does not read: 64 KiB fit in the pipe, 64 KiB in the buffer.
        let (mut reader, writer) = io::pipe().unwrap();
        let mut out = BufferedOutput::spawn(writer, 64 << 10, "test-out", DrainThread::Plain).unwrap();
        let started = Instant::now();
        for _ in 0..64 {
            out.write_all(&[b'x'; 64 << 10]).unwrap(); // 4 MiB in all
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the writer waited on the sink"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            out.dropped() >= (4 << 20) - (256 << 10),
            "dropped {}",
            out.dropped()
        );
        // The reader catches up: what was kept arrives, and the drop finishes promptly.
        let reading = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).unwrap();
            all.len()
        });
        let kept = (4 << 20) - out.dropped() as usize;
        drop(out);
        assert_eq!(reading.join().unwrap(), kept);
    }

    #[test]
    fn everything_written_reaches_the_sink_before_the_last_writer_is_gone() {
        let path = std::env::temp_dir().join(format!("virtkit-buffered-{}.out", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut out =
            BufferedOutput::spawn(file, SERIAL_OUTPUT_BUFFER, "test-out", DrainThread::Plain).unwrap();
        let mut second = out.clone();
        out.write_all(b"first ").unwrap();
        drop(out);
        second.write_all(b"last").unwrap();
        drop(second);
        assert_eq!(std::fs::read(&path).unwrap(), b"first last");
        std::fs::remove_file(&path).unwrap();
    }

    /// A sink that records each write it gets.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_written_a_byte_at_a_time_reaches_the_sink_in_one_write() {
        let writes = Writes::default();
        let mut out = BufferedOutput::spawn(writes.clone(), 1024, "test-out", DrainThread::Plain).unwrap();
        // As a serial port gets it: one byte per port write, 20 µs apart (a vCPU's exit each,
        // slower than the thread takes to write a byte), the newline last.
        for &byte in b"virtkit-smoke: ready\n" {
            out.write_all(&[byte]).unwrap();
            let next = Instant::now() + Duration::from_micros(20);
            while Instant::now() < next {
                std::hint::spin_loop();
            }
        }
        assert!(out.flush_for(Duration::from_secs(5)));
        // Written as it came, that was a write per byte. A writer held up for more than the
        // 1 ms linger (a loaded machine) splits the line once per hold-up, hence some slack.
        let got = writes.0.lock().unwrap().clone();
        assert_eq!(got.concat(), b"virtkit-smoke: ready\n");
        assert!(got.len() <= 6, "{} writes: {got:?}", got.len());
    }

    #[test]
    fn a_line_without_its_newline_still_reaches_the_sink() {
        let writes = Writes::default();
        let mut out = BufferedOutput::spawn(writes.clone(), 1024, "test-out", DrainThread::Plain).unwrap();
        out.write_all(b"login: ").unwrap();
        // No flush, no newline: the thread writes it once it has lingered.
        let deadline = Instant::now() + Duration::from_secs(5);
        while writes.0.lock().unwrap().concat() != b"login: " {
            assert!(
                Instant::now() < deadline,
                "a prompt without a newline never arrived"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(out);
    }

    #[test]
    fn a_failing_sink_loses_bytes_not_the_writer() {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut out = BufferedOutput::spawn(full, 1024, "test-out", DrainThread::Plain).unwrap();
        out.write_all(b"no space").unwrap();
        assert!(out.flush_for(Duration::from_secs(5)));
        assert_eq!(out.dropped(), 8);
    }
}
