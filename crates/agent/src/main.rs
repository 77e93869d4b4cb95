//! `virtkit-agent`: virtkit's guest agent. It listens on vsock port 1024 (or a Unix socket,
//! for tests), serves each connection on its own thread (one operation per connection: the
//! protocol of `virtkit-agent-protocol`, docs/AGENT.md), and says hello to the host (CID 2,
//! port 1025) when it starts, retrying with backoff until the host takes it.

mod exec;
mod ops;
mod users;
mod vsock;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use virtkit_agent_protocol::{
    read_header_peeking, ErrorKind, Frame, FrameWriter, Hello, Request, AGENT_PORT, HELLO_PORT,
};

const USAGE: &str = "\
usage: virtkit-agent [--listen vsock[:PORT] | --listen unix:PATH]
                     [--hello vsock[:CID:PORT] | --hello unix:PATH | --hello none]
                     [--fake-shutdown] [--fake-clock]

Serves virtkit's exec, cp, ip, set-time, shutdown and version on vsock port 1024 and says
hello to the host's port 1025 (CID 2) when it starts. Logs go to standard error
(VIRTKIT_AGENT_LOG=debug for more).";

/// How long a new connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait between two hello attempts.
const HELLO_MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Vsock { cid: u32, port: u32 },
    Unix(std::path::PathBuf),
    None,
}

#[derive(Debug)]
struct Args {
    listen: Endpoint,
    hello: Endpoint,
    fake_shutdown: bool,
    fake_clock: bool,
}

fn parse_endpoint(text: &str, listen: bool) -> Result<Endpoint, String> {
    if text == "none" && !listen {
        return Ok(Endpoint::None);
    }
    if let Some(path) = text.strip_prefix("unix:") {
        return Ok(Endpoint::Unix(path.into()));
    }
    let rest = text
        .strip_prefix("vsock")
        .ok_or_else(|| format!("`{text}` is not vsock[:...] or unix:PATH"))?;
    let nums: Vec<u32> = rest
        .split(':')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("`{text}`: `{s}` is not a number")))
        .collect::<Result<_, _>>()?;
    match (listen, nums.as_slice()) {
        (true, []) => Ok(Endpoint::Vsock {
            cid: 0,
            port: AGENT_PORT,
        }),
        (true, [port]) => Ok(Endpoint::Vsock { cid: 0, port: *port }),
        (false, []) => Ok(Endpoint::Vsock {
            cid: vsock::HOST_CID,
            port: HELLO_PORT,
        }),
        (false, [cid, port]) => Ok(Endpoint::Vsock {
            cid: *cid,
            port: *port,
        }),
        _ => Err(format!(
            "`{text}`: write vsock:PORT to listen, vsock:CID:PORT for the hello"
        )),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: parse_endpoint("vsock", true)?,
        hello: parse_endpoint("vsock", false)?,
        fake_shutdown: false,
        fake_clock: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => args.listen = parse_endpoint(&it.next().ok_or("--listen needs a value")?, true)?,
            "--hello" => args.hello = parse_endpoint(&it.next().ok_or("--hello needs a value")?, false)?,
            "--fake-shutdown" => args.fake_shutdown = true,
            "--fake-clock" => args.fake_clock = true,
            "--version" => {
                let _ = writeln!(
                    std::io::stdout(),
                    "virtkit-agent {}",
                    virtkit_agent_protocol::VERSION
                );
                std::process::exit(0);
            }
            "-h" | "--help" => {
                let _ = writeln!(std::io::stdout(), "{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(args)
}

enum Listener {
    Vsock(std::os::fd::OwnedFd),
    Unix(UnixListener),
}

impl Listener {
    fn open(at: &Endpoint) -> std::io::Result<Listener> {
        match at {
            Endpoint::Vsock { port, .. } => vsock::listen(*port).map(Listener::Vsock),
            Endpoint::Unix(path) => {
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path).map(Listener::Unix)
            }
            Endpoint::None => Err(std::io::ErrorKind::InvalidInput.into()),
        }
    }

    /// The next connection, as a stream (a vsock descriptor works through `UnixStream`'s
    /// read, write, clone, timeout and shutdown calls, which are the generic socket ones).
    fn accept(&self) -> std::io::Result<UnixStream> {
        match self {
            Listener::Vsock(fd) => {
                let conn = rustix::net::accept_with(fd, rustix::net::SocketFlags::CLOEXEC)?;
                Ok(UnixStream::from(conn))
            }
            Listener::Unix(l) => l.accept().map(|(s, _)| s),
        }
    }
}

fn connect(to: &Endpoint) -> std::io::Result<UnixStream> {
    match to {
        Endpoint::Vsock { cid, port } => vsock::connect(*cid, *port).map(UnixStream::from),
        Endpoint::Unix(path) => UnixStream::connect(path),
        Endpoint::None => Err(std::io::ErrorKind::InvalidInput.into()),
    }
}

/// Says hello to the host until it takes it: the host learns the agent is up without polling.
fn say_hello(to: Endpoint) {
    if to == Endpoint::None {
        return;
    }
    std::thread::spawn(move || {
        let mut line = serde_json::to_vec(&Hello { hello: ops::info() }).unwrap_or_default();
        line.push(b'\n');
        let mut backoff = Duration::from_millis(100);
        loop {
            match connect(&to).and_then(|mut s| s.write_all(&line)) {
                Ok(()) => {
                    tracing::info!(to = ?to, "said hello to the host");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "hello not taken yet; trying again in {backoff:?}"),
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(HELLO_MAX_BACKOFF);
        }
    });
}

/// What the tests on the host turn off: the host's own power and clock.
#[derive(Debug, Clone, Copy)]
struct Fakes {
    shutdown: bool,
    clock: bool,
}

fn serve(mut conn: UnixStream, fakes: Fakes) {
    let _ = conn.set_read_timeout(Some(HEADER_TIMEOUT));
    // Peeking, the header is read in a call or two, not a call per byte.
    let request = match read_header_peeking(&mut conn, |c, buf| {
        rustix::net::recv(c, buf, rustix::net::RecvFlags::PEEK)
            .map(|(n, _)| n)
            .map_err(std::io::Error::from)
    }) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "a connection without a valid header");
            let mut w = FrameWriter::new(conn);
            let _ = w.write(&Frame::Error(
                ErrorKind::BadRequest,
                format!("the agent could not read the request: {}", ops::chain(&e)),
            ));
            return;
        }
    };
    let _ = conn.set_read_timeout(None);
    tracing::debug!(op = request.op(), "request");
    match request {
        Request::Exec {
            argv,
            env,
            cwd,
            user,
            tty,
            cols,
            rows,
        } => exec::exec(
            conn,
            exec::ExecRequest {
                argv,
                env,
                cwd,
                user,
                tty,
                cols,
                rows,
            },
        ),
        Request::CopyIn { dest } => ops::copy_in(conn, &dest),
        Request::CopyOut { src } => ops::copy_out(conn, &src),
        Request::Ip => ops::ip(conn),
        Request::SetTime { unix_nanos } => ops::set_time(conn, unix_nanos, fakes.clock),
        Request::Shutdown { reboot } => ops::shutdown(conn, reboot, fakes.shutdown),
        Request::Version => ops::version(conn),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIRTKIT_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "virtkit-agent: {e}");
            std::process::exit(2);
        }
    };
    let listener = match Listener::open(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "virtkit-agent: cannot listen on {:?}: {e} (in a guest: is the vsock driver, vmw_vsock_virtio_transport, loaded?)",
                args.listen
            );
            std::process::exit(1);
        }
    };
    tracing::info!(listen = ?args.listen, version = virtkit_agent_protocol::VERSION, "virtkit-agent listening");
    say_hello(args.hello.clone());
    loop {
        match listener.accept() {
            Ok(conn) => {
                let fake = Fakes {
                    shutdown: args.fake_shutdown,
                    clock: args.fake_clock,
                };
                if let Err(e) = std::thread::Builder::new()
                    .name("agent-conn".into())
                    .spawn(move || serve(conn, fake))
                {
                    tracing::warn!(error = %e, "cannot start a thread for a connection");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("vsock", true).unwrap(),
            Endpoint::Vsock { cid: 0, port: 1024 }
        );
        assert_eq!(
            parse_endpoint("vsock", false).unwrap(),
            Endpoint::Vsock { cid: 2, port: 1025 }
        );
        assert_eq!(
            parse_endpoint("vsock:2:9", false).unwrap(),
            Endpoint::Vsock { cid: 2, port: 9 }
        );
        assert_eq!(
            parse_endpoint("unix:/x", true).unwrap(),
            Endpoint::Unix("/x".into())
        );
        assert_eq!(parse_endpoint("none", false).unwrap(), Endpoint::None);
        assert!(parse_endpoint("none", true).is_err() && parse_endpoint("tcp:1", true).is_err());
    }
}
