//! The guest agent on the host, for tests that run it without a guest (the VM's vsock device
//! and the agent in a real guest are tested by the full-guest tests):
//!
//! * [`static_agent`] builds `virtkit-agent` the way it goes into a guest (static, glibc,
//!   `-C target-feature=+crt-static`, release) into a known place, once per test process;
//! * [`AgentProcess`] runs it with `--listen unix:PATH`;
//! * [`FakeVsock`] stands in for the VM's hybrid vsock socket (`vsock.sock`): it takes a
//!   client's `CONNECT <port>` line, answers `OK <localport>` and splices the connection to
//!   the Unix socket mapped to that port, or closes it when none is (as Firecracker does when
//!   nothing listens in the guest).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The target the static agent is built for (the host's; no musl target is needed).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The workspace's root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The target directory the running test binary was built into (`…/target/debug/deps/x`).
fn outer_target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Where [`static_agent`] puts the binary: `<target>/agent-static/x86_64-unknown-linux-gnu/
/// release/virtkit-agent` (a target directory of its own: the outer `cargo test` holds the
/// lock of its own while tests run). `scripts/build-agent.sh` builds the same.
pub fn static_agent_path() -> PathBuf {
    outer_target_dir()
        .join("agent-static")
        .join(AGENT_TARGET)
        .join("release/virtkit-agent")
}

/// Builds the static agent (once per process; cargo makes it a no-op when nothing changed)
/// and returns its path. `VIRTKIT_AGENT_BIN` names a prebuilt one instead.
pub fn static_agent() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Ok(prebuilt) = std::env::var("VIRTKIT_AGENT_BIN") {
                return prebuilt.into();
            }
            let started = Instant::now();
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(workspace())
                .args([
                    "build",
                    "--release",
                    "-p",
                    "virtkit-agent",
                    "--target",
                    AGENT_TARGET,
                ])
                .env("CARGO_TARGET_DIR", outer_target_dir().join("agent-static"))
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                // Stripped: it goes into initramfs images (scripts/build-agent.sh does the same).
                .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the static virtkit-agent failed");
            eprintln!(
                "static virtkit-agent ready in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            static_agent_path()
        })
        .clone()
}

/// Waits until `path` accepts connections.
pub fn wait_for_socket(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {} after {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `virtkit-agent --listen unix:PATH`, killed when dropped.
pub struct AgentProcess {
    pub child: Child,
    pub socket: PathBuf,
}

impl AgentProcess {
    /// Starts `binary` listening on `socket`, with `hello` as its `--hello` value; waits until
    /// it listens. It never touches the host's power or clock (`--fake-shutdown`,
    /// `--fake-clock`: those requests are answered and logged only). Its log goes to this process's standard error.
    pub fn start(binary: &Path, socket: &Path, hello: &str) -> AgentProcess {
        let child = Command::new(binary)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--hello", hello, "--fake-shutdown", "--fake-clock"])
            .env("VIRTKIT_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .spawn()
            .expect("virtkit-agent starts");
        wait_for_socket(socket, Duration::from_secs(10));
        AgentProcess {
            child,
            socket: socket.to_owned(),
        }
    }

    /// Kills it (a guest agent that dies mid-command).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A stand-in for a VM's hybrid vsock socket, serving until the process ends.
pub struct FakeVsock {
    pub socket: PathBuf,
}

impl FakeVsock {
    /// Listens on `socket`; a `CONNECT P` reaches the Unix socket `ports[P]`.
    pub fn serve(socket: &Path, ports: HashMap<u32, PathBuf>) -> FakeVsock {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).expect("the fake vsock socket binds");
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                let ports = ports.clone();
                std::thread::spawn(move || splice(conn, &ports, n as u32));
            }
        });
        FakeVsock {
            socket: socket.to_owned(),
        }
    }
}

fn splice(mut host: UnixStream, ports: &HashMap<u32, PathBuf>, n: u32) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        match host.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    let Some(port) = text
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return;
    };
    // Nothing listens on the port: the connection is closed without an answer.
    let Some(guest) = ports.get(&port).and_then(|p| UnixStream::connect(p).ok()) else {
        return;
    };
    if host
        .write_all(format!("OK {}\n", 1_073_741_824 + n).as_bytes())
        .is_err()
    {
        return;
    }
    let (Ok(mut host_r), Ok(mut guest_w)) = (host.try_clone(), guest.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut host_r, &mut guest_w);
        let _ = guest_w.shutdown(std::net::Shutdown::Write);
    });
    let mut guest_r = guest;
    let _ = std::io::copy(&mut guest_r, &mut host);
    // The guest side ended (the agent closed or died): the host's connection ends with it.
    let _ = host.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

/// Where the agent is in a test guest's initramfs (no leading `/`: a cpio path).
pub const GUEST_AGENT_PATH: &str = "usr/bin/virtkit-agent";

/// Adds the static agent at [`GUEST_AGENT_PATH`] to an initramfs being written (a second
/// cpio archive appended to the asset initramfs, as the full-guest tests append their
/// scripts). The guest starts it with e.g. `virtkit.run="/usr/bin/virtkit-agent &"` once the
/// vsock modules are loaded (the asset `/init` loads them).
pub fn add_to_initramfs<W: Write>(w: &mut crate::cpio::CpioWriter<W>) -> std::io::Result<()> {
    w.dir("usr", 0o755)?;
    w.dir("usr/bin", 0o755)?;
    w.file_from_path(GUEST_AGENT_PATH, &static_agent())
}
