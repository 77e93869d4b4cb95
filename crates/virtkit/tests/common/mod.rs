//! Running small guests through the public API and reading their serial output.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virtkit::{SerialAttachment, VirtualMachine, VirtualMachineConfiguration};

/// Everything the guest wrote on COM1 so far, filled by a reader thread.
#[derive(Clone, Default)]
pub struct Console {
    text: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl Console {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.0.lock().unwrap()).into_owned()
    }

    /// Waits until the output contains `needle`; panics with the output so far on timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.text;
        let mut bytes = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if text.contains(needle) {
                return text;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for {needle:?}; console so far:\n{text}"));
            bytes = cv.wait_timeout(bytes, left).unwrap().0;
        }
    }

    /// How many times `needle` appears.
    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

/// A guest on the API with its console captured and a way to type into it.
pub struct Running {
    pub vm: VirtualMachine,
    pub console: Console,
    pub input: std::io::PipeWriter,
}

impl Running {
    pub fn type_text(&mut self, text: &str) {
        self.input.write_all(text.as_bytes()).unwrap();
    }
}

/// Starts `config` with COM1 wired to pipes.
pub fn start(config: VirtualMachineConfiguration) -> Running {
    let mut run = build(config);
    run.vm.start().expect("the VM starts");
    run
}

/// Makes a stopped VM from `config` with COM1 wired to pipes (to start, or to restore into).
pub fn build(config: VirtualMachineConfiguration) -> Running {
    let (out_reader, out_writer) = std::io::pipe().unwrap();
    let (in_reader, in_writer) = std::io::pipe().unwrap();
    let config = config.with_serial(SerialAttachment::FileHandles {
        read: Some(in_reader.into()),
        write: Some(out_writer.into()),
    });
    let console = Console::default();
    let sink = console.clone();
    std::thread::spawn(move || {
        let mut reader = out_reader;
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let (lock, cv) = &*sink.text;
            lock.lock().unwrap().extend_from_slice(&buf[..n]);
            cv.notify_all();
        }
    });
    let vm = VirtualMachine::new(config).expect("valid configuration");
    Running {
        vm,
        console,
        input: in_writer,
    }
}

/// A PVH small guest with `cpus` vCPUs and 64 MiB.
pub fn pvh(guest: &Path, cpus: u32) -> VirtualMachineConfiguration {
    VirtualMachineConfiguration::linux(cpus, 64 << 20, guest.to_owned(), None, "")
}

/// True when KVM is usable; otherwise prints SKIPPED (or fails under VIRTKIT_REQUIRE_ALL).
pub fn kvm_available() -> bool {
    virtkit_testkit::require_kvm()
}
