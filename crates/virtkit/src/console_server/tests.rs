use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::client::PENDING_LIMIT;
use super::hub::{too_many_clients_line, INPUT_LIMIT, MAX_CLIENTS};
use super::*;

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("virtkit-console-{name}-{}.sock", std::process::id()))
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`: what is under test
/// is that nothing blocks, and a blocked test should fail, not hang.
fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// Reads from `stream` until `needle` has been read; everything read.
fn read_until(stream: &mut UnixStream, needle: &[u8]) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = stream.read(&mut buf).expect("output within 30 s");
        assert!(n > 0, "EOF before {:?}", String::from_utf8_lossy(needle));
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn many_clients_get_the_output_history_and_log() {
    let path = socket_path("many");
    let log_path = path.with_extension("log");
    let (mut to_guest, guest_input) = io::pipe().unwrap();
    let mut server = ConsoleServer::new(
        ConsoleServerOptions {
            log: Some(File::create(&log_path).unwrap()),
            history: 4,
            ..ConsoleServerOptions::many_clients("console-sock")
        },
        guest_input,
    )
    .unwrap();
    let mut output = server.output();
    output.write_all(b"early").unwrap();
    server.listen(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut a = UnixStream::connect(&path).unwrap();
    let mut got = [0u8; 4];
    a.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"arly", "the last 4 bytes of history");
    let mut b = UnixStream::connect(&path).unwrap();
    b.read_exact(&mut got).unwrap();
    output.write_all(b"both").unwrap();
    for c in [&mut a, &mut b] {
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"both");
    }
    a.write_all(b"x").unwrap();
    b.write_all(b"y").unwrap();
    let mut typed = [0u8; 2];
    to_guest.read_exact(&mut typed).unwrap();
    typed.sort();
    assert_eq!(&typed, b"xy");
    drop(server);
    assert_eq!(std::fs::read(&log_path).unwrap(), b"earlyboth");
    assert!(!path.exists());
    std::fs::remove_file(&log_path).ok();
}

/// The case: `virtkit console vm | sleep 400` stops reading. The guest's output (the
/// writer) must keep going, the log must get every byte, another client must get all of it, and
/// the stalled client must learn what it missed.
#[test]
fn a_client_that_never_reads_holds_up_nothing_and_later_hears_what_it_missed() {
    let path = socket_path("stalled");
    let log_path = path.with_extension("log");
    let (_to_guest, guest_input) = io::pipe().unwrap();
    let mut server = ConsoleServer::new(
        ConsoleServerOptions {
            log: Some(File::create(&log_path).unwrap()),
            history: 6,
            ..ConsoleServerOptions::many_clients("console-sock")
        },
        guest_input,
    )
    .unwrap();
    let mut output = server.output();
    output.write_all(b"hello!").unwrap();
    server.listen(&path).unwrap();
    // Both are served once they have the history.
    let mut stalled = UnixStream::connect(&path).unwrap();
    assert_eq!(read_until(&mut stalled, b"hello!"), b"hello!");
    let mut reader = UnixStream::connect(&path).unwrap();
    assert_eq!(read_until(&mut reader, b"hello!"), b"hello!");

    let read_so_far = Arc::new(AtomicUsize::new(0));
    let counter = read_so_far.clone();
    let reader_thread = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => return all,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    counter.store(all.len(), Ordering::SeqCst);
                }
            }
        }
    });

    // 16 MiB of numbered lines, far more than the stalled client's buffers. The writer keeps
    // within 128 KiB of the reading client (that client must lose nothing), and never waits
    // for the stalled one.
    let mut data = Vec::new();
    let mut n = 0u64;
    while data.len() < 16 << 20 {
        data.extend_from_slice(format!("virtkit-guest: flood {n}\n").as_bytes());
        n += 1;
    }
    let data = Arc::new(data);
    let to_write = data.clone();
    let progress = read_so_far.clone();
    within(
        Duration::from_secs(60),
        "writing 16 MiB past a stalled client",
        move || {
            for chunk in to_write.chunks(16 * 1024) {
                output.write_all(chunk).unwrap();
                let written = chunk.as_ptr() as usize - to_write.as_ptr() as usize + chunk.len();
                while written > progress.load(Ordering::SeqCst) + 128 * 1024 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        },
    );

    // The stalled client reads again: what was buffered, the notice, then new output.
    let mut after = server.output();
    let mut seen = read_until(&mut stalled, b"this client did not read them in time]\r\n");
    after.write_all(b"after the gap\n").unwrap();
    seen.extend(read_until(&mut stalled, b"after the gap\n"));
    let text = String::from_utf8_lossy(&seen);
    let at = text.find("\r\n[virtkit: ").expect("a notice");
    let dropped: usize = text[at + 12..].split(' ').next().unwrap().parse().unwrap();
    let before_gap = &seen[..at];
    assert!(
        data.starts_with(before_gap),
        "the stalled client got a prefix of the output"
    );
    assert_eq!(
        before_gap.len() + dropped,
        data.len(),
        "everything it did not get is counted"
    );
    assert!(
        before_gap.len() < 2 * PENDING_LIMIT + (4 << 20),
        "bounded: {} bytes buffered for it",
        before_gap.len()
    );
    assert!(
        text.ends_with("]\r\nafter the gap\n"),
        "output goes on after the notice"
    );

    drop(server);
    let all = reader_thread.join().unwrap();
    let mut expected = data.to_vec();
    expected.extend_from_slice(b"after the gap\n");
    assert!(
        all == expected,
        "the reading client got every byte ({} of {})",
        all.len(),
        expected.len()
    );
    let mut logged = b"hello!".to_vec();
    logged.extend_from_slice(&expected);
    assert!(
        std::fs::read(&log_path).unwrap() == logged,
        "the log has every byte"
    );
    std::fs::remove_file(&log_path).ok();
}

/// A quiet guest and clients that come and go: each is closed when it leaves, not at the next
/// output.
#[test]
fn clients_that_leave_are_closed_at_once() {
    let path = socket_path("churn");
    let (_to_guest, guest_input) = io::pipe().unwrap();
    let mut server =
        ConsoleServer::new(ConsoleServerOptions::many_clients("console-sock"), guest_input).unwrap();
    server.listen(&path).unwrap();
    let baseline = open_fds();
    for _ in 0..1000 {
        drop(UnixStream::connect(&path).unwrap());
    }
    // Other tests of this process open descriptors too: a little noise is allowed, 1000 leaked
    // sockets are not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds() > baseline + 40 {
        assert!(
            Instant::now() < deadline,
            "{} descriptors open, {baseline} before 1000 connections came and went",
            open_fds()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clients_over_the_cap_are_told_and_closed() {
    let path = socket_path("cap");
    let (_to_guest, guest_input) = io::pipe().unwrap();
    let mut server = ConsoleServer::new(
        ConsoleServerOptions {
            history: 1,
            ..ConsoleServerOptions::many_clients("console-sock")
        },
        guest_input,
    )
    .unwrap();
    server.output().write_all(b"h").unwrap();
    server.listen(&path).unwrap();
    let mut clients: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| {
            let mut c = UnixStream::connect(&path).unwrap();
            assert_eq!(read_until(&mut c, b"h"), b"h", "served");
            c
        })
        .collect();
    let mut over = UnixStream::connect(&path).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut told = Vec::new();
    over.read_to_end(&mut told).unwrap();
    assert_eq!(told, too_many_clients_line().as_bytes());
    assert!(String::from_utf8_lossy(&told).contains("too many console clients (16 connected)"));
    // One leaves: the next is served.
    drop(clients.pop());
    let mut next = UnixStream::connect(&path).unwrap();
    assert_eq!(read_until(&mut next, b"h"), b"h");
    server.output().write_all(b"all").unwrap();
    for c in clients.iter_mut().chain([&mut next]) {
        assert_eq!(read_until(c, b"all"), b"all");
    }
}

/// A guest that does not read its input: the clients' input waits (bounded), output still
/// flows, and once the guest reads, every typed byte arrives in order.
#[test]
fn input_the_guest_does_not_read_waits_in_a_bounded_buffer() {
    let path = socket_path("input");
    let (mut to_guest, guest_input) = io::pipe().unwrap();
    let mut server =
        ConsoleServer::new(ConsoleServerOptions::many_clients("console-sock"), guest_input).unwrap();
    server.listen(&path).unwrap();
    let typist = UnixStream::connect(&path).unwrap();
    let mut watcher = UnixStream::connect(&path).unwrap();
    let typed: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let (to_send, progress) = (typed.clone(), sent.clone());
    let mut typist_writer = typist.try_clone().unwrap();
    let typing = std::thread::spawn(move || {
        for chunk in to_send.chunks(4096) {
            typist_writer.write_all(chunk).unwrap();
            progress.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut output = server.output();
    // Output reaches the clients while their input is held back. The watcher is surely
    // registered once it gets output written after it connected...
    within(Duration::from_secs(10), "output while input is held", move || {
        output.write_all(b"still alive\n").unwrap();
    });
    assert_eq!(read_until(&mut watcher, b"still alive\n"), b"still alive\n");
    let held = sent.load(Ordering::SeqCst);
    // Pipe (64 KiB), the server's buffer and the two socket buffers: a few hundred KiB.
    assert!(
        held < INPUT_LIMIT + (2 << 20),
        "{held} bytes taken from a client while the guest read none"
    );
    assert!(!typing.is_finished(), "the typist is held back");
    let mut got = vec![0u8; typed.len()];
    let got = within(
        Duration::from_secs(60),
        "the guest reading its input",
        move || {
            to_guest.read_exact(&mut got).unwrap();
            got
        },
    );
    assert!(got == typed, "every typed byte, in order");
    typing.join().unwrap();
}

/// A writer standing for a terminal that stopped taking output (Ctrl-S) until released.
struct StuckTerminal {
    release: Arc<std::sync::Mutex<()>>,
    out: mpsc::Sender<Vec<u8>>,
}

impl Write for StuckTerminal {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        drop(self.release.lock().unwrap());
        let _ = self.out.send(b.to_vec());
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stuck_terminal_or_a_full_disk_holds_up_nothing() {
    let release = Arc::new(std::sync::Mutex::new(()));
    let stuck = release.lock().unwrap();
    let (out, terminal) = mpsc::channel();
    let (_to_guest, guest_input) = io::pipe().unwrap();
    let server = ConsoleServer::new(
        ConsoleServerOptions {
            // ENOSPC on every write: counted, never a panic.
            log: File::options().write(true).open("/dev/full").ok(),
            echo: Some(Box::new(StuckTerminal {
                release: release.clone(),
                out,
            })),
            ..ConsoleServerOptions::many_clients("console-sock")
        },
        guest_input,
    )
    .unwrap();
    let mut output = server.output();
    within(
        Duration::from_secs(30),
        "writing past a stuck terminal",
        move || {
            for _ in 0..1024 {
                output.write_all(&[b'x'; 8192]).unwrap();
            }
        },
    );
    drop(stuck);
    let (guest_output, _guest_writes) = io::pipe().unwrap();
    let pump = server.pump(guest_output.into()).unwrap();
    pump.finish();
    let mut seen = Vec::new();
    while let Ok(b) = terminal.recv_timeout(Duration::from_secs(5)) {
        seen.extend(b);
        if String::from_utf8_lossy(&seen).contains("did not read them in time]") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("bytes of console output were dropped: this terminal did not read them"),
        "{} bytes",
        seen.len()
    );
    drop(server);
}

/// The serial port's socket: the vCPU writes the output itself, so a stalled client there would
/// stop the vCPU. One client at a time: the next waits until the first leaves.
#[test]
fn one_client_at_a_time_and_a_stalled_one_holds_up_no_writer() {
    let path = socket_path("one");
    let (mut to_guest, guest_input) = io::pipe().unwrap();
    let mut server =
        ConsoleServer::new(ConsoleServerOptions::one_client("serial-socket"), guest_input).unwrap();
    server.listen(&path).unwrap();
    let mut first = UnixStream::connect(&path).unwrap();
    // What it types reaches the guest once it is served: from then on it gets the output.
    first.write_all(b"k").unwrap();
    let mut typed = [0u8; 1];
    to_guest.read_exact(&mut typed).unwrap();
    let mut output = server.output();
    output.write_all(b"first\n").unwrap();
    assert_eq!(read_until(&mut first, b"first\n"), b"first\n");
    let mut second = UnixStream::connect(&path).unwrap();
    within(
        Duration::from_secs(60),
        "writing 8 MiB past a stalled client",
        move || {
            for _ in 0..1024 {
                output.write_all(&[b'.'; 8192]).unwrap();
            }
            output.write_all(b"end\n").unwrap();
        },
    );
    second.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(second.read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "the second client waits while the first is there"
    );
    second.set_nonblocking(false).unwrap();
    drop(first);
    // The second is served once the first has gone; it gets output from then on.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut more = server.output();
    let mut seen = Vec::new();
    second.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while !String::from_utf8_lossy(&seen).contains("second\n") {
        assert!(Instant::now() < deadline, "the second client was never served");
        more.write_all(b"second\n").unwrap();
        if let Ok(n) = second.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
    }
    assert!(!seen.contains(&b'.'), "nothing from before it was served");
}
