//! Every ioctl the TAP support makes, each behind a safe function: `TUNSETIFF`,
//! `TUNSETVNETHDRSZ` and `TUNSETOFFLOAD` on a `/dev/net/tun` descriptor; `SIOCGIFINDEX`,
//! `SIOCGIFFLAGS`/`SIOCSIFFLAGS` and the bridge's `SIOCBRADDIF`/`SIOCBRDELIF` on any socket.
//! Each passes a pointer to a `struct ifreq` or an integer that lives across the call.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use libc::{c_int, c_short, c_uint, c_ulong, ifreq, IFNAMSIZ};

/// `linux/sockios.h`: add or remove a bridge port (by interface index); libc lacks them on Linux.
const SIOCBRADDIF: c_ulong = 0x89a2;
const SIOCBRDELIF: c_ulong = 0x89a3;

/// An `ifreq` naming `name` (at most `IFNAMSIZ - 1` bytes; checked by the caller, cut here).
fn request(name: &str) -> ifreq {
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, addresses and a
    // pointer); all zeroes is a valid value of it.
    let mut req: ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    req
}

fn name_of(req: &ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn check(ret: c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `TUNSETIFF`: attaches `tun` (an open `/dev/net/tun`) to the interface `name` with `flags`
/// (`IFF_TAP | ...`), creating it when it does not exist; returns the interface's name.
pub(super) fn tun_set_iff(tun: BorrowedFd<'_>, name: &str, flags: c_int) -> io::Result<String> {
    let mut req = request(name);
    req.ifr_ifru.ifru_flags = flags as c_short;
    // SAFETY: `req` is a valid `ifreq` that outlives the call; TUNSETIFF reads the name and the
    // flags from it and writes the interface's name back into it, within its size.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
    Ok(name_of(&req))
}

/// `TUNSETVNETHDRSZ`: the length of the virtio-net header before every frame, both ways.
pub(super) fn tun_set_vnet_hdr_sz(tun: BorrowedFd<'_>, len: c_int) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points at `len`, alive
    // for the call.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) })
}

/// `TUNSETOFFLOAD`: the `TUN_F_*` offloads the kernel may leave to the reader (the guest).
pub(super) fn tun_set_offload(tun: BorrowedFd<'_>, flags: c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long); no memory is
    // passed.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETOFFLOAD, c_ulong::from(flags)) })
}

/// `SIOCGIFINDEX` on `socket` (any socket of the network namespace).
pub(super) fn if_index(socket: BorrowedFd<'_>, name: &str) -> io::Result<c_int> {
    let mut req = request(name);
    // SAFETY: `req` is a valid `ifreq` that outlives the call; the kernel writes the index
    // into its union.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) })?;
    // SAFETY: SIOCGIFINDEX succeeded, so the union holds `ifr_ifindex`, an `int`.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// Sets `IFF_UP` on interface `name` (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS`).
pub(super) fn set_up(socket: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut req = request(name);
    // SAFETY: `req` is a valid `ifreq` that outlives the call; the kernel writes the flags
    // into its union.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds `ifr_flags`.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads the name and the flags.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })
}

/// Adds (`add`) or removes the interface with index `port` to or from bridge `bridge`.
pub(super) fn bridge_port(socket: BorrowedFd<'_>, bridge: &str, port: c_int, add: bool) -> io::Result<()> {
    let mut req = request(bridge);
    req.ifr_ifru.ifru_ifindex = port;
    let op = if add { SIOCBRADDIF } else { SIOCBRDELIF };
    // SAFETY: `req` is a valid `ifreq` (the bridge's name and the port's index) that outlives
    // the call; the bridge ioctls only read it.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), op, &req) })
}
