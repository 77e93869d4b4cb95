//! Drives a virtual machine through the public API by a small script, printing the guest's
//! console on stdout and each step on stderr (`LIFECYCLE: ...`). The full-guest tests run it
//! inside the emulated KVM host to exercise pause, resume and request_stop on a real Linux.
//!
//! ```text
//! lifecycle --kernel K [--initrd I] [--cmdline C] [--cpus N] [--memory-mib M] \
//!           --steps "wait=VIRTKIT-GUEST: waiting;pause;silent=1500;resume;wait-new=alive;request-stop"
//! ```
//! Steps: `wait=TEXT` (until the console has TEXT), `wait-new=TEXT` (until TEXT appears after
//! this point), `pause`, `resume`, `request-stop`, `stop`, `sleep=MS`, `silent=MS` (the guest
//! prints nothing for MS milliseconds). The exit code is 0 when every step passed and the guest
//! powered off; 1 otherwise.

use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virtkit::{SerialAttachment, StopReason, VirtualMachine, VirtualMachineConfiguration};

const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Console {
    bytes: Mutex<Vec<u8>>,
    grew: Condvar,
}

impl Console {
    fn len(&self) -> usize {
        self.bytes.lock().unwrap().len()
    }

    fn wait_for(&self, needle: &str, from: usize) -> Result<usize, String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut bytes = self.bytes.lock().unwrap();
        loop {
            let start = from.min(bytes.len());
            if let Some(at) = String::from_utf8_lossy(&bytes[start..]).find(needle) {
                return Ok(start + at + needle.len());
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(format!("`{needle}` did not appear within {STEP_TIMEOUT:?}"));
            };
            bytes = self.grew.wait_timeout(bytes, left).unwrap().0;
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn run_step(vm: &VirtualMachine, console: &Console, step: &str, mark: &mut usize) -> Result<(), String> {
    let (verb, value) = step.split_once('=').unwrap_or((step, ""));
    let ms = || {
        value
            .parse::<u64>()
            .map_err(|_| format!("`{step}` needs a number of milliseconds"))
    };
    match verb {
        "wait" => *mark = console.wait_for(value, 0)?,
        "wait-new" => *mark = console.wait_for(value, console.len())?,
        "pause" => vm.pause().map_err(|e| e.to_string())?,
        "resume" => vm.resume().map_err(|e| e.to_string())?,
        "request-stop" => vm.request_stop().map_err(|e| e.to_string())?,
        "stop" => vm.stop().map_err(|e| e.to_string())?,
        "sleep" => std::thread::sleep(Duration::from_millis(ms()?)),
        "silent" => {
            let before = console.len();
            std::thread::sleep(Duration::from_millis(ms()?));
            let after = console.len();
            if after != before {
                return Err(format!(
                    "the guest printed {} bytes while it should have been silent",
                    after - before
                ));
            }
        }
        other => return Err(format!("unknown step `{other}`")),
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(kernel) = arg(&args, "--kernel") else {
        eprintln!(
            "usage: lifecycle --kernel K [--initrd I] [--cmdline C] [--cpus N] [--memory-mib M] --steps S"
        );
        std::process::exit(2);
    };
    let cpus = arg(&args, "--cpus").and_then(|c| c.parse().ok()).unwrap_or(1);
    let memory = arg(&args, "--memory-mib")
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(256)
        << 20;
    let cmdline = arg(&args, "--cmdline").unwrap_or_else(|| "console=ttyS0".into());
    let steps = arg(&args, "--steps").unwrap_or_default();

    let (out_reader, out_writer) = std::io::pipe().expect("pipe");
    let config = VirtualMachineConfiguration::linux(
        cpus,
        memory,
        kernel.into(),
        arg(&args, "--initrd").map(Into::into),
        &cmdline,
    )
    .with_serial(SerialAttachment::FileHandles {
        read: None,
        write: Some(out_writer.into()),
    });
    let console = Arc::new(Console::default());
    let sink = console.clone();
    std::thread::spawn(move || {
        let mut reader = out_reader;
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::stdout().write_all(&buf[..n]);
            sink.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
            sink.grew.notify_all();
        }
    });

    let mut vm = match VirtualMachine::new(config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("LIFECYCLE: invalid configuration: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = vm.start() {
        eprintln!("LIFECYCLE: start failed: {e}");
        std::process::exit(1);
    }
    eprintln!("LIFECYCLE: started state={}", vm.state());
    let mut ok = true;
    let mut mark = 0;
    for step in steps.split(';').filter(|s| !s.is_empty()) {
        match run_step(&vm, &console, step, &mut mark) {
            Ok(()) => eprintln!("LIFECYCLE: step-ok {step} state={}", vm.state()),
            Err(e) => {
                eprintln!("LIFECYCLE: step-failed {step}: {e}");
                ok = false;
                let _ = vm.stop();
                break;
            }
        }
    }
    let reason = vm.wait_timeout(STEP_TIMEOUT).unwrap_or_else(|| {
        let _ = vm.stop();
        vm.wait()
    });
    eprintln!("LIFECYCLE: stopped reason={reason} state={}", vm.state());
    std::process::exit(if ok && reason == StopReason::GuestPoweredOff {
        0
    } else {
        1
    });
}
