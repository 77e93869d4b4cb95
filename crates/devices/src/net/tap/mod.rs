//! TAP devices: [`Tap`] (one queue of a TAP interface, opened on `/dev/net/tun` with the
//! virtio-net header) and [`TapBackend`], the [`NetBackend`] over it, plus the two host
//! set-up steps a created TAP needs ([`set_link_up`], [`add_to_bridge`]). The policy (which
//! TAP, created or existing, the checks and their sentences) is the framework's
//! (`virtkit::network::tap`); every ioctl is in `sys`.
//!
//! A TAP is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, plus `IFF_MULTI_QUEUE` when the
//! interface is (or is made) multi-queue, so that more queues can be opened on it later. The
//! header is `struct virtio_net_hdr_v1` ([`VNET_HDR_LEN`], 12 bytes, `TUNSETVNETHDRSZ`), exactly
//! what the guest writes and reads: the device hands the guest's header and frame to one
//! `writev`, and the kernel's header and frame come back with one `read` into the buffer the
//! device then copies to the guest. A TAP is never made persistent (`TUNSETPERSIST`): one this
//! process created disappears when its last descriptor closes, which is what removes it when
//! the VM process stops or is killed. Descriptors are close-on-exec, so no helper process
//! (passt) keeps a TAP alive.

mod sys;

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::net::{socket, AddressFamily, SocketType};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};

use super::backend::{NetBackend, Offloads, VNET_HDR_LEN};

// `TUNSETVNETHDRSZ` is given the guest's header length: `virtio_net_hdr_v1`, 12 bytes.
const _: () = assert!(VNET_HDR_LEN == 12);

/// The longest interface name (`IFNAMSIZ` less the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Why a TAP could not be opened or set up. The framework turns these into sentences that
/// name the fix; the messages here say what happened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("`{0}` is not a usable interface name (1 to {MAX_NAME_LEN} bytes, no `/`, `:` or spaces)")]
    BadName(String),
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("not permitted to attach to TAP {0}")]
    NotPermitted(String, #[source] io::Error),
    #[error("TAP {0} is in use by another process")]
    Busy(String),
    #[error("there is no interface {0}")]
    NotFound(String),
    #[error(
        "{0} exists but cannot be opened as a TAP with these flags (a TUN device, or a TAP of another kind)"
    )]
    Mismatch(String, #[source] io::Error),
    #[error("{what} failed on {name}")]
    Io {
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Whether `name` is a name the kernel accepts for an interface (`dev_valid_name`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// One queue of a TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// Opened with `IFF_MULTI_QUEUE`: more queues of the interface can be opened.
    multi_queue: bool,
}

impl Tap {
    /// Opens a queue of TAP `name` (creating the interface when it does not exist, which
    /// needs `CAP_NET_ADMIN`), with the virtio-net header; non-blocking, close-on-exec.
    /// `multi_queue` must match an existing interface's `IFF_MULTI_QUEUE` (the kernel refuses
    /// a mismatch with `EINVAL`).
    pub fn open(name: &str, multi_queue: bool) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let name = sys::tun_set_iff(file.as_fd(), name, flags).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => TapError::Busy(name.to_owned()),
            Some(libc::EPERM | libc::EACCES) => TapError::NotPermitted(name.to_owned(), e),
            Some(libc::EINVAL) => TapError::Mismatch(name.to_owned(), e),
            _ => TapError::Io {
                what: "TUNSETIFF",
                name: name.to_owned(),
                source: e,
            },
        })?;
        let tap = Tap {
            file,
            name,
            multi_queue,
        };
        // Same length as the guest's header: the kernel reads and writes it as is.
        sys::tun_set_vnet_hdr_sz(tap.file.as_fd(), VNET_HDR_LEN as libc::c_int)
            .map_err(|e| tap.io("TUNSETVNETHDRSZ", e))?;
        // No offloads towards us until the guest says which it takes.
        tap.set_offload(0).map_err(|e| tap.io("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    /// Opens a queue of the existing TAP `name`, multi-queue or not (whichever it is), and
    /// never creates one.
    pub fn open_existing(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_owned()));
        }
        match interface_exists(name) {
            Ok(true) => {}
            Ok(false) => return Err(TapError::NotFound(name.to_owned())),
            Err(source) => {
                return Err(TapError::Io {
                    what: "looking up the interface",
                    name: name.to_owned(),
                    source,
                })
            }
        }
        match Tap::open(name, true) {
            Err(TapError::Mismatch(..)) => Tap::open(name, false),
            other => other,
        }
    }

    /// Opens the TAP's other queues, up to `queues` in all with this one: one per queue pair of
    /// a multiqueue card. A single-queue TAP has only this one.
    pub fn with_queues(self, queues: usize) -> Result<Vec<Tap>, TapError> {
        let more = if self.multi_queue {
            queues.saturating_sub(1)
        } else {
            0
        };
        let mut all = Vec::with_capacity(1 + more);
        let name = self.name.clone();
        all.push(self);
        for _ in 0..more {
            all.push(Tap::open(&name, true)?);
        }
        Ok(all)
    }

    /// Whether more queues of the interface can be opened.
    pub fn multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `TUNSETOFFLOAD` with `TUN_F_*` flags.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        sys::tun_set_offload(self.file.as_fd(), flags)
    }

    fn io(&self, what: &'static str, source: io::Error) -> TapError {
        TapError::Io {
            what,
            name: self.name.clone(),
            source,
        }
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A socket to make interface ioctls on (any socket of the current network namespace).
fn control_socket() -> io::Result<rustix::fd::OwnedFd> {
    Ok(socket(AddressFamily::UNIX, SocketType::DGRAM, None)?)
}

/// Whether interface `name` exists in this thread's network namespace (`SIOCGIFINDEX`; unlike
/// `/sys/class/net`, which shows the namespace sysfs was mounted in).
pub fn interface_exists(name: &str) -> io::Result<bool> {
    if !valid_name(name) {
        return Ok(false);
    }
    let socket = control_socket()?;
    match sys::if_index(socket.as_fd(), name) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The processes holding a queue of TAP `name`: every descriptor of `/dev/net/tun` attached
/// to an interface shows it as `iff:\tNAME` in its `/proc/PID/fdinfo` entry. A multi-queue TAP
/// takes a queue from anyone who may open it, so this is how a TAP in use by another VM is
/// found (a single-queue TAP refuses with `EBUSY` by itself). Processes this one may not
/// inspect are not seen; an interface of the same name in another network namespace is.
pub fn queue_holders(name: &str) -> Vec<u32> {
    let wanted = format!("iff:\t{name}\n");
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        // Only descriptors of /dev/net/tun have their fdinfo read.
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target == Path::new("/dev/net/tun"))
                && std::fs::read_to_string(entry.path().join("fdinfo").join(fd.file_name()))
                    .is_ok_and(|info| info.contains(&wanted))
        });
        if holds {
            pids.push(pid);
        }
    }
    pids
}

/// Sets interface `name` up (`IFF_UP`).
pub fn set_link_up(name: &str) -> Result<(), TapError> {
    let io = |source| TapError::Io {
        what: "setting the link up",
        name: name.to_owned(),
        source,
    };
    let socket = control_socket().map_err(io)?;
    sys::set_up(socket.as_fd(), name).map_err(io)
}

/// Makes interface `port` a port of bridge `bridge` (`SIOCBRADDIF`); `remove_from_bridge`
/// undoes it (a TAP that disappears leaves its bridge by itself).
pub fn add_to_bridge(bridge: &str, port: &str) -> Result<(), TapError> {
    bridge_port(bridge, port, true)
}

/// Removes interface `port` from bridge `bridge` (`SIOCBRDELIF`).
pub fn remove_from_bridge(bridge: &str, port: &str) -> Result<(), TapError> {
    bridge_port(bridge, port, false)
}

fn bridge_port(bridge: &str, port: &str, add: bool) -> Result<(), TapError> {
    let io = |what, source| TapError::Io {
        what,
        name: bridge.to_owned(),
        source,
    };
    let socket = control_socket().map_err(|e| io("opening a socket", e))?;
    let index = sys::if_index(socket.as_fd(), port).map_err(|e| io("looking up the port", e))?;
    let what = if add { "SIOCBRADDIF" } else { "SIOCBRDELIF" };
    sys::bridge_port(socket.as_fd(), bridge, index, add).map_err(|e| io(what, e))
}

/// The `TUN_F_*` offloads the guest's accepted features allow the TAP to hand it: the
/// guest's receive side (`GUEST_*`), each only with what it depends on.
pub fn tun_offloads(features: u64) -> u32 {
    let has = |bit: u32| features & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

/// The device's frames on a TAP queue: with the virtio-net header, every offload the TAP
/// takes passed through.
#[derive(Debug)]
pub struct TapBackend {
    tap: Tap,
    /// The `TUN_F_*` flags last set.
    offload: u32,
}

impl TapBackend {
    pub fn new(tap: Tap) -> TapBackend {
        TapBackend { tap, offload: 0 }
    }

    /// The TAP interface's name.
    pub fn name(&self) -> &str {
        self.tap.name()
    }

    /// The `TUN_F_*` flags in force.
    pub fn offload_flags(&self) -> u32 {
        self.offload
    }
}

/// A TAP deleted under the VM (`ip link del`) leaves its descriptor detached: reads and writes
/// fail with `EBADFD` and epoll reports an error for ever. Told to the device as the peer gone,
/// so the link goes down and the worker stops reading instead of spinning.
fn gone(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "the TAP device was deleted")
}

impl NetBackend for TapBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        self.tap.as_fd()
    }

    fn send(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()> {
        loop {
            // One writev is one frame to the TAP: the header and the frame as the guest gave
            // them, no copy.
            match rustix::io::writev(&self.tap, frame) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::BADFD) => return Err(gone(io::ErrorKind::BrokenPipe)),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&self.tap.file).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                    return Err(gone(io::ErrorKind::UnexpectedEof))
                }
                other => return other,
            }
        }
    }

    fn vnet_hdr_len(&self) -> usize {
        VNET_HDR_LEN
    }

    fn offloads(&self) -> Offloads {
        Offloads {
            checksum: true,
            tso4: true,
            tso6: true,
            ecn: true,
        }
    }

    fn negotiated(&mut self, features: u64) -> io::Result<()> {
        let flags = tun_offloads(features);
        self.tap.set_offload(flags)?;
        self.offload = flags;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
