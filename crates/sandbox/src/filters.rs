//! The syscall lists, one per [`ThreadRole`]. `docs/SECURITY.md` lists them in prose; keep the
//! two in step.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction as BpfAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{DeviceKind, SandboxError, SeccompAction, ThreadRole};

/// One argument condition: argument `index` (from 0) equals `value` (compared as 32 bits).
type ArgEq = (u8, u64);

/// A role's syscalls: each either allowed with any arguments (`None`) or allowed when any one of
/// its argument lists matches (every condition of a list must hold).
#[derive(Debug, Default, Clone)]
pub struct FilterRules {
    syscalls: BTreeMap<i64, Option<Vec<Vec<ArgEq>>>>,
}

impl FilterRules {
    /// Allows `nr` with any arguments.
    fn allow(&mut self, nr: i64) -> &mut Self {
        self.syscalls.insert(nr, None);
        self
    }

    fn allow_all(&mut self, nrs: &[i64]) -> &mut Self {
        for &nr in nrs {
            self.allow(nr);
        }
        self
    }

    /// Allows `nr` when all of `conditions` hold (or with any arguments if it already was).
    fn allow_if(&mut self, nr: i64, conditions: &[ArgEq]) -> &mut Self {
        let entry = self.syscalls.entry(nr).or_insert_with(|| Some(Vec::new()));
        if let Some(lists) = entry {
            lists.push(conditions.to_vec());
        }
        self
    }

    /// Whether `nr` is allowed with some arguments.
    pub fn allows(&self, nr: i64) -> bool {
        self.syscalls.contains_key(&nr)
    }

    /// Whether `nr` is allowed with any arguments.
    pub fn allows_any_arguments(&self, nr: i64) -> bool {
        matches!(self.syscalls.get(&nr), Some(None))
    }

    /// The syscall numbers in the list.
    pub fn syscalls(&self) -> impl Iterator<Item = i64> + '_ {
        self.syscalls.keys().copied()
    }

    fn into_seccompiler(self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
        let mut out = BTreeMap::new();
        for (nr, lists) in self.syscalls {
            let mut rules = Vec::new();
            for list in lists.unwrap_or_default() {
                let conditions = list
                    .into_iter()
                    .map(|(index, value)| {
                        SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                rules.push(SeccompRule::new(conditions)?);
            }
            out.insert(nr, rules);
        }
        Ok(out)
    }
}

/// `_IOC(dir, 0xAE, nr, size)`: a KVM ioctl number.
const fn kvm_ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (0xAE << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// The KVM ioctls a vCPU thread may issue: its own `KVM_RUN`, `KVM_GET_REGS` (to report where
/// an internal error stopped it), and the VM ioctls of the device models that run on vCPU exits
/// (PAM slots, INTx levels, MSI routes and irqfds, ioeventfds moved with a BAR).
pub mod kvm {
    use super::{kvm_ioc, IOC_READ, IOC_WRITE};
    pub const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
    /// `_IOR(KVMIO, 0x81, struct kvm_regs)`
    pub const KVM_GET_REGS: u64 = kvm_ioc(IOC_READ, 0x81, 144);
    /// `_IOR(KVMIO, 0x83, struct kvm_sregs)`
    pub const KVM_GET_SREGS: u64 = kvm_ioc(IOC_READ, 0x83, 312);
    /// `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)`
    pub const KVM_SET_USER_MEMORY_REGION: u64 = kvm_ioc(IOC_WRITE, 0x46, 32);
    /// `_IOW(KVMIO, 0x61, struct kvm_irq_level)`
    pub const KVM_IRQ_LINE: u64 = kvm_ioc(IOC_WRITE, 0x61, 8);
    /// `_IOW(KVMIO, 0x6a, struct kvm_irq_routing)`
    pub const KVM_SET_GSI_ROUTING: u64 = kvm_ioc(IOC_WRITE, 0x6a, 8);
    /// `_IOW(KVMIO, 0x76, struct kvm_irqfd)`
    pub const KVM_IRQFD: u64 = kvm_ioc(IOC_WRITE, 0x76, 32);
    /// `_IOW(KVMIO, 0x79, struct kvm_ioeventfd)`
    pub const KVM_IOEVENTFD: u64 = kvm_ioc(IOC_WRITE, 0x79, 64);
    /// `_IOW(KVMIO, 0x42, struct kvm_dirty_log)`
    pub const KVM_GET_DIRTY_LOG: u64 = kvm_ioc(IOC_WRITE, 0x42, 16);

    /// The reads of a vCPU's whole state, which its own thread makes while parked when the
    /// machine is saved (`virtkit_machine::snapshot`).
    pub const SAVE_STATE: [u64; 10] = [
        // `_IOR(KVMIO, 0x98, struct kvm_mp_state)`
        kvm_ioc(IOC_READ, 0x98, 4),
        // `_IOR(KVMIO, 0xa4, struct kvm_xsave)`
        kvm_ioc(IOC_READ, 0xa4, 4096),
        // `_IOR(KVMIO, 0x8c, struct kvm_fpu)`
        kvm_ioc(IOC_READ, 0x8c, 416),
        // `_IOR(KVMIO, 0xa6, struct kvm_xcrs)`
        kvm_ioc(IOC_READ, 0xa6, 392),
        // `_IOR(KVMIO, 0xa1, struct kvm_debugregs)`
        kvm_ioc(IOC_READ, 0xa1, 128),
        // `_IOR(KVMIO, 0x8e, struct kvm_lapic_state)`
        kvm_ioc(IOC_READ, 0x8e, 1024),
        // `_IOWR(KVMIO, 0x88, struct kvm_msrs)`
        kvm_ioc(IOC_READ | IOC_WRITE, 0x88, 8),
        // `_IOR(KVMIO, 0x9f, struct kvm_vcpu_events)`
        kvm_ioc(IOC_READ, 0x9f, 64),
        // `_IOWR(KVMIO, 0x91, struct kvm_cpuid2)`
        kvm_ioc(IOC_READ | IOC_WRITE, 0x91, 8),
        // `_IO(KVMIO, 0xa3)`: KVM_GET_TSC_KHZ
        kvm_ioc(0, 0xa3, 0),
    ];

    /// The VM's own state a save reads besides the vCPUs': `KVM_GET_IRQCHIP` (the PIC pair and
    /// the IOAPIC), `KVM_GET_PIT2`, `KVM_GET_CLOCK`.
    pub const SAVE_VM_STATE: [u64; 3] = [
        // `_IOWR(KVMIO, 0x62, struct kvm_irqchip)`
        kvm_ioc(IOC_READ | IOC_WRITE, 0x62, 520),
        // `_IOR(KVMIO, 0x9f, struct kvm_pit_state2)`
        kvm_ioc(IOC_READ, 0x9f, 112),
        // `_IOR(KVMIO, 0x7c, struct kvm_clock_data)`
        kvm_ioc(IOC_READ, 0x7c, 48),
    ];
}

/// What every filtered thread needs, whatever its role: the allocator and thread exit (glibc
/// returns a dead thread's stack with `madvise(MADV_DONTNEED)`), locks, signal returns (vCPU
/// kicks), the clock when the vDSO falls back to the kernel, `getrandom` (hash map seeds),
/// log lines and panic messages on stderr, dropping descriptors (`close`; debug builds first check
/// it with `fcntl(F_GETFD)`), and `abort()`.
fn base(rules: &mut FilterRules) {
    use libc::*;
    rules
        .allow_all(&[
            SYS_mmap,
            SYS_munmap,
            SYS_mremap,
            SYS_mprotect,
            SYS_brk,
            SYS_futex,
            SYS_sched_yield,
            SYS_getrandom,
            SYS_clock_gettime,
            SYS_sigaltstack,
            SYS_rt_sigprocmask,
            SYS_rt_sigreturn,
            SYS_restart_syscall,
            SYS_exit,
            SYS_exit_group,
            SYS_close,
            SYS_getpid,
            SYS_gettid,
        ])
        .allow_if(SYS_madvise, &[(2, MADV_DONTNEED as u64)])
        // Debug builds of std check that a descriptor is open before closing it.
        .allow_if(SYS_fcntl, &[(1, F_GETFD as u64)])
        .allow_if(SYS_write, &[(0, 2)])
        .allow_if(SYS_writev, &[(0, 2)])
        .allow_if(SYS_tgkill, &[(2, SIGABRT as u64)]);
}

/// Signalling another vCPU thread with the kick signal (`pthread_kill`: `tgkill(our pid, tid,
/// SIGRTMIN)`), from whoever pauses or stops the machine.
fn kick_vcpus(rules: &mut FilterRules) {
    let pid = std::process::id() as u64;
    rules.allow_if(libc::SYS_tgkill, &[(0, pid), (2, libc::SIGRTMIN() as u64)]);
}

/// A save of the paused machine (`virtkit_machine::snapshot`): the parked vCPU threads read
/// their own state when kicked; this thread reads the VM's (irqchip, PIT, clock), creates the
/// temporary state file beside its final name (`openat`), sets its length (`ftruncate`), writes
/// it (`pwrite64`), syncs it, renames it into place and syncs the directory (opened read-only);
/// on a failure it removes the temporary file. No sockets, no other ioctls.
fn saves_state(rules: &mut FilterRules) {
    use libc::*;
    for ioctl in kvm::SAVE_VM_STATE {
        rules.allow_if(SYS_ioctl, &[(1, ioctl)]);
    }
    rules.allow_all(&[
        SYS_openat,
        SYS_ftruncate,
        SYS_pwrite64,
        SYS_write,
        SYS_fsync,
        SYS_fdatasync,
        SYS_rename,
        SYS_renameat,
        SYS_renameat2,
        SYS_unlink,
        SYS_unlinkat,
    ]);
    kick_vcpus(rules);
}

/// Starting a device worker (`WorkerThread::start`, on activation by a vCPU or on resume by a
/// control client): its kill eventfd and the worker's copy of it. The thread itself comes from
/// the spawner.
fn starts_workers(rules: &mut FilterRules) {
    rules
        .allow(libc::SYS_eventfd2)
        .allow_if(libc::SYS_fcntl, &[(1, libc::F_DUPFD_CLOEXEC as u64)]);
}

/// `send` on a connected socket (`sendto` with no address): std writes a `UnixStream` with
/// `send(MSG_NOSIGNAL)`, rustix's `send` likewise.
fn send_connected(rules: &mut FilterRules) {
    rules.allow_if(libc::SYS_sendto, &[(4, 0)]);
}

/// Builds `role`'s list.
pub fn rules_for(role: ThreadRole) -> FilterRules {
    use libc::*;
    let mut r = FilterRules::default();
    base(&mut r);
    match role {
        ThreadRole::Vcpu => {
            for ioctl in [
                kvm::KVM_RUN,
                kvm::KVM_GET_REGS,
                // Both read on a triple fault, to say where the guest was.
                kvm::KVM_GET_SREGS,
                kvm::KVM_SET_USER_MEMORY_REGION,
                kvm::KVM_IRQ_LINE,
                kvm::KVM_SET_GSI_ROUTING,
                kvm::KVM_IRQFD,
                kvm::KVM_IOEVENTFD,
            ]
            .into_iter()
            .chain(kvm::SAVE_STATE)
            {
                r.allow_if(SYS_ioctl, &[(1, ioctl)]);
            }
            // A TAP network card's offloads follow the features the guest accepts, set when the
            // vCPU's write activates the device (`TUNSETOFFLOAD` on the TAP's descriptor).
            r.allow_if(SYS_ioctl, &[(1, TUNSETOFFLOAD)]);
            // Eventfds (irqfds, a worker's kill event, queue notifications dropped on reset) and
            // the serial port's output attachment (a file, pipe, terminal, or the pipe to a
            // serial socket's `ConsoleServer`).
            r.allow_all(&[SYS_read, SYS_write, SYS_writev]);
            // The EFI variable store's flash is written through to the bundle's `aux.img` by
            // the vCPU that programs or erases it (`pwrite`), and made durable where OVMF's
            // fault-tolerant write moves on (`fdatasync`), as QEMU's pflash does.
            r.allow_all(&[SYS_pwrite64, SYS_fdatasync]);
            kick_vcpus(&mut r);
            starts_workers(&mut r);
        }
        ThreadRole::DeviceWorker(kind) => {
            // The worker builds its own event loop (epoll) over eventfds it reads and writes.
            r.allow_all(&[
                SYS_epoll_create1,
                SYS_epoll_wait,
                SYS_epoll_pwait,
                SYS_epoll_ctl,
                SYS_read,
                SYS_write,
            ]);
            // INTx: a device's interrupt when the driver uses no MSI-X (SeaBIOS).
            r.allow_if(SYS_ioctl, &[(1, kvm::KVM_IRQ_LINE)]);
            match kind {
                DeviceKind::Block => {
                    r.allow_all(&[
                        SYS_io_uring_enter,
                        SYS_preadv,
                        SYS_pwritev,
                        SYS_preadv2,
                        SYS_pwritev2,
                        SYS_pread64,
                        SYS_pwrite64,
                        SYS_fdatasync,
                        SYS_fsync,
                        SYS_fallocate,
                    ]);
                }
                // The rate limit's timer.
                DeviceKind::Rng => {
                    r.allow_all(&[SYS_timerfd_create, SYS_timerfd_settime, SYS_timerfd_gettime]);
                }
                // The statistics' timer, and `madvise(MADV_REMOVE)`: pages the guest gave up in
                // memfd-backed guest memory (a VM with a shared directory), which
                // MADV_DONTNEED would not free.
                DeviceKind::Balloon => {
                    r.allow_all(&[SYS_timerfd_create, SYS_timerfd_settime, SYS_timerfd_gettime])
                        .allow_if(SYS_madvise, &[(2, MADV_REMOVE as u64)]);
                }
                DeviceKind::Console => {
                    send_connected(&mut r);
                    r.allow_all(&[SYS_accept4, SYS_recvfrom, SYS_writev, SYS_readv])
                        .allow_if(SYS_fcntl, &[(1, F_GETFL as u64)])
                        .allow_if(SYS_fcntl, &[(1, F_SETFL as u64)])
                        // std makes an accepted socket non-blocking with `ioctl(FIONBIO)`.
                        .allow_if(SYS_ioctl, &[(1, FIONBIO)]);
                }
                // The backend's socket is connected and non-blocking before the worker starts:
                // frames go out with `send` (a `sendto` with no address: never anywhere else)
                // and come in with `recv` (datagrams, `recvfrom`) or `read` (streams). A TAP,
                // opened and set up before, takes a frame (header and pieces) per `writev` and
                // gives one per `read`. A listening attachment takes its one peer with
                // `accept4(SOCK_NONBLOCK)`.
                DeviceKind::Net => {
                    send_connected(&mut r);
                    r.allow_all(&[SYS_recvfrom, SYS_writev, SYS_accept4]);
                }
                // virtio-vsock's host side: host clients accepted from the listening socket
                // (`accept4`, made non-blocking with `ioctl(FIONBIO)`, their user checked with
                // `getsockopt(SO_PEERCRED)` against `geteuid`), the guest's connections opened
                // as non-blocking Unix stream sockets (`socket(AF_UNIX)` + `connect`), bytes
                // both ways (`recvfrom`, `send`) and half closes (`shutdown`). No other socket
                // family, no `bind`/`listen`, no file opens.
                DeviceKind::Vsock => {
                    send_connected(&mut r);
                    r.allow_all(&[SYS_recvfrom, SYS_accept4, SYS_connect, SYS_shutdown, SYS_geteuid])
                        .allow_if(SYS_socket, &[(0, AF_UNIX as u64)])
                        .allow_if(SYS_getsockopt, &[(1, SOL_SOCKET as u64), (2, SO_PEERCRED as u64)])
                        .allow_if(SYS_ioctl, &[(1, FIONBIO)]);
                }
                // vhost-user: the socket was connected and given its timeouts before the worker
                // started; the worker only sends requests (with descriptors: `sendmsg`) and
                // reads answers (`recvmsg`), and closes the eventfd copies it sent.
                DeviceKind::VhostUser => {
                    r.allow_all(&[SYS_sendmsg, SYS_recvmsg]);
                }
                // The event loop above is all it needs.
                DeviceKind::Input => {}
                DeviceKind::Other => {
                    r.allow_all(&[SYS_nanosleep, SYS_clock_nanosleep]);
                }
            }
        }
        ThreadRole::SerialInput => {
            // Host input (read), COM1's irqfd (write).
            r.allow_all(&[SYS_poll, SYS_ppoll, SYS_read, SYS_write]);
        }
        ThreadRole::SerialOutput => {
            // Only writes: to a terminal, pipe or file (`write`), or a socket (`send`).
            r.allow_all(&[SYS_write, SYS_writev]);
            send_connected(&mut r);
        }
        // Takes clients from the listening socket (`accept4`; TCP ones get `TCP_NODELAY`),
        // duplicates each one's socket (the copy closes it at shutdown) and has the sandbox's
        // spawner start its thread; waits a little after a failed accept.
        ThreadRole::VncAccept => {
            r.allow_all(&[SYS_accept4, SYS_nanosleep, SYS_clock_nanosleep])
                .allow_if(
                    SYS_setsockopt,
                    &[(1, IPPROTO_TCP as u64), (2, TCP_NODELAY as u64)],
                )
                .allow_if(SYS_fcntl, &[(1, F_DUPFD_CLOEXEC as u64)]);
        }
        // The client's socket only: reads, writes (`send` with no address), its timeouts, a
        // duplicate for the writer, a shutdown; the display's dirty log (`KVM_GET_DIRTY_LOG`)
        // and `write`s to the input devices' eventfds and irqfds.
        ThreadRole::VncClient => {
            r.allow_all(&[SYS_read, SYS_recvfrom, SYS_write, SYS_writev, SYS_shutdown])
                .allow_if(SYS_setsockopt, &[(1, SOL_SOCKET as u64), (2, SO_RCVTIMEO as u64)])
                .allow_if(SYS_setsockopt, &[(1, SOL_SOCKET as u64), (2, SO_SNDTIMEO as u64)])
                .allow_if(SYS_fcntl, &[(1, F_DUPFD_CLOEXEC as u64)])
                .allow_if(SYS_ioctl, &[(1, kvm::KVM_GET_DIRTY_LOG)]);
            send_connected(&mut r);
        }
        // Sleeps with `futex` (in every list) and raises IRQ 8 with a `write` to its irqfd.
        ThreadRole::RtcTimer => {
            r.allow(SYS_write);
        }
        ThreadRole::Vmm => {
            // Joins the vCPUs (kicking them), stops the device workers (their kill eventfds),
            // releases the machine and removes the serial socket.
            r.allow_all(&[SYS_write, SYS_read, SYS_unlink, SYS_unlinkat]);
            for ioctl in [kvm::KVM_IRQFD, kvm::KVM_IOEVENTFD] {
                r.allow_if(SYS_ioctl, &[(1, ioctl)]);
            }
            kick_vcpus(&mut r);
        }
        ThreadRole::CliSignals => {
            r.allow_all(&[SYS_read, SYS_recvfrom, SYS_poll, SYS_ppoll]);
        }
        ThreadRole::CliStdin => {
            r.allow_if(SYS_read, &[(0, 0)]).allow(SYS_write);
        }
        ThreadRole::ConsoleOutput => {
            // Guest output to the foreground terminal, from a bounded queue (it waits on a
            // condition variable: `futex`).
            r.allow(SYS_write);
        }
        ThreadRole::ConsoleInput => {
            // The terminal into a pipe to the console's event loop.
            r.allow_all(&[SYS_read, SYS_write]);
        }
        ThreadRole::ConsoleSocket => {
            // A `ConsoleServer`'s event loop, all descriptors non-blocking (made so by whoever
            // hands them over, or `accept4(SOCK_NONBLOCK)`): `poll`, guest output pipes and its
            // wake-up pipe (`read`), the log and the guest's input pipe (`write`), clients
            // (`accept4`, `recvfrom`, `sendto` with no address) and their credentials
            // (`getsockopt(SO_PEERCRED)` compared with `geteuid`).
            r.allow_all(&[
                SYS_poll,
                SYS_ppoll,
                SYS_accept4,
                SYS_read,
                SYS_write,
                SYS_recvfrom,
                SYS_geteuid,
            ])
            .allow_if(SYS_getsockopt, &[(1, SOL_SOCKET as u64), (2, SO_PEERCRED as u64)]);
            send_connected(&mut r);
        }
        ThreadRole::ControlSocket => {
            // The control server's loop: `poll` over the listener, the clients and the
            // executor's eventfd (read to clear it); accepted sockets come non-blocking from
            // `accept4`; clients are read with `recv` and answered with `send`; each client's
            // credentials come from `getsockopt(SO_PEERCRED)`, compared with `geteuid`.
            r.allow_all(&[
                SYS_poll,
                SYS_ppoll,
                SYS_accept4,
                SYS_recvfrom,
                SYS_read,
                SYS_geteuid,
            ])
            .allow_if(SYS_getsockopt, &[(1, SOL_SOCKET as u64), (2, SO_PEERCRED as u64)]);
            send_connected(&mut r);
            // `stop` kicks the vCPUs; `request_stop` raises the SCI with `KVM_IRQ_LINE`;
            // reading the balloon asks its worker for statistics through an eventfd (`write`).
            kick_vcpus(&mut r);
            r.allow_if(SYS_ioctl, &[(1, kvm::KVM_IRQ_LINE)]).allow(SYS_write);
        }
        ThreadRole::ControlExecutor => {
            // The control requests that wait on the machine: pause/resume kick the vCPUs and
            // stop and restart the device workers (threads come from the spawner); sleeping and
            // waking devices sets their INTx level; the balloon's target and report go to its
            // worker through eventfds. `write` also wakes the loop (its eventfd).
            r.allow_if(SYS_ioctl, &[(1, kvm::KVM_IRQ_LINE)]);
            r.allow_all(&[SYS_read, SYS_write])
                .allow_if(SYS_fcntl, &[(1, F_DUPFD_CLOEXEC as u64)]);
            kick_vcpus(&mut r);
            starts_workers(&mut r);
        }
        ThreadRole::StateSave => saves_state(&mut r),
        ThreadRole::Snapshot => {
            // The state saver's rules (the save into `snapshot-<name>.vksave`), and what
            // reading the bundle, freezing its disk and opening the new qcow2 chain need: reads
            // and metadata of its files, a directory listing (leftover layers, the interrupted
            // freeze check), the layer's hard link and read-only mode, `flock` of the chain's
            // images. Still no sockets, no processes or threads, no other ioctls.
            saves_state(&mut r);
            r.allow_all(&[
                // imago opens the chain's images with `open`, reads with `preadv`, writes
                // (the new image's header and tables) with `pwritev`, and asks `fstatfs`.
                SYS_open,
                SYS_read,
                SYS_pread64,
                SYS_preadv,
                SYS_pwritev,
                SYS_fstatfs,
                SYS_lseek,
                SYS_fstat,
                SYS_newfstatat,
                SYS_statx,
                SYS_getdents64,
                SYS_fallocate,
                SYS_link,
                SYS_linkat,
                SYS_fchmod,
                SYS_fchmodat,
                SYS_chmod,
                SYS_flock,
            ]);
        }
        ThreadRole::AgentHost => {
            // The hello listener takes connections (`accept4`), sets a read timeout and reads
            // one line (`read`/`recvfrom`). The clock setter opens a Unix stream socket to the
            // VM's `vsock.sock` (`socket(AF_UNIX)` + `connect`: no other family), writes its
            // `CONNECT` line and request (`write`, `send`), peeks at the `OK` line
            // (`recvfrom`) and reads the answer. Both wait between tries (`nanosleep`). No
            // `bind`/`listen` (the listener is made before the thread starts), no file opens.
            r.allow_all(&[
                SYS_accept4,
                SYS_read,
                SYS_write,
                SYS_recvfrom,
                SYS_connect,
                SYS_nanosleep,
                SYS_clock_nanosleep,
                SYS_poll,
                SYS_ppoll,
            ])
            .allow_if(SYS_socket, &[(0, AF_UNIX as u64)])
            // The agent connection's reader is a `try_clone` of its writer.
            .allow_if(SYS_fcntl, &[(1, F_DUPFD_CLOEXEC as u64)])
            .allow_if(SYS_setsockopt, &[(1, SOL_SOCKET as u64), (2, SO_RCVTIMEO as u64)])
            .allow_if(SYS_setsockopt, &[(1, SOL_SOCKET as u64), (2, SO_SNDTIMEO as u64)]);
            send_connected(&mut r);
        }
    }
    r
}

/// `role`'s filter as a BPF program: its list allowed, anything else per `action`.
pub(crate) fn compile(role: ThreadRole, action: SeccompAction) -> Result<BpfProgram, SandboxError> {
    let mismatch = match action {
        SeccompAction::Kill | SeccompAction::Off => BpfAction::KillProcess,
        SeccompAction::Log => BpfAction::Log,
    };
    let rules = rules_for(role)
        .into_seccompiler()
        .map_err(SandboxError::Compile)?;
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(SandboxError::Compile)?;
    let filter =
        SeccompFilter::new(rules, mismatch, BpfAction::Allow, arch).map_err(SandboxError::Compile)?;
    BpfProgram::try_from(filter).map_err(SandboxError::Compile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_structures() {
        use std::mem::size_of;
        assert_eq!(kvm::KVM_RUN, 0xae80);
        assert_eq!(
            kvm::KVM_GET_REGS,
            kvm_ioc(IOC_READ, 0x81, size_of::<kvm_bindings::kvm_regs>() as u64)
        );
        assert_eq!(
            kvm::KVM_GET_SREGS,
            kvm_ioc(IOC_READ, 0x83, size_of::<kvm_bindings::kvm_sregs>() as u64)
        );
        assert_eq!(
            kvm::KVM_SET_USER_MEMORY_REGION,
            kvm_ioc(
                IOC_WRITE,
                0x46,
                size_of::<kvm_bindings::kvm_userspace_memory_region>() as u64
            )
        );
        assert_eq!(
            kvm::KVM_IRQ_LINE,
            kvm_ioc(IOC_WRITE, 0x61, size_of::<kvm_bindings::kvm_irq_level>() as u64)
        );
        assert_eq!(
            kvm::KVM_SET_GSI_ROUTING,
            kvm_ioc(IOC_WRITE, 0x6a, size_of::<kvm_bindings::kvm_irq_routing>() as u64)
        );
        assert_eq!(
            kvm::KVM_IRQFD,
            kvm_ioc(IOC_WRITE, 0x76, size_of::<kvm_bindings::kvm_irqfd>() as u64)
        );
        assert_eq!(
            kvm::KVM_IOEVENTFD,
            kvm_ioc(IOC_WRITE, 0x79, size_of::<kvm_bindings::kvm_ioeventfd>() as u64)
        );
        assert_eq!(kvm::KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
        let rw = IOC_READ | IOC_WRITE;
        assert_eq!(
            kvm::SAVE_STATE,
            [
                kvm_ioc(IOC_READ, 0x98, size_of::<kvm_bindings::kvm_mp_state>() as u64),
                kvm_ioc(IOC_READ, 0xa4, size_of::<kvm_bindings::kvm_xsave>() as u64),
                kvm_ioc(IOC_READ, 0x8c, size_of::<kvm_bindings::kvm_fpu>() as u64),
                kvm_ioc(IOC_READ, 0xa6, size_of::<kvm_bindings::kvm_xcrs>() as u64),
                kvm_ioc(IOC_READ, 0xa1, size_of::<kvm_bindings::kvm_debugregs>() as u64),
                kvm_ioc(IOC_READ, 0x8e, size_of::<kvm_bindings::kvm_lapic_state>() as u64),
                kvm_ioc(rw, 0x88, size_of::<kvm_bindings::kvm_msrs>() as u64),
                kvm_ioc(IOC_READ, 0x9f, size_of::<kvm_bindings::kvm_vcpu_events>() as u64),
                kvm_ioc(rw, 0x91, size_of::<kvm_bindings::kvm_cpuid2>() as u64),
                0xaea3,
            ]
        );
    }

    const ALL_ROLES: [ThreadRole; 26] = [
        ThreadRole::Vcpu,
        ThreadRole::DeviceWorker(DeviceKind::Block),
        ThreadRole::DeviceWorker(DeviceKind::Rng),
        ThreadRole::DeviceWorker(DeviceKind::Balloon),
        ThreadRole::DeviceWorker(DeviceKind::Console),
        ThreadRole::DeviceWorker(DeviceKind::Net),
        ThreadRole::DeviceWorker(DeviceKind::Vsock),
        ThreadRole::DeviceWorker(DeviceKind::VhostUser),
        ThreadRole::DeviceWorker(DeviceKind::Input),
        ThreadRole::DeviceWorker(DeviceKind::Other),
        ThreadRole::SerialInput,
        ThreadRole::SerialOutput,
        ThreadRole::RtcTimer,
        ThreadRole::VncAccept,
        ThreadRole::VncClient,
        ThreadRole::Vmm,
        ThreadRole::CliSignals,
        ThreadRole::CliStdin,
        ThreadRole::ConsoleOutput,
        ThreadRole::ConsoleInput,
        ThreadRole::ConsoleSocket,
        ThreadRole::ControlSocket,
        ThreadRole::ControlExecutor,
        ThreadRole::AgentHost,
        ThreadRole::StateSave,
        ThreadRole::Snapshot,
    ];

    #[test]
    fn every_role_compiles_under_every_action() {
        for role in ALL_ROLES {
            for action in [SeccompAction::Kill, SeccompAction::Log] {
                assert!(!compile(role, action).unwrap().is_empty(), "{role:?}");
            }
        }
    }

    #[test]
    fn no_role_creates_processes_threads_or_opens_files() {
        use libc::*;
        for role in ALL_ROLES {
            let rules = rules_for(role);
            for nr in [
                SYS_clone,
                SYS_clone3,
                SYS_fork,
                SYS_vfork,
                SYS_execve,
                SYS_execveat,
                SYS_open,
                SYS_openat,
                SYS_openat2,
                SYS_socket,
                SYS_connect,
                SYS_ptrace,
                SYS_mount,
                SYS_kill,
                SYS_prctl,
                SYS_seccomp,
            ] {
                // The exceptions: virtio-vsock's worker connects the guest's connections to
                // `<path>_<port>`, and the agent host connects to the VM's `vsock.sock`, Unix
                // sockets only (checked below).
                if matches!(
                    role,
                    ThreadRole::DeviceWorker(DeviceKind::Vsock) | ThreadRole::AgentHost
                ) && (nr == SYS_socket || nr == SYS_connect)
                {
                    continue;
                }
                // And the state saver creates the state file (and opens its directory to
                // sync it), and a running VM's snapshot the bundle's files: the two roles that
                // open files.
                if (role == ThreadRole::StateSave && nr == SYS_openat)
                    || (role == ThreadRole::Snapshot && (nr == SYS_openat || nr == SYS_open))
                {
                    continue;
                }
                assert!(!rules.allows(nr), "{role:?} allows syscall {nr}");
            }
            assert!(
                !rules.allows_any_arguments(SYS_socket),
                "{role:?}: socket unrestricted"
            );
            assert!(
                !rules.allows_any_arguments(SYS_ioctl),
                "{role:?}: ioctl unrestricted"
            );
            assert!(
                !rules.allows_any_arguments(SYS_madvise),
                "{role:?}: madvise unrestricted"
            );
            assert!(
                !rules.allows_any_arguments(SYS_fcntl),
                "{role:?}: fcntl unrestricted"
            );
        }
    }

    #[test]
    fn the_net_worker_sends_only_on_connected_sockets_and_binds_nothing() {
        use libc::*;
        let rules = rules_for(ThreadRole::DeviceWorker(DeviceKind::Net));
        assert!(rules.allows(SYS_sendto) && !rules.allows_any_arguments(SYS_sendto));
        assert!(rules.allows(SYS_recvfrom) && rules.allows(SYS_read) && rules.allows(SYS_writev));
        assert!(rules.allows(SYS_accept4));
        assert!(!rules.allows(SYS_ioctl) || !rules.allows_any_arguments(SYS_ioctl));
        let vcpu = rules_for(ThreadRole::Vcpu);
        assert!(vcpu.allows(SYS_ioctl) && !vcpu.allows_any_arguments(SYS_ioctl));
        for nr in [SYS_sendmsg, SYS_sendmmsg, SYS_bind, SYS_listen, SYS_connect] {
            assert!(!rules.allows(nr), "syscall {nr}");
        }
        assert_eq!(DeviceKind::from_worker_name("net"), DeviceKind::Net);
        assert_eq!(DeviceKind::from_worker_name("vsock"), DeviceKind::Vsock);
        assert_eq!(DeviceKind::from_worker_name("fs"), DeviceKind::VhostUser);
    }

    #[test]
    fn only_the_block_worker_uses_io_uring_and_only_vcpus_run_guests() {
        for role in ALL_ROLES {
            let rules = rules_for(role);
            assert_eq!(
                rules.allows(libc::SYS_io_uring_enter),
                role == ThreadRole::DeviceWorker(DeviceKind::Block),
                "{role:?}"
            );
            let runs = rules
                .syscalls
                .get(&libc::SYS_ioctl)
                .and_then(|r| r.as_ref())
                .is_some_and(|lists| lists.iter().any(|l| l.contains(&(1, kvm::KVM_RUN))));
            assert_eq!(runs, role == ThreadRole::Vcpu, "{role:?}");
        }
    }
}
