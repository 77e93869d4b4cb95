//! The user's terminal while a guest owns it: raw mode that is always restored, and an escape
//! key (Ctrl-A x) to leave, since Ctrl-C belongs to the guest.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use rustix::termios::{self, OptionalActions, Termios};
use virtkit_sandbox::{Builder, ThreadRole};

/// The terminal settings to put back, wherever the process leaves from.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Whether standard input is a terminal.
pub fn stdin_is_terminal() -> bool {
    termios::isatty(rustix::stdio::stdin())
}

fn restore_saved() {
    if let Some(t) = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &t);
    }
}

/// Raw mode on standard input for as long as this lives.
pub struct RawMode(());

impl RawMode {
    pub fn enter() -> io::Result<RawMode> {
        let stdin = rustix::stdio::stdin();
        let original = termios::tcgetattr(stdin)?;
        let mut raw = original.clone();
        raw.make_raw();
        // Keep output post-processing so guest "\n" still returns the carriage on our side
        // only if the guest does not; guests send "\r\n" themselves, so leave OPOST off.
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(original);
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_saved();
            previous_hook(info);
        }));
        termios::tcsetattr(stdin, OptionalActions::Now, &raw)?;
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_saved();
    }
}

const CTRL_A: u8 = 0x01;

/// What the escape filter makes of input bytes.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    after_ctrl_a: bool,
}

impl EscapeFilter {
    /// Appends the bytes for the guest to `out`; returns true when the user asked to quit.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.after_ctrl_a {
                self.after_ctrl_a = false;
                match b {
                    b'x' | b'X' => return true,
                    CTRL_A => out.push(CTRL_A),
                    other => out.extend_from_slice(&[CTRL_A, other]),
                }
            } else if b == CTRL_A {
                self.after_ctrl_a = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

/// Copies standard input into a pipe for the guest, watching for Ctrl-A x. Returns the pipe's
/// read end for the serial port.
pub fn forward_stdin_with_escape(quit: Sender<()>) -> io::Result<OwnedFd> {
    let (reader, mut writer) = io::pipe()?;
    Builder::new(ThreadRole::CliStdin)
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut filter = EscapeFilter::default();
            let mut buf = [0u8; 512];
            let mut out = Vec::with_capacity(512);
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                out.clear();
                let quit_now = filter.feed(&buf[..n], &mut out);
                if !out.is_empty() && writer.write_all(&out).is_err() {
                    return;
                }
                if quit_now {
                    let _ = quit.send(());
                    return;
                }
            }
        })?;
    Ok(reader.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_other_bytes_pass_through() {
        let mut f = EscapeFilter::default();
        let mut out = Vec::new();
        assert!(!f.feed(b"ls\r", &mut out));
        assert!(!f.feed(&[CTRL_A, CTRL_A, CTRL_A, b'c'], &mut out));
        assert_eq!(out, [b'l', b's', b'\r', CTRL_A, CTRL_A, b'c']);
        out.clear();
        assert!(!f.feed(&[CTRL_A], &mut out), "split across reads");
        assert!(f.feed(b"x", &mut out));
        assert!(out.is_empty());
    }
}
