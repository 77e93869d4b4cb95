//! `exec`: a program on pipes or on a pseudo-terminal, its output streamed as frames, its
//! standard input fed from frames, signals and resizes passed on, and its exit reported.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use virtkit_agent_protocol::{ErrorKind, ExitStatus, Frame, FrameReader, FrameWriter, Stream};

use crate::users::{self, User};

/// The frames going back to the host, shared by the output threads and the waiter.
pub type Shared = Arc<Mutex<FrameWriter<UnixStream>>>;

/// How long output may still come after the program ended (from its children holding the
/// pipes) before the exit is sent anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How long a program whose host went away gets between SIGHUP and SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct ExecRequest {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub cols: u16,
    pub rows: u16,
}

pub fn send(out: &Shared, frame: &Frame) -> bool {
    out.lock().unwrap_or_else(|p| p.into_inner()).write(frame).is_ok()
}

fn fail(out: &Shared, kind: ErrorKind, text: String) {
    tracing::info!(%text, "exec refused");
    send(out, &Frame::Error(kind, text));
}

/// Runs the request on `conn`; returns when the exit (or an error) is sent.
pub fn exec(conn: UnixStream, req: ExecRequest) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let out: Shared = Arc::new(Mutex::new(FrameWriter::new(write_half)));
    let Some(program) = req.argv.first().cloned() else {
        return fail(&out, ErrorKind::BadRequest, "exec needs a command".into());
    };
    let me = users::current();
    let user = match &req.user {
        None => me.clone(),
        Some(who) => match users::lookup(who) {
            Some(u) => u,
            None => {
                return fail(
                    &out,
                    ErrorKind::NoSuchUser,
                    format!(
                    "there is no user `{who}` in the guest's /etc/passwd; give an existing user with --user"
                ),
                )
            }
        },
    };
    if user.uid != me.uid && me.uid != 0 {
        return fail(
            &out,
            ErrorKind::Other,
            format!(
                "the agent runs as `{}`, not root, so it cannot run commands as `{}`; run it as root",
                me.name, user.name
            ),
        );
    }
    let cwd = req.cwd.clone().unwrap_or_else(|| user.home.clone());
    let cwd = if req.cwd.is_none() && !std::path::Path::new(&cwd).is_dir() {
        "/".to_owned()
    } else {
        cwd
    };
    if !std::path::Path::new(&cwd).is_dir() {
        return fail(
            &out,
            ErrorKind::NoSuchDirectory,
            format!("the working directory {cwd} does not exist in the guest"),
        );
    }
    let mut cmd = Command::new(&program);
    cmd.args(&req.argv[1..]).current_dir(&cwd).env_clear();
    for (k, v) in base_env(&user, req.tty) {
        cmd.env(k, v);
    }
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    if user.uid != me.uid {
        cmd.uid(user.uid).gid(user.gid);
    }
    // A command starts with every signal's default action, as a login shell's would: the
    // agent may have been started with some ignored (a background job of a non-interactive
    // shell ignores SIGINT and SIGQUIT), which its children would inherit, and a shell cannot
    // trap a signal that was ignored when it started, so `exec` could not interrupt them.
    // SAFETY: the closure runs in the forked child before exec and calls only sigaction(2)
    // through signal(3) (async-signal-safe), allocating nothing.
    unsafe {
        cmd.pre_exec(|| {
            for signal in 1..32 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
    let result = if req.tty {
        run_pty(cmd, &conn, &out, &req)
    } else {
        run_pipes(cmd, &conn, &out)
    };
    if let Err(e) = result {
        let (kind, text) = match e.kind() {
            std::io::ErrorKind::NotFound => (
                ErrorKind::NotFound,
                format!(
                    "there is no command `{program}` in the guest (searched PATH {})",
                    path_of(&req.env)
                ),
            ),
            std::io::ErrorKind::PermissionDenied => (
                ErrorKind::NotExecutable,
                format!("`{program}` cannot be run in the guest: permission denied"),
            ),
            _ => (
                ErrorKind::Other,
                format!("cannot run `{program}` in the guest: {e}"),
            ),
        };
        fail(&out, kind, text);
    }
}

fn path_of(env: &[(String, String)]) -> String {
    env.iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| DEFAULT_PATH.into())
}

fn base_env(user: &User, tty: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), user.home.clone()),
        ("USER".to_owned(), user.name.clone()),
        ("LOGNAME".to_owned(), user.name.clone()),
        ("SHELL".to_owned(), user.shell.clone()),
    ];
    if tty {
        env.push(("TERM".to_owned(), "xterm-256color".to_owned()));
    }
    env
}

/// Copies `from` into frames made by `make` until it ends; tells `done` when it has.
fn pump(
    mut from: impl Read + Send + 'static,
    out: Shared,
    make: fn(Vec<u8>) -> Frame,
    done: std::sync::mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !send(&out, &make(buf[..n].to_vec())) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: a pty whose last slave descriptor closed.
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
}

/// What the host asked for while the program runs.
enum Input {
    Stdin(Vec<u8>),
    Eof,
    Resize(u16, u16),
    Signal(i32),
}

/// Reads the host's frames until the connection ends; `finished` says the exit was sent (the
/// host then closes, which is no hang-up). A host that goes away earlier hangs the program up.
fn read_input(conn: &UnixStream, pgid: Pid, finished: Arc<AtomicBool>) -> Receiver<Input> {
    let (tx, rx) = channel();
    let Ok(read_half) = conn.try_clone() else {
        return rx;
    };
    std::thread::spawn(move || {
        let mut frames = FrameReader::new(read_half);
        loop {
            let input = match frames.read() {
                Ok(Some(Frame::Stdin(b))) => Input::Stdin(b),
                Ok(Some(Frame::Eof(Stream::Stdin))) => Input::Eof,
                Ok(Some(Frame::Resize { cols, rows })) => Input::Resize(cols, rows),
                Ok(Some(Frame::Signal(n))) => Input::Signal(n),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    if !finished.load(Ordering::SeqCst) {
                        hang_up(pgid);
                    }
                    return;
                }
            };
            if tx.send(input).is_err() {
                return;
            }
        }
    });
    rx
}

/// The host is gone: SIGHUP the program's process group, SIGKILL it after a grace period.
fn hang_up(pgid: Pid) {
    tracing::info!(
        pgid = pgid.as_raw_nonzero().get(),
        "the host went away; hanging the program up"
    );
    let _ = rustix::process::kill_process_group(pgid, Signal::HUP);
    let _ = rustix::process::kill_process_group(pgid, Signal::CONT);
    std::thread::spawn(move || {
        std::thread::sleep(HANGUP_GRACE);
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    });
}

fn signal_group(pgid: Pid, n: i32) {
    if let Some(sig) = Signal::from_named_raw(n) {
        let _ = rustix::process::kill_process_group(pgid, sig);
    }
}

fn pid_of(child: &Child) -> Pid {
    // A child's PID is never 0.
    Pid::from_raw(child.id() as i32).unwrap_or(Pid::INIT)
}

/// Waits for the program, lets its output drain, sends the exit.
fn finish(mut child: Child, out: &Shared, finished: &AtomicBool, drained: Receiver<()>, streams: usize) {
    let status = child.wait();
    let deadline = std::time::Instant::now() + DRAIN_AFTER_EXIT;
    for _ in 0..streams {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if drained.recv_timeout(left).is_err() {
            break;
        }
    }
    let exit = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => ExitStatus::Code(c),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Code(255),
        },
        Err(_) => ExitStatus::Code(255),
    };
    finished.store(true, Ordering::SeqCst);
    tracing::debug!(?exit, "exec done");
    send(out, &Frame::Exit(exit));
}

fn run_pipes(mut cmd: Command, conn: &UnixStream, out: &Shared) -> std::io::Result<()> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn()?;
    drop(cmd);
    let pgid = pid_of(&child);
    let (done_tx, drained) = channel();
    if let Some(o) = child.stdout.take() {
        pump(o, out.clone(), Frame::Stdout, done_tx.clone());
    }
    if let Some(e) = child.stderr.take() {
        pump(e, out.clone(), Frame::Stderr, done_tx.clone());
    }
    drop(done_tx);
    let finished = Arc::new(AtomicBool::new(false));
    let input = read_input(conn, pgid, finished.clone());
    let stdin = child.stdin.take();
    std::thread::spawn(move || {
        let mut stdin = stdin;
        for i in input {
            match i {
                Input::Stdin(b) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&b).is_err() {
                            stdin = None;
                        }
                    }
                }
                Input::Eof => stdin = None,
                Input::Resize(..) => {}
                Input::Signal(n) => signal_group(pgid, n),
            }
        }
    });
    finish(child, out, &finished, drained, 2);
    Ok(())
}

fn open_pty(cols: u16, rows: u16) -> std::io::Result<(OwnedFd, OwnedFd, String)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    set_size(&master, cols, rows);
    Ok((master, slave, name.to_string_lossy().into_owned()))
}

fn set_size(fd: impl AsFd, cols: u16, rows: u16) {
    if cols == 0 || rows == 0 {
        return;
    }
    let _ = rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    );
}

fn run_pty(mut cmd: Command, conn: &UnixStream, out: &Shared, req: &ExecRequest) -> std::io::Result<()> {
    let (master, slave, name) = open_pty(req.cols, req.rows)?;
    tracing::debug!(pty = %name, "exec on a pty");
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2) and
    // ioctl(2) (async-signal-safe), allocating nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The slave's last copies in this process: the pty ends when the program's do.
    drop(cmd);
    let pgid = pid_of(&child);
    let reader = std::fs::File::from(master.try_clone()?);
    let (done_tx, drained) = channel();
    pump(reader, out.clone(), Frame::Stdout, done_tx);
    let finished = Arc::new(AtomicBool::new(false));
    let input = read_input(conn, pgid, finished.clone());
    let mut writer = std::fs::File::from(master);
    std::thread::spawn(move || {
        for i in input {
            match i {
                Input::Stdin(b) => {
                    let _ = writer.write_all(&b);
                }
                // The terminal's end-of-file character (^D in the default line discipline).
                Input::Eof => {
                    let _ = writer.write_all(&[4]);
                }
                Input::Resize(c, r) => set_size(&writer, c, r),
                Input::Signal(n) => signal_group(pgid, n),
            }
        }
    });
    finish(child, out, &finished, drained, 1);
    Ok(())
}
