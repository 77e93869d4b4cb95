//! COM1: vm-superio's 16550 on the port bus, its interrupt through an irqfd, and a thread that
//! feeds host input into its receive FIFO.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the UART's interrupt by signalling an eventfd that KVM injects as an edge.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// COM1's registers and receive FIFO as saved (vm-superio's `SerialState`, serde-able).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// A 16550 UART whose output goes to `out`.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(IrqTrigger(interrupt), out),
        }
    }

    /// The UART's registers and receive FIFO, for a saved machine.
    pub fn state(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Puts saved registers and FIFO back; the interrupt and the host output stay this
    /// device's. Fails only for a FIFO longer than the UART's (a damaged state).
    pub fn restore_state(&mut self, state: &SerialState) -> io::Result<()> {
        let trigger = IrqTrigger(self.uart.interrupt_evt().0.try_clone()?);
        let placeholder_trigger = IrqTrigger(self.uart.interrupt_evt().0.try_clone()?);
        let saved = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        // Checked before the writer moves, so a refused state leaves the device as it was: the
        // FIFO's size is what is free in it plus what it holds.
        let fifo_size = self.uart.fifo_capacity() + self.uart.state().in_buffer.len();
        if saved.in_buffer.len() > fifo_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the saved serial receive FIFO is longer than the UART's",
            ));
        }
        let old = std::mem::replace(
            &mut self.uart,
            Serial::new(placeholder_trigger, Box::new(io::sink()) as Box<dyn Write + Send>),
        );
        let out = old.into_writer();
        self.uart = Serial::from_state(&saved, trigger, vm_superio::serial::NoEvents, out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
        Ok(())
    }

    /// Puts host input into the receive FIFO; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, b) {
                crate::warn_ratelimited!("serial output failed: {e:?}");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SerialInputError {
    #[error("cannot start the serial input thread")]
    Spawn(#[source] io::Error),
}

/// Copies bytes from `input` into the UART until EOF or until `stop` is signalled.
///
/// The 16550 FIFO holds 64 bytes; when the guest is slow to drain it, input waits here rather
/// than being dropped.
pub fn spawn_serial_input(
    serial: Arc<Mutex<SerialDevice>>,
    input: OwnedFd,
    stop: EventFd,
) -> Result<JoinHandle<()>, SerialInputError> {
    virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::SerialInput)
        .name("serial-in".into())
        .spawn(move || input_loop(&serial, &input, &stop))
        .map_err(SerialInputError::Spawn)
}

fn poll_readable(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<()> {
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the call's duration.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn input_loop(serial: &Mutex<SerialDevice>, input: &OwnedFd, stop: &EventFd) {
    let mut buf = [0u8; 256];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: input.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if poll_readable(&mut fds, -1).is_err() || fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        // SAFETY: reads at most buf.len() bytes into a buffer we own, from a descriptor we own.
        let n = unsafe { libc::read(input.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            let e = io::Error::last_os_error();
            if n < 0 && matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                continue;
            }
            return; // EOF or a real error: no more input.
        }
        let mut pending = &buf[..n as usize];
        while !pending.is_empty() {
            let taken = serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue_input(pending);
            pending = &pending[taken..];
            if !pending.is_empty() {
                let mut stop_fd = [libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                if poll_readable(&mut stop_fd, 2).is_err() || stop_fd[0].revents != 0 {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output_and_raise_no_error() {
        let sink = Sink::default();
        let mut dev = SerialDevice::new(EventFd::new(0).unwrap(), Box::new(sink.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_thread_delivers_more_than_a_fifo_of_bytes_in_order() {
        let dev = Arc::new(Mutex::new(SerialDevice::new(
            EventFd::new(0).unwrap(),
            Box::new(io::sink()),
        )));
        let (reader, mut writer) = std::io::pipe().unwrap();
        let stop = EventFd::new(0).unwrap();
        let handle = spawn_serial_input(dev.clone(), reader.into(), stop.try_clone().unwrap()).unwrap();
        let input: Vec<u8> = (0..200u8).collect();
        writer.write_all(&input).unwrap();
        drop(writer);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < input.len() && std::time::Instant::now() < deadline {
            let mut d = dev.lock().unwrap();
            let mut lsr = [0u8];
            d.read(5, &mut lsr);
            if lsr[0] & 1 != 0 {
                let mut b = [0u8];
                d.read(0, &mut b);
                got.push(b[0]);
            } else {
                drop(d);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        stop.write(1).unwrap();
        handle.join().unwrap();
        assert_eq!(got, input);
    }
}
