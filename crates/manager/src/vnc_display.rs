//! The VM's display served over VNC: [`DisplayFramebuffer`] shows the bochs-display's visible
//! frame to `virtkit-vnc`, and the VM process serves it on the bundle's `vnc.sock` (owner-only;
//! `virtkit vnc NAME` says where).
//!
//! Changes are found by comparing each frame a client asks for with the last one (the bounding
//! box of what differs); KVM's dirty log on the framebuffer slot, which would make an idle
//! screen cost nothing, is still to come (issue 14).

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
        })
    }

    /// Takes the current frame and records what changed since the last one.
    fn refresh(&self) -> MutexGuard<'_, Seen> {
        let (width, height, pixels) = match self.display.frame_xrgb() {
            Some(frame) => frame,
            None => (
                self.dark.0,
                self.dark.1,
                vec![0; self.dark.0 as usize * self.dark.1 as usize],
            ),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
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
}
