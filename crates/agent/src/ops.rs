//! The operations besides `exec`: `copy-in`, `copy-out`, `ip`, `set-time`, `shutdown`,
//! `version`.

use std::ffi::CStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::Path;

use virtkit_agent_protocol::tree::{receive_tree, send_tree};
use virtkit_agent_protocol::{
    AgentInfo, ErrorKind, ExitStatus, Frame, FrameReader, FrameWriter, Interface, InterfaceAddress, IpReport,
};

fn reply(w: &mut FrameWriter<UnixStream>, value: &impl serde::Serialize) {
    match serde_json::to_vec(value) {
        Ok(json) => {
            let _ = w.write(&Frame::Reply(json));
        }
        Err(e) => {
            let _ = w.write(&Frame::Error(ErrorKind::Other, e.to_string()));
        }
    }
}

pub fn copy_in(conn: UnixStream, dest: &str) {
    let Ok(write_half) = conn.try_clone() else { return };
    let mut w = FrameWriter::new(write_half);
    let mut r = FrameReader::new(conn);
    match receive_tree(Path::new(dest), &mut r) {
        Ok((placed, report)) => {
            tracing::info!(to = %placed.display(), entries = report.entries, bytes = report.bytes, "copied in");
            let _ = w.write(&Frame::Exit(ExitStatus::Code(0)));
        }
        Err(e) => {
            let text = format!("cannot copy into {dest} in the guest: {}", chain(&e));
            let _ = w.write(&Frame::Error(e.kind(), text));
        }
    }
}

pub fn copy_out(conn: UnixStream, src: &str) {
    let mut w = FrameWriter::new(conn);
    match send_tree(Path::new(src), &mut w) {
        Ok(report) => tracing::info!(
            from = src,
            entries = report.entries,
            bytes = report.bytes,
            "copied out"
        ),
        Err(e) => {
            let text = format!("cannot copy {src} from the guest: {}", chain(&e));
            let _ = w.write(&Frame::Error(e.kind(), text));
        }
    }
}

/// An error and its causes, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        next = s.source();
    }
    text
}

pub fn info() -> AgentInfo {
    let u = rustix::system::uname();
    AgentInfo {
        version: virtkit_agent_protocol::VERSION.to_owned(),
        hostname: u.nodename().to_string_lossy().into_owned(),
        kernel: u.release().to_string_lossy().into_owned(),
    }
}

pub fn version(conn: UnixStream) {
    reply(&mut FrameWriter::new(conn), &info());
}

pub fn ip(conn: UnixStream) {
    let mut w = FrameWriter::new(conn);
    match interfaces() {
        Ok(list) => reply(&mut w, &IpReport { interfaces: list }),
        Err(e) => {
            let _ = w.write(&Frame::Error(
                ErrorKind::Other,
                format!("cannot list the guest's interfaces: {e}"),
            ));
        }
    }
}

fn prefix_len(mask: &[u8]) -> u8 {
    mask.iter().map(|b| b.count_ones() as u8).sum()
}

/// Every interface and its addresses (`getifaddrs`: netlink, no NSS).
fn interfaces() -> std::io::Result<Vec<Interface>> {
    let mut list: Vec<Interface> = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list it allocated, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let index = match list.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                let mac = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty());
                list.push(Interface {
                    name: name.clone(),
                    mac,
                    up: ifa.ifa_flags & libc::IFF_UP as u32 != 0,
                    loopback: ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0,
                    addresses: Vec::new(),
                });
                list.len() - 1
            }
        };
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr of the family it names.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        let address = match family {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in; the netmask, if any, too.
                let (addr, mask) = unsafe {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let m = (!ifa.ifa_netmask.is_null())
                        .then(|| (*(ifa.ifa_netmask as *const libc::sockaddr_in)).sin_addr.s_addr);
                    (a.sin_addr.s_addr, m)
                };
                InterfaceAddress {
                    address: Ipv4Addr::from(u32::from_be(addr)).to_string(),
                    prefix_len: mask.map(|m| prefix_len(&m.to_ne_bytes())).unwrap_or(32),
                }
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6; the netmask, if any, too.
                let (addr, mask) = unsafe {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let m = (!ifa.ifa_netmask.is_null()).then(|| {
                        (*(ifa.ifa_netmask as *const libc::sockaddr_in6))
                            .sin6_addr
                            .s6_addr
                    });
                    (a.sin6_addr.s6_addr, m)
                };
                InterfaceAddress {
                    address: Ipv6Addr::from(addr).to_string(),
                    prefix_len: mask.map(|m| prefix_len(&m)).unwrap_or(128),
                }
            }
            _ => continue,
        };
        list[index].addresses.push(address);
    }
    // SAFETY: `head` came from getifaddrs and is freed once; no reference into it remains.
    unsafe { libc::freeifaddrs(head) };
    Ok(list)
}

/// Sets CLOCK_REALTIME; with `fake`, only logs (for tests on the host).
pub fn set_time(conn: UnixStream, unix_nanos: u64, fake: bool) {
    let mut w = FrameWriter::new(conn);
    if fake {
        tracing::warn!(unix_nanos = %unix_nanos, "set-time requested (--fake-clock: nothing done)");
        let _ = w.write(&Frame::Exit(ExitStatus::Code(0)));
        return;
    }
    let ts = rustix::time::Timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as i64,
        tv_nsec: (unix_nanos % 1_000_000_000) as _,
    };
    match rustix::time::clock_settime(rustix::time::ClockId::Realtime, ts) {
        Ok(()) => {
            tracing::info!(unix_seconds = ts.tv_sec, "clock set");
            let _ = w.write(&Frame::Exit(ExitStatus::Code(0)));
        }
        Err(e) => {
            let _ = w.write(&Frame::Error(
                ErrorKind::Other,
                format!("cannot set the guest's clock: {e}"),
            ));
        }
    }
}

/// Answers first, then syncs and powers off (or reboots): through systemd when it is PID 1,
/// else with the reboot syscall. With `fake`, only logs (for tests on the host).
/// How long the agent waits for the host to read its answer to `shutdown` before going ahead.
const SHUTDOWN_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn shutdown(conn: UnixStream, reboot: bool, fake: bool) {
    let waiter = conn.try_clone().ok();
    let mut w = FrameWriter::new(conn);
    let _ = w.write(&Frame::Exit(ExitStatus::Code(0)));
    drop(w);
    // The answer must reach the host before the guest goes: a power-off right after the write
    // can end the VM while the reply still sits in the guest's vsock queue, and the host then
    // sees a disconnect instead of the agent taking the shutdown. The host closes the
    // connection once it has read the answer; wait for that (at most SHUTDOWN_ANSWER_WAIT).
    if let Some(mut c) = waiter {
        let _ = c.shutdown(std::net::Shutdown::Write);
        let _ = c.set_read_timeout(Some(SHUTDOWN_ANSWER_WAIT));
        let mut sink = [0u8; 256];
        while matches!(std::io::Read::read(&mut c, &mut sink), Ok(n) if n > 0) {}
    }
    let what = if reboot { "reboot" } else { "poweroff" };
    if fake {
        tracing::warn!(what, "shutdown requested (--fake-shutdown: nothing done)");
        return;
    }
    tracing::info!(what, "shutting down");
    rustix::fs::sync();
    let systemd = std::fs::read_link("/proc/1/exe")
        .map(|p| p.to_string_lossy().contains("systemd"))
        .unwrap_or(false);
    if systemd {
        match std::process::Command::new("systemctl").arg(what).status() {
            Ok(s) if s.success() => return,
            other => tracing::warn!(?other, "systemctl {what} failed; using the reboot syscall"),
        }
    }
    let cmd = if reboot {
        rustix::system::RebootCommand::Restart
    } else {
        rustix::system::RebootCommand::PowerOff
    };
    if let Err(e) = rustix::system::reboot(cmd) {
        tracing::error!(error = %e, "the reboot syscall failed");
    }
}
