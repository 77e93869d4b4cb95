//! virtio-vsock against a test driver in guest memory: real rings in [`test_memory`], packets
//! written and read as a guest's driver would, and the host side on real Unix sockets in a
//! temporary directory. Most tests drive the handler directly (one pass = tx, host, rx,
//! event); one runs the worker thread.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::Queue;
use virtkit_virtio::testing::{test_memory, test_queues, RecordingInterrupt, Signal, QUEUE_AREA};
use virtkit_virtio::{DeviceQueue, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::{op, shutdown, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::*;

const CID: u64 = 3;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// Buffers: one 8 KiB slot per descriptor of each queue, from here.
const BUFFERS: u64 = 0x40_0000;
const SLOT: u64 = 0x2000;
const RX_BUF: u32 = (HDR_LEN + 4096) as u32;

virtkit_virtio::virtio_device_conformance_tests!(conformance, Vsock<UnixHost>, {
    let dir = TempDir::new();
    let host = UnixHost::bind(dir.path.join("c.sock")).unwrap();
    std::mem::forget(dir);
    Vsock::new(3, host).unwrap()
});

/// A directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vk-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The guest's driver: three queues in guest memory, each descriptor with its own buffer.
struct Driver {
    mem: GuestMemoryMmap,
    queues: Vec<DeviceQueue>,
    avail: [u16; 3],
    used_seen: [u16; 3],
    next_desc: [u16; 3],
}

fn ring(q: usize) -> u64 {
    QUEUE_AREA + 0x1_0000 * q as u64
}

impl Driver {
    fn new() -> Driver {
        Driver {
            mem: test_memory(),
            queues: test_queues(&[256, 256, 256]),
            avail: [0; 3],
            used_seen: [0; 3],
            next_desc: [0; 3],
        }
    }

    fn buffer(q: usize, d: u16) -> u64 {
        BUFFERS + (q as u64 * 256 + u64::from(d)) * SLOT
    }

    /// Puts one descriptor (`addr`, `len`, `flags`) in queue `q`'s available ring.
    fn offer_raw(&mut self, q: usize, addr: u64, len: u32, flags: u16) -> u16 {
        let d = self.next_desc[q];
        self.next_desc[q] = (d + 1) % 256;
        let desc = GuestAddress(ring(q) + 16 * u64::from(d));
        self.mem.write_obj(addr, desc).unwrap();
        self.mem.write_obj(len, GuestAddress(desc.0 + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(desc.0 + 12)).unwrap();
        self.mem.write_obj(0u16, GuestAddress(desc.0 + 14)).unwrap();
        let avail = ring(q) + 0x8000;
        let slot = u64::from(self.avail[q] % 256);
        self.mem.write_obj(d, GuestAddress(avail + 4 + 2 * slot)).unwrap();
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail[q], GuestAddress(avail + 2))
            .unwrap();
        d
    }

    fn send(&mut self, hdr: Header, data: &[u8]) {
        let d = self.next_desc[TXQ];
        let addr = Self::buffer(TXQ, d);
        self.mem.write_slice(&hdr.to_bytes(), GuestAddress(addr)).unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + HDR_LEN as u64))
            .unwrap();
        self.offer_raw(TXQ, addr, (HDR_LEN + data.len()) as u32, 0);
    }

    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let d = self.next_desc[RXQ];
            self.offer_raw(RXQ, Self::buffer(RXQ, d), RX_BUF, VRING_DESC_F_WRITE as u16);
        }
    }

    /// New used entries of queue `q`: (descriptor, length).
    fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = ring(q) + 0xc000;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let at = used + 4 + 8 * u64::from(self.used_seen[q] % 256);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    /// Packets the device put in the rx queue since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.used(RXQ)
            .into_iter()
            .map(|(d, len)| {
                let addr = Self::buffer(RXQ, d);
                let mut raw = [0u8; HDR_LEN];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let hdr = Header::from_bytes(&raw);
                assert_eq!(
                    len as usize,
                    HDR_LEN + hdr.len as usize,
                    "used length = header + payload"
                );
                let mut data = vec![0u8; hdr.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                    .unwrap();
                (hdr, data)
            })
            .collect()
    }

    fn q(&mut self, q: usize) -> &mut Queue {
        &mut self.queues[q].queue
    }
}

/// A header from the guest (CID 3) port `src` to the host port `dst`, with a credit of 256 KiB.
fn from_guest(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 256 << 10,
        ..Header::default()
    }
}

fn rw(src: u32, dst: u32, data: &[u8]) -> Header {
    Header {
        len: data.len() as u32,
        ..from_guest(op::RW, src, dst)
    }
}

struct Rig {
    dir: TempDir,
    driver: Driver,
    handler: VsockHandler<UnixHost>,
    metrics: Arc<VsockMetrics>,
}

impl Rig {
    fn new() -> Rig {
        let dir = TempDir::new();
        let host = UnixHost::bind(dir.path.join("vsock.sock")).unwrap();
        let metrics = Arc::new(VsockMetrics::default());
        let handler = VsockHandler::new(Muxer::new(host, CID, metrics.clone()), metrics.clone());
        let mut driver = Driver::new();
        driver.give_rx(64);
        Rig {
            dir,
            driver,
            handler,
            metrics,
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path.join("vsock.sock")
    }

    /// One pass of the worker.
    fn pump(&mut self) {
        let d = &mut self.driver;
        let mem = d.mem.clone();
        process_tx(d.q(TXQ), &mem, &mut self.handler).unwrap();
        self.handler.muxer.host_poll(Instant::now());
        process_rx(d.q(RXQ), &mem, &mut self.handler).unwrap();
        process_event(d.q(EVQ), &mem, &mut self.handler).unwrap();
    }

    /// Pumps until the guest got at least one packet (or a second passed).
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            self.pump();
            let got = self.driver.recv();
            if !got.is_empty() || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn send(&mut self, hdr: Header, data: &[u8]) {
        self.driver.send(hdr, data);
        self.pump();
    }

    /// A host client connected to guest port `port` (the guest's listener answers); returns
    /// the client and the host port the device chose.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut client = UnixStream::connect(self.sock()).unwrap();
        client.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let got = self.recv();
        assert_eq!(got.len(), 1, "{got:?}");
        let req = got[0].0;
        assert_eq!(
            (req.op, req.src_cid, req.dst_cid, req.dst_port),
            (op::REQUEST, HOST_CID, CID, port)
        );
        assert!(req.src_port >= 1 << 30);
        self.send(from_guest(op::RESPONSE, port, req.src_port), &[]);
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let ok = format!("OK {}\n", req.src_port);
        let mut line = vec![0u8; ok.len()];
        client.read_exact(&mut line).unwrap();
        assert_eq!(line, ok.as_bytes());
        (client, req.src_port)
    }

    /// The guest's port `src` connected to host port `port`, where the test listens.
    fn guest_connect(&mut self, src: u32, port: u32) -> (UnixListener, UnixStream) {
        let listener = UnixListener::bind(format!("{}_{port}", self.sock().display())).unwrap();
        self.send(from_guest(op::REQUEST, src, port), &[]);
        let got = self.recv();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
            (op::RESPONSE, port, src)
        );
        let (served, _) = listener.accept().unwrap();
        served.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (listener, served)
    }
}

fn assert_closed(stream: &mut UnixStream) {
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the socket is still open: {other:?}"),
    }
}

#[test]
fn host_to_guest_connect_and_data_both_ways() {
    let mut rig = Rig::new();
    let (mut client, local) = rig.host_connect(5000);
    client.write_all(b"hello").unwrap();
    let got = rig.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RW, local, 5000)
    );
    assert_eq!(got[0].1, b"hello");
    rig.send(rw(5000, local, b"world"), b"world");
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    assert_eq!(VsockMetrics::get(&rig.metrics.host_connections), 1);
}

#[test]
fn bytes_sent_with_the_connect_line_reach_the_guest_after_the_response() {
    let mut rig = Rig::new();
    let mut client = UnixStream::connect(rig.sock()).unwrap();
    client.write_all(b"CONNECT 7\nearly").unwrap();
    let got = rig.recv();
    let local = got[0].0.src_port;
    assert_eq!(got.len(), 1, "nothing but the REQUEST before the RESPONSE");
    rig.send(from_guest(op::RESPONSE, 7, local), &[]);
    let got = rig.recv();
    assert_eq!(got[0].1, b"early");
}

#[test]
fn guest_to_host_connect_and_data_both_ways() {
    let mut rig = Rig::new();
    let (_listener, mut served) = rig.guest_connect(40000, 1025);
    rig.send(rw(40000, 1025, b"ping"), b"ping");
    let mut buf = [0u8; 4];
    served.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    served.write_all(b"pong").unwrap();
    let got = rig.recv();
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RW, 1025, 40000)
    );
    assert_eq!(got[0].1, b"pong");
    assert_eq!(VsockMetrics::get(&rig.metrics.guest_connections), 1);
}

#[test]
fn rst_for_an_unknown_port_and_an_unknown_connection() {
    let mut rig = Rig::new();
    rig.send(from_guest(op::REQUEST, 1234, 9999), &[]);
    let got = rig.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RST, 9999, 1234)
    );
    rig.send(rw(1234, 9999, b"x"), b"x");
    assert_eq!(rig.recv()[0].0.op, op::RST);
    // An RST to nothing is not answered.
    rig.send(from_guest(op::RST, 1234, 9999), &[]);
    assert!(rig.recv().is_empty());
}

#[test]
fn a_slow_host_peer_holds_the_guest_to_its_credit() {
    let mut rig = Rig::new();
    let (_listener, mut served) = rig.guest_connect(40001, 1026);
    // The host stops reading: its socket buffer fills, then the device holds up to CONN_BUF.
    let chunk = vec![0x5au8; 4096];
    let mut sent = 0usize;
    while rig.handler.muxer.held(1026, 40001).unwrap() + chunk.len() <= CONN_BUF as usize {
        rig.send(rw(40001, 1026, &chunk), &chunk);
        sent += chunk.len();
    }
    assert!(
        rig.driver.recv().iter().all(|(h, _)| h.op != op::RST),
        "within the credit"
    );
    // One packet beyond the credit resets the connection.
    rig.send(rw(40001, 1026, &chunk), &chunk);
    let got = rig.recv();
    assert!(got.iter().any(|(h, _)| h.op == op::RST), "{got:?}");
    assert_eq!(rig.handler.muxer.connection_count(), 0);
    // The host socket is closed after what it had been given.
    let mut all = Vec::new();
    let _ = served.read_to_end(&mut all);
    assert!(all.len() <= sent);
}

#[test]
fn the_host_reading_again_sends_the_starved_guest_a_credit_update() {
    let mut rig = Rig::new();
    let (_listener, mut served) = rig.guest_connect(40002, 1027);
    let chunk = vec![7u8; 4096];
    // Fill the host socket and the device's buffer to within a packet of the credit.
    let mut sent = 0usize;
    loop {
        let held = rig.handler.muxer.held(1027, 40002).unwrap();
        if held + 2 * chunk.len() > CONN_BUF as usize {
            break;
        }
        rig.send(rw(40002, 1027, &chunk), &chunk);
        sent += chunk.len();
    }
    // Credit updates so far (the host socket's buffer took some) are not the point.
    let before: Vec<(u16, u32)> = rig.driver.recv().iter().map(|(h, _)| (h.op, h.fwd_cnt)).collect();
    let held_before = rig.handler.muxer.held(1027, 40002);
    // The host drains everything: the device forwards the rest and tells the guest.
    let mut got = vec![0u8; sent];
    // The reader hands its socket back: closing it would be the host's EOF, a SHUTDOWN that
    // carries the credit in place of the CREDIT_UPDATE looked for here.
    let reader = std::thread::spawn(move || {
        served.read_exact(&mut got).unwrap();
        (got, served)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut update = None;
    let mut seen: Vec<(u16, u32, u32)> = Vec::new();
    while (update.is_none() || !reader.is_finished()) && Instant::now() < deadline {
        rig.pump();
        let got = rig.driver.recv();
        seen.extend(got.iter().map(|(h, _)| (h.op, h.fwd_cnt, h.flags)));
        if let Some(found) = got.into_iter().find(|(h, _)| h.op == op::CREDIT_UPDATE) {
            update = Some(found);
        }
    }
    let (hdr, _) = update.unwrap_or_else(|| {
        panic!(
            "no CREDIT_UPDATE: seen {seen:?} before {before:?} held then {held_before:?}; rx used {} of {}, \
             held {:?}, sent {sent}, reader done {}",
            rig.driver.used_seen[RXQ],
            rig.driver.avail[RXQ],
            rig.handler.muxer.held(1027, 40002),
            reader.is_finished()
        )
    });
    assert_eq!(hdr.buf_alloc, CONN_BUF);
    assert!(hdr.fwd_cnt > 0);
    let (got, _served) = reader.join().unwrap();
    assert!(got.iter().all(|b| *b == 7));
    // The guest heard of the room the host made.
    let last_before = before.iter().map(|(_, fwd)| *fwd).max().unwrap_or(0);
    assert!(hdr.fwd_cnt > last_before, "{seen:?} after {before:?}");
}

#[test]
fn the_device_never_sends_the_guest_more_than_its_credit() {
    let mut rig = Rig::new();
    let (_listener, mut served) = rig.guest_connect(40003, 1028);
    // The guest grants 6000 bytes.
    rig.send(
        Header {
            buf_alloc: 6000,
            ..from_guest(op::CREDIT_UPDATE, 40003, 1028)
        },
        &[],
    );
    served.write_all(&[9u8; 20000]).unwrap();
    let mut data = 0;
    let mut credit_request = false;
    for _ in 0..20 {
        rig.pump();
        for (h, d) in rig.driver.recv() {
            data += d.len();
            credit_request |= h.op == op::CREDIT_REQUEST;
        }
    }
    assert_eq!(data, 6000);
    assert!(
        credit_request,
        "the device asks for credit when the guest has none left"
    );
    // The guest consumed it all: 6000 more.
    rig.send(
        Header {
            buf_alloc: 6000,
            fwd_cnt: 6000,
            ..from_guest(op::CREDIT_UPDATE, 40003, 1028)
        },
        &[],
    );
    for _ in 0..20 {
        rig.pump();
        data += rig.driver.recv().iter().map(|(_, d)| d.len()).sum::<usize>();
    }
    assert_eq!(data, 12000);
}

#[test]
fn shutdown_both_ways() {
    let mut rig = Rig::new();
    let (mut client, local) = rig.host_connect(5001);
    // The host half-closes: the guest hears SHUTDOWN(SEND) and can still send.
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let got = rig.recv();
    assert_eq!((got[0].0.op, got[0].0.flags), (op::SHUTDOWN, shutdown::SEND));
    rig.send(rw(5001, local, b"last"), b"last");
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"last");
    // The guest shuts its side: the host reads EOF, and the device closes with an RST.
    rig.send(
        Header {
            flags: shutdown::SEND,
            ..from_guest(op::SHUTDOWN, 5001, local)
        },
        &[],
    );
    assert_closed(&mut client);
    let got = rig.recv();
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!(rig.handler.muxer.connection_count(), 0);
}

#[test]
fn a_guest_shutdown_of_both_sides_flushes_then_closes_with_an_rst() {
    let mut rig = Rig::new();
    let (_listener, mut served) = rig.guest_connect(40004, 1029);
    rig.driver.send(rw(40004, 1029, b"bye"), b"bye");
    rig.send(
        Header {
            flags: shutdown::BOTH,
            ..from_guest(op::SHUTDOWN, 40004, 1029)
        },
        &[],
    );
    let mut all = Vec::new();
    served.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"bye");
    assert_eq!(rig.recv()[0].0.op, op::RST);
}

#[test]
fn a_guest_rst_closes_the_host_socket() {
    let mut rig = Rig::new();
    let (mut client, local) = rig.host_connect(5002);
    rig.send(from_guest(op::RST, 5002, local), &[]);
    assert_closed(&mut client);
    assert!(rig.recv().is_empty(), "an RST is not answered");
}

#[test]
fn the_guest_refusing_a_host_connection_closes_the_client() {
    let mut rig = Rig::new();
    let mut client = UnixStream::connect(rig.sock()).unwrap();
    client.write_all(b"CONNECT 6000\n").unwrap();
    let req = rig.recv()[0].0;
    rig.send(from_guest(op::RST, 6000, req.src_port), &[]);
    assert_closed(&mut client);
}

#[test]
fn reset_with_connections_open_closes_every_host_socket() {
    let mut rig = Rig::new();
    let (mut client, _) = rig.host_connect(5003);
    let (_listener, mut served) = rig.guest_connect(40005, 1030);
    rig.handler.reset();
    assert_eq!(rig.handler.muxer.connection_count(), 0);
    assert_closed(&mut client);
    assert_closed(&mut served);
}

#[test]
fn hostile_headers_are_refused_without_a_panic() {
    let mut rig = Rig::new();
    let (mut client, local) = rig.host_connect(5004);
    // Wrong source CID, wrong destination CID: dropped, nothing answered, nothing delivered.
    rig.send(
        Header {
            src_cid: 7,
            ..rw(5004, local, b"evil")
        },
        b"evil",
    );
    rig.send(
        Header {
            dst_cid: 9,
            ..rw(5004, local, b"evil")
        },
        b"evil",
    );
    assert!(rig.recv().is_empty());
    // A length beyond the chain: the chain is refused.
    let before = VsockMetrics::get(&rig.metrics.bad_chains);
    rig.send(
        Header {
            len: 60000,
            ..rw(5004, local, b"abc")
        },
        b"abc",
    );
    // A header cut short, and a buffer outside guest memory.
    rig.driver.offer_raw(TXQ, Driver::buffer(TXQ, 0), 20, 0);
    rig.driver.offer_raw(TXQ, 0xffff_ffff_0000, 64, 0);
    // A device-writable buffer in the tx queue.
    rig.driver
        .offer_raw(TXQ, Driver::buffer(TXQ, 1), 64, VRING_DESC_F_WRITE as u16);
    rig.pump();
    assert_eq!(VsockMetrics::get(&rig.metrics.bad_chains), before + 4);
    // A SEQPACKET (type 2) connection request: RST.
    rig.send(
        Header {
            kind: 2,
            ..from_guest(op::REQUEST, 1, 2000)
        },
        &[],
    );
    assert_eq!(rig.recv()[0].0.op, op::RST);
    // The connection is still there; an unknown op on it resets it.
    rig.send(from_guest(99, 5004, local), &[]);
    assert_eq!(rig.recv()[0].0.op, op::RST);
    assert_closed(&mut client);
    // Every tx chain was used.
    let _ = rig.driver.used(TXQ);
    assert_eq!(rig.driver.avail[TXQ], rig.driver.used_seen[TXQ]);
}

#[test]
fn rx_chains_too_short_or_read_only_are_refused() {
    let mut rig = Rig::new();
    let mut driver = Driver::new();
    driver.offer_raw(RXQ, Driver::buffer(RXQ, 0), 10, VRING_DESC_F_WRITE as u16);
    driver.offer_raw(RXQ, Driver::buffer(RXQ, 1), 100, 0);
    driver.give_rx(1);
    rig.driver = driver;
    rig.send(from_guest(op::REQUEST, 1, 9), &[]);
    let used = rig.driver.used(RXQ);
    assert_eq!(used.len(), 3);
    assert_eq!((used[0].1, used[1].1, used[2].1), (0, 0, HDR_LEN as u32));
}

#[test]
fn connect_lines_that_are_garbage_overlong_or_out_of_range_close_the_client() {
    assert_eq!(parse_connect(b"CONNECT 1025\n"), Some(1025));
    assert_eq!(parse_connect(b"CONNECT 4294967295\r\n"), Some(u32::MAX));
    for bad in [
        &b"CONNECT 4294967296\n"[..],
        b"CONNECT\n",
        b"CONNECT -1\n",
        b"CONNECT +5\n",
        b"connect 5\n",
        b"CONNECT 5 \n",
        b"CONNECT 5",
        b"GET / HTTP/1.1\n",
    ] {
        assert_eq!(parse_connect(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
    let mut rig = Rig::new();
    let overlong = vec![b'9'; CONNECT_LINE_MAX + 8];
    for line in [&b"HELLO\n"[..], b"CONNECT 4294967296\n", &overlong] {
        let mut client = UnixStream::connect(rig.sock()).unwrap();
        client.write_all(line).unwrap();
        rig.pump();
        rig.pump();
        assert_closed(&mut client);
    }
    assert!(rig.recv().is_empty(), "nothing was sent to the guest");
    assert_eq!(rig.handler.muxer.connection_count(), 0);
    assert_eq!(VsockMetrics::get(&rig.metrics.clients_refused), 3);
}

#[test]
fn a_client_that_never_sends_its_line_is_closed_after_the_timeout() {
    let mut rig = Rig::new();
    let mut client = UnixStream::connect(rig.sock()).unwrap();
    rig.pump();
    assert_eq!(rig.handler.muxer.pending_clients(), 1);
    rig.handler
        .muxer
        .host_poll(Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1));
    assert_eq!(rig.handler.muxer.pending_clients(), 0);
    assert_closed(&mut client);
}

#[test]
fn a_guest_that_never_answers_a_request_times_out() {
    let mut rig = Rig::new();
    let mut client = UnixStream::connect(rig.sock()).unwrap();
    client.write_all(b"CONNECT 5005\n").unwrap();
    let req = rig.recv()[0].0;
    rig.handler
        .muxer
        .host_poll(Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1));
    assert_closed(&mut client);
    let got = rig.recv();
    assert_eq!((got[0].0.op, got[0].0.src_port), (op::RST, req.src_port));
}

#[test]
fn a_restore_drops_connections_and_owes_the_guest_a_transport_reset() {
    let dir = TempDir::new();
    let mut device = Vsock::new(CID, UnixHost::bind(dir.path.join("v.sock")).unwrap()).unwrap();
    let mut config = [0u8; 8];
    device.read_config(0, &mut config);
    assert_eq!(u64::from_le_bytes(config), CID);
    let state = VsockState {
        acked_features: device.features(),
        guest_cid: CID,
    };
    device.restore(state.clone()).unwrap();
    assert!(device.handler().unwrap().transport_reset_pending);
    assert!(device
        .restore(VsockState {
            guest_cid: 4,
            ..state
        })
        .is_err());
    // The event reaches the event queue once the driver gives it a buffer.
    let mut rig = Rig::new();
    rig.handler.transport_reset_pending = true;
    rig.pump();
    rig.driver
        .offer_raw(EVQ, Driver::buffer(EVQ, 0), 4, VRING_DESC_F_WRITE as u16);
    rig.pump();
    let used = rig.driver.used(EVQ);
    assert_eq!(used, vec![(0, 4)]);
    let id: u32 = rig
        .driver
        .mem
        .read_obj(GuestAddress(Driver::buffer(EVQ, 0)))
        .unwrap();
    assert_eq!(id, EVENT_TRANSPORT_RESET);
    assert!(!rig.handler.transport_reset_pending);
}

#[test]
fn reserved_cids_are_refused() {
    let dir = TempDir::new();
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let host = UnixHost::bind(dir.path.join("r.sock")).unwrap();
        assert!(Vsock::new(cid, host).is_err(), "{cid}");
    }
}

#[test]
fn the_worker_relays_a_host_connection() {
    let dir = TempDir::new();
    let sock = dir.path.join("w.sock");
    let mut device = Vsock::new(CID, UnixHost::bind(&sock).unwrap()).unwrap();
    let mut driver = Driver::new();
    driver.give_rx(16);
    // The driver's kicks: the queues' eventfds, kept before the queues go to the worker.
    let kick_tx = driver.queues[TXQ].event.try_clone().unwrap();
    let kick_rx = driver.queues[RXQ].event.try_clone().unwrap();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let queues = std::mem::take(&mut driver.queues);
    let features = device.features();
    device
        .activate(driver.mem.clone(), interrupt.clone(), queues, features)
        .unwrap();
    // A host client asks for the guest's port 5000: the worker wakes on the listener.
    let mut client = UnixStream::connect(&sock).unwrap();
    client.write_all(b"CONNECT 5000\n").unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(0), Duration::from_secs(5)));
    let got = driver.recv();
    assert_eq!(got[0].0.op, op::REQUEST);
    let local = got[0].0.src_port;
    // The guest answers on the tx queue and kicks it.
    driver.send(from_guest(op::RESPONSE, 5000, local), &[]);
    kick_tx.write(1).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ok = format!("OK {local}\n");
    let mut line = vec![0u8; ok.len()];
    client.read_exact(&mut line).unwrap();
    assert_eq!(line, ok.as_bytes());
    // Host bytes reach the guest's rx queue while the worker waits on the client's socket.
    client.write_all(b"from the host").unwrap();
    kick_rx.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut data = Vec::new();
    while data.len() < 13 && Instant::now() < deadline {
        for (hdr, bytes) in driver.recv() {
            if hdr.op == op::RW {
                data.extend(bytes);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(data, b"from the host");
    // Pause keeps the connection; a reset drops it and closes the client.
    let queues = device.sleep().unwrap();
    assert_eq!(device.handler().unwrap().muxer.connection_count(), 1);
    device.wake(queues).unwrap();
    device.reset().unwrap();
    assert_closed(&mut client);
}

#[test]
fn fuzz_entry_point_survives_pseudo_random_inputs() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..400 {
        let len = (state % 900) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fuzz::fuzz_queue(&data);
    }
}

#[test]
fn fuzz_seeds_run_clean() {
    for seed in [
        &include_bytes!("../../../../fuzz/corpus/virtio_vsock_queue/connect_rw_shutdown")[..],
        include_bytes!("../../../../fuzz/corpus/virtio_vsock_queue/refused_request"),
        include_bytes!("../../../../fuzz/corpus/virtio_vsock_queue/bad_len_and_type"),
    ] {
        fuzz::fuzz_queue(seed);
    }
}
