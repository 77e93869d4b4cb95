//! A small HTTP/1.1 file server on 127.0.0.1 for download tests: GET with `Range: bytes=N-`,
//! and faults on request: cut the connection after N body bytes, serve a corrupted body, or
//! ignore ranges. It records every request it answers so tests can assert what the client asked.
//!
//! Shared by `crates/manager/tests/images.rs` and `crates/cli/tests/images.rs` (through
//! `#[path]`); each uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub path: String,
    /// The `Range` header, as sent.
    pub range: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    /// The next file response sends only this many body bytes, then closes the connection.
    cut_next_after: Option<usize>,
    /// Files served with a byte in the middle flipped.
    corrupt: Vec<String>,
    /// Answer every request with the whole file, as a server without range support does.
    refuse_range: bool,
    seen: Vec<SeenRequest>,
}

pub struct TestServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        // A client that hangs up early is part of some tests, not a server fault.
                        let _ = serve(conn, &state);
                    }
                }
            })
        };
        TestServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn add_file(&self, path: &str, body: impl Into<Vec<u8>>) {
        let path = format!("/{}", path.trim_start_matches('/'));
        self.state.lock().unwrap().files.insert(path, body.into());
    }

    pub fn cut_next_after(&self, bytes: usize) {
        self.state.lock().unwrap().cut_next_after = Some(bytes);
    }

    /// From now on, serve `path` with the byte in its middle flipped.
    pub fn corrupt(&self, path: &str) {
        let path = format!("/{}", path.trim_start_matches('/'));
        self.state.lock().unwrap().corrupt.push(path);
    }

    pub fn set_refuse_range(&self, on: bool) {
        self.state.lock().unwrap().refuse_range = on;
    }

    /// Every request so far for `path`, oldest first.
    pub fn requests_for(&self, path: &str) -> Vec<SeenRequest> {
        let path = format!("/{}", path.trim_start_matches('/'));
        let state = self.state.lock().unwrap();
        state.seen.iter().filter(|r| r.path == path).cloned().collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }

    let mut state = state.lock().unwrap();
    let Some(file) = state.files.get(&path).cloned() else {
        state.seen.push(SeenRequest {
            path,
            range,
            status: 404,
        });
        return respond(conn, 404, &[], b"not found", None);
    };
    let mut file = file;
    if state.corrupt.contains(&path) && !file.is_empty() {
        let middle = file.len() / 2;
        file[middle] ^= 0xff;
    }
    let start = range
        .as_deref()
        .filter(|_| !state.refuse_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    let (status, headers, body) = match start {
        None => (200, vec![], &file[..]),
        Some(s) if s >= file.len() => (
            416,
            vec![format!("Content-Range: bytes */{}", file.len())],
            &[][..],
        ),
        Some(s) => (
            206,
            vec![format!(
                "Content-Range: bytes {s}-{}/{}",
                file.len() - 1,
                file.len()
            )],
            &file[s..],
        ),
    };
    let cut = if status == 416 {
        None
    } else {
        state.cut_next_after.take()
    };
    state.seen.push(SeenRequest { path, range, status });
    drop(state);
    respond(conn, status, &headers, body, cut)
}

/// Writes the answer; with `cut`, only that many body bytes before closing, though
/// `Content-Length` promises the whole body.
fn respond(
    mut conn: TcpStream,
    status: u16,
    headers: &[String],
    body: &[u8],
    cut: Option<usize>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    let sent = cut.map_or(body.len(), |n| n.min(body.len()));
    conn.write_all(&body[..sent])?;
    conn.flush()?;
    conn.shutdown(Shutdown::Both)
}
