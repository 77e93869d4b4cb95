//! The server against a real VNC client: vncdotool (PyPI `vncdotool`, commands `vncdo` and its
//! Python module), from `scripts/install-deps.sh`'s `.cache/vncdotool-venv` or `PATH`. Without it
//! every test is skipped (`SKIPPED: ...`; a failure under `VIRTKIT_REQUIRE_ALL=1`, as in CI);
//! `VNCDO` and `VNC_PYTHON` name other paths.

mod common;

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, pattern_framebuffer, temp_dir, Event, RecordingSink};
use virtkit_vnc::{KeyEvent, PointerEvent, Security, VncServer};

const WIDTH: u32 = 320;
const HEIGHT: u32 = 200;

/// The virtual environment `scripts/install-deps.sh` puts vncdotool in.
fn venv_program(name: &str) -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/vncdotool-venv/bin")
        .join(name);
    path.is_file().then(|| path.display().to_string())
}

fn vncdo_program() -> String {
    std::env::var("VNCDO")
        .ok()
        .or_else(|| venv_program("vncdo"))
        .unwrap_or_else(|| "vncdo".into())
}

fn python_program() -> String {
    std::env::var("VNC_PYTHON")
        .ok()
        .or_else(|| venv_program("python3"))
        .unwrap_or_else(|| "python3".into())
}

/// Why the real client cannot run here, if it cannot.
fn missing_client() -> Option<String> {
    let vncdo = Command::new(vncdo_program()).arg("--version").output();
    if !vncdo.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(format!(
            "`{} --version` failed; install it with `pip install vncdotool`",
            vncdo_program()
        ));
    }
    let module = Command::new(python_program())
        .args(["-c", "import vncdotool.command"])
        .output();
    if !module.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(format!("`{}` cannot import vncdotool", python_program()));
    }
    None
}

macro_rules! require_client {
    () => {
        if let Some(reason) = missing_client() {
            virtkit_testkit::skip(&reason);
            return;
        }
    };
}

/// Runs `vncdo` with a 30 s timeout of its own.
fn vncdo(args: &[&str]) -> Output {
    Command::new(vncdo_program())
        .args(["-t", "30"])
        .args(args)
        .output()
        .expect("vncdo runs")
}

/// Runs vncdotool with ZRLE as its preferred encoding (its command line always asks for Raw).
fn vncdo_zrle(args: &[&str]) -> Output {
    let script = "import sys\n\
                  from vncdotool import client, rfb\n\
                  client.VNCDoToolClient.encoding = rfb.Encoding.ZRLE\n\
                  from vncdotool.command import vncdo\n\
                  vncdo(sys.argv[1:])\n";
    Command::new(python_program())
        .args(["-c", script, "-t", "30"])
        .args(args)
        .output()
        .expect("python runs vncdotool")
}

fn check(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Decodes a PNG capture and compares it with the pattern, pixel by pixel.
fn assert_capture_matches(path: &Path) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let expected = pattern(WIDTH, HEIGHT);
    let mut mismatches = 0;
    for (i, want) in expected.iter().enumerate() {
        let px = &buffer[i * channels..i * channels + 3];
        let got = u32::from(px[0]) << 16 | u32::from(px[1]) << 8 | u32::from(px[2]);
        if got != *want {
            if mismatches < 5 {
                eprintln!(
                    "pixel ({}, {}): got {got:06x}, want {want:06x}",
                    i as u32 % WIDTH,
                    i as u32 / WIDTH
                );
            }
            mismatches += 1;
        }
    }
    assert_eq!(mismatches, 0, "captured pixels differ from the pattern");
}

fn unix_server(name: &str, security: Security) -> (VncServer, Arc<RecordingSink>, std::path::PathBuf) {
    let dir = temp_dir(name);
    let socket = dir.join("vnc.sock");
    let sink = Arc::new(RecordingSink::default());
    let server = VncServer::new(
        Arc::new(pattern_framebuffer(WIDTH, HEIGHT)),
        sink.clone(),
        "virtkit-test",
    );
    server
        .serve_unix(UnixListener::bind(&socket).unwrap(), security)
        .unwrap();
    (server, sink, dir)
}

#[test]
fn capture_raw_over_unix_socket() {
    require_client!();
    let (_server, _, dir) = unix_server("capture-raw", Security::None);
    let png = dir.join("raw.png");
    let output = vncdo(&[
        "-s",
        dir.join("vnc.sock").to_str().unwrap(),
        "capture",
        png.to_str().unwrap(),
    ]);
    check(&output, "vncdo capture (Raw)");
    assert_capture_matches(&png);
}

#[test]
fn capture_zrle_over_unix_socket() {
    require_client!();
    let (_server, _, dir) = unix_server("capture-zrle", Security::None);
    let png = dir.join("zrle.png");
    let socket = dir.join("vnc.sock");
    // Two captures in one connection: the second one continues the ZRLE zlib stream.
    let log = dir.join("vncdotool.log");
    let output = vncdo_zrle(&[
        "-v",
        "--logfile",
        log.to_str().unwrap(),
        "-s",
        socket.to_str().unwrap(),
        "capture",
        dir.join("first.png").to_str().unwrap(),
        "capture",
        png.to_str().unwrap(),
    ]);
    check(&output, "vncdotool capture (ZRLE)");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("ZRLE"), "the rectangles came as ZRLE: {log}");
    assert_capture_matches(&dir.join("first.png"));
    assert_capture_matches(&png);
}

#[test]
fn keys_and_pointer_reach_the_input_sink() {
    require_client!();
    let (_server, sink, dir) = unix_server("input", Security::None);
    let socket = dir.join("vnc.sock");
    let output = vncdo(&[
        "-s",
        socket.to_str().unwrap(),
        "key",
        "a",
        "type",
        "Hello",
        "move",
        "100",
        "50",
        "click",
        "1",
    ]);
    check(&output, "vncdo key/type/move/click");
    let events = sink.wait_for(|e| e.iter().filter(|e| matches!(e, Event::Pointer(_))).count() >= 3);

    // Keys: the keysyms pressed, in order, each released again.
    let downs: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Key(KeyEvent {
                keysym, down: true, ..
            }) => Some(*keysym),
            _ => None,
        })
        .filter(|&k| k != 0xffe1) // a Shift the client may press for capitals
        .collect();
    assert_eq!(
        downs,
        vec![0x61, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
        "keysyms of `a` then `Hello`: {events:?}"
    );
    let ups = events
        .iter()
        .filter(|e| matches!(e, Event::Key(KeyEvent { down: false, .. })))
        .count();
    let all_downs = events
        .iter()
        .filter(|e| matches!(e, Event::Key(KeyEvent { down: true, .. })))
        .count();
    assert_eq!(ups, all_downs, "every key released");
    // vncdotool negotiates QEMU's extended key events: `a` carries the XT scancode 0x1e.
    if let Some(Event::Key(first)) = events.iter().find(|e| matches!(e, Event::Key(_))) {
        assert!(
            first.scancode.is_none() || first.scancode == Some(0x1e),
            "scancode of `a`: {first:?}"
        );
    }

    let pointer: Vec<PointerEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::Pointer(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(
        pointer.first(),
        Some(&PointerEvent {
            x: 100,
            y: 50,
            buttons: 0
        }),
        "{pointer:?}"
    );
    assert!(
        pointer.contains(&PointerEvent {
            x: 100,
            y: 50,
            buttons: 1
        }),
        "button 1 pressed: {pointer:?}"
    );
    assert_eq!(
        pointer.last(),
        Some(&PointerEvent {
            x: 100,
            y: 50,
            buttons: 0
        }),
        "released: {pointer:?}"
    );
}

#[test]
fn password_over_tcp() {
    require_client!();
    let sink = Arc::new(RecordingSink::default());
    let server = VncServer::new(Arc::new(pattern_framebuffer(WIDTH, HEIGHT)), sink, "virtkit-test");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    server
        .serve_tcp(listener, Security::Password("tops3cret".into()))
        .unwrap();
    let address = format!("127.0.0.1::{port}");
    let dir = temp_dir("tcp");
    let png = dir.join("tcp.png");

    let output = vncdo(&[
        "-s",
        &address,
        "-p",
        "tops3cret",
        "capture",
        png.to_str().unwrap(),
    ]);
    check(&output, "vncdo capture with the password");
    assert_capture_matches(&png);

    let wrong = dir.join("wrong.png");
    let output = Command::new(vncdo_program())
        .args([
            "-t",
            "10",
            "-s",
            &address,
            "-p",
            "nope",
            "capture",
            wrong.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        !output.status.success() || !wrong.exists(),
        "a wrong password must not get a capture"
    );
    assert!(!wrong.exists());
    // The server is still serving after the failed attempt.
    std::thread::sleep(Duration::from_millis(50));
    let output = vncdo(&[
        "-s",
        &address,
        "-p",
        "tops3cret",
        "capture",
        png.to_str().unwrap(),
    ]);
    check(&output, "vncdo capture after a failed login");
}
