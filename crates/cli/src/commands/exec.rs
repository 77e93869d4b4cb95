//! `virtkit exec [-i] [-t] NAME -- CMD...`: a command in the guest through its agent, its
//! output streamed here, standard input streamed there (with `-i`, or when it is not a
//! terminal), on a pseudo-terminal with `-t` (this terminal raw, its size followed). The
//! command's exit code is ours (128+N for signal N); see `exit.rs` for virtkit's own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};
use virtkit_agent_protocol::{ExitStatus, Frame, FrameWriter, Request, Stream};
use virtkit_manager::agent::AgentError;
use virtkit_manager::bundle::{Bundle, STATE_FILE};

use crate::commands::agent::{agent_error, connect, EXIT_DISCONNECTED, EXIT_EXEC_FAILED};
use crate::commands::vms::state_of;
use crate::exit::CliError;
use crate::terminal::{stdin_is_terminal, RawMode};

#[derive(Args)]
pub struct ExecArgs {
    /// Stream standard input to the command (always done when standard input is not a terminal).
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a pseudo-terminal; this terminal goes raw and its size follows.
    #[arg(short, long)]
    pub tty: bool,
    /// Run as this user of the guest (a name or uid from its /etc/passwd).
    #[arg(short, long)]
    pub user: Option<String>,
    /// The working directory in the guest [default: the user's home].
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// An environment variable for the command, KEY=VALUE; repeatable.
    #[arg(short, long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    pub name: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

type Shared = Arc<Mutex<FrameWriter<UnixStream>>>;

fn send(w: &Shared, frame: &Frame) -> bool {
    w.lock().unwrap_or_else(|p| p.into_inner()).write(frame).is_ok()
}

fn terminal_size() -> (u16, u16) {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .map(|s| (s.ws_col, s.ws_row))
        .unwrap_or((0, 0))
}

/// Copies standard input into `stdin` frames, then `eof`.
fn forward_stdin(w: Shared) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !send(&w, &Frame::Stdin(buf[..n].to_vec())) {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        send(&w, &Frame::Eof(Stream::Stdin));
    });
}

/// SIGWINCH becomes `resize` (with a tty); SIGINT, SIGTERM and SIGHUP go to the command
/// (without one: on a tty, Ctrl-C is a byte the guest's terminal turns into SIGINT).
fn forward_signals(w: Shared, tty: bool) -> Result<(), CliError> {
    let list: &[i32] = if tty {
        &[SIGWINCH, SIGTERM, SIGHUP]
    } else {
        &[SIGINT, SIGTERM, SIGHUP]
    };
    let mut signals = signal_hook::iterator::Signals::new(list)
        .map_err(|e| CliError::with_chain("cannot watch signals", &e))?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let frame = if sig == SIGWINCH {
                let (cols, rows) = terminal_size();
                Frame::Resize { cols, rows }
            } else {
                // The guest's numbers for these are the same on Linux.
                Frame::Signal(sig)
            };
            if !send(&w, &frame) {
                return;
            }
        }
    });
    Ok(())
}

/// How long a client whose connection ended looks whether the VM was suspended: the suspend
/// stops the VM (which ends its connections) once the state file is in place, and its process
/// ends within a few seconds of that.
const SUSPEND_LOOK: Duration = Duration::from_secs(3);

/// The connection to the agent ended before the command did: say whether the VM was suspended
/// (vsock connections are not saved, so a command's connection never survives a suspend; the
/// agent hangs the command up when the VM resumes) or the guest or its agent went away.
fn disconnected(b: &Bundle, name: &str, program: &str) -> CliError {
    let deadline = Instant::now() + SUSPEND_LOOK;
    loop {
        if b.file(STATE_FILE).exists() {
            return CliError::with_code(
                format!(
                    "the VM `{name}` was suspended while `{program}` ran: a command's connection to the guest agent \
                     does not survive a suspend, so its output ends here (in the guest it is hung up when the VM \
                     resumes); `virtkit run {name}` resumes the VM; exit code {EXIT_DISCONNECTED}"
                ),
                EXIT_DISCONNECTED,
            );
        }
        // No suspend under way: the VM stopped, or runs on while its agent went away.
        if !b.is_running() || Instant::now() >= deadline || state_of(b) == "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    CliError::with_code(
        format!(
            "the guest agent of `{name}` disconnected before `{program}` ended (the guest may have shut down or the \
             agent stopped); exit code {EXIT_DISCONNECTED}"
        ),
        EXIT_DISCONNECTED,
    )
}

pub fn run(args: &ExecArgs) -> Result<u8, CliError> {
    let (b, client) = connect(&args.name, EXIT_EXEC_FAILED)?;
    let tty = args.tty;
    let (cols, rows) = if tty { terminal_size() } else { (0, 0) };
    let mut env = args.env.clone();
    if tty {
        if let Ok(term) = std::env::var("TERM") {
            env.insert(0, ("TERM".into(), term));
        }
    }
    let request = Request::Exec {
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone(),
        user: args.user.clone(),
        tty,
        cols,
        rows,
    };
    let conn = client.open(&request).map_err(|e| agent_error(&b, e, true))?;
    let mut reader = conn.reader;
    let writer: Shared = Arc::new(Mutex::new(conn.writer));

    let terminal = stdin_is_terminal();
    let mut raw = None;
    if tty && terminal {
        raw = Some(
            RawMode::enter().map_err(|e| CliError::with_chain("cannot put the terminal in raw mode", &e))?,
        );
    }
    if args.interactive || !terminal {
        forward_stdin(writer.clone());
    } else if !tty {
        send(&writer, &Frame::Eof(Stream::Stdin));
    }
    // (A pty without input gets no end of input either: that would type ^D into it.)
    forward_signals(writer.clone(), tty)?;

    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let result = loop {
        match reader.read() {
            Ok(Some(Frame::Stdout(bytes))) => {
                let _ = stdout.write_all(&bytes).and_then(|_| stdout.flush());
            }
            Ok(Some(Frame::Stderr(bytes))) => {
                let _ = stderr.write_all(&bytes).and_then(|_| stderr.flush());
            }
            Ok(Some(Frame::Exit(ExitStatus::Code(c)))) => break Ok((c & 0xff) as u8),
            Ok(Some(Frame::Exit(ExitStatus::Signal(s)))) => break Ok((128 + s).clamp(0, 255) as u8),
            Ok(Some(Frame::Error(kind, text))) => {
                break Err(agent_error(&b, AgentError::Refused(kind, text), true))
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break Err(disconnected(&b, &args.name, &args.command[0])),
        }
    };
    drop(raw);
    result
}
