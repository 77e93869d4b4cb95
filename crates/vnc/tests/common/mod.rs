//! What the server tests share: an input sink that records, a test pattern, a temporary
//! directory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use virtkit_vnc::{InputSink, KeyEvent, MemoryFramebuffer, PointerEvent, Rect};

/// An input event the sink saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Key(KeyEvent),
    Pointer(PointerEvent),
}

/// Records every event, and lets a test wait for them.
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: Mutex<Vec<Event>>,
    changed: Condvar,
    leds: Mutex<Option<u8>>,
}

impl RecordingSink {
    /// The LEDs [`InputSink::leds`] gives from now on.
    pub fn set_leds(&self, leds: Option<u8>) {
        *self.leds.lock().unwrap() = leds;
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the events (or 10 s pass), and returns them.
    pub fn wait_for(&self, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = self.events.lock().unwrap();
        while !done(&events) && Instant::now() < deadline {
            events = self
                .changed
                .wait_timeout(events, Duration::from_millis(50))
                .unwrap()
                .0;
        }
        events.clone()
    }
}

impl InputSink for RecordingSink {
    fn key(&self, event: KeyEvent) {
        self.events.lock().unwrap().push(Event::Key(event));
        self.changed.notify_all();
    }
    fn pointer(&self, event: PointerEvent) {
        self.events.lock().unwrap().push(Event::Pointer(event));
        self.changed.notify_all();
    }
    fn leds(&self) -> Option<u8> {
        *self.leds.lock().unwrap()
    }
}

/// A frame with areas every encoding path meets: flat colour, stripes, gradients, noise.
pub fn pattern(width: u32, height: u32) -> Vec<u32> {
    let mut seed = 0x2545_f491u32;
    (0..width * height)
        .map(|i| {
            let (x, y) = (i % width, i / width);
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            match (x * 5 / width, y * 2 / height) {
                (0, 0) => 0x0020_4080,
                (1, 0) => [0x00ff_0000, 0x0000_ff00, 0x0000_00ff][(x % 3) as usize],
                (2, _) => (x & 0xff) << 16 | (y & 0xff) << 8 | ((x + y) & 0xff),
                (3, 1) => seed & 0x00ff_ffff,
                _ => ((x / 7 + y / 5) % 11) * 0x0015_1515,
            }
        })
        .collect()
}

/// A framebuffer showing [`pattern`].
pub fn pattern_framebuffer(width: u32, height: u32) -> MemoryFramebuffer {
    let fb = MemoryFramebuffer::new(width, height);
    fb.write_rect(Rect::full(width, height), &pattern(width, height));
    fb
}

/// A fresh directory under the target's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("virtkit-vnc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
