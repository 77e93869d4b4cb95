//! Host helper programs that live and die with the VM process (passt now, virtiofsd later).
//!
//! A helper started by [`HelperCommand::spawn`]:
//! - dies with the VM process, even on `kill -9` of it: the child asks for `SIGKILL` on its
//!   parent's death (`PR_SET_PDEATHSIG`) and then checks that its parent is still the process
//!   that forked it, closing the window where the VM died between `fork` and `prctl`;
//! - is forked by the sandbox's spawner thread (see `spawn.rs`), because the kernel sends the
//!   death signal when the *thread* that forked exits, not the process: a helper forked by a
//!   short-lived thread (a control request's) would be killed with that thread. The spawner is
//!   never stopped, so it lives exactly as long as the process;
//! - keeps only standard input/output/error and the descriptors it is given, at the numbers it
//!   is told (every other descriptor is marked close-on-exec in the child, including any a C
//!   library opened without `O_CLOEXEC`);
//! - runs in a session (and process group) of its own, so a terminal's Ctrl-C goes to the VM
//!   process, which then stops the helper in order, not straight to the helper;
//! - writes its standard error to a given file (a bundle's `passt.log`) or nowhere.
//!
//! Dropping the [`HelperProcess`] stops it: `SIGTERM`, then `SIGKILL` after
//! [`HelperProcess::GRACE`], then reaps it.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::spawn::run_on_spawner;

/// Why a helper did not start.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The program is not installed (not found on `PATH`, or the path does not exist).
    #[error("`{}` is not installed or not on PATH", program.display())]
    NotFound { program: PathBuf },
    /// A descriptor was to be passed as 0, 1 or 2, which are the helper's standard streams.
    #[error("descriptor number {target} is a standard stream: pass helper descriptors as 3 or above")]
    StandardStream { target: RawFd },
    /// The same target number was given twice.
    #[error("descriptor number {target} is passed twice: give each passed descriptor its own number")]
    DuplicateTarget { target: RawFd },
    /// The log file could not be opened.
    #[error("cannot open the helper's log file {}: {source}: check that its directory exists and is writable", path.display())]
    Log { path: PathBuf, source: io::Error },
    /// `fork`/`exec` failed for another reason.
    #[error("cannot start `{}`: {source}", program.display())]
    Spawn { program: PathBuf, source: io::Error },
}

/// Where a helper's standard error goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperLog {
    /// Discarded.
    Null,
    /// Appended to this file (created if missing).
    File(PathBuf),
}

/// What to run: the program, its arguments, the descriptors it gets and where it logs.
#[derive(Debug)]
pub struct HelperCommand {
    program: PathBuf,
    args: Vec<OsString>,
    fds: Vec<(OwnedFd, RawFd)>,
    log: HelperLog,
}

impl HelperCommand {
    /// Runs `program` (a name looked up on `PATH`, or a path).
    pub fn new(program: impl Into<PathBuf>) -> HelperCommand {
        HelperCommand {
            program: program.into(),
            args: Vec::new(),
            fds: Vec::new(),
            log: HelperLog::Null,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> HelperCommand {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> HelperCommand {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Gives the helper `fd` as descriptor number `target` (3 or above). The parent's copy is
    /// closed once the helper has started.
    pub fn pass_fd(mut self, fd: OwnedFd, target: RawFd) -> HelperCommand {
        self.fds.push((fd, target));
        self
    }

    /// Where the helper's standard error goes (default [`HelperLog::Null`]).
    pub fn log(mut self, log: HelperLog) -> HelperCommand {
        self.log = log;
        self
    }

    /// The program as given.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments as given.
    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    /// Starts the helper from the sandbox's spawner thread (see the module documentation).
    pub fn spawn(self) -> Result<HelperProcess, HelperError> {
        for (i, (_, target)) in self.fds.iter().enumerate() {
            if *target <= 2 {
                return Err(HelperError::StandardStream { target: *target });
            }
            if self.fds[..i].iter().any(|(_, t)| t == target) {
                return Err(HelperError::DuplicateTarget { target: *target });
            }
        }
        if !is_runnable(&self.program) {
            return Err(HelperError::NotFound {
                program: self.program,
            });
        }
        let stderr = match &self.log {
            HelperLog::Null => Stdio::null(),
            HelperLog::File(path) => Stdio::from(open_log(path)?),
        };
        let program = self.program.clone();
        let child = run_on_spawner(move || start(self, stderr))
            .and_then(|started| started)
            .map_err(|source| HelperError::Spawn {
                program: program.clone(),
                source,
            })?;
        Ok(HelperProcess {
            child: Some(child),
            program,
        })
    }
}

fn open_log(path: &Path) -> Result<File, HelperError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| HelperError::Log {
            path: path.to_path_buf(),
            source,
        })
}

/// Where `program` is: a path as is, a bare name the first file of that name on `PATH`. The
/// launchers check it before forking, so that a missing program is [`HelperError::NotFound`]
/// (which callers turn into "install it" advice) rather than an `exec` error; `doctor` and
/// `create` ask it too.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn is_runnable(program: &Path) -> bool {
    find_program(program).is_some()
}

/// Runs on the spawner thread: forks and execs the helper.
fn start(cmd: HelperCommand, stderr: Stdio) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // Everything the child needs is computed here: between fork and exec it may not allocate.
    let moves: Vec<(RawFd, RawFd)> = cmd.fds.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
    let above_targets = moves.iter().map(|(_, t)| *t).max().unwrap_or(2) + 1;
    let mut copies: Vec<RawFd> = vec![-1; moves.len()];
    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // The closure runs in the child between fork and exec, where only async-signal-safe calls
    // are allowed: prctl, getppid, setsid, fcntl, syscall(close_range) and dup2 are plain system
    // calls; it writes only into `copies`, whose length was fixed before the fork (no
    // allocation), and builds errors with `io::Error::last_os_error`, which does not allocate.
    // The descriptors in `moves` stay open in the parent until `spawn` returns (they are owned
    // by `cmd`, dropped after this function), so the child's copies refer to them.
    // SAFETY: async-signal-safe system calls only, no allocation, on descriptors `cmd` keeps open.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The VM process may have died before the prctl: then nobody will kill us later.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Copy every passed descriptor above all targets first, so that moving one to its
            // target never overwrites another not yet moved.
            for (copy, (fd, _)) in copies.iter_mut().zip(&moves) {
                *copy = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above_targets);
                if *copy < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Everything above stderr closes at exec, whoever opened it and however. Kernels
            // before 5.11 lack CLOSE_RANGE_CLOEXEC: there std's close-on-exec default remains.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            // dup2 clears close-on-exec on the new descriptor: these are the ones that stay.
            for (copy, (_, target)) in copies.iter().zip(&moves) {
                if libc::dup2(*copy, *target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn();
    drop(cmd);
    child
}

/// A running helper. Dropping it stops and reaps it.
#[derive(Debug)]
pub struct HelperProcess {
    child: Option<Child>,
    program: PathBuf,
}

impl HelperProcess {
    /// How long a helper has to exit after `SIGTERM` before it gets `SIGKILL`.
    pub const GRACE: Duration = Duration::from_millis(500);

    /// The helper's process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The program it runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Err(io::Error::other("the helper was already stopped")),
        }
    }

    /// Stops it (`SIGTERM`, `SIGKILL` after [`Self::GRACE`]) and returns how it ended.
    pub fn stop(mut self) -> io::Result<ExitStatus> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other("the helper was already stopped"));
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        signal_group(&child, libc::SIGTERM);
        let deadline = Instant::now() + Self::GRACE;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        signal_group(&child, libc::SIGKILL);
        child.wait()
    }
}

/// Signals the helper's process group (its own, see `setsid` above), so that any process the
/// helper started goes too. The child is not reaped yet, so its id cannot have been reused.
fn signal_group(child: &Child, signal: libc::c_int) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill only sends a signal; `-pid` names the process group the child leads (it
    // called setsid), which contains no process of ours.
    let sent = unsafe { libc::kill(-pid, signal) };
    if sent != 0 {
        // The child may have failed before setsid (it is then about to exit): signal it alone.
        // SAFETY: as above, for the child's own id.
        unsafe { libc::kill(pid, signal) };
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.stop_inner() {
                tracing::warn!("cannot stop helper {}: {e}", self.program.display());
            }
        }
    }
}
