//! The static `virtkit-agent`, run on the host with `--listen unix:`, against the host's real
//! client (`virtkit_manager::agent::AgentClient`) through a fake hybrid vsock socket that
//! speaks `CONNECT`/`OK` (`virtkit_testkit::agent::FakeVsock`). What a vsock device adds in a
//! guest is the transport only.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use virtkit_agent_protocol::{ErrorKind, ExitStatus, Frame, Request, Stream};
use virtkit_manager::agent::{AgentClient, AgentConnection, AgentError};
use virtkit_testkit::agent::{static_agent, AgentProcess, FakeVsock};

struct Setup {
    dir: PathBuf,
    agent: AgentProcess,
    client: AgentClient,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.agent.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(tag: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("vk-agent-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let agent = AgentProcess::start(&static_agent(), &dir.join("agent.sock"), "none");
    let vsock = FakeVsock::serve(
        &dir.join("vsock.sock"),
        HashMap::from([(1024, dir.join("agent.sock"))]),
    );
    let client = AgentClient::with_socket(vsock.socket);
    Setup { dir, agent, client }
}

fn exec_request(argv: &[&str]) -> Request {
    Request::Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        cwd: None,
        user: None,
        tty: false,
        cols: 0,
        rows: 0,
    }
}

/// Runs to the end with `input` on stdin; returns stdout, stderr and the exit.
fn run(c: &AgentClient, request: Request, input: &[u8]) -> (String, String, ExitStatus) {
    let mut conn = c.open(&request).unwrap();
    if !input.is_empty() {
        conn.writer.write(&Frame::Stdin(input.to_vec())).unwrap();
    }
    conn.writer.write(&Frame::Eof(Stream::Stdin)).unwrap();
    collect(&mut conn)
}

fn collect(conn: &mut AgentConnection) -> (String, String, ExitStatus) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match conn.reader.read().unwrap() {
            Some(Frame::Stdout(b)) => out.extend(b),
            Some(Frame::Stderr(b)) => err.extend(b),
            Some(Frame::Exit(e)) => {
                return (
                    String::from_utf8_lossy(&out).into_owned(),
                    String::from_utf8_lossy(&err).into_owned(),
                    e,
                )
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!(
                "closed before the exit; stdout {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

#[test]
fn the_static_binary_is_static() {
    let bin = static_agent();
    let file = std::process::Command::new("file").arg(&bin).output().unwrap();
    let text = String::from_utf8_lossy(&file.stdout);
    assert!(
        text.contains("statically linked") || text.contains("static-pie linked"),
        "{text}"
    );
    let ldd = std::process::Command::new("ldd").arg(&bin).output().unwrap();
    let text = String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "{text}"
    );
}

#[test]
fn exit_codes_signals_stdout_and_stderr() {
    let s = setup("codes");
    let (out, err, exit) = run(
        &s.client,
        exec_request(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
        b"",
    );
    assert_eq!(
        (out.as_str(), err.as_str(), exit),
        ("out\n", "err\n", ExitStatus::Code(3))
    );
    let (_, _, exit) = run(&s.client, exec_request(&["sh", "-c", "kill -TERM $$"]), b"");
    assert_eq!(exit, ExitStatus::Signal(15));
    let (out, _, exit) = run(&s.client, exec_request(&["true"]), b"");
    assert_eq!((out.as_str(), exit), ("", ExitStatus::Code(0)));
}

#[test]
fn output_is_streamed_while_the_command_runs() {
    let s = setup("stream");
    let start = Instant::now();
    let mut conn = s
        .client
        .open(&exec_request(&[
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo tick $i; sleep 0.5; done",
        ]))
        .unwrap();
    let first = match conn.reader.read().unwrap() {
        Some(Frame::Stdout(b)) => b,
        other => panic!("{other:?}"),
    };
    let first_at = start.elapsed();
    assert_eq!(first, b"tick 1\n");
    let (rest, _, exit) = collect(&mut conn);
    let end = start.elapsed();
    assert_eq!(exit, ExitStatus::Code(0));
    assert!(rest.contains("tick 5"), "{rest}");
    assert!(
        first_at < Duration::from_millis(1500),
        "the first line came after {first_at:?}"
    );
    assert!(end >= Duration::from_secs(2), "ended after {end:?}");
    eprintln!("first line after {first_at:?}, exit after {end:?}");
}

#[test]
fn stdin_reaches_cat_and_its_end_ends_it() {
    let s = setup("cat");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut conn = s
        .client
        .open(&exec_request(&["sh", "-c", "cat | sha256sum"]))
        .unwrap();
    for chunk in big.chunks(60_000) {
        conn.writer.write(&Frame::Stdin(chunk.to_vec())).unwrap();
    }
    conn.writer.write(&Frame::Eof(Stream::Stdin)).unwrap();
    let (out, _, exit) = collect(&mut conn);
    assert_eq!(exit, ExitStatus::Code(0));
    assert_eq!(out.split(' ').next().unwrap(), hex(&Sha256::digest(&big)));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_pty_has_a_terminal_and_follows_resizes() {
    let s = setup("pty");
    let request = Request::Exec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "tty; stty size; read x; stty size".into(),
        ],
        env: Vec::new(),
        cwd: None,
        user: None,
        tty: true,
        cols: 100,
        rows: 30,
    };
    let mut conn = s.client.open(&request).unwrap();
    let mut seen = String::new();
    while !seen.contains("30 100") {
        match conn.reader.read().unwrap() {
            Some(Frame::Stdout(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("{other:?} after {seen:?}"),
        }
    }
    assert!(seen.contains("/dev/pts/"), "{seen}");
    conn.writer.write(&Frame::Resize { cols: 120, rows: 40 }).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    conn.writer.write(&Frame::Stdin(b"go\n".to_vec())).unwrap();
    let (rest, _, exit) = collect(&mut conn);
    assert!(rest.contains("40 120"), "{rest}");
    assert_eq!(exit, ExitStatus::Code(0));
}

#[test]
fn a_missing_user_command_or_directory_is_one_sentence() {
    let s = setup("errors");
    let mut request = exec_request(&["true"]);
    if let Request::Exec { user, .. } = &mut request {
        *user = Some("no-such-user-here".into());
    }
    let mut conn = s.client.open(&request).unwrap();
    match conn.reader.read().unwrap() {
        Some(Frame::Error(ErrorKind::NoSuchUser, text)) => {
            assert!(text.contains("no-such-user-here"), "{text}")
        }
        other => panic!("{other:?}"),
    }
    let mut conn = s.client.open(&exec_request(&["no-such-command-xyz"])).unwrap();
    match conn.reader.read().unwrap() {
        Some(Frame::Error(ErrorKind::NotFound, text)) => {
            assert!(text.contains("no command `no-such-command-xyz`"), "{text}")
        }
        other => panic!("{other:?}"),
    }
    let src = s.dir.join("f");
    std::fs::write(&src, b"x").unwrap();
    let dest = s.dir.join("missing/dir/f");
    match s.client.copy_in(&src, dest.to_str().unwrap()) {
        Err(AgentError::Refused(ErrorKind::NoSuchDirectory, text)) => {
            assert!(text.contains("does not exist; create it first"), "{text}")
        }
        other => panic!("{other:?}"),
    }
    match s.client.copy_out("/no/such/path", &s.dir) {
        Err(AgentError::Refused(ErrorKind::NotFound, text)) => {
            assert!(text.contains("does not exist"), "{text}")
        }
        other => panic!("{other:?}"),
    }
}

/// Every file's relative path, kind, mode, and contents' sha256 (or link target).
fn inventory(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{rel} link {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{rel} dir {mode:o}"));
                walk(root, &p, out);
            } else {
                out.push(format!(
                    "{rel} file {mode:o} {}",
                    hex(&Sha256::digest(std::fs::read(&p).unwrap()))
                ));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn cp_round_trips_a_directory_with_modes_and_a_link() {
    let s = setup("cp");
    let src = s.dir.join("host/tree");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("secret"), vec![42u8; 1 << 20]).unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("bin/tool", src.join("link")).unwrap();
    std::fs::set_permissions(src.join("bin"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let guest = s.dir.join("guest");
    std::fs::create_dir(&guest).unwrap();
    let start = Instant::now();
    let report = s.client.copy_in(&src, guest.to_str().unwrap()).unwrap();
    assert_eq!(report.entries, 5);
    let back = s.dir.join("back");
    std::fs::create_dir(&back).unwrap();
    let (placed, _) = s
        .client
        .copy_out(guest.join("tree").to_str().unwrap(), &back)
        .unwrap();
    eprintln!("cp both ways in {:?}", start.elapsed());
    assert_eq!(placed, back.join("tree"));
    let want = inventory(&src);
    assert!(want.iter().any(|l| l == "link link bin/tool"), "{want:?}");
    assert!(
        want.iter().any(|l| l.starts_with("bin/tool file 755 ")),
        "{want:?}"
    );
    assert_eq!(inventory(&guest.join("tree")), want);
    assert_eq!(inventory(&placed), want);
    // A single file to a new name.
    s.client
        .copy_in(&src.join("secret"), guest.join("renamed").to_str().unwrap())
        .unwrap();
    assert_eq!(std::fs::read(guest.join("renamed")).unwrap(), vec![42u8; 1 << 20]);
}

#[test]
fn ip_and_version() {
    let s = setup("ip");
    let report = s.client.ip().unwrap();
    let lo = report
        .interfaces
        .iter()
        .find(|i| i.loopback)
        .expect("a loopback interface");
    assert!(
        lo.addresses
            .iter()
            .any(|a| a.address == "127.0.0.1" && a.prefix_len == 8),
        "{lo:?}"
    );
    let v = s.client.version().unwrap();
    assert_eq!(v.version, virtkit_agent_protocol::VERSION);
    assert!(!v.hostname.is_empty() && !v.kernel.is_empty());
}

#[test]
fn a_port_with_no_agent_is_no_agent() {
    let dir = std::env::temp_dir().join(format!("vk-agent-none-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let vsock = FakeVsock::serve(&dir.join("vsock.sock"), HashMap::new());
    let client = AgentClient::with_socket(vsock.socket.clone());
    assert!(matches!(client.version(), Err(AgentError::NoAgent(None))));
    let client = AgentClient::with_socket(dir.join("absent.sock"));
    assert!(matches!(client.version(), Err(AgentError::NoVsock(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_agent_dying_mid_command_ends_the_client_without_a_hang() {
    let mut s = setup("die");
    let mut conn = s
        .client
        .open(&exec_request(&["sh", "-c", "echo started; sleep 30"]))
        .unwrap();
    assert_eq!(
        conn.reader.read().unwrap(),
        Some(Frame::Stdout(b"started\n".to_vec()))
    );
    let start = Instant::now();
    s.agent.kill();
    conn.reader_timeout(Some(Duration::from_secs(10))).unwrap();
    let end = conn.reader.read();
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_host_that_goes_away_hangs_the_command_up() {
    let s = setup("hup");
    let marker = s.dir.join("hung-up");
    // A loop of short foreground sleeps rather than `sleep 30 & wait`: the SIGHUP to the group
    // ends the sleep at once and the shell runs its trap as the next command.
    let script = format!(
        "trap 'echo hup > {}; exit 1' HUP; echo $$; while :; do sleep 0.1; done",
        marker.display()
    );
    let mut conn = s.client.open(&exec_request(&["sh", "-c", &script])).unwrap();
    let Some(Frame::Stdout(pid)) = conn.reader.read().unwrap() else {
        panic!("no PID line from the command");
    };
    let pid: i32 = String::from_utf8_lossy(&pid).trim().parse().unwrap();
    drop(conn);
    // The hang-up is SIGHUP (the trap writes the marker), then SIGKILL after a grace period:
    // either way the command must end, well before the loop would on its own (never).
    let deadline = Instant::now() + Duration::from_secs(20);
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    while alive() && !marker.exists() {
        assert!(Instant::now() < deadline, "the command was not hung up");
        std::thread::sleep(Duration::from_millis(50));
    }
    if !marker.exists() {
        eprintln!(
            "NOTICE: the command ended without running its SIGHUP trap (killed after the grace period)"
        );
    }
}

#[test]
fn signals_reach_the_command() {
    let s = setup("signal");
    let mut conn = s
        .client
        .open(&exec_request(&[
            "sh",
            "-c",
            "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.1; done",
        ]))
        .unwrap();
    assert_eq!(
        conn.reader.read().unwrap(),
        Some(Frame::Stdout(b"ready\n".to_vec()))
    );
    conn.writer.write(&Frame::Signal(2)).unwrap();
    let (out, _, exit) = collect(&mut conn);
    assert!(out.contains("got-int"), "{out}");
    assert_eq!(exit, ExitStatus::Code(7));
}

#[test]
fn exec_round_trip_is_quick() {
    let s = setup("rtt");
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let (_, _, exit) = run(&s.client, exec_request(&["true"]), b"");
        times.push(start.elapsed());
        assert_eq!(exit, ExitStatus::Code(0));
    }
    times.sort();
    eprintln!(
        "exec `true` round trip through the fake vsock socket: median {:?}, max {:?}",
        times[10], times[19]
    );
    assert!(times[10] < Duration::from_millis(500), "{times:?}");
}
