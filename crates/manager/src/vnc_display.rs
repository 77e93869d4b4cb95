//! The VM's display served over VNC: [`DisplayFramebuffer`] shows the bochs-display's visible
//! frame to `virtkit-vnc`, and the VM process serves it on the bundle's `vnc.sock` (owner-only;
//! `virtkit vnc NAME` says where).
//!
//! A client's poll first asks the display whether anything may have changed (the mode, or KVM's
//! dirty log on the framebuffer's slot: one ioctl), so an idle screen costs no frame copy; only
//! then is the frame read and compared with the last one (the bounding box of what differs).

use std::sync::{Arc, Mutex, MutexGuard};

use virtkit_devices::display::DisplayHandle;
use virtkit_vnc::{Changes, Framebuffer, Rect};

/// How many changed rectangles are remembered for clients that are behind.
const HISTORY: usize = 32;

struct Seen {
    generation: u64,
    width: u32,
    height: u32,
    /// XRGB8888.
    pixels: Vec<u32>,
    /// (generation, what changed to reach it), oldest first.
    history: Vec<(u64, Rect)>,
    /// The first generation `history` describes the change to; older ones are unknown.
    known_from: u64,
}

/// The display as a VNC framebuffer. While the guest has set no mode, a black frame of the
/// configured size.
pub struct DisplayFramebuffer {
    display: DisplayHandle,
    dark: (u32, u32),
    seen: Mutex<Seen>,
    /// How many times the frame was read (for tests: an idle screen adds none).
    frames_read: std::sync::atomic::AtomicU64,
}

impl DisplayFramebuffer {
    pub fn new(display: DisplayHandle, width: u32, height: u32) -> Arc<DisplayFramebuffer> {
        Arc::new(DisplayFramebuffer {
            display,
            dark: (width, height),
            seen: Mutex::new(Seen {
                generation: 1,
                width,
                height,
                pixels: vec![0; width as usize * height as usize],
                history: Vec::new(),
                known_from: 2,
            }),
            frames_read: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many times the frame was read.
    pub fn frames_read(&self) -> u64 {
        self.frames_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the current frame, if the display says it may have changed, and records what
    /// changed since the last one.
    fn refresh(&self) -> MutexGuard<'_, Seen> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !self.display.take_changed() {
            return seen;
        }
        self.frames_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (width, height, pixels) = match self.display.frame_xrgb() {
            Some(frame) => frame,
            None => (
                self.dark.0,
                self.dark.1,
                vec![0; self.dark.0 as usize * self.dark.1 as usize],
            ),
        };
        if (width, height) != (seen.width, seen.height) {
            seen.generation += 1;
            seen.width = width;
            seen.height = height;
            seen.pixels = pixels;
            seen.history.clear();
            seen.known_from = seen.generation + 1;
            return seen;
        }
        if let Some(rect) = changed(&seen.pixels, &pixels, width) {
            seen.generation += 1;
            let generation = seen.generation;
            seen.history.push((generation, rect));
            if seen.history.len() > HISTORY {
                let (dropped, _) = seen.history.remove(0);
                seen.known_from = dropped + 1;
            }
            seen.pixels = pixels;
        }
        seen
    }
}

/// The bounding box of the pixels that differ, if any.
fn changed(old: &[u32], new: &[u32], width: u32) -> Option<Rect> {
    let width = width as usize;
    if width == 0 {
        return None;
    }
    let rows_differ = |y: usize| old[y * width..(y + 1) * width] != new[y * width..(y + 1) * width];
    let rows = new.len() / width;
    let top = (0..rows).find(|&y| rows_differ(y))?;
    let bottom = (top..rows).rev().find(|&y| rows_differ(y))?;
    let (mut left, mut right) = (width, 0);
    for y in top..=bottom {
        let (a, b) = (&old[y * width..(y + 1) * width], &new[y * width..(y + 1) * width]);
        if let Some(l) = (0..width).find(|&x| a[x] != b[x]) {
            left = left.min(l);
            right = right.max((l..width).rev().find(|&x| a[x] != b[x]).unwrap_or(l));
        }
    }
    Some(Rect {
        x: left as u32,
        y: top as u32,
        width: (right - left + 1) as u32,
        height: (bottom - top + 1) as u32,
    })
}

impl Framebuffer for DisplayFramebuffer {
    fn size(&self) -> (u32, u32) {
        let seen = self.refresh();
        (seen.width, seen.height)
    }

    fn read_rect(&self, rect: Rect, out: &mut [u32]) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let width = seen.width as usize;
        for row in 0..rect.height as usize {
            let y = rect.y as usize + row;
            if y >= seen.height as usize {
                break;
            }
            let x0 = (rect.x as usize).min(width);
            let x1 = (rect.x as usize + rect.width as usize).min(width);
            let target = &mut out[row * rect.width as usize..][..x1 - x0];
            target.copy_from_slice(&seen.pixels[y * width + x0..y * width + x1]);
        }
    }

    fn generation(&self) -> u64 {
        self.refresh().generation
    }

    fn changes_since(&self, since: u64) -> Changes {
        let seen = self.refresh();
        let rects = if since >= seen.generation {
            Some(Vec::new())
        } else if since + 1 >= seen.known_from {
            Some(
                seen.history
                    .iter()
                    .filter(|(g, _)| *g > since)
                    .map(|(_, r)| *r)
                    .collect(),
            )
        } else {
            None
        };
        Changes {
            generation: seen.generation,
            rects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounding_box_of_what_differs() {
        let old = vec![0u32; 8 * 4];
        let mut new = old.clone();
        assert_eq!(changed(&old, &new, 8), None);
        new[8 + 2] = 1; // (2, 1)
        new[2 * 8 + 5] = 1; // (5, 2)
        assert_eq!(
            changed(&old, &new, 8),
            Some(Rect {
                x: 2,
                y: 1,
                width: 4,
                height: 2
            })
        );
    }

    /// Video memory whose changes the test decides, as KVM's dirty log would say them.
    struct Logged {
        memory: Arc<virtkit_devices::display::BufferMemory>,
        changed: Arc<std::sync::atomic::AtomicBool>,
    }

    impl virtkit_devices::display::VideoMemory for Logged {
        fn size(&self) -> u64 {
            self.memory.size()
        }
        fn read(&self, offset: u64, data: &mut [u8]) {
            self.memory.read(offset, data)
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.memory.write(offset, data)
        }
        fn copy_out(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
            self.memory.copy_out(offset, len)
        }
        fn moved(&mut self, _address: Option<u64>) {}
        fn take_changed(&self) -> bool {
            self.changed.swap(false, std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn an_idle_screen_is_not_read_again_and_a_change_is_found() {
        use virtkit_devices::display::{BochsDisplay, VideoMemory, MMIO_BAR};
        use virtkit_machine::pci::PciDevice;
        let changed = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let memory = Arc::new(virtkit_devices::display::BufferMemory::new(16 << 20));
        let (mut device, handle) = BochsDisplay::new(
            320,
            200,
            Box::new(Logged {
                memory: memory.clone(),
                changed: changed.clone(),
            }),
        )
        .unwrap();
        // The guest sets 320x200x32 through the dispi registers (BAR 2, 0x500 + 2 * index).
        for (index, value) in [(1u64, 320u16), (2, 200), (3, 32), (4, 0x41)] {
            device.write_bar(MMIO_BAR, 0x500 + 2 * index, &value.to_le_bytes());
        }
        let fb = DisplayFramebuffer::new(handle, 320, 200);
        let first = fb.generation();
        assert_eq!(fb.frames_read(), 1);
        // Idle: nothing changed, no frame is read, however often clients poll.
        for _ in 0..10 {
            assert_eq!(fb.generation(), first);
        }
        assert_eq!(fb.frames_read(), 1);
        // The guest draws a pixel at (3, 2): the log says so, the frame is read, the change found.
        memory.write((2 * 320 + 3) * 4, &[0xff, 0, 0, 0]);
        changed.store(true, std::sync::atomic::Ordering::Relaxed);
        let changes = fb.changes_since(first);
        assert_eq!(fb.frames_read(), 2);
        assert_eq!(
            changes.rects,
            Some(vec![Rect {
                x: 3,
                y: 2,
                width: 1,
                height: 1
            }])
        );
    }
}
