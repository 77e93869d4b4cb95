//! Times saving and restoring a small guest through the library API, for bench/run.py (part 10):
//! what `VirtualMachine::save_machine_state` and `restore_machine_state` cost without the CLI,
//! the VM manager and the bundle around them.
//!
//! ```text
//! save_restore save --kernel K --memory-mib M --state FILE [--saves N] [--run-ms MS] [--from OLD]
//! save_restore restore --kernel K --memory-mib M --state FILE [--run-ms MS] [--timings FILE]
//! ```
//!
//! Both take `--initrd I` and `--cmdline C` too (default `console=ttyS0`), to save and restore
//! a Linux kernel as well; `save --no-wait` does not wait for the guest's first output (a stock
//! kernel on a PVM host runs for tens of seconds before it prints).
//!
//! `save` boots the kernel (1 vCPU, COM1 into a pipe this process drains), waits for its first
//! output, then N times: lets it run MS milliseconds, pauses it, saves it into FILE (replaced
//! each time), resumes it. Each save prints one line on standard output:
//! `SAVE pause_ms=P save_ms=S pages=N file_len=L`, where S is `save_machine_state` (the paused
//! VM's vCPUs, devices and memory written, the file synced and renamed into place) and P the
//! pause before it. The last save's file is left in FILE. With `--from OLD` the VM is not
//! booted but restored from the state file OLD and resumed (so the saves are of a restored VM,
//! whose memory is a private mapping of OLD).
//!
//! `restore` builds the same configuration with COM1 on this process's standard output,
//! restores FILE into it and resumes it: the guest's first output after the restore reaches
//! standard output directly, for the caller to time from process start. After MS milliseconds
//! (default 200) it stops the VM and exits 0. With `--timings FILE` it writes one JSON object
//! there: CLOCK_MONOTONIC nanoseconds at `main`, after `VirtualMachine::new`, after
//! `restore_machine_state` and after `resume`, to put beside the caller's spawn timestamp.

use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use virtkit::{SerialAttachment, VirtualMachine, VirtualMachineConfiguration};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn fail(what: &str) -> ! {
    eprintln!("save_restore: {what}");
    std::process::exit(1);
}

fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one passed, which lives on this stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Guest {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    memory_mib: u64,
}

fn configuration(guest: &Guest, serial: SerialAttachment) -> VirtualMachineConfiguration {
    VirtualMachineConfiguration::linux(
        1,
        guest.memory_mib << 20,
        guest.kernel.clone(),
        guest.initrd.clone(),
        &guest.cmdline,
    )
    .with_serial(serial)
}

fn save(guest: &Guest, state: PathBuf, saves: u32, run: Duration, from: Option<PathBuf>, wait: bool) {
    let (reader, writer) = std::io::pipe().unwrap_or_else(|e| fail(&format!("pipe: {e}")));
    let (first_tx, first_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; 65536];
        let mut first = Some(first_tx);
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
        }
    });
    let config = configuration(
        guest,
        SerialAttachment::FileHandles {
            read: None,
            write: Some(writer.into()),
        },
    );
    let mut vm = VirtualMachine::new(config).unwrap_or_else(|e| fail(&format!("configuration: {e}")));
    match from {
        None => vm.start().unwrap_or_else(|e| fail(&format!("start: {e}"))),
        Some(old) => {
            vm.restore_machine_state(&old)
                .unwrap_or_else(|e| fail(&format!("restore: {e}")));
            vm.resume().unwrap_or_else(|e| fail(&format!("resume: {e}")));
        }
    }
    if wait && first_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        fail("the guest printed nothing within 30 s");
    }
    for _ in 0..saves {
        std::thread::sleep(run);
        let t0 = Instant::now();
        vm.pause().unwrap_or_else(|e| fail(&format!("pause: {e}")));
        let t1 = Instant::now();
        let summary = vm
            .save_machine_state(&state)
            .unwrap_or_else(|e| fail(&format!("save: {e}")));
        let t2 = Instant::now();
        println!(
            "SAVE pause_ms={:.3} save_ms={:.3} pages={} file_len={}",
            ms(t1 - t0),
            ms(t2 - t1),
            summary.memory_pages_written,
            summary.file_len
        );
        vm.resume().unwrap_or_else(|e| fail(&format!("resume: {e}")));
    }
    let _ = vm.stop();
}

fn restore(guest: &Guest, state: PathBuf, run: Duration, timings: Option<PathBuf>) {
    let at_main = monotonic_ns();
    let mut vm = VirtualMachine::new(configuration(guest, SerialAttachment::Stdio))
        .unwrap_or_else(|e| fail(&format!("configuration: {e}")));
    let at_new = monotonic_ns();
    vm.restore_machine_state(&state)
        .unwrap_or_else(|e| fail(&format!("restore: {e}")));
    let at_restored = monotonic_ns();
    vm.resume().unwrap_or_else(|e| fail(&format!("resume: {e}")));
    let at_resumed = monotonic_ns();
    if let Some(path) = timings {
        let json = format!(
            "{{\"main_ns\": {at_main}, \"new_ns\": {at_new}, \"restored_ns\": {at_restored}, \"resumed_ns\": {at_resumed}}}\n"
        );
        std::fs::write(&path, json).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    }
    std::thread::sleep(run);
    let _ = vm.stop();
    let _ = vm.wait_timeout(Duration::from_secs(5));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: save_restore save|restore --kernel K --memory-mib M --state FILE [--saves N] [--run-ms MS] [--from OLD] [--no-wait] [--timings FILE] [--initrd I] [--cmdline C]";
    let (Some(mode), Some(kernel), Some(state)) =
        (args.get(1), arg(&args, "--kernel"), arg(&args, "--state"))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let guest = Guest {
        kernel: kernel.into(),
        initrd: arg(&args, "--initrd").map(Into::into),
        cmdline: arg(&args, "--cmdline").unwrap_or_else(|| "console=ttyS0".into()),
        memory_mib: arg(&args, "--memory-mib")
            .map(|m| m.parse().unwrap_or_else(|_| fail("--memory-mib takes a number")))
            .unwrap_or(128),
    };
    let run_ms =
        arg(&args, "--run-ms").map(|m| m.parse().unwrap_or_else(|_| fail("--run-ms takes a number")));
    match mode.as_str() {
        "save" => {
            let saves = arg(&args, "--saves")
                .map(|n| n.parse().unwrap_or_else(|_| fail("--saves takes a number")))
                .unwrap_or(1);
            save(
                &guest,
                state.into(),
                saves,
                Duration::from_millis(run_ms.unwrap_or(50)),
                arg(&args, "--from").map(Into::into),
                !args.iter().any(|a| a == "--no-wait"),
            );
        }
        "restore" => restore(
            &guest,
            state.into(),
            Duration::from_millis(run_ms.unwrap_or(200)),
            arg(&args, "--timings").map(Into::into),
        ),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
