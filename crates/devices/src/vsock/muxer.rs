//! The muxer: every connection of the device keyed by (host port, guest port), the host clients
//! still saying which port they want, and the control packets owed to the guest. It takes the
//! guest's packets ([`Muxer::on_guest_packet`]), moves bytes to and from the host
//! ([`Muxer::host_poll`]) and produces the guest's next packet ([`Muxer::next_rx_packet`]).
//! Nothing here waits: every host descriptor is non-blocking, and time is a parameter.
//!
//! Host-initiated connections (Firecracker's hybrid scheme): a client of the host socket sends
//! `CONNECT <port>\n` (at most [`CONNECT_LINE_MAX`] bytes, within [`CONNECT_TIMEOUT`]); the
//! device sends the guest a REQUEST from a fresh host port, and on the guest's RESPONSE answers
//! `OK <host port>\n` and relays bytes. Garbage, an overlong line, a port that is not a `u32`,
//! an RST or the timeout close the client's socket with nothing more done.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::ops::Bound;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtkit_virtio::warn_ratelimited;

use super::connection::{Connection, State};
use super::host::VsockHost;
use super::metrics::VsockMetrics;
use super::packet::{op, shutdown, Header, HOST_CID, TYPE_STREAM};

/// Most connections a device holds (each holds at most `CONN_BUF` bytes of guest data); a
/// guest's REQUEST beyond it gets an RST, a host client waits in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that have not yet sent their `CONNECT` line.
pub const MAX_PENDING_CLIENTS: usize = 64;
/// Longest `CONNECT <port>\n` line, newline included.
pub const CONNECT_LINE_MAX: usize = 32;
/// How long a host client has to send its line, and the guest to answer a REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most control packets (RSTs to unknown connections) waiting for guest buffers.
const MAX_CONTROL: usize = 1024;
/// Host ports of host-initiated connections count up from here (as Firecracker's).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

type Key = (u32, u32);

/// A host client that has not sent its whole `CONNECT` line yet.
struct Client<S> {
    stream: S,
    line: Vec<u8>,
    deadline: Instant,
}

/// Parses `CONNECT <port>\n` (or `\r\n`): the port in decimal, a `u32`.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

pub struct Muxer<H: VsockHost> {
    host: H,
    guest_cid: u64,
    conns: BTreeMap<Key, Connection<H::Stream>>,
    clients: Vec<Client<H::Stream>>,
    control: VecDeque<Header>,
    next_port: u32,
    /// The connection served last, for round robin over the others.
    cursor: Option<Key>,
    metrics: Arc<VsockMetrics>,
}

impl<H: VsockHost> std::fmt::Debug for Muxer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("guest_cid", &self.guest_cid)
            .field("connections", &self.conns.len())
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl<H: VsockHost> Muxer<H> {
    pub fn new(host: H, guest_cid: u64, metrics: Arc<VsockMetrics>) -> Muxer<H> {
        Muxer {
            host,
            guest_cid,
            conns: BTreeMap::new(),
            clients: Vec::new(),
            control: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            cursor: None,
            metrics,
        }
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Guest bytes connection (`local_port`, `peer_port`) holds for its host peer.
    pub fn held(&self, local_port: u32, peer_port: u32) -> Option<usize> {
        self.conns.get(&(local_port, peer_port)).map(|c| c.to_host.len())
    }

    pub fn pending_clients(&self) -> usize {
        self.clients.len()
    }

    /// Drops every connection and client (their host sockets close) and every owed packet:
    /// a device reset or a restore.
    pub fn reset(&mut self) {
        self.conns.clear();
        self.clients.clear();
        self.control.clear();
        self.cursor = None;
    }

    /// An RST answering `hdr` (to its sender), when there is room to owe it.
    fn rst_to(&mut self, hdr: &Header) {
        self.rst(hdr.dst_port, hdr.src_port);
    }

    fn rst(&mut self, local_port: u32, peer_port: u32) {
        if self.control.len() >= MAX_CONTROL {
            VsockMetrics::add(&self.metrics.control_dropped, 1);
            return;
        }
        VsockMetrics::add(&self.metrics.resets_sent, 1);
        self.control.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            kind: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    /// Closes a connection: its host socket now, the guest's side with an RST.
    fn reset_conn(&mut self, key: Key) {
        if self.conns.remove(&key).is_some() {
            self.rst(key.0, key.1);
        }
    }

    /// A packet from the guest's tx queue, `data` its payload (`hdr.len` bytes, checked by the
    /// caller against the chain).
    pub fn on_guest_packet(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            VsockMetrics::add(&self.metrics.bad_packets, 1);
            warn_ratelimited!(
                "virtio-vsock: a packet from CID {} to CID {} dropped (the guest is CID {}, the host {HOST_CID})",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            return;
        }
        if hdr.kind != TYPE_STREAM {
            VsockMetrics::add(&self.metrics.bad_packets, 1);
            if hdr.op != op::RST {
                self.rst_to(hdr);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.guest_connect(hdr),
                op::RST => {}
                _ => self.rst_to(hdr),
            }
            return;
        };
        conn.take_credit(hdr);
        let ok = match (hdr.op, conn.state) {
            (op::RST, _) => {
                self.conns.remove(&key);
                return;
            }
            (op::RESPONSE, State::Connecting { .. }) => {
                conn.state = State::Established;
                conn.reply = format!("OK {}\n", conn.local_port).into_bytes();
                VsockMetrics::add(&self.metrics.host_connections, 1);
                conn.flush().is_ok()
            }
            (op::RW, State::Established) => {
                VsockMetrics::add(&self.metrics.guest_bytes, data.len() as u64);
                if conn.push_to_host(data) {
                    conn.flush().is_ok()
                } else {
                    warn_ratelimited!(
                        "virtio-vsock: the guest sent beyond the credit it was given; connection reset"
                    );
                    false
                }
            }
            (op::SHUTDOWN, State::Established) => {
                conn.guest_shut |= hdr.flags & shutdown::BOTH;
                conn.flush().is_ok()
            }
            (op::CREDIT_UPDATE, _) => true,
            (op::CREDIT_REQUEST, _) => {
                conn.owed.credit_update = true;
                true
            }
            // A second REQUEST, a RESPONSE to nothing, data before the RESPONSE, an unknown op.
            _ => {
                VsockMetrics::add(&self.metrics.bad_packets, 1);
                false
            }
        };
        if !ok {
            self.reset_conn(key);
        }
    }

    /// The guest's REQUEST to host port `hdr.dst_port`: connect to the host service there.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            warn_ratelimited!(
                "virtio-vsock: {MAX_CONNECTIONS} connections open; a guest's connection refused"
            );
            self.rst_to(hdr);
            return;
        }
        match self.host.connect(hdr.dst_port) {
            Ok(stream) => {
                let mut conn = Connection::new(stream, hdr.dst_port, hdr.src_port, State::Established);
                conn.take_credit(hdr);
                conn.owed.response = true;
                VsockMetrics::add(&self.metrics.guest_connections, 1);
                self.conns.insert((hdr.dst_port, hdr.src_port), conn);
            }
            Err(e) => {
                tracing::debug!(
                    "virtio-vsock: the guest's connection to host port {}: {e}",
                    hdr.dst_port
                );
                self.rst_to(hdr);
            }
        }
    }

    fn fresh_port(&mut self) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|(local, _)| *local == port) {
                return port;
            }
        }
    }

    /// Host work: new clients, their `CONNECT` lines, bytes to the host, timeouts and
    /// connections both sides have finished.
    pub fn host_poll(&mut self, now: Instant) {
        self.accept_clients(now);
        self.read_clients(now);
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let expired = matches!(conn.state, State::Connecting { deadline } if now >= deadline);
            if expired || conn.flush().is_err() || conn.finished() {
                self.reset_conn(key);
            }
        }
    }

    fn accept_clients(&mut self, now: Instant) {
        while self.clients.len() < MAX_PENDING_CLIENTS
            && self.conns.len() + self.clients.len() < MAX_CONNECTIONS
        {
            match self.host.accept() {
                Ok(Some(stream)) => self.clients.push(Client {
                    stream,
                    line: Vec::new(),
                    deadline: now + CONNECT_TIMEOUT,
                }),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("virtio-vsock: cannot accept a host client: {e}");
                    break;
                }
            }
        }
    }

    fn read_clients(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.clients.len() {
            match self.read_client(i, now) {
                Some(true) => i += 1,
                Some(false) => {
                    self.clients.swap_remove(i);
                    VsockMetrics::add(&self.metrics.clients_refused, 1);
                }
                None => {
                    // Became a connection.
                    let client = self.clients.swap_remove(i);
                    self.host_connect(client, now);
                }
            }
        }
    }

    /// `Some(true)`: keep waiting; `Some(false)`: drop the client; `None`: its line is whole.
    fn read_client(&mut self, i: usize, now: Instant) -> Option<bool> {
        let client = &mut self.clients[i];
        loop {
            if client.line.contains(&b'\n') {
                return None;
            }
            if client.line.len() >= CONNECT_LINE_MAX {
                return Some(false);
            }
            let mut buf = [0u8; CONNECT_LINE_MAX];
            let want = CONNECT_LINE_MAX - client.line.len();
            match client.stream.read(&mut buf[..want]) {
                Ok(0) => return Some(false),
                Ok(n) => client.line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(now < client.deadline),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(false),
            }
        }
    }

    fn host_connect(&mut self, client: Client<H::Stream>, now: Instant) {
        let Client { stream, line, .. } = client;
        let end = line
            .iter()
            .position(|b| *b == b'\n')
            .map_or(line.len(), |p| p + 1);
        let Some(port) = parse_connect(&line[..end]) else {
            VsockMetrics::add(&self.metrics.clients_refused, 1);
            return;
        };
        let local = self.fresh_port();
        let mut conn = Connection::new(
            stream,
            local,
            port,
            State::Connecting {
                deadline: now + CONNECT_TIMEOUT,
            },
        );
        conn.prefix = line[end..].to_vec();
        conn.owed.request = true;
        self.conns.insert((local, port), conn);
    }

    /// The guest's next packet, its payload read into `buf` (at most `buf.len()` bytes); `None`
    /// when nothing is owed and no host peer has bytes ready.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(hdr) = self.control.pop_front() {
            return Some((hdr, 0));
        }
        let after: Vec<Key> = match self.cursor {
            Some(c) => self
                .conns
                .range((Bound::Excluded(c), Bound::Unbounded))
                .chain(self.conns.range(..=c))
                .map(|(k, _)| *k)
                .collect(),
            None => self.conns.keys().copied().collect(),
        };
        for key in after {
            let packet = self.conn_packet(key, buf);
            if let Some(hdr) = self.control.pop_front() {
                self.cursor = Some(key);
                return Some((hdr, 0));
            }
            if packet.is_some() {
                self.cursor = Some(key);
                return packet;
            }
        }
        None
    }

    fn conn_packet(&mut self, key: Key, buf: &mut [u8]) -> Option<(Header, usize)> {
        let cid = self.guest_cid;
        let conn = self.conns.get_mut(&key)?;
        if let Some(hdr) = conn.take_leading(cid) {
            return Some((hdr, 0));
        }
        if conn.may_read_host() && !buf.is_empty() {
            let max = buf.len().min(conn.peer_free() as usize);
            let read = if conn.prefix.is_empty() {
                conn.stream.read(&mut buf[..max])
            } else {
                let n = max.min(conn.prefix.len());
                buf[..n].copy_from_slice(&conn.prefix[..n]);
                conn.prefix.drain(..n);
                Ok(n)
            };
            match read {
                Ok(0) => {
                    conn.host_eof = true;
                    conn.owed.shutdown |= shutdown::SEND;
                }
                Ok(n) => {
                    conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
                    if conn.peer_free() == 0 {
                        conn.owed.credit_request = true;
                    }
                    VsockMetrics::add(&self.metrics.host_bytes, n as u64);
                    let hdr = conn.header(cid, op::RW, n as u32, 0);
                    return Some((hdr, n));
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(_) => {
                    self.reset_conn(key);
                    return None;
                }
            }
        }
        if let Some(hdr) = conn.take_trailing(cid) {
            return Some((hdr, 0));
        }
        if conn.finished() {
            self.reset_conn(key);
        }
        None
    }

    /// The host descriptors to wait on now, with whether for input and for output. `rx_room`:
    /// the guest has rx buffers (else host input would wake the worker for nothing).
    pub fn watched(&self, rx_room: bool) -> Vec<(RawFd, bool, bool)> {
        let mut fds = Vec::new();
        if self.clients.len() < MAX_PENDING_CLIENTS && self.conns.len() + self.clients.len() < MAX_CONNECTIONS
        {
            if let Some(fd) = self.host.listener_fd() {
                fds.push((fd, true, false));
            }
        }
        for client in &self.clients {
            fds.push((client.stream.as_raw_fd(), true, false));
        }
        for conn in self.conns.values() {
            let input = rx_room && conn.may_read_host();
            let output = !conn.reply.is_empty() || !conn.to_host.is_empty();
            if input || output {
                fds.push((conn.stream.as_raw_fd(), input, output));
            }
        }
        fds
    }

    /// The earliest timeout (a client's line, a guest's RESPONSE).
    pub fn next_deadline(&self) -> Option<Instant> {
        let clients = self.clients.iter().map(|c| c.deadline);
        let conns = self.conns.values().filter_map(|c| match c.state {
            State::Connecting { deadline } => Some(deadline),
            State::Established => None,
        });
        clients.chain(conns).min()
    }

    /// Whether packets are owed to the guest with no host input needed.
    pub fn owes_packets(&self) -> bool {
        !self.control.is_empty()
            || self.conns.values().any(|c| {
                let o = &c.owed;
                o.request
                    || o.response
                    || o.shutdown != 0
                    || o.credit_update
                    || o.credit_request
                    || !c.prefix.is_empty()
            })
    }
}
