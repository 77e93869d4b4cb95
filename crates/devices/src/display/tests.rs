//! The display's registers as SeaBIOS's bochs-display VGA BIOS and Linux's bochs-drm use them,
//! on a plain buffer.

use super::*;

fn display(width: u16, height: u16) -> (BochsDisplay, DisplayHandle) {
    let size = BochsDisplay::memory_size(width, height) as usize;
    BochsDisplay::new(width, height, Box::new(BufferMemory::new(size))).unwrap()
}

fn dispi_read(d: &mut BochsDisplay, index: u64) -> u16 {
    let mut b = [0u8; 2];
    d.read_bar(MMIO_BAR, DISPI_OFFSET + 2 * index, &mut b);
    u16::from_le_bytes(b)
}

fn dispi_write(d: &mut BochsDisplay, index: u64, value: u16) {
    d.write_bar(MMIO_BAR, DISPI_OFFSET + 2 * index, &value.to_le_bytes());
}

#[test]
fn the_pci_identity_and_bars_are_qemus_bochs_display() {
    let (d, _) = display(1280, 800);
    let c = d.configuration();
    assert_eq!(c.bytes(0, 4), [0x34, 0x12, 0x11, 0x11]);
    assert_eq!(c.bytes(0x09, 3), [0x00, 0x00, 0x03]);
    let bars = c.bars();
    assert_eq!(bars.len(), 2);
    assert_eq!(
        (bars[0].index, bars[0].size, bars[0].prefetchable),
        (0, 16 << 20, true)
    );
    assert_eq!((bars[1].index, bars[1].size), (2, 4096));
}

#[test]
fn the_edid_offers_the_configured_size_as_the_firmware_reads_it() {
    let (mut d, _) = display(1280, 800);
    let mut e = [0u8; 128];
    d.read_bar(MMIO_BAR, 0, &mut e);
    assert_eq!(edid::preferred_mode(&e), Some((1280, 800)));
    // SeaBIOS's reading: width from bytes 56 and 58, height from 59 and 61.
    assert_eq!(u16::from(e[56]) | u16::from(e[58] & 0xf0) << 4, 1280);
    assert_eq!(u16::from(e[59]) | u16::from(e[61] & 0xf0) << 4, 800);
    assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
    let (mut big, _) = display(3840, 2160);
    big.read_bar(MMIO_BAR, 0, &mut e);
    assert_eq!(edid::preferred_mode(&e), Some((3840, 2160)));
}

#[test]
fn a_mode_set_as_the_vga_bios_does_shows_the_framebuffer() {
    let (mut d, handle) = display(640, 480);
    assert_eq!(dispi_read(&mut d, 0), dispi::ID5);
    assert_eq!(dispi_read(&mut d, 10), 256, "16 MiB in 64 KiB units");
    assert!(handle.frame().is_none(), "dark until a mode is enabled");
    // Some pixels before the mode: the enable clears the memory.
    d.write_bar(FRAMEBUFFER_BAR, 0, &[9; 16]);
    dispi_write(&mut d, 1, 640);
    dispi_write(&mut d, 2, 480);
    dispi_write(&mut d, 3, 32);
    dispi_write(&mut d, 4, dispi::ENABLED | dispi::LFB_ENABLED);
    assert_eq!(dispi_read(&mut d, 6), 640, "virtual width follows");
    let mode = handle.mode().unwrap();
    assert_eq!((mode.width, mode.height, mode.stride), (640, 480, 2560));
    // A red pixel at (1, 0) and a blue one at (0, 1), XRGB little endian.
    d.write_bar(FRAMEBUFFER_BAR, 4, &[0, 0, 0xff, 0]);
    d.write_bar(FRAMEBUFFER_BAR, 2560, &[0xff, 0, 0, 0]);
    let frame = handle.frame().unwrap();
    assert_eq!((frame.width, frame.height), (640, 480));
    assert_eq!(frame.rgba[..8], [0, 0, 0, 0xff, 0xff, 0, 0, 0xff]);
    assert_eq!(frame.rgba[640 * 4..640 * 4 + 4], [0, 0, 0xff, 0xff]);
    // Panning: the frame starts one line down.
    dispi_write(&mut d, 9, 1);
    assert_eq!(handle.frame().unwrap().rgba[..4], [0, 0, 0xff, 0xff]);
    // Disabled: dark again.
    dispi_write(&mut d, 4, 0);
    assert!(handle.frame().is_none());
}

#[test]
fn getcaps_reports_the_largest_mode_and_bad_values_are_clamped() {
    let (mut d, handle) = display(1024, 768);
    dispi_write(&mut d, 4, dispi::GETCAPS);
    assert_eq!(dispi_read(&mut d, 1), dispi::MAX_XRES);
    assert_eq!(dispi_read(&mut d, 3), 32);
    dispi_write(&mut d, 4, 0);
    dispi_write(&mut d, 1, 60_000);
    dispi_write(&mut d, 2, 60_000);
    dispi_write(&mut d, 3, 7);
    assert_eq!(dispi_read(&mut d, 1), dispi::MAX_XRES);
    assert_eq!(dispi_read(&mut d, 3), 32);
    // 4096 x 4096 x 4 bytes (64 MiB) does not fit the 16 MiB of video memory.
    dispi_write(&mut d, 4, dispi::ENABLED | dispi::NOCLEARMEM);
    assert!(
        handle.frame().is_none(),
        "a mode larger than the memory shows nothing"
    );
    // Writes outside the registers, odd sizes and other BARs are ignored without panicking.
    d.write_bar(MMIO_BAR, 0x501, &[1]);
    d.write_bar(MMIO_BAR, 0xfff, &[1, 2, 3, 4]);
    d.write_bar(5, 0, &[1]);
    d.write_bar(FRAMEBUFFER_BAR, u64::MAX - 1, &[1, 2, 3, 4]);
    let mut b = [0u8; 4];
    d.read_bar(FRAMEBUFFER_BAR, u64::MAX - 1, &mut b);
    assert_eq!(b, [0xff; 4]);
}

#[test]
fn sizes_outside_the_range_are_refused() {
    for (w, h) in [(100, 600), (800, 100), (5000, 600), (800, 5000)] {
        let err = BochsDisplay::new(w, h, Box::new(BufferMemory::new(16 << 20)))
            .err()
            .unwrap();
        assert!(err.to_string().contains(&format!("{w}x{h}")), "{err}");
    }
    assert_eq!(BochsDisplay::memory_size(3840, 2160), 32 << 20);
}
