//! What a process running a VM waits on — state changes, signals, the console's quit key — and
//! how it reacts: the first SIGTERM/SIGINT asks the guest to shut down (the ACPI power button),
//! a second one, or the quit key, stops the VM at once. Shared by `virtkit run` with flags and
//! the VM process of a named VM.

use std::sync::mpsc::{channel, Receiver, Sender};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};
use virtkit::{VirtualMachine, VmState};

use crate::exit::CliError;

/// Tells the guest's console drivers (`hvc0`) this terminal's size, if there is a terminal.
pub fn resize_consoles(vm: &VirtualMachine) {
    if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdout()) {
        if size.ws_col > 0 && size.ws_row > 0 {
            vm.resize_consoles(size.ws_col, size.ws_row);
        }
    }
}

pub enum Event {
    State(VmState),
    Signal(i32),
    Quit,
}

/// Signals caught and state changes subscribed to, not yet forwarded (see [`Events::catch`]).
pub struct Forwarding {
    signals: signal_hook::iterator::Signals,
    states: Receiver<VmState>,
    events: Sender<Event>,
}

impl Forwarding {
    /// Starts the two threads that forward them to the events.
    pub fn start(self) -> Result<(), CliError> {
        let Forwarding {
            mut signals,
            states,
            events,
        } = self;
        let signal_events = events.clone();
        virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::CliSignals)
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if signal_events.send(Event::Signal(sig)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| CliError::with_chain("cannot start the signal thread", &e))?;
        std::thread::spawn(move || {
            for state in states {
                if events.send(Event::State(state)).is_err() {
                    return;
                }
            }
        });
        Ok(())
    }
}

/// The channel every source sends its events to.
pub struct Events {
    sender: Sender<Event>,
    receiver: Receiver<Event>,
}

impl Events {
    pub fn new() -> Events {
        let (sender, receiver) = channel();
        Events { sender, receiver }
    }

    /// SIGTERM, SIGINT, SIGHUP and SIGWINCH (the terminal's size changed) and `vm`'s state
    /// changes will become events: the signals' handlers are installed and the states
    /// subscribed to now, before the VM starts, so nothing is missed; the threads that read
    /// them start with [`Forwarding::start`], once the guest runs. Made before the VM's start,
    /// those threads kept its first instruction waiting (~0.1 ms here); a signal that comes
    /// meanwhile waits in signal-hook's pipe.
    pub fn catch(&self, vm: &VirtualMachine) -> Result<Forwarding, CliError> {
        let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGWINCH])
            .map_err(|e| CliError::with_chain("cannot install signal handlers", &e))?;
        Ok(Forwarding {
            signals,
            states: vm.state_changes(),
            events: self.sender.clone(),
        })
    }

    /// A message on `quit` (the console's Ctrl-A x) becomes [`Event::Quit`].
    pub fn forward_quit(&self, quit: Receiver<()>) {
        let events = self.sender.clone();
        std::thread::spawn(move || {
            if quit.recv().is_ok() {
                let _ = events.send(Event::Quit);
            }
        });
    }

    /// Reacts to events until the VM is stopping or has stopped. `hangup_stops`: whether SIGHUP (the terminal
    /// went away) stops the VM; `announce`: say on the terminal what the first signal does.
    pub fn drive(self, vm: &VirtualMachine, hangup_stops: bool, announce: bool) {
        drop(self.sender);
        let mut stop_requests = 0;
        for event in self.receiver {
            match event {
                // From `stopping` on there is nothing left to drive: `RunningVm::wait` takes
                // over, and it also ends a stop whose vCPUs do not answer.
                Event::State(VmState::Stopping | VmState::Stopped | VmState::Error) => return,
                Event::State(_) => {}
                Event::Quit => {
                    let _ = vm.stop();
                }
                Event::Signal(SIGHUP) if !hangup_stops => {}
                Event::Signal(SIGWINCH) => resize_consoles(vm),
                Event::Signal(sig) => {
                    stop_requests += 1;
                    if stop_requests == 1 && sig != SIGHUP {
                        if announce {
                            err!("virtkit: asking the guest to shut down (signal again to stop it at once)\r\n");
                        }
                        if vm.request_stop().is_err() {
                            let _ = vm.stop();
                        }
                    } else {
                        let _ = vm.stop();
                    }
                }
            }
        }
    }
}
