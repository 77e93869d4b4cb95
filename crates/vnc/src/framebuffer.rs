//! What the server reads ([`Framebuffer`]) and what it feeds ([`InputSink`]), and an in-memory
//! framebuffer ([`MemoryFramebuffer`]) for tests and screenshots.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// A rectangle of the framebuffer, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Rect {
    /// A rectangle from its corner and size.
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Rect { x, y, width, height }
    }

    /// The whole of a `width` x `height` frame.
    pub const fn full(width: u32, height: u32) -> Self {
        Rect {
            x: 0,
            y: 0,
            width,
            height,
        }
    }

    /// No pixel at all.
    pub const fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// One past the right column (saturating, so a hostile rectangle never overflows).
    pub const fn right(&self) -> u32 {
        self.x.saturating_add(self.width)
    }

    /// One past the bottom row.
    pub const fn bottom(&self) -> u32 {
        self.y.saturating_add(self.height)
    }

    /// The pixels both rectangles cover; `None` when they do not overlap.
    pub fn intersect(&self, other: &Rect) -> Option<Rect> {
        let x = self.x.max(other.x);
        let y = self.y.max(other.y);
        let right = self.right().min(other.right());
        let bottom = self.bottom().min(other.bottom());
        (right > x && bottom > y).then(|| Rect::new(x, y, right - x, bottom - y))
    }

    /// The smallest rectangle covering both.
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        Rect::new(
            x,
            y,
            self.right().max(other.right()) - x,
            self.bottom().max(other.bottom()) - y,
        )
    }

    /// Whether `other` lies entirely inside this rectangle.
    pub fn contains(&self, other: &Rect) -> bool {
        other.x >= self.x
            && other.y >= self.y
            && other.right() <= self.right()
            && other.bottom() <= self.bottom()
    }

    /// Number of pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// What changed since a generation the caller saw (see [`Framebuffer::changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The framebuffer's generation now; pass it to the next `changes_since`.
    pub generation: u64,
    /// The rectangles written since then, or `None` when the framebuffer no longer knows (too
    /// many changes, or a size change): the caller must take the whole frame as changed.
    pub rects: Option<Vec<Rect>>,
}

/// A framebuffer the VNC server can show.
///
/// Pixels are 32-bit **XRGB8888 little-endian**: each pixel is the `u32` `0x00RRGGBB` (in
/// memory the bytes B, G, R, X; the top byte is ignored). That is the bochs-display's 32-bpp
/// format, DRM's `XRGB8888` and the RFB pixel format "32 bpp, depth 24, little-endian,
/// red shift 16, green shift 8, blue shift 0".
///
/// Every method takes `&self` and may be called from several client threads at once; the server
/// reads pixels only when a client asked for an update, so a slow client never makes the
/// producer wait on it (an implementation should only hold its lock while copying).
pub trait Framebuffer: Send + Sync {
    /// Width and height in pixels (a width or height of 0 is a frame with nothing to show).
    fn size(&self) -> (u32, u32);

    /// Copies `rect` (already inside the frame) into `out`, row by row, `rect.width` pixels per
    /// row; `out.len()` is exactly `rect.width * rect.height`. A rectangle that is no longer
    /// inside the frame (it shrank meanwhile) is clipped and the rest left as it is.
    fn read_rect(&self, rect: Rect, out: &mut [u32]);

    /// The current generation, a counter that grows whenever a pixel or the size changes.
    fn generation(&self) -> u64;

    /// What changed after generation `since`. `rects: Some(vec![])` means nothing did.
    fn changes_since(&self, since: u64) -> Changes;
}

/// A key press or release from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEvent {
    /// The X11 keysym (`XK_a` = 0x61, `XK_Return` = 0xff0d, ...).
    pub keysym: u32,
    /// Pressed (`true`) or released.
    pub down: bool,
    /// QEMU's extended key event: the XT scancode of the key, when the client sent one. Keys with
    /// the 0xE0 prefix have the high bit of the low byte set (right Ctrl: 0x9d), as QEMU's
    /// protocol extension defines.
    pub scancode: Option<u32>,
}

/// A pointer position and button state from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointerEvent {
    /// Column, inside the frame the client was last told about (clamped by the server).
    pub x: u16,
    /// Row.
    pub y: u16,
    /// Buttons held: bit 0 left, 1 middle, 2 right, 3/4 wheel up/down, 5/6 wheel left/right.
    pub buttons: u8,
}

/// Where clients' keyboard and pointer events go (the PS/2 or virtio-input devices later).
/// Called from the client's thread; it must not block for long.
pub trait InputSink: Send + Sync {
    /// A key went down or up.
    fn key(&self, event: KeyEvent);
    /// The pointer moved or a button changed.
    fn pointer(&self, event: PointerEvent);
    /// The keyboard LEDs the guest set, as QEMU's LED-state pseudo-encoding has them (bit 0
    /// Scroll Lock, 1 Num Lock, 2 Caps Lock); `None` without a keyboard.
    fn leds(&self) -> Option<u8> {
        None
    }
}

/// An [`InputSink`] that drops everything (a view-only display).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoInput;

impl InputSink for NoInput {
    fn key(&self, _event: KeyEvent) {}
    fn pointer(&self, _event: PointerEvent) {}
}

/// How many dirty rectangles a [`MemoryFramebuffer`] remembers; a client further behind gets
/// the whole frame.
const DIRTY_HISTORY: usize = 256;

#[derive(Debug)]
struct MemoryState {
    width: u32,
    height: u32,
    pixels: Vec<u32>,
    generation: u64,
    /// The rectangle written at each generation, oldest first; the generations of the last
    /// `history.len()` writes, up to `generation`.
    history: VecDeque<(u64, Rect)>,
    /// Generations at or before this one are not in `history` (or predate a size change).
    forgotten: u64,
}

/// A framebuffer in memory: a `Vec<u32>` of XRGB pixels with a bounded history of written
/// rectangles.
#[derive(Debug)]
pub struct MemoryFramebuffer {
    state: Mutex<MemoryState>,
}

impl MemoryFramebuffer {
    /// A black frame of `width` x `height` pixels.
    pub fn new(width: u32, height: u32) -> Self {
        MemoryFramebuffer {
            state: Mutex::new(MemoryState {
                width,
                height,
                pixels: vec![0; pixel_count(width, height)],
                generation: 1,
                history: VecDeque::new(),
                forgotten: 1,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // A panic while holding the lock leaves whole pixels behind; keep serving them.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `pixels` (row by row, `rect.width` per row) into `rect`, clipped to the frame,
    /// and records the rectangle as dirty. Panics if `pixels` is shorter than the rectangle.
    pub fn write_rect(&self, rect: Rect, pixels: &[u32]) {
        let mut state = self.lock();
        let Some(clipped) = rect.intersect(&Rect::full(state.width, state.height)) else {
            return;
        };
        let frame_width = state.width as usize;
        for row in 0..clipped.height as usize {
            let src_row = (clipped.y - rect.y) as usize + row;
            let src = src_row * rect.width as usize + (clipped.x - rect.x) as usize;
            let dst = (clipped.y as usize + row) * frame_width + clipped.x as usize;
            let len = clipped.width as usize;
            state.pixels[dst..dst + len].copy_from_slice(&pixels[src..src + len]);
        }
        state.mark_dirty(clipped);
    }

    /// Fills `rect` (clipped) with one colour.
    pub fn fill_rect(&self, rect: Rect, colour: u32) {
        let mut state = self.lock();
        let Some(clipped) = rect.intersect(&Rect::full(state.width, state.height)) else {
            return;
        };
        let frame_width = state.width as usize;
        for row in clipped.y..clipped.bottom() {
            let start = row as usize * frame_width + clipped.x as usize;
            state.pixels[start..start + clipped.width as usize].fill(colour);
        }
        state.mark_dirty(clipped);
    }

    /// Changes the size; the new frame is black and every client sees all of it as changed.
    pub fn resize(&self, width: u32, height: u32) {
        let mut state = self.lock();
        state.width = width;
        state.height = height;
        state.pixels = vec![0; pixel_count(width, height)];
        state.generation += 1;
        state.history.clear();
        state.forgotten = state.generation;
    }

    /// A copy of the whole frame: width, height and pixels (for screenshots).
    pub fn snapshot(&self) -> (u32, u32, Vec<u32>) {
        let state = self.lock();
        (state.width, state.height, state.pixels.clone())
    }
}

impl MemoryState {
    fn mark_dirty(&mut self, rect: Rect) {
        self.generation += 1;
        if self.history.len() == DIRTY_HISTORY {
            if let Some((generation, _)) = self.history.pop_front() {
                self.forgotten = generation;
            }
        }
        self.history.push_back((self.generation, rect));
    }
}

fn pixel_count(width: u32, height: u32) -> usize {
    usize::try_from(u64::from(width) * u64::from(height)).expect("the frame fits in memory")
}

impl Framebuffer for MemoryFramebuffer {
    fn size(&self) -> (u32, u32) {
        let state = self.lock();
        (state.width, state.height)
    }

    fn read_rect(&self, rect: Rect, out: &mut [u32]) {
        let state = self.lock();
        let Some(clipped) = rect.intersect(&Rect::full(state.width, state.height)) else {
            return;
        };
        let frame_width = state.width as usize;
        for row in 0..clipped.height as usize {
            let src = (clipped.y as usize + row) * frame_width + clipped.x as usize;
            let dst =
                ((clipped.y - rect.y) as usize + row) * rect.width as usize + (clipped.x - rect.x) as usize;
            let len = clipped.width as usize;
            if let (Some(to), Some(from)) = (out.get_mut(dst..dst + len), state.pixels.get(src..src + len)) {
                to.copy_from_slice(from);
            }
        }
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn changes_since(&self, since: u64) -> Changes {
        let state = self.lock();
        let rects = if since < state.forgotten || since > state.generation {
            None
        } else {
            Some(
                state
                    .history
                    .iter()
                    .filter(|(generation, _)| *generation > since)
                    .map(|(_, rect)| *rect)
                    .collect(),
            )
        };
        Changes {
            generation: state.generation,
            rects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rect_intersect_union_contains() {
        let a = Rect::new(0, 0, 10, 10);
        let b = Rect::new(5, 5, 10, 10);
        assert_eq!(a.intersect(&b), Some(Rect::new(5, 5, 5, 5)));
        assert_eq!(a.intersect(&Rect::new(10, 0, 5, 5)), None);
        assert_eq!(a.union(&b), Rect::new(0, 0, 15, 15));
        assert!(a.contains(&Rect::new(2, 2, 8, 8)));
        assert!(!a.contains(&b));
        let huge = Rect::new(u32::MAX - 1, u32::MAX - 1, u32::MAX, u32::MAX);
        assert_eq!(huge.right(), u32::MAX);
        assert_eq!(a.intersect(&huge), None);
    }

    #[test]
    fn memory_framebuffer_tracks_dirty_rects_by_generation() {
        let fb = MemoryFramebuffer::new(8, 4);
        let start = fb.generation();
        assert_eq!(fb.changes_since(start).rects, Some(vec![]));
        fb.fill_rect(Rect::new(1, 1, 2, 2), 0x00ff_0000);
        fb.write_rect(Rect::new(6, 3, 4, 4), &[7; 16]);
        let changes = fb.changes_since(start);
        assert_eq!(
            changes.rects,
            Some(vec![Rect::new(1, 1, 2, 2), Rect::new(6, 3, 2, 1)])
        );
        assert_eq!(fb.changes_since(changes.generation).rects, Some(vec![]));
        let mut out = vec![0; 4];
        fb.read_rect(Rect::new(1, 1, 2, 2), &mut out);
        assert_eq!(out, vec![0x00ff_0000; 4]);
        let (_, _, pixels) = fb.snapshot();
        assert_eq!(&pixels[3 * 8 + 6..], &[7, 7]);
    }

    #[test]
    fn memory_framebuffer_forgets_old_history_and_sizes() {
        let fb = MemoryFramebuffer::new(4, 4);
        let start = fb.generation();
        for i in 0..(DIRTY_HISTORY as u32 + 5) {
            fb.fill_rect(Rect::new(i % 4, 0, 1, 1), i);
        }
        assert_eq!(fb.changes_since(start).rects, None);
        let now = fb.generation();
        fb.resize(2, 2);
        assert_eq!(fb.size(), (2, 2));
        assert_eq!(fb.changes_since(now).rects, None);
        assert_eq!(fb.changes_since(fb.generation()).rects, Some(vec![]));
    }
}
