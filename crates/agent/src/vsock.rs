//! AF_VSOCK sockets through libc (rustix has the address family but no `sockaddr_vm`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The host's context id.
pub const HOST_CID: u32 = 2;

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

/// A listening socket on `port` for any CID.
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let fd = socket()?;
    let addr = address(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm of the size given; `fd` is an open socket.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    rustix::net::listen(&fd, 64)?;
    Ok(fd)
}

/// A stream to `cid`:`port`.
pub fn connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let fd = socket()?;
    let addr = address(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm of the size given; `fd` is an open socket.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
