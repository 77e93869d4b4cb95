//! The EDID block the display offers (BAR 2, offset 0): EDID 1.4 with one preferred detailed
//! timing at the configured size, which SeaBIOS's bochs-display VGA BIOS, OVMF's QemuVideoDxe
//! and Linux's bochs-drm read as the screen's size.

/// One 128-byte EDID 1.4 block whose preferred mode is `width` × `height` at 60 Hz.
pub fn edid(width: u16, height: u16) -> [u8; 128] {
    let mut e = [0u8; 128];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "VKT" (three 5-bit letters, big-endian), product 0x0001, serial 0.
    let id = ((b'V' - b'@') as u16) << 10 | ((b'K' - b'@') as u16) << 5 | (b'T' - b'@') as u16;
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10] = 0x01;
    e[16] = 1; // week
    e[17] = 36; // 2026, counted from 1990
    e[18] = 1; // version 1.4
    e[19] = 4;
    e[20] = 0xa5; // digital, 8 bits per colour, DisplayPort
                  // Size unknown (0 x 0 cm), gamma 2.2, preferred timing is native, sRGB.
    e[23] = 120;
    e[24] = 0x06;
    // Chromaticity of sRGB.
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    // No established or standard timings besides the detailed one.
    for i in 0..8 {
        e[38 + 2 * i] = 0x01;
        e[39 + 2 * i] = 0x01;
    }
    detailed_timing(&mut e[54..72], width, height);
    // Display name.
    e[72..77].copy_from_slice(&[0, 0, 0, 0xfc, 0]);
    let name = b"virtkit\n     ";
    e[77..90].copy_from_slice(name);
    // Range limits: 50-125 Hz vertical, 30-160 kHz horizontal, 600 MHz pixel clock.
    e[90..108].copy_from_slice(&[
        0, 0, 0, 0xfd, 0, 50, 125, 30, 160, 60, 0x00, 0x0a, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
    ]);
    // Dummy descriptor.
    e[108..111].copy_from_slice(&[0, 0, 0]);
    e[111] = 0x10;
    e[126] = 0; // no extension blocks
    let sum = e[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

/// A detailed timing descriptor for `width` × `height` with CVT-like reduced blanking.
fn detailed_timing(d: &mut [u8], width: u16, height: u16) {
    let (hblank, vblank) = (160u32, 30u32);
    let (w, h) = (u32::from(width), u32::from(height));
    let clock_10khz = ((w + hblank) * (h + vblank) * 60 / 10_000).max(1);
    d[0..2].copy_from_slice(&(clock_10khz as u16).to_le_bytes());
    d[2] = (w & 0xff) as u8;
    d[3] = (hblank & 0xff) as u8;
    d[4] = (((w >> 8) & 0xf) << 4 | ((hblank >> 8) & 0xf)) as u8;
    d[5] = (h & 0xff) as u8;
    d[6] = (vblank & 0xff) as u8;
    d[7] = (((h >> 8) & 0xf) << 4 | ((vblank >> 8) & 0xf)) as u8;
    // Sync offset 48 / width 32 pixels, 3 / 6 lines.
    d[8] = 48;
    d[9] = 32;
    d[10] = (3 << 4) | 6;
    d[11] = 0;
    d[17] = 0x1e; // digital separate sync, both positive
}

/// The preferred mode an EDID block says, as firmware reads it (`None` if not one).
pub fn preferred_mode(e: &[u8; 128]) -> Option<(u16, u16)> {
    if e[..8] != [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]
        || e.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0
    {
        return None;
    }
    let w = u16::from(e[56]) | u16::from(e[58] & 0xf0) << 4;
    let h = u16::from(e[59]) | u16::from(e[61] & 0xf0) << 4;
    Some((w, h))
}
