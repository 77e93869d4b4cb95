//! The server over real sockets, driven by a small RFB client written here.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pattern, pattern_framebuffer, temp_dir, Event, RecordingSink};
use virtkit_vnc::{
    encoding, vnc_auth_response, KeyEvent, MemoryFramebuffer, PixelFormat, PointerEvent, Rect, Security,
    VncError, VncServer,
};

/// A minimal client: handshake with None or a password, then raw updates.
struct TestClient {
    stream: UnixStream,
    width: u16,
    height: u16,
    /// The LEDs of the last LED-state pseudo-rectangle.
    leds: Option<u8>,
}

impl TestClient {
    fn connect(path: &std::path::Path, password: Option<&[u8]>) -> TestClient {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut version = [0u8; 12];
        stream.read_exact(&mut version).unwrap();
        assert_eq!(&version, b"RFB 003.008\n");
        stream.write_all(b"RFB 003.008\n").unwrap();
        let mut types = [0u8; 2];
        stream.read_exact(&mut types).unwrap();
        match password {
            None => {
                assert_eq!(types, [1, 1]);
                stream.write_all(&[1]).unwrap();
            }
            Some(password) => {
                assert_eq!(types, [1, 2]);
                stream.write_all(&[2]).unwrap();
                let mut challenge = [0u8; 16];
                stream.read_exact(&mut challenge).unwrap();
                stream
                    .write_all(&vnc_auth_response(password, &challenge))
                    .unwrap();
            }
        }
        let mut result = [0u8; 4];
        stream.read_exact(&mut result).unwrap();
        assert_eq!(result, [0; 4]);
        stream.write_all(&[1]).unwrap();
        let mut init = [0u8; 24];
        stream.read_exact(&mut init).unwrap();
        assert_eq!(&init[4..20], &PixelFormat::XRGB8888.to_bytes());
        let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
        let mut name = vec![0u8; name_len];
        stream.read_exact(&mut name).unwrap();
        assert_eq!(name, b"test-vm");
        let width = u16::from_be_bytes([init[0], init[1]]);
        let height = u16::from_be_bytes([init[2], init[3]]);
        TestClient {
            stream,
            width,
            height,
            leds: None,
        }
    }

    fn set_encodings(&mut self, list: &[i32]) {
        let mut message = vec![2, 0];
        message.extend_from_slice(&(list.len() as u16).to_be_bytes());
        for e in list {
            message.extend_from_slice(&e.to_be_bytes());
        }
        self.stream.write_all(&message).unwrap();
    }

    fn request(&mut self, incremental: bool, rect: Rect) {
        let mut message = vec![3, u8::from(incremental)];
        for v in [rect.x, rect.y, rect.width, rect.height] {
            message.extend_from_slice(&(v as u16).to_be_bytes());
        }
        self.stream.write_all(&message).unwrap();
    }

    /// Reads one FramebufferUpdate of raw rectangles (and pseudo-rectangles), painting into
    /// `frame`; returns the rectangles with their encodings.
    fn read_update(&mut self, frame: &mut [u32]) -> Vec<(Rect, i32)> {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).unwrap();
        assert_eq!(header[0], 0, "a FramebufferUpdate");
        let count = u16::from_be_bytes([header[2], header[3]]);
        let mut rects = Vec::new();
        for _ in 0..count {
            let mut h = [0u8; 12];
            self.stream.read_exact(&mut h).unwrap();
            let be = |i: usize| u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
            let rect = Rect::new(be(0), be(2), be(4), be(6));
            let kind = i32::from_be_bytes(h[8..12].try_into().unwrap());
            if kind == encoding::RAW {
                let mut data = vec![0u8; rect.area() as usize * 4];
                self.stream.read_exact(&mut data).unwrap();
                for (i, px) in data.chunks_exact(4).enumerate() {
                    let (x, y) = (rect.x + i as u32 % rect.width, rect.y + i as u32 / rect.width);
                    frame[(y * u32::from(self.width) + x) as usize] =
                        u32::from_le_bytes(px.try_into().unwrap());
                }
            } else if kind == encoding::LED_STATE {
                let mut leds = [0u8; 1];
                self.stream.read_exact(&mut leds).unwrap();
                self.leds = Some(leds[0]);
            } else if kind == encoding::DESKTOP_SIZE {
                self.width = rect.width as u16;
                self.height = rect.height as u16;
            }
            rects.push((rect, kind));
        }
        rects
    }

    /// True when the server closed the connection (reads 0 bytes before the timeout).
    fn closed(&mut self) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

fn serve(
    fb: Arc<MemoryFramebuffer>,
    sink: Arc<RecordingSink>,
    name: &str,
    security: Security,
) -> (VncServer, std::path::PathBuf) {
    let dir = temp_dir(name);
    let path = dir.join("vnc.sock");
    let server = VncServer::new(fb, sink, "test-vm");
    server
        .serve_unix(UnixListener::bind(&path).unwrap(), security)
        .unwrap();
    (server, path)
}

#[test]
fn full_then_incremental_updates_and_input() {
    let fb = Arc::new(pattern_framebuffer(200, 100));
    let sink = Arc::new(RecordingSink::default());
    let (server, path) = serve(fb.clone(), sink.clone(), "updates", Security::None);
    let mut client = TestClient::connect(&path, None);
    assert_eq!((client.width, client.height), (200, 100));
    client.set_encodings(&[encoding::RAW]);
    let mut frame = vec![0u32; 200 * 100];
    client.request(false, Rect::full(200, 100));
    let rects = client.read_update(&mut frame);
    assert_eq!(rects.len(), 2, "Raw: two bands of at most 64 rows");
    assert_eq!(frame, pattern(200, 100));

    // An incremental request waits until something changes, then gets only that.
    client.request(true, Rect::full(200, 100));
    std::thread::sleep(Duration::from_millis(100));
    fb.fill_rect(Rect::new(10, 20, 30, 5), 0x00ab_cdef);
    let rects = client.read_update(&mut frame);
    assert_eq!(rects, vec![(Rect::new(10, 20, 30, 5), encoding::RAW)]);
    assert_eq!(frame, fb.snapshot().2);

    client.stream.write_all(&[4, 1, 0, 0, 0, 0, 0, 0x61]).unwrap();
    client.stream.write_all(&[5, 1, 0x10, 0, 0, 50]).unwrap(); // x 4096 is clamped to 199
    client
        .stream
        .write_all(&[6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c'])
        .unwrap();
    client
        .stream
        .write_all(&[255, 0, 0, 0, 0, 0, 0, 0x61, 0, 0, 0, 0x1e])
        .unwrap();
    let events = sink.wait_for(|e| e.len() >= 3);
    assert_eq!(
        events,
        vec![
            Event::Key(KeyEvent {
                keysym: 0x61,
                down: true,
                scancode: None
            }),
            Event::Pointer(PointerEvent {
                x: 199,
                y: 50,
                buttons: 1
            }),
            Event::Key(KeyEvent {
                keysym: 0x61,
                down: false,
                scancode: Some(0x1e)
            }),
        ]
    );
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.client_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.client_count(), 0);
}

#[test]
fn desktop_size_and_qemu_key_pseudo_rectangles() {
    let fb = Arc::new(MemoryFramebuffer::new(64, 32));
    let sink = Arc::new(RecordingSink::default());
    let (_server, path) = serve(fb.clone(), sink, "resize", Security::None);
    let mut client = TestClient::connect(&path, None);
    client.set_encodings(&[
        encoding::RAW,
        encoding::DESKTOP_SIZE,
        encoding::QEMU_EXTENDED_KEY_EVENT,
    ]);
    let mut frame = vec![0u32; 64 * 32];
    // The server answers the QEMU pseudo-encoding with its own pseudo-rectangle.
    assert_eq!(
        client.read_update(&mut frame),
        vec![(Rect::full(64, 32), encoding::QEMU_EXTENDED_KEY_EVENT)]
    );
    client.request(false, Rect::full(64, 32));
    client.read_update(&mut frame);
    fb.resize(100, 70);
    client.request(true, Rect::full(64, 32));
    assert_eq!(
        client.read_update(&mut frame),
        vec![(Rect::full(100, 70), encoding::DESKTOP_SIZE)]
    );
    frame = vec![0u32; 100 * 70];
    fb.fill_rect(Rect::new(90, 60, 10, 10), 0x0012_3456);
    client.request(true, Rect::full(100, 70));
    let rects = client.read_update(&mut frame);
    assert_eq!(
        rects.iter().map(|(r, _)| r.area()).sum::<u64>(),
        7000,
        "the whole new frame"
    );
    assert_eq!(frame, fb.snapshot().2);
}

#[test]
fn the_keyboard_leds_reach_a_client_that_asks_for_them_when_they_change() {
    let fb = Arc::new(MemoryFramebuffer::new(64, 32));
    let sink = Arc::new(RecordingSink::default());
    sink.set_leds(Some(0));
    let (_server, path) = serve(fb.clone(), sink.clone(), "leds", Security::None);
    let mut client = TestClient::connect(&path, None);
    client.set_encodings(&[encoding::RAW, encoding::LED_STATE]);
    let mut frame = vec![0u32; 64 * 32];
    // Told at once, then again only on a change, with or without a request pending.
    assert_eq!(
        client.read_update(&mut frame),
        vec![(Rect::new(0, 0, 0, 0), encoding::LED_STATE)]
    );
    assert_eq!(client.leds, Some(0));
    client.request(false, Rect::full(64, 32));
    assert_eq!(client.read_update(&mut frame)[0].1, encoding::RAW);
    client.request(true, Rect::full(64, 32));
    sink.set_leds(Some(0b100));
    assert_eq!(
        client.read_update(&mut frame),
        vec![(Rect::new(0, 0, 0, 0), encoding::LED_STATE)]
    );
    assert_eq!(client.leds, Some(0b100), "Caps Lock");
    // The request is still pending: a change of the screen answers it.
    fb.fill_rect(Rect::new(0, 0, 4, 4), 0x00ff_0000);
    assert_eq!(
        client.read_update(&mut frame),
        vec![(Rect::new(0, 0, 4, 4), encoding::RAW)]
    );

    // A client that did not ask gets none.
    let mut plain = TestClient::connect(&path, None);
    plain.set_encodings(&[encoding::RAW]);
    plain.request(false, Rect::full(64, 32));
    sink.set_leds(Some(0b010));
    let rects = plain.read_update(&mut frame);
    assert!(rects.iter().all(|(_, kind)| *kind == encoding::RAW), "{rects:?}");
    assert_eq!(plain.leds, None);
}

#[test]
fn password_required_and_checked() {
    let fb = Arc::new(MemoryFramebuffer::new(8, 8));
    let sink = Arc::new(RecordingSink::default());
    let (_server, path) = serve(fb, sink, "password", Security::Password("s3cret".into()));
    let _good = TestClient::connect(&path, Some(b"s3cret"));

    let mut stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 12];
    stream.read_exact(&mut buf).unwrap();
    stream.write_all(b"RFB 003.008\n\x02").unwrap();
    let mut challenge = [0u8; 2 + 16];
    stream.read_exact(&mut challenge).unwrap();
    stream
        .write_all(&vnc_auth_response(b"wrong", challenge[2..].try_into().unwrap()))
        .unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(&rest[..4], &[0, 0, 0, 1], "SecurityResult failed, then closed");
}

#[test]
fn hostile_client_is_dropped_and_others_keep_working() {
    let fb = Arc::new(pattern_framebuffer(40, 30));
    let sink = Arc::new(RecordingSink::default());
    let (server, path) = serve(fb.clone(), sink, "hostile", Security::None);
    let mut good = TestClient::connect(&path, None);

    // Too many encodings, an enormous cut text, an unknown message: each is dropped.
    for garbage in [
        &[2u8, 0, 0xff, 0xff][..],
        &[6, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff],
        &[9],
    ] {
        let mut bad = TestClient::connect(&path, None);
        bad.stream.write_all(garbage).unwrap();
        assert!(bad.closed(), "server closes on {garbage:?}");
    }
    // A client that asks for updates and never reads them stalls nobody: the producer keeps
    // writing and the good client keeps getting its updates.
    let mut stalled = TestClient::connect(&path, None);
    for _ in 0..200 {
        stalled.request(false, Rect::full(40, 30));
    }
    let mut frame = vec![0u32; 40 * 30];
    for i in 0..20 {
        fb.fill_rect(Rect::new(i, i, 5, 5), 0x0010_0000 * i);
        good.request(false, Rect::full(40, 30));
        good.read_update(&mut frame);
        assert_eq!(frame, fb.snapshot().2);
    }
    assert!(server.client_count() >= 2);
    drop(server); // closes the stalled client too, without hanging
}

#[test]
fn tcp_needs_loopback_and_a_password() {
    let fb = Arc::new(MemoryFramebuffer::new(8, 8));
    let server = VncServer::new(fb, Arc::new(RecordingSink::default()), "test-vm");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(matches!(
        server.serve_tcp(listener, Security::None),
        Err(VncError::TcpNeedsPassword)
    ));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    server
        .serve_tcp(listener, Security::Password("pw".into()))
        .unwrap();
    let mut stream = TcpStream::connect(address).unwrap();
    let mut version = [0u8; 12];
    stream.read_exact(&mut version).unwrap();
    assert_eq!(&version, b"RFB 003.008\n");
    drop(stream);
    server.shutdown();
}
