//! The terminal copy of the output (`echo`): a terminal can stop taking output (Ctrl-S, a pipe
//! nobody reads), so it gets the output through a bounded queue that a thread of its own
//! (`console-out`) writes out. When the queue is full, output for the terminal is dropped and
//! counted, and the terminal is told how much once it takes output again; the console's event
//! loop, and so the guest, never waits for it.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client::dropped_notice;

/// Bytes of output queued for the terminal at most.
pub(super) const ECHO_LIMIT: usize = 256 * 1024;

#[derive(Default)]
struct State {
    queue: VecDeque<u8>,
    /// Dropped since the terminal was last told.
    dropped: u64,
    /// The server is gone: write what is queued, then end.
    closed: bool,
    /// The writer is in a `write` (the queue being empty does not yet mean written out).
    writing: bool,
}

#[derive(Default)]
pub(super) struct EchoQueue {
    state: Mutex<State>,
    changed: Condvar,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EchoQueue {
    /// Queues `bytes`, or drops and counts them when the queue is full. Never waits for the
    /// terminal.
    pub(super) fn push(&self, bytes: &[u8]) {
        let mut s = lock(&self.state);
        if s.dropped == 0 && s.queue.len() + bytes.len() <= ECHO_LIMIT {
            s.queue.extend(bytes);
        } else {
            s.dropped += bytes.len() as u64;
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Waits up to `timeout` until everything queued is written out; whether it was.
    pub(super) fn wait_written(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.state);
        while !s.queue.is_empty() || s.writing || s.dropped > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    /// The writer's loop: takes what is queued (and the notice of drops) and writes it out.
    fn run(&self, mut out: Box<dyn Write + Send>) {
        loop {
            let mut s = lock(&self.state);
            while s.queue.is_empty() && s.dropped == 0 && !s.closed {
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.queue.is_empty() && s.dropped == 0 {
                return;
            }
            let mut chunk: Vec<u8> = s.queue.drain(..).collect();
            // The gap is after what was queued: the notice goes there.
            if s.dropped > 0 {
                chunk.extend(dropped_notice(s.dropped, "this terminal").as_bytes());
                s.dropped = 0;
            }
            s.writing = true;
            drop(s);
            let written = out.write_all(&chunk).and_then(|_| out.flush());
            lock(&self.state).writing = false;
            self.changed.notify_all();
            if written.is_err() {
                // The terminal is gone: nothing more can reach it.
                virtkit_machine::warn_ratelimited!(
                    "the console's terminal output failed; output to it stops"
                );
                return;
            }
        }
    }
}

/// The queue and its writer thread.
pub(super) struct Echo {
    pub(super) queue: Arc<EchoQueue>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub(super) fn start(out: Box<dyn Write + Send>) -> io::Result<Echo> {
        let queue = Arc::new(EchoQueue::default());
        let q = queue.clone();
        let thread = virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ConsoleOutput)
            .name("console-out".into())
            .spawn(move || q.run(out))?;
        Ok(Echo {
            queue,
            thread: Some(thread),
        })
    }
}

/// How long the end of the console waits for a terminal to take the last output.
pub(super) const FINAL_WRITE_WAIT: Duration = Duration::from_secs(2);

impl Drop for Echo {
    fn drop(&mut self) {
        self.queue.close();
        // A terminal that takes nothing (Ctrl-S) must not hold up the VM's end: after the wait
        // the thread is left to finish or to end with the process.
        if self.queue.wait_written(FINAL_WRITE_WAIT) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}
