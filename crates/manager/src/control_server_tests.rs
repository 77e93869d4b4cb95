//! The control server's bounds and its loop, with a fake VM: real sockets and threads (and
//! their seccomp filters), no KVM.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::control::ControlCommand;

/// Answers everything at once, except `pause`, which waits until the test says.
struct FakeVm {
    release_pause: Mutex<Receiver<()>>,
}

impl Handler for FakeVm {
    fn handle(&self, request: &ControlRequest) -> ControlResponse {
        match request.command {
            ControlCommand::Pause => {
                let _ = self
                    .release_pause
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(60));
                ControlResponse::success("paused")
            }
            ControlCommand::Stop => ControlResponse::success("stopping"),
            _ => ControlResponse::success("running"),
        }
    }
}

struct Served {
    path: PathBuf,
    release_pause: Sender<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_fake(tag: &str) -> Served {
    let path = std::env::temp_dir().join(format!("virtkit-control-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = channel();
    serve_listener(
        listener,
        Arc::new(FakeVm {
            release_pause: Mutex::new(rx),
        }),
    )
    .unwrap();
    Served {
        path,
        release_pause: tx,
    }
}

fn connect(s: &Served) -> (UnixStream, BufReader<UnixStream>) {
    let stream = UnixStream::connect(&s.path).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

fn ask(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>, command: &str) -> ControlResponse {
    stream
        .write_all(format!("{{\"command\":\"{command}\"}}\n").as_bytes())
        .unwrap();
    read_response(reader)
}

fn read_response(reader: &mut BufReader<UnixStream>) -> ControlResponse {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// The server closed the connection: end of file, or a reset when it left our bytes unread.
fn assert_closed(reader: &mut BufReader<UnixStream>) {
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(n) => assert_eq!(n, 0, "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn an_overlong_request_gets_one_error_and_the_connection_closes() {
    let s = serve_fake("long");
    let (mut stream, mut reader) = connect(&s);
    // The server stops reading after the bound: the writer sees the close as an error.
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 64 << 20 {
            match writer.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let r = read_response(&mut reader);
    assert!(!r.ok);
    assert_eq!(
        r.error.as_deref(),
        Some("request longer than 65536 bytes; send one JSON object per line")
    );
    assert_closed(&mut reader);
    let sent = sender.join().unwrap();
    assert!(sent < 64 << 20, "the server read all {sent} bytes");
    let _ = stream.flush();
}

#[test]
fn the_client_after_the_cap_is_told_and_closed_and_the_others_are_served() {
    let s = serve_fake("cap");
    let mut held = Vec::new();
    for _ in 0..MAX_CLIENTS {
        let (mut stream, mut reader) = connect(&s);
        assert!(ask(&mut stream, &mut reader, "state").ok);
        held.push((stream, reader));
    }
    let (_extra, mut reader) = connect(&s);
    let r = read_response(&mut reader);
    assert_eq!(
        r.error.as_deref(),
        Some("too many control connections (64 open); close one and try again")
    );
    assert_closed(&mut reader);
    // The held ones still work; one leaving makes room for a new one.
    let (stream, reader) = &mut held[7];
    assert!(ask(stream, reader, "state").ok);
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut stream, mut reader) = connect(&s);
        let _ = stream.write_all(b"{\"command\":\"state\"}\n");
        let r = read_response(&mut reader);
        if r.ok {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a client left: {r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn half_a_line_held_open_blocks_nobody() {
    let s = serve_fake("half");
    let (mut half, _half_reader) = connect(&s);
    half.write_all(b"{\"command\":\"sta").unwrap();
    let (mut stream, mut reader) = connect(&s);
    for _ in 0..3 {
        assert!(ask(&mut stream, &mut reader, "state").ok);
    }
    // The half line, finished later, is answered.
    half.write_all(b"te\"}\n").unwrap();
    let mut r = BufReader::new(half.try_clone().unwrap());
    assert!(read_response(&mut r).ok);
}

#[test]
fn a_stuck_pause_holds_neither_other_clients_nor_a_stop() {
    let s = serve_fake("stuck");
    let (mut pauser, mut pauser_reader) = connect(&s);
    pauser
        .write_all(b"{\"command\":\"pause\"}\n{\"command\":\"state\"}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (mut other, mut other_reader) = connect(&s);
    let started = Instant::now();
    assert_eq!(
        ask(&mut other, &mut other_reader, "stop").state.as_deref(),
        Some("stopping")
    );
    assert!(ask(&mut other, &mut other_reader, "state").ok);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The pauser's answers come in its order once the pause ends.
    s.release_pause.send(()).unwrap();
    assert_eq!(read_response(&mut pauser_reader).state.as_deref(), Some("paused"));
    assert_eq!(
        read_response(&mut pauser_reader).state.as_deref(),
        Some("running")
    );
}

#[test]
fn bad_lines_get_one_sentence_each_and_the_connection_goes_on() {
    let s = serve_fake("bad");
    let (mut stream, mut reader) = connect(&s);
    stream
        .write_all(b"\n  \n\xff\xfe\n{\"command\":\"jump\"}\n")
        .unwrap();
    let r = read_response(&mut reader);
    assert!(r.error.unwrap().contains("not UTF-8"));
    let r = read_response(&mut reader);
    assert!(r.error.unwrap().contains("unknown command `jump`"));
    assert!(ask(&mut stream, &mut reader, "state").ok);
}

/// A client that sends requests and never reads: the server stops reading it once its unsent
/// answers reach the bound, instead of queueing answers without end.
#[test]
fn a_client_that_never_reads_stops_being_read() {
    let s = serve_fake("unread");
    let (stream, _reader) = connect(&s);
    stream.set_nonblocking(true).unwrap();
    let mut writer = stream;
    let line = b"{\"command\":\"state\"}\n".repeat(1000);
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut blocked_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match writer.write(&line) {
            Ok(n) => {
                sent += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Answers are ~45 bytes per 20-byte request: unbounded queueing would take everything
    // sent; bounded, the server stops after its bound plus the socket buffers.
    assert!(blocked_since.is_some(), "the server kept reading: {sent} bytes");
    assert!(sent < 8 << 20, "{sent}");
    // And it still serves others.
    let (mut other, mut other_reader) = connect(&s);
    assert!(ask(&mut other, &mut other_reader, "state").ok);
}

/// Forgotten connections do not lock the owner out for good: once they have been quiet a
/// while, a new client takes the place of the quietest.
#[test]
fn at_the_cap_a_new_client_replaces_one_that_has_been_quiet() {
    let s = serve_fake("evict");
    let mut held = Vec::new();
    for _ in 0..MAX_CLIENTS {
        let (mut stream, mut reader) = connect(&s);
        assert!(ask(&mut stream, &mut reader, "state").ok);
        held.push((stream, reader));
    }
    std::thread::sleep(QUIET_EVICT_AFTER + Duration::from_millis(300));
    // The newest held one speaks: it is not the one to go.
    let (stream, reader) = held.last_mut().unwrap();
    assert!(ask(stream, reader, "state").ok);
    let (mut stream, mut reader) = connect(&s);
    assert!(ask(&mut stream, &mut reader, "state").ok);
    assert_closed(&mut held[0].1);
    let (stream, reader) = held.last_mut().unwrap();
    assert!(ask(stream, reader, "state").ok);
}
