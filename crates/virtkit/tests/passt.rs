//! NAT through the real passt: this test plays the guest on the VM's end of the socket, with
//! hand-built frames (DHCP, ARP, TCP), and checks what passt answers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use virtkit::network::passt::{self, NatConfiguration, PasstError, PasstOptions, PortForward, Protocol};
use virtkit_testkit::skip::skip;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn passt_installed() -> bool {
    if Command::new("passt")
        .arg("--version")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_ok()
    {
        return true;
    }
    skip("passt is not installed (Debian package passt)");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One write for the length and the frame: this passt drops a frame whose length prefix
/// arrived in an earlier read than its bytes (seen as lost DHCP, ARP and SYN frames when the
/// two were written separately), so the VM side must not split them either.
fn send(sock: &mut UnixStream, frame: &[u8]) {
    let mut message = (frame.len() as u32).to_be_bytes().to_vec();
    message.extend_from_slice(frame);
    sock.write_all(&message).unwrap();
}

/// The next frame from passt that `pick` accepts, skipping others (IPv6 RAs and the like).
fn expect<T>(sock: &mut UnixStream, what: &str, pick: impl FnMut(&[u8]) -> Option<T>) -> T {
    expect_within(sock, Duration::from_secs(5), pick)
        .unwrap_or_else(|| panic!("passt sent no {what} within 5 s"))
}

fn expect_within<T>(
    sock: &mut UnixStream,
    within: Duration,
    mut pick: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let mut len = [0u8; 4];
        match sock.read_exact(&mut len) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => panic!("reading from passt: {e}"),
        }
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.read_exact(&mut frame).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        if let Some(found) = pick(&frame) {
            return Some(found);
        }
    }
    None
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for chunk in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p, 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn dhcp_discover() -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[..3].copy_from_slice(&[1, 1, 6]);
    b[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    b[10] = 0x80; // broadcast flag
    b[28..34].copy_from_slice(&GUEST_MAC);
    b.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 55, 3, 1, 3, 6, 255]);
    let mut udp = vec![0, 68, 0, 67, 0, 0, 0, 0];
    udp[4..6].copy_from_slice(&((8 + b.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&b);
    eth(
        [0xff; 6],
        0x0800,
        &ipv4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 17, &udp),
    )
}

/// The DHCP options of a BOOTP reply in `frame` with message type `kind`, and its yiaddr.
type DhcpOptions = Vec<(u8, Vec<u8>)>;

fn dhcp_reply(frame: &[u8], kind: u8) -> Option<(Ipv4Addr, DhcpOptions)> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [8, 0] || ip[9] != 17 {
        return None;
    }
    let udp = ip.get(usize::from(ip[0] & 15) * 4..)?;
    if udp.get(..4)? != [0, 67, 0, 68] {
        return None;
    }
    let b = udp.get(8..)?;
    let yiaddr = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    let mut opts = Vec::new();
    let mut o = b.get(240..)?;
    while let Some(&code) = o.first() {
        match code {
            0 => o = &o[1..],
            255 => break,
            _ => {
                let len = usize::from(*o.get(1)?);
                opts.push((code, o.get(2..2 + len)?.to_vec()));
                o = &o[2 + len..];
            }
        }
    }
    let found = opts.iter().find(|(c, _)| *c == 53)?.1.first() == Some(&kind);
    found.then_some((yiaddr, opts))
}

fn arp_request(target: Ipv4Addr, sender: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&GUEST_MAC);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    eth([0xff; 6], 0x0806, &a)
}

fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, dst_mac: [u8; 6]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = src.octets().to_vec();
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&t);
    let sum = checksum(&pseudo, 0);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    eth(dst_mac, 0x0800, &ipv4(src, dst, 6, &t))
}

/// (src, dst, sport, dport, flags) of a TCP segment in `frame`.
fn tcp(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u16, u16, u8)> {
    if frame.get(12..14)? != [8, 0] {
        return None;
    }
    let ip = frame.get(14..)?;
    if ip[9] != 6 {
        return None;
    }
    let t = ip.get(usize::from(ip[0] & 15) * 4..)?;
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    Some((
        addr(12),
        addr(16),
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
        *t.get(13)?,
    ))
}

/// DHCP, then ARP for the gateway; returns the gateway's (passt's) MAC.
fn dhcp_and_arp(sock: &mut UnixStream, config: &NatConfiguration) -> [u8; 6] {
    send(sock, &dhcp_discover());
    let (yiaddr, opts) = expect(sock, "DHCP OFFER", |f| dhcp_reply(f, 2));
    assert_eq!(yiaddr, config.guest_address);
    let opt = |code: u8| opts.iter().find(|(c, _)| *c == code).map(|(_, v)| v.clone());
    assert_eq!(opt(1), Some(vec![255, 255, 255, 0]), "netmask");
    assert_eq!(opt(3), Some(config.gateway.octets().to_vec()), "router");
    assert_eq!(opt(6), Some(config.dns.octets().to_vec()), "DNS");

    send(sock, &arp_request(config.gateway, config.guest_address));
    let (mac, spa) = expect(sock, "ARP reply for the gateway", |f| {
        (f.get(12..14)? == [8, 6] && f.get(20..22)? == [0, 2]).then(|| {
            (
                f[22..28].try_into().unwrap(),
                Ipv4Addr::new(f[28], f[29], f[30], f[31]),
            )
        })
    });
    assert_eq!(spa, config.gateway);
    mac
}

#[test]
fn dhcp_arp_outbound_tcp_and_a_published_port_through_real_passt() {
    if !passt_installed() {
        return;
    }
    let published = free_port();
    let config = NatConfiguration {
        forwards: vec![PortForward::local(Protocol::Tcp, published, 22)],
        ..NatConfiguration::default()
    };
    let dir = std::env::temp_dir().join(format!("virtkit-passt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("passt.log");
    let options = PasstOptions {
        log: passt::HelperLog::File(log.clone()),
        ..PasstOptions::default()
    };
    let mut net = passt::start(&config, &options).unwrap();
    let pid = net.helper.id();

    // passt sandboxed itself: not root any more, and under a seccomp filter.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_string()
    };
    assert!(field("Seccomp:").ends_with('2'), "{}", field("Seccomp:"));
    let uid = field("Uid:");
    assert_ne!(uid.split_whitespace().nth(1), Some("0"), "{uid}");

    let gw_mac = dhcp_and_arp(&mut net.socket, &config);

    // Outbound TCP: the gateway address is the host (map-gw), so a SYN to 10.0.2.2:PORT
    // becomes a connection to the host's 127.0.0.1:PORT, and passt answers SYN-ACK.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let syn = tcp_syn(config.guest_address, config.gateway, 40000, port, gw_mac);
    send(&mut net.socket, &syn);
    let flags = expect(&mut net.socket, "SYN-ACK from the gateway", |f| {
        tcp(f).filter(|t| t.2 == port && t.3 == 40000).map(|t| t.4)
    });
    assert_eq!(flags & 0x12, 0x12, "SYN-ACK flags {flags:#x}");
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while listener.accept().is_err() {
        assert!(
            Instant::now() < deadline,
            "the host listener got no connection from passt"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The published port: a host connection to 127.0.0.1:PUBLISHED makes passt open one to
    // the guest's port 22: a SYN to 10.0.2.15:22 on the socket.
    let _client = TcpStream::connect(("127.0.0.1", published)).unwrap();
    let (dst, flags) = expect(&mut net.socket, "SYN to the guest's port 22", |f| {
        tcp(f).filter(|t| t.3 == 22).map(|t| (t.1, t.4))
    });
    assert_eq!(dst, config.guest_address);
    assert_eq!(flags & 0x12, 0x02, "a SYN, flags {flags:#x}");

    // Dropping the handle stops passt and reaps it.
    drop(net);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "passt {pid} still exists"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_published_port_in_use_is_named_before_starting() {
    if !passt_installed() {
        return;
    }
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = NatConfiguration {
        forwards: vec![PortForward::local(Protocol::Tcp, port, 22)],
        ..NatConfiguration::default()
    };
    let err = passt::start(&config, &PasstOptions::default()).unwrap_err();
    assert!(matches!(err, PasstError::PortInUse { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "TCP port 127.0.0.1:{port} is already in use on the host"
        )),
        "{text}"
    );
    assert!(
        text.ends_with("choose another host port, or stop the program using it"),
        "{text}"
    );
}

#[test]
fn missing_passt_is_one_sentence_with_the_fix() {
    let options = PasstOptions {
        program: "/nonexistent/passt".into(),
        ..PasstOptions::default()
    };
    let err = passt::start(&NatConfiguration::default(), &options).unwrap_err();
    assert_eq!(
        err.to_string(),
        "passt is not installed: install it (Debian/Ubuntu: apt install passt; Fedora: dnf install passt), or use --network none|socket:PATH|dgram:PATH"
    );
}

#[test]
fn bad_nat_configurations_are_refused() {
    let bad_gw = NatConfiguration {
        gateway: Ipv4Addr::new(10, 0, 3, 2),
        ..NatConfiguration::default()
    };
    let err = bad_gw.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the gateway 10.0.3.2 is outside the guest's network 10.0.2.0/24: choose an address in it"
    );
    let same = NatConfiguration {
        dns: Ipv4Addr::new(10, 0, 2, 15),
        ..NatConfiguration::default()
    };
    assert!(matches!(same.validate(), Err(PasstError::SameAddress(_))));
    let twice = NatConfiguration {
        forwards: vec![PortForward::local(Protocol::Udp, 5353, 53); 2],
        ..NatConfiguration::default()
    };
    assert!(matches!(twice.validate(), Err(PasstError::DuplicatePort { .. })));
    let prefix = NatConfiguration {
        prefix_len: 31,
        ..NatConfiguration::default()
    };
    assert!(matches!(prefix.validate(), Err(PasstError::BadPrefix(31))));
    // The default command line, option for option.
    let args = NatConfiguration {
        forwards: vec![
            PortForward::local(Protocol::Tcp, 2222, 22),
            PortForward::local(Protocol::Udp, 5353, 53),
        ],
        ..NatConfiguration::default()
    }
    .passt_args()
    .join(" ");
    assert_eq!(
        args,
        "-f -q -e -F 3 -a 10.0.2.15 -n 24 -g 10.0.2.2 -D 10.0.2.3 --dns-forward 10.0.2.3 \
         -t 127.0.0.1/2222:22 -u 127.0.0.1/5353:53"
    );
}

const CHILD_ENV: &str = "VIRTKIT_PASST_TEST_VM";

#[test]
fn passt_dies_with_a_killed_vm_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The "VM process": start passt, say its pid, wait to be killed.
        let net = passt::start(&NatConfiguration::default(), &PasstOptions::default()).unwrap();
        println!("passt-pid={}", net.helper.id());
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    if !passt_installed() {
        return;
    }
    let mut vm = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "passt_dies_with_a_killed_vm_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = vm.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let pid: u32 = loop {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "the VM process ended without starting passt: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(rest) = seen.split("passt-pid=").nth(1) {
            if rest.contains('\n') {
                break rest.lines().next().unwrap().trim().parse().unwrap();
            }
        }
    };
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
    };
    assert!(running(pid), "passt {pid} is not running");
    vm.kill().unwrap(); // SIGKILL
    vm.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "passt {pid} outlived the killed VM process by 2 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
