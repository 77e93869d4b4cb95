//! `virtkit exec`, `cp`, `ip`, `run --wait` and `stop` through the guest agent, end to end
//! through the CLI, with the agent on the host: the bundle's `vsock.sock` is served by the
//! test's fake hybrid-vsock socket (`CONNECT`/`OK`), which splices to the static
//! `virtkit-agent` running on the host with `--listen unix:`. The first tests hold the
//! bundle's lock themselves (the VM looks running to the CLI); the last runs a real VM process
//! (a small test guest under SeaBIOS), whose hello listener takes the host-run agent's hello;
//! its own vsock device's `vsock.sock` is taken over by the fake once it runs. The agent in a
//! real guest over the real device: `full_guest_vsock.rs` covers the device and the hybrid
//! socket both ways.

mod support;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::home::{text, Home};
use virtkit_testkit::agent::{static_agent, AgentProcess, FakeVsock};

/// A VM bundle that looks running (this test holds its lock), with an agent behind a fake
/// `vsock.sock`.
struct Fixture {
    home: Home,
    agent: AgentProcess,
    _lock: File,
}

fn fixture(tag: &str) -> Option<Fixture> {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return None;
    }
    let home = Home::new("agent", tag);
    let image = home.session_image();
    home.create("vm", &image);
    let bundle = home.bundle("vm");
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(bundle.join("lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let agent = AgentProcess::start(&static_agent(), &home.dir.join("agent.sock"), "none");
    FakeVsock::serve(
        &bundle.join("vsock.sock"),
        HashMap::from([(1024, home.dir.join("agent.sock"))]),
    );
    Some(Fixture {
        home,
        agent,
        _lock: lock,
    })
}

fn vk_with_stdin(home: &Home, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut c = home.cmd(args);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    eprintln!(
        "$ virtkit {} → {:?}\n{}",
        args.join(" "),
        out.status.code(),
        text(&out)
    );
    out
}

#[test]
fn exec_streams_output_stdin_and_exit_codes() {
    let Some(f) = fixture("exec") else { return };
    let out = f
        .home
        .vk(&["exec", "vm", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let out = vk_with_stdin(&f.home, &["exec", "vm", "--", "cat"], b"hello through stdin\n");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello through stdin\n");

    let out = f.home.vk(&["exec", "vm", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));

    let out = f.home.vk(&["exec", "-t", "vm", "--", "tty"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&out)
    );

    let out = f.home.vk(&[
        "exec",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "vm",
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there\n/tmp\n");
}

#[test]
fn exec_errors_are_one_sentence_with_documented_codes() {
    let Some(mut f) = fixture("errors") else { return };
    let out = f.home.vk(&["exec", "vm", "--", "no-such-command-xyz"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out).contains("there is no command `no-such-command-xyz` in the guest"),
        "{}",
        text(&out)
    );

    let out = f.home.vk(&["exec", "--user", "nobody-xyz", "vm", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out).contains("there is no user `nobody-xyz` in the guest's /etc/passwd"),
        "{}",
        text(&out)
    );

    // The agent dies mid-command: virtkit says so and exits 255, without hanging.
    let mut child = f
        .home
        .cmd(&["exec", "vm", "--", "sh", "-c", "echo started; sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"started\n");
    let killed_at = Instant::now();
    f.agent.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed_at.elapsed()
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("disconnected before `sh` ended"),
        "{}",
        text(&out)
    );

    // Nothing listens on the guest's port 1024 any more: no agent.
    let out = f.home.vk(&["exec", "vm", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out).contains("the guest agent of `vm` is not up: it has not said hello")
            && text(&out).contains("run vm --detach --wait"),
        "{}",
        text(&out)
    );
}

#[test]
fn exec_on_a_stopped_vm_says_how_to_start_it() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    let home = Home::new("agent", "stopped");
    home.create("vm", &home.session_image());
    let out = home.vk(&["exec", "vm", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out).contains("the VM `vm` is not running; start it with `virtkit run vm --detach --wait`"),
        "{}",
        text(&out)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn inventory(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", std::fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.push(format!("{rel}/ {mode:o}"));
                stack.push(p);
            } else {
                out.push(format!(
                    "{rel} {mode:o} {}",
                    hex(&Sha256::digest(std::fs::read(&p).unwrap()))
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cp_copies_directories_both_ways_with_modes_and_links() {
    let Some(f) = fixture("cp") else { return };
    let src = f.home.dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        src.join("sub/data.bin"),
        (0..500_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::set_permissions(src.join("sub/data.bin"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("sub/data.bin", src.join("data")).unwrap();
    // "The guest" is this host: the agent runs here.
    let guest_dir: PathBuf = f.home.dir.join("guest");
    std::fs::create_dir(&guest_dir).unwrap();
    let to = format!("vm:{}", guest_dir.display());
    f.home.ok(&["cp", src.to_str().unwrap(), &to]);
    let back = f.home.dir.join("back");
    std::fs::create_dir(&back).unwrap();
    let from = format!("vm:{}/src", guest_dir.display());
    f.home.ok(&["cp", &from, back.to_str().unwrap()]);
    let want = inventory(&src);
    assert!(want.iter().any(|l| l == "data -> sub/data.bin"), "{want:?}");
    assert!(want.iter().any(|l| l.starts_with("run.sh 700 ")), "{want:?}");
    assert_eq!(inventory(&guest_dir.join("src")), want);
    assert_eq!(inventory(&back.join("src")), want);

    let missing = format!("vm:{}/no/such/dir/x", guest_dir.display());
    let t = f.home.fails(
        &["cp", src.join("run.sh").to_str().unwrap(), &missing],
        "does not exist; create it first",
    );
    assert!(t.contains(&format!("{}/no/such/dir", guest_dir.display())), "{t}");
    f.home.fails(
        &["cp", "vm:relative/path", back.to_str().unwrap()],
        "give an absolute path in the guest",
    );
    f.home.fails(&["cp", "a", "b"], "neither path is in a VM");
}

/// A real VM process: `run --detach --wait` returns on the hello the host-run agent sends to
/// the bundle's `vsock.sock_1025`; `get` shows the agent; `ip` asks it (no network card);
/// `exec` reaches it; `stop` asks it to shut down (a fake one here) before forcing the stop.
#[test]
fn run_wait_takes_the_hello_and_ip_and_stop_use_the_agent() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    let home = Home::new("agent", "vmproc");
    let image = home.session_image();
    home.ok(&[
        "create",
        "vm",
        "--from",
        image.to_str().unwrap(),
        "--disk-size",
        "64M",
        "--memory",
        "128M",
        "--network",
        "none",
    ]);
    let bundle = home.bundle("vm");
    let hello = format!("unix:{}", bundle.join("vsock.sock_1025").display());
    let _agent = AgentProcess::start(&static_agent(), &home.dir.join("agent.sock"), &hello);
    let started = Instant::now();
    let out = home.ok(&["run", "vm", "--detach", "--wait", "30"]);
    eprintln!("run --wait returned after {:?}", started.elapsed());
    assert!(out.contains("agent up (virtkit-agent"), "{out}");
    // The VM process's own vsock device listens on `vsock.sock` (its guest, a small BIOS
    // program, has no vsock driver); the fake takes the path over, so the host-run agent
    // answers for the guest from here on.
    assert!(bundle.join("vsock.sock").exists(), "the VM's vsock socket");
    FakeVsock::serve(
        &bundle.join("vsock.sock"),
        HashMap::from([(1024, home.dir.join("agent.sock"))]),
    );
    // What else arrives on the hello socket (too long, not JSON) is dropped; the VM runs on.
    for junk in [vec![b'x'; 10_000], b"{not json}\n".to_vec()] {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(bundle.join("vsock.sock_1025")).unwrap();
        let _ = s.write_all(&junk);
    }
    let got = home.json(&["get", "vm", "--format", "json"]);
    assert_eq!(got["agent"]["version"], env!("CARGO_PKG_VERSION"), "{got}");
    let ip = home.ok(&["ip", "vm"]);
    assert!(!ip.trim().is_empty(), "{ip}");
    let ip_json = home.json(&["ip", "vm", "--format", "json"]);
    assert_eq!(ip_json["source"], "agent");
    assert!(ip_json["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["loopback"] == true));
    // The control socket's `stats`: SeaBIOS enumerated PCI through 0xcf8 and read fw_cfg. The
    // host-run agent says hello at once, so `run --wait` may return before SeaBIOS did: wait
    // for the guest program it boots.
    home.wait_log("vm", "session: ready", 1);
    let stats = home.json(&["stats", "vm", "--format", "json"]);
    let named =
        |name: &str| {
            stats["devices"].as_array().unwrap().iter().any(|d| {
                d["device"] == name && d["reads"].as_u64().unwrap() + d["writes"].as_u64().unwrap() > 0
            })
        };
    assert!(named("PCI config (0xcf8)") && named("fw_cfg"), "{stats}");
    assert!(stats["total"]["total"].as_u64().unwrap() > 0, "{stats}");
    let table = home.ok(&["stats", "vm"]);
    assert!(table.starts_with("exits to the VMM: "), "{table}");
    let out = home.vk(&["exec", "vm", "--", "echo", "via the VM process's bundle"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via the VM process's bundle\n"
    );
    // A resume has the VM process set the guest's clock through the agent.
    home.ok(&["pause", "vm"]);
    home.ok(&["resume", "vm"]);
    support::home::wait_until("the clock set after the resume", Duration::from_secs(10), || {
        std::fs::read_to_string(bundle.join("vmm.log"))
            .is_ok_and(|l| l.contains("the guest's clock is set through the agent"))
    });
    let out = home.ok(&["stop", "vm", "--timeout", "1"]);
    assert!(out.contains("stopped"), "{out}");
    assert!(
        !bundle.join("vsock.sock_1025").exists(),
        "the hello socket is removed at the end"
    );
}

/// A pseudo-terminal for `virtkit` itself: (master, slave).
fn host_pty(cols: u16, rows: u16) -> (File, File) {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the ints given; name and termios are null,
    // the size points to a valid winsize.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) }
}

/// Reads from the pty's master until `needle` shows; returns all read.
fn read_until(master: &mut File, needle: &str, seen: &mut String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 1024];
    while !seen.contains(needle) {
        assert!(Instant::now() < deadline, "no `{needle}` in {seen:?}");
        match master.read(&mut buf) {
            Ok(0) | Err(_) => panic!("the terminal closed before `{needle}`: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
}

/// `exec -it` on a real terminal: virtkit puts it in raw mode, the command sees a pty of the
/// terminal's size, and a resize of the terminal (SIGWINCH) reaches `stty size` in the guest.
#[test]
fn exec_it_follows_the_terminal_size() {
    let Some(f) = fixture("tty") else { return };
    let (mut master, slave) = host_pty(100, 30);
    let mut cmd = f.home.cmd(&[
        "exec",
        "-it",
        "vm",
        "--",
        "sh",
        "-c",
        "tty; stty size; read x; stty size; exit 4",
    ]);
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid and ioctl(TIOCSCTTY) only, in the child before exec: async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut seen = String::new();
    read_until(&mut master, "30 100", &mut seen);
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSWINSZ on our own pty master with a valid winsize; the kernel sends
    // SIGWINCH to the terminal's foreground process group (virtkit).
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(r, 0);
    std::thread::sleep(Duration::from_millis(300));
    use std::io::Write;
    master.write_all(b"go\r").unwrap();
    read_until(&mut master, "40 120", &mut seen);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "{seen:?}");
}
