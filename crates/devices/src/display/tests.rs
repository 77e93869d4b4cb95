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

/// A display with a mode set, its framebuffer BAR placed and decoded, and a pattern drawn.
fn drawn_display() -> (BochsDisplay, DisplayHandle) {
    let (mut d, handle) = display(640, 480);
    dispi_write(&mut d, 1, 640);
    dispi_write(&mut d, 2, 480);
    dispi_write(&mut d, 3, 32);
    dispi_write(&mut d, 4, dispi::ENABLED | dispi::LFB_ENABLED);
    dispi_write(&mut d, 9, 2);
    for y in 0..482u64 {
        d.write_bar(
            FRAMEBUFFER_BAR,
            y * 2560 + (y % 640) * 4,
            &[y as u8, 0x80, 0xff, 0],
        );
    }
    // Off screen, beyond the visible frame: kept too.
    d.write_bar(FRAMEBUFFER_BAR, (16 << 20) - 4, &[1, 2, 3, 4]);
    let config = d.configuration_mut();
    config
        .set_bar_address(usize::from(FRAMEBUFFER_BAR), 0xc000_0000)
        .unwrap();
    config
        .set_bar_address(usize::from(MMIO_BAR), 0xc100_0000)
        .unwrap();
    config.enable(virtkit_machine::pci::COMMAND_MEMORY);
    (d, handle)
}

#[test]
fn a_saved_display_comes_back_with_its_mode_bars_and_whole_video_memory() {
    let (d, handle) = drawn_display();
    let saved = d.save_state().unwrap();
    assert!(
        saved.video_memory.len() < 64 << 10,
        "16 MiB of mostly black encodes small: {} bytes",
        saved.video_memory.len()
    );
    // Through the state file's JSON, as it is stored.
    let saved: SavedDisplay = serde_json::from_value(serde_json::to_value(&saved).unwrap()).unwrap();

    let (mut restored, restored_handle) = display(640, 480);
    restored.restore_state(&saved).unwrap();
    assert_eq!(restored_handle.mode(), handle.mode());
    assert_eq!(restored_handle.frame(), handle.frame());
    assert_eq!(
        restored.configuration().mapped_bars(),
        d.configuration().mapped_bars()
    );
    let mut tail = [0u8; 4];
    restored.read_bar(FRAMEBUFFER_BAR, (16 << 20) - 4, &mut tail);
    assert_eq!(tail, [1, 2, 3, 4], "the memory off screen");
}

#[test]
fn a_mode_enabled_without_a_depth_shows_8_bits_per_pixel_without_panicking() {
    let (mut d, handle) = display(640, 480);
    dispi_write(&mut d, 1, 640);
    dispi_write(&mut d, 2, 480);
    dispi_write(&mut d, 4, dispi::ENABLED | dispi::NOCLEARMEM);
    let mode = handle.mode().unwrap();
    assert_eq!((mode.bits_per_pixel, mode.stride), (8, 640));
    d.write_bar(FRAMEBUFFER_BAR, 0, &[0x80]);
    let frame = handle.frame().unwrap();
    assert_eq!(frame.rgba[..4], [0x80, 0x80, 0x80, 0xff], "grey levels");
    // The same registers from a state file.
    let saved = d.save_state().unwrap();
    let (mut restored, restored_handle) = display(640, 480);
    restored.restore_state(&saved).unwrap();
    assert_eq!(restored_handle.frame(), Some(frame));
}

#[test]
fn saved_displays_that_do_not_fit_are_refused_and_change_nothing() {
    let (d, _) = drawn_display();
    let saved = d.save_state().unwrap();
    let (mut fresh, fresh_handle) = display(640, 480);
    let before = fresh.save_state().unwrap();
    let refused = |fresh: &mut BochsDisplay, saved: &SavedDisplay| fresh.restore_state(saved).unwrap_err();

    // Another display size: more video memory.
    let (big, _) = display(3840, 2160);
    let e = refused(&mut fresh, &big.save_state().unwrap());
    assert_eq!(
        e,
        DisplayStateError::MemorySize {
            saved: 32 << 20,
            here: 16 << 20
        }
    );
    assert!(e.to_string().contains("display size it was saved with"), "{e}");

    let mut damaged = saved.clone();
    damaged.video_memory.truncate(damaged.video_memory.len() / 2);
    assert_eq!(refused(&mut fresh, &damaged), DisplayStateError::Damaged);
    let mut short_bitmap = saved.clone();
    short_bitmap.pages = "AAAA".into();
    assert_eq!(refused(&mut fresh, &short_bitmap), DisplayStateError::Damaged);
    let mut not_base64 = saved.clone();
    not_base64.video_memory = "%%%".into();
    assert_eq!(refused(&mut fresh, &not_base64), DisplayStateError::Damaged);
    // A stream that decodes to more than the memory.
    let mut too_long = saved.clone();
    {
        use std::io::Write;
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&vec![0u8; (16 << 20) + 1]).unwrap();
        too_long.video_memory = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            encoder.finish().unwrap(),
        );
    }
    assert_eq!(refused(&mut fresh, &too_long), DisplayStateError::Damaged);

    let mut other_device = saved.clone();
    other_device.pci_config[2] ^= 1;
    assert_eq!(
        refused(&mut fresh, &other_device),
        DisplayStateError::Registers("it was saved from another kind of PCI device")
    );
    let mut bad_depth: serde_json::Value = serde_json::to_value(&saved).unwrap();
    bad_depth["dispi"]["regs"][3] = 7.into();
    let bad_depth: SavedDisplay = serde_json::from_value(bad_depth).unwrap();
    assert!(matches!(
        refused(&mut fresh, &bad_depth),
        DisplayStateError::Registers(_)
    ));

    assert_eq!(
        fresh.save_state().unwrap(),
        before,
        "every refusal changed nothing"
    );
    assert!(fresh_handle.frame().is_none());
    fresh.restore_state(&saved).unwrap();
    assert!(fresh_handle.frame().is_some());
}
