//! Boot the emulated KVM host by hand and run a script in it.
//!
//! ```text
//! cargo run -p virtkit-testkit --example emulated_host -- [OPTIONS] SCRIPT_FILE
//!   --file SRC:DEST     copy a file or directory into the host
//!   --binary SRC:DEST   copy an executable and the shared libraries ldd lists
//!   --qemu-arg ARG      an extra argument for the emulated host's QEMU (e.g. a -drive)
//!   --root-on-tmpfs     run with / on a tmpfs (pivot_root works: passt needs it)
//!   --cpus N --mem MIB --timeout SECS
//! ```
//! Exits with the script's exit code (or 100 on a harness error).

use std::time::Duration;

use virtkit_testkit::{Assets, EmulatedHost};

fn split(arg: &str) -> (String, String) {
    match arg.split_once(':') {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (arg.to_string(), arg.to_string()),
    }
}

fn main() {
    let assets = Assets::load().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(100)
    });
    let mut host = EmulatedHost::new(&assets);
    let mut args = std::env::args().skip(1);
    let mut script = None;
    while let Some(a) = args.next() {
        let mut val = || {
            args.next().unwrap_or_else(|| {
                eprintln!("{a} needs a value");
                std::process::exit(100)
            })
        };
        match a.as_str() {
            "--file" => {
                let (s, d) = split(&val());
                host = host.file(s, &d);
            }
            "--binary" => {
                let (s, d) = split(&val());
                host = host.binary(s, &d);
            }
            "--qemu-arg" => host = host.qemu_arg(&val()),
            "--root-on-tmpfs" => host = host.root_on_tmpfs(),
            "--cpus" => host = host.cpus(val().parse().expect("--cpus N")),
            "--mem" => host = host.memory_mib(val().parse().expect("--mem MIB")),
            "--timeout" => host = host.timeout(Duration::from_secs(val().parse().expect("--timeout SECS"))),
            _ if script.is_none() => script = Some(a),
            _ => {
                eprintln!("unexpected argument {a}");
                std::process::exit(100)
            }
        }
    }
    let path = script.unwrap_or_else(|| {
        eprintln!("usage: emulated_host [--file SRC:DEST] [--binary SRC:DEST] [--qemu-arg ARG] [--root-on-tmpfs] [--cpus N] [--mem MIB] [--timeout SECS] SCRIPT_FILE");
        std::process::exit(100)
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(100)
    });
    match host.script(&text).run() {
        Ok(run) => {
            eprintln!(
                "[testkit] boot to kvm-ready {:.1} s, run {:.1} s, attempts {}, script exit {:?}",
                run.boot_to_ready.as_secs_f64(),
                run.elapsed.as_secs_f64(),
                run.attempts,
                run.script_exit
            );
            std::process::exit(run.script_exit.unwrap_or(100))
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(100)
        }
    }
}
