//! The VM's teardown, moved into a process of its own.
//!
//! KVM tears a VM down when the last reference to it goes: the last `close` of its file, or the
//! exit of the process that held it. The teardown waits for SRCU grace periods and stops the
//! VM's kernel threads (`kvm-nx-lpage-recovery`): 15-25 ms on this host, in which the closing
//! thread, or the exiting process, does nothing else (`strace -f` of `virtkit run`: the `close`
//! of the VM's descriptor took 23 ms, the last system call before `exit_group`). So `virtkit
//! run` returned 20 ms after its guest had stopped, and a library user's `stop` waited as long.
//!
//! A keeper process, cloned once the VM runs ([`crate::Vm::start_teardown_keeper`], which
//! `Machine::start` calls), holds a second reference to the VM until the VMM has let go of its own; then the keeper exits, and the teardown runs in the keeper's exit,
//! beside the VMM or after the VMM has exited.
//!
//! - The keeper shares the VMM's memory (`CLONE_VM`: no page tables copied) and gets a copy of
//!   its descriptor table, in which it closes everything but the VM's descriptor and the read
//!   end of a pipe: no lock, socket, TAP or terminal stays open in it. (Until it has run those
//!   first calls, microseconds after the clone, it holds copies of what was open then.)
//! - It then installs its own seccomp filter, `read`, `close` and `exit` only, and reads the
//!   pipe. The read ends when the VMM closes the write end: by dropping the [`crate::Vm`], or
//!   by exiting, however it exits. The keeper then closes the VM itself, with the VMM's memory
//!   still its own (KVM unmaps from it the pages it mapped for the VM), and exits.
//! - All its signals are blocked and its exit signals nobody (exit signal 0): a program that
//!   waits for its own children never sees it. The VMM reaps it when it starts its next keeper;
//!   once the VMM has exited, init (or the nearest subreaper) does.
//! - If it cannot be created (a process limit, say), or any of its steps fails, the VM is torn
//!   down in the VMM as before.
//!
//! What shows: one more process per VM (against `RLIMIT_NPROC`), whose command line,
//! environment and RSS in `/proc` are the VMM's (the memory is shared), and, in a process that
//! goes on after its last VM, one exited keeper until the process starts another VM or exits.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{addr_of_mut, NonNull};
use std::sync::Mutex;

/// The keeper's stack: it makes a dozen system calls and returns, so a few KiB do.
const STACK_SIZE: usize = 16 * 1024;

/// The name the keeper shows in `ps` (at most 15 bytes).
const KEEPER_NAME: &[u8] = b"vk-vm-teardown\0";

/// What the keeper reads and runs on: a heap block in the VMM's memory, which the keeper
/// shares, freed only once the keeper has been reaped.
#[repr(C, align(16))]
struct KeeperMemory {
    vm_fd: RawFd,
    /// The pipe's ends: the keeper keeps the read end and closes its copy of the write end.
    read_end: RawFd,
    write_end: RawFd,
    stack: [MaybeUninit<u8>; STACK_SIZE],
}

/// A [`KeeperMemory`] handed out as a raw pointer: the keeper writes its stack while the VMM
/// holds it, so it is never behind a `Box` (a unique reference) while the keeper may run.
struct KeeperBlock(NonNull<KeeperMemory>);

// SAFETY: the block is plain memory, owned by whoever holds the `KeeperBlock`; the VMM's side
// never reads or writes it through a shared reference, and only frees it (by value), after the
// keeper is gone.
unsafe impl Send for KeeperBlock {}
// SAFETY: as above: a `&KeeperBlock` gives access to nothing but the pointer's value.
unsafe impl Sync for KeeperBlock {}

impl std::fmt::Debug for KeeperBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeeperBlock({:p})", self.0)
    }
}

impl KeeperBlock {
    fn new(vm_fd: RawFd, read_end: RawFd, write_end: RawFd) -> KeeperBlock {
        let mut memory = Box::<KeeperMemory>::new_uninit();
        let p = memory.as_mut_ptr();
        // SAFETY: `p` points to the block just allocated; the three descriptors are written,
        // and the stack is `MaybeUninit`, so the whole value is initialised.
        let memory = unsafe {
            addr_of_mut!((*p).vm_fd).write(vm_fd);
            addr_of_mut!((*p).read_end).write(read_end);
            addr_of_mut!((*p).write_end).write(write_end);
            memory.assume_init()
        };
        KeeperBlock(NonNull::from(Box::leak(memory)))
    }

    /// Where the keeper's stack starts: the end of its block, aligned down to 16 bytes.
    fn stack_top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the stack array, inside the same allocation.
        let end = unsafe {
            addr_of_mut!((*self.0.as_ptr()).stack)
                .cast::<u8>()
                .add(STACK_SIZE)
        };
        end.wrapping_sub(end as usize % 16).cast()
    }

    /// Frees the block.
    ///
    /// # Safety
    /// No keeper runs on it any more: it was never started, or it has been reaped.
    unsafe fn free(self) {
        // SAFETY: the pointer came from `Box::leak` in `new` and nobody else uses it now.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// Keepers told to exit and not yet reaped, with the memory they may still be running on.
static EXITING: Mutex<Vec<(libc::pid_t, KeeperBlock)>> = Mutex::new(Vec::new());

/// A keeper process holding a second reference to a VM (see the module's documentation).
/// Dropping it lets the keeper exit; drop it after the VMM's own reference to the VM.
#[derive(Debug)]
pub(crate) struct TeardownKeeper {
    pid: libc::pid_t,
    /// The pipe's write end: closing it wakes the keeper.
    wake: Option<OwnedFd>,
    block: Option<KeeperBlock>,
}

impl TeardownKeeper {
    /// Starts a keeper holding `vm_fd`, or `None` (said at debug level) if it cannot be
    /// started. Must be called from a thread without a seccomp filter: no thread role allows
    /// `clone` (nor `wait4`, with which this reaps the keepers of earlier VMs), and none creates
    /// VMs either: `KVM_CREATE_VM` is in no role's list.
    pub(crate) fn start(vm_fd: RawFd) -> Option<TeardownKeeper> {
        reap_exited();
        let mut ends = [0 as RawFd; 2];
        // SAFETY: `pipe2` writes two descriptors into `ends`, which has room for them.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            tracing::debug!("no teardown keeper: pipe2: {}", std::io::Error::last_os_error());
            return None;
        }
        // SAFETY: `pipe2` succeeded: both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        let block = KeeperBlock::new(vm_fd, read.as_raw_fd(), write.as_raw_fd());
        // `CLONE_VM` without `CLONE_THREAD` makes a process that shares our memory and gets a
        // copy of our descriptor table; exit signal 0 sends no SIGCHLD. Every signal is blocked
        // across the `clone` (the raw system call: glibc's masks leave out its own two), so the
        // keeper starts with all of them blocked; this thread's own mask is put back right
        // after.
        // SAFETY: the masks are plain values that outlive the calls; the keeper runs
        // `keeper_main` on `block`'s stack with `block` as its argument, and the block stays
        // allocated until the keeper is reaped (`reap_exited`).
        let pid = unsafe {
            let all: u64 = !0;
            let mut previous: u64 = 0;
            let set_mask = |new: *const u64, old: *mut u64| {
                libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, new, old, 8usize)
            };
            set_mask(&all, &mut previous);
            let pid = libc::clone(
                keeper_main,
                block.stack_top(),
                libc::CLONE_VM,
                block.0.as_ptr().cast(),
            );
            set_mask(&previous, std::ptr::null_mut());
            pid
        };
        // Our copy of the read end: the keeper has its own.
        drop(read);
        if pid < 0 {
            tracing::debug!("no teardown keeper: clone: {}", std::io::Error::last_os_error());
            // SAFETY: no keeper was started on it.
            unsafe { block.free() };
            return None;
        }
        Some(TeardownKeeper {
            pid,
            wake: Some(write),
            block: Some(block),
        })
    }

    /// The keeper's process ID.
    #[cfg(test)]
    pub(crate) fn pid(&self) -> libc::pid_t {
        self.pid
    }
}

impl Drop for TeardownKeeper {
    /// Wakes the keeper, which then closes the VM and exits. No system call but `close`: this
    /// may run on a filtered thread (the last holder of the VM), where `wait4` would kill the
    /// process, so the keeper is reaped by the next [`TeardownKeeper::start`].
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(block) = self.block.take() {
            lock_exiting().push((self.pid, block));
        }
    }
}

fn lock_exiting() -> std::sync::MutexGuard<'static, Vec<(libc::pid_t, KeeperBlock)>> {
    EXITING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reaps the keepers that have exited and frees their memory; the others wait for a later call.
fn reap_exited() {
    let mut exiting = lock_exiting();
    let mut still = Vec::with_capacity(exiting.len());
    for (pid, block) in exiting.drain(..) {
        // SAFETY: waitpid with WNOHANG only reads the child's status; a null status pointer
        // is allowed. `__WCLONE` is what waits for a child whose exit signal is not SIGCHLD.
        let reaped = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG | libc::__WCLONE) };
        if reaped == 0 {
            still.push((pid, block));
        } else {
            // Its pid: reaped here. -1 (ECHILD): another waiter (`waitpid(-1, __WALL)`) reaped
            // it. Either way it has exited.
            // SAFETY: the keeper has exited, so nothing runs on the block.
            unsafe { block.free() };
        }
    }
    *exiting = still;
}

/// The keeper's only system calls, by number: `read` (the pipe), `close` (the VM, then its own
/// exit), `exit`. A BPF program for seccomp: the architecture must be x86-64 (an x32 or i386
/// call is killed), then the number one of the three; anything else kills the keeper.
static KEEPER_FILTER: [libc::sock_filter; 8] = {
    const fn op(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const LOAD: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    const IS: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    const RET: u32 = libc::BPF_RET | libc::BPF_K;
    [
        op(LOAD, 0, 0, 4), // seccomp_data.arch
        op(IS, 0, 4, AUDIT_ARCH_X86_64),
        op(LOAD, 0, 0, 0), // seccomp_data.nr
        op(IS, 3, 0, libc::SYS_read as u32),
        op(IS, 2, 0, libc::SYS_close as u32),
        op(IS, 1, 0, libc::SYS_exit as u32),
        op(RET, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(RET, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
};

/// The keeper: on its own stack, in memory shared with the VMM, with the VMM's thread pointer.
/// It makes raw system calls only: no allocation, no lock, no `errno` (which is the VMM's
/// thread's), nothing of the VMM's memory but its [`KeeperMemory`] and two statics. Any step
/// that fails ends it at once: its exit then lets go of everything it holds, and the VM is torn
/// down by the VMM as before.
extern "C" fn keeper_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `KeeperMemory` that `start` allocated; it outlives this process
    // (freed only after the keeper is reaped), and nobody writes its descriptors after the
    // clone.
    let (vm_fd, read_end, write_end) = unsafe {
        let memory = arg as *const KeeperMemory;
        ((*memory).vm_fd, (*memory).read_end, (*memory).write_end)
    };
    // SAFETY: each call is a system call on plain integers and, for `prctl`, `seccomp` and
    // `read`, pointers to statics, a local program header and a local byte, all valid for the
    // call. None touches the VMM's memory.
    unsafe {
        // The write end first, by itself: a keeper that kept it would never see its pipe close.
        if raw_syscall(libc::SYS_close, [write_end as u64, 0, 0, 0, 0]) != 0 {
            return 0;
        }
        // Every other descriptor but the VM's and the read end (close_range's last argument 0:
        // close them now; a kernel without close_range, before 5.9, ends the keeper here).
        let (low, high) = (vm_fd.min(read_end) as u64, vm_fd.max(read_end) as u64);
        let mut ranges = [
            (0, low.wrapping_sub(1)),
            (low + 1, high.wrapping_sub(1)),
            (high + 1, u32::MAX as u64),
        ];
        if low == 0 {
            ranges[0] = (1, 0);
        }
        for (first, last) in ranges {
            if first <= last && raw_syscall(libc::SYS_close_range, [first, last, 0, 0, 0]) != 0 {
                return 0;
            }
        }
        raw_syscall(
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, KEEPER_NAME.as_ptr() as u64, 0, 0, 0],
        );
        if !install_keeper_filter() {
            return 0;
        }
        let mut byte = 0u8;
        // Until the write end closes (0) or the pipe fails; nothing writes to it. With every
        // signal blocked no EINTR comes, but it would only mean reading again.
        while raw_syscall(
            libc::SYS_read,
            [read_end as u64, &mut byte as *mut u8 as u64, 1, 0, 0],
        ) == -(libc::EINTR as i64)
        {}
        // The teardown itself, here, with this process's memory (the VMM's) current: KVM then
        // unmaps the pages it mapped into it for the VM. At exit it would run after the memory
        // is let go, and those pages would stay mapped in a VMM that goes on.
        raw_syscall(libc::SYS_close, [vm_fd as u64, 0, 0, 0, 0]);
    }
    // glibc's clone then makes the `exit` system call, which the filter allows.
    0
}

/// Sets `no_new_privs` and installs [`KEEPER_FILTER`] on the calling thread with raw system
/// calls only; whether both took.
///
/// # Safety
/// None beyond the caller's: it changes only the calling thread's seccomp state, reading the
/// static filter through a program header on its own stack.
unsafe fn install_keeper_filter() -> bool {
    let program = libc::sock_fprog {
        len: KEEPER_FILTER.len() as u16,
        filter: KEEPER_FILTER.as_ptr().cast_mut(),
    };
    // SAFETY: prctl and seccomp on plain integers and a pointer to `program`, valid for the
    // call.
    unsafe {
        raw_syscall(libc::SYS_prctl, [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0]) == 0
            && raw_syscall(
                libc::SYS_seccomp,
                [
                    libc::SECCOMP_SET_MODE_FILTER as u64,
                    0,
                    &program as *const _ as u64,
                    0,
                    0,
                ],
            ) == 0
    }
}

/// A system call with up to five arguments, its result as the kernel returns it (a negative
/// errno on failure): `libc::syscall` would store the error in `errno`, which in the keeper is
/// the VMM's thread's. Unused arguments are passed as 0 (`prctl` checks some of them).
///
/// # Safety
/// The arguments must be valid for system call `nr`.
unsafe fn raw_syscall(nr: libc::c_long, args: [u64; 5]) -> i64 {
    let result: i64;
    // SAFETY: the `syscall` instruction takes its number in rax and arguments in rdi, rsi,
    // rdx, r10 and r8, returns in rax and clobbers rcx and r11; it uses no stack. The caller
    // vouches for the arguments.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => result,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result
}

#[cfg(test)]
mod tests;
