//! The `virtkit` command as a user meets it: bad input gets one clear sentence and exit 1 (or
//! clap's 2 for usage), and each way a guest can end has its documented exit code and message.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use virtkit_test_guests::Guest;

const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");

fn virtkit(args: &[&str]) -> Output {
    Command::new(VIRTKIT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("virtkit runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("virtkit-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_kernel_is_one_clear_error_with_exit_1() {
    let out = virtkit(&["run", "--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("boot_loader.kernel: the kernel /nonexistent/vmlinuz does not exist"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let dir = TempDir::new("notkernel");
    let text = dir.write("notes.txt", "not a kernel");
    let out = virtkit(&["run", "--kernel", s(&text)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is neither a bzImage nor an ELF kernel"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn zero_cpus_and_too_much_memory_are_reported_together() {
    let out = virtkit(&[
        "run",
        "--kernel",
        s(Guest::Hello.path()),
        "--cpus",
        "0",
        "--memory",
        "64T",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains("cpu_count: 0 vCPUs is not possible; use 1 to 255"),
        "{err}"
    );
    assert!(
        err.contains("memory_size: 64 TiB is more than this host's"),
        "{err}"
    );
}

#[test]
fn a_size_with_an_unknown_unit_is_a_usage_error() {
    let out = virtkit(&["run", "--kernel", s(Guest::Hello.path()), "--memory", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown unit `Q`"), "{}", stderr(&out));
}

#[test]
fn nothing_to_boot_says_which_flags_to_give() {
    let out = virtkit(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("give --kernel"), "{}", stderr(&out));
}

#[test]
fn validate_accepts_a_good_file_and_names_an_unknown_field() {
    let dir = TempDir::new("validate");
    let good = dir.write(
        "vm.json",
        &format!(
            r#"{{"version": 1, "cpu_count": 2, "memory_size": 134217728,
                "boot_loader": {{"type": "linux", "kernel": "{}", "command_line": "console=ttyS0"}},
                "serial_ports": [{{"attachment": {{"type": "stdio"}}}}]}}"#,
            s(Guest::Hello.path())
        ),
    );
    let out = virtkit(&["validate", s(&good)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("is valid: 2 vCPUs, 128 MiB of memory"),
        "{}",
        stdout(&out)
    );

    let bad = dir.write("bad.json", r#"{"cpu_count": 1, "memory_size": 134217728, "cpus": 4, "boot_loader": {"type": "linux", "kernel": "/k"}}"#);
    let out = virtkit(&["validate", s(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("unknown field `cpus`"), "{err}");
    assert!(err.contains("bad.json"), "{err}");

    let missing = virtkit(&["validate", "/nonexistent/vm.json"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("cannot read the configuration /nonexistent/vm.json"));
}

#[test]
fn help_documents_the_exit_codes() {
    let out = virtkit(&["--help"]);
    let text = stdout(&out);
    for line in [
        "0  the guest powered off",
        "3  the guest reset",
        "4  the guest crashed",
        "5  KVM stopped",
    ] {
        assert!(text.contains(line), "{text}");
    }
}

#[test]
fn doctor_reports_the_kvm_flavour_and_limits() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let out = virtkit(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let expected = match virtkit_testkit::host_kvm_kind() {
        virtkit_testkit::KvmKind::Pvm => "KVM:                     PVM (kvm_pvm)",
        _ => "KVM:                     hardware KVM",
    };
    assert!(text.contains(expected), "{text}");
    assert!(text.contains("vCPUs per VM:            up to "), "{text}");
    assert!(text.contains("memory slots per VM:"), "{text}");
    let json = virtkit(&["doctor", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert!(doc["limits"]["max_vcpus"].as_u64().unwrap() >= 1);
    // Networking: where passt is (as `which` finds it) and whether TAP cards can be made.
    let passt = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("passt"))
        .find(|p| p.is_file());
    match passt {
        Some(p) => {
            assert_eq!(doc["networking"]["passt"], p.to_str().unwrap(), "{doc}");
            assert!(
                text.contains(&format!("NAT networking:          passt at {}", p.display())),
                "{text}"
            );
        }
        None => assert!(text.contains("passt is not installed"), "{text}"),
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    assert_eq!(
        doc["networking"]["tap_and_bridge"],
        root && std::path::Path::new("/dev/net/tun").exists(),
        "{doc}"
    );
}

#[test]
fn guest_power_off_exits_0_with_its_output_on_stdout() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let out = virtkit(&["run", "--kernel", s(Guest::Hello.path()), "--memory", "64M"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("virtkit-guest: hello from pvh"));
    assert_eq!(stderr(&out), "");
}

/// `--stats` counts the exits the guest made: every byte of its output was one write to COM1,
/// and the per-device figures add up to the per-reason ones.
#[test]
fn run_stats_reports_the_exits_by_reason_and_device() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let out = virtkit(&[
        "run",
        "--kernel",
        s(Guest::Hello.path()),
        "--memory",
        "64M",
        "--stats",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(printed.contains("virtkit-guest: hello from pvh"));
    let err = stderr(&out);
    let stats: serde_json::Value = serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"));
    let devices = stats["devices"].as_array().unwrap();
    let com1 = devices
        .iter()
        .find(|d| d["device"] == "serial (COM1)")
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(
        com1["writes"].as_u64().unwrap() >= printed.len() as u64,
        "{stats}"
    );
    let sum = |space: &str, key: &str| -> u64 {
        devices
            .iter()
            .filter(|d| d["space"] == space)
            .map(|d| d[key].as_u64().unwrap())
            .sum()
    };
    let total = &stats["total"];
    assert_eq!(
        total["io_out"].as_u64().unwrap(),
        sum("port", "writes"),
        "{stats}"
    );
    assert_eq!(total["io_in"].as_u64().unwrap(), sum("port", "reads"), "{stats}");
    assert_eq!(
        total["mmio_read"].as_u64().unwrap(),
        sum("mmio", "reads"),
        "{stats}"
    );
    assert_eq!(stats["vcpus"].as_array().unwrap().len(), 1);

    let out = virtkit(&[
        "run",
        "--kernel",
        s(Guest::Hello.path()),
        "--memory",
        "64M",
        "--stats",
    ]);
    let err = stderr(&out);
    assert!(err.starts_with("virtkit: exits to the VMM: "), "{err}");
    assert!(err.contains("serial (COM1)"), "{err}");
}

#[test]
fn guest_reset_exits_3_and_says_so() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let out = virtkit(&["run", "--kernel", s(Guest::Reset.path()), "--memory", "64M"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("virtkit: the guest reset the machine"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn triple_fault_exits_4_as_a_crash() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let out = virtkit(&["run", "--kernel", s(Guest::TripleFault.path()), "--memory", "64M"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("virtkit: the guest crashed: vCPU 0 triple-faulted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn piped_stdin_reaches_the_guest_console() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let mut child = Command::new(VIRTKIT)
        .args(["run", "--kernel", s(Guest::Echo.path()), "--memory", "64M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"typed through a pipe q")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("typed through a pipe "), "{}", stdout(&out));
}

#[test]
fn sigterm_presses_the_power_button_and_the_guest_powers_off() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let mut child = Command::new(VIRTKIT)
        .args(["run", "--kernel", s(Guest::PowerButton.path()), "--memory", "64M"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let waiting = lines.next().unwrap().unwrap();
    assert!(waiting.contains("waiting for power button"), "{waiting}");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        rest.iter().any(|l| l.contains("power button pressed")),
        "{rest:?}"
    );
}

#[test]
fn serial_to_a_file_keeps_the_guest_output() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let dir = TempDir::new("serialfile");
    let log = dir.0.join("console.log");
    let arg = format!("file:{}", s(&log));
    let out = virtkit(&[
        "run",
        "--kernel",
        s(Guest::Hello.path()),
        "--memory",
        "64M",
        "--serial",
        &arg,
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "");
    assert!(std::fs::read_to_string(&log).unwrap().contains("hello from pvh"));
}

/// On a PVM host a stock kernel stops in early boot; the user must hear why and what to do.
#[test]
fn stock_kernel_on_pvm_ends_with_the_cause_and_the_fix() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    if virtkit_testkit::host_kvm_kind() != virtkit_testkit::KvmKind::Pvm {
        // On hardware KVM this kernel boots; the full-guest tests cover it there.
        return;
    }
    let Some(assets) = virtkit_testkit::require_assets() else {
        return;
    };
    let mut child = Command::new(VIRTKIT)
        .args([
            "run",
            "--kernel",
            s(assets.vmlinux()),
            "--memory",
            "128M",
            "--cmdline",
            "console=ttyS0 earlyprintk=ttyS0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stock kernel neither stopped nor failed in 300 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("KVM stopped vCPU 0 with an internal error"), "{err}");
    assert!(err.contains("at guest RIP 0xffffffff"), "{err}");
    assert!(
        err.contains("PVM-enabled guest kernel (CONFIG_PVM_GUEST)"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("Linux version"),
        "the kernel got as far as printing its banner"
    );
}

/// Runs `shell` on a pseudo-terminal with `script(1)`, feeding it `keys` after a second.
fn on_a_terminal(shell: &str, keys: &[u8]) -> String {
    let mut child = Command::new("script")
        .args(["-qec", shell, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    stdin.write_all(keys).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn terminal_is_raw_while_running_and_restored_after_a_crash_and_after_ctrl_a_x() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let dir = TempDir::new("tty");
    let d = s(&dir.0);
    // A crash: the terminal settings after equal those before.
    let crash = format!(
        "stty -g > {d}/before; {VIRTKIT} run --kernel {} --memory 64M; echo rc=$?; stty -g > {d}/after",
        s(Guest::TripleFault.path())
    );
    let text = on_a_terminal(&crash, b"");
    assert!(text.contains("rc=4"), "{text}");
    assert_eq!(
        std::fs::read(dir.0.join("before")).unwrap(),
        std::fs::read(dir.0.join("after")).unwrap()
    );
    // Ctrl-A x stops a guest that would run forever; while it ran, the terminal was raw.
    let escape = format!(
        "stty -g > {d}/before; (sleep 0.5; stty -a < /dev/tty > {d}/during) & {VIRTKIT} run --kernel {} --memory 64M; echo rc=$?; wait; stty -g > {d}/after",
        s(Guest::Counter.path())
    );
    let text = on_a_terminal(&escape, b"\x01x");
    assert!(text.contains("tick "), "{text}");
    assert!(text.contains("virtkit: stopped"), "{text}");
    assert!(text.contains("rc=0"), "{text}");
    let during = std::fs::read_to_string(dir.0.join("during")).unwrap();
    assert!(
        during.contains("-icanon") && during.contains("-echo "),
        "raw mode while running:\n{during}"
    );
    assert_eq!(
        std::fs::read(dir.0.join("before")).unwrap(),
        std::fs::read(dir.0.join("after")).unwrap()
    );
}

/// A stand-in for a VM's vsock socket: reads one `CONNECT` line; `answer` decides what comes
/// back (`Some(line)`: the line, then an echo of the connection; `None`: the socket closed).
fn fake_vsock_socket(path: &Path, answer: Option<&'static str>) -> std::thread::JoinHandle<String> {
    use std::io::Read;
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        if let Some(answer) = answer {
            s.write_all(answer.as_bytes()).unwrap();
            let mut data = Vec::new();
            s.read_to_end(&mut data).unwrap();
            s.write_all(&data).unwrap();
        }
        String::from_utf8(line).unwrap()
    })
}

#[test]
fn vsock_proxy_speaks_the_connect_handshake_then_relays() {
    let dir = TempDir::new("vsock-proxy");
    let path = dir.0.join("v.sock");
    let server = fake_vsock_socket(&path, Some("OK 1073741824\n"));
    let mut child = Command::new(VIRTKIT)
        .args(["vsock-proxy", path.to_str().unwrap(), "5000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"through vsock").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "through vsock");
    assert_eq!(server.join().unwrap(), "CONNECT 5000");
}

#[test]
fn vsock_proxy_to_a_refused_port_or_no_socket_says_so() {
    let dir = TempDir::new("vsock-refused");
    let path = dir.0.join("v.sock");
    let server = fake_vsock_socket(&path, None);
    let out = virtkit(&["vsock-proxy", path.to_str().unwrap(), "5003"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the guest refused the connection to vsock port 5003"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.join().unwrap(), "CONNECT 5003");
    let missing = dir.0.join("none.sock");
    let out = virtkit(&["vsock-proxy", missing.to_str().unwrap(), "22"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the vsock socket"),
        "{}",
        stderr(&out)
    );
    // A port that is not a number is a usage error.
    assert_eq!(virtkit(&["vsock-proxy", "vm", "http"]).status.code(), Some(2));
}

#[test]
fn run_vsock_with_a_socket_path_too_long_is_refused_in_a_sentence() {
    let dir = TempDir::new("vsock-run");
    let long = dir.0.join("x".repeat(120));
    let out = virtkit(&[
        "run",
        "--kernel",
        "/nonexistent/vmlinuz",
        "--vsock",
        long.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("socket_devices[0].uds_path"),
        "{}",
        stderr(&out)
    );
}
