//! Rectangle encodings: Raw and ZRLE (RFC 6143 sections 7.7.1 and 7.7.6).
//!
//! An update is sent in bands, each its own rectangle, so the encoder never holds more than one
//! band of the frame (ZRLE needs a band's compressed length before its bytes). Raw bands are one
//! tile row (64 rows: the band and its bytes stay in the CPU's caches, a 12-byte header is
//! nothing next to them); ZRLE bands are whole tile rows of at most [`BAND_PIXELS`] pixels, since
//! each ZRLE rectangle costs a header, a length and a zlib sync flush: an 800x600 screen is one
//! ([`Encoder::band_rows`]).

use std::collections::HashMap;
use std::io::{self, Write};

use flate2::{Compress, Compression, FlushCompress};

use crate::framebuffer::{Framebuffer, Rect};
use crate::protocol::{encoding, PixelFormat};

/// Most pixels in one ZRLE band (2 MiB of pixels; a 4096-pixel-wide screen still gets 128 rows).
pub const BAND_PIXELS: u32 = 512 * 1024;
/// ZRLE's tile width and height.
const TILE: u32 = 64;
/// Largest palette ZRLE can use (palette RLE, subencodings 130-255).
const MAX_PALETTE: usize = 127;

/// One connection's encoder: the client's pixel format, its zlib stream (one per connection,
/// as ZRLE requires) and reusable buffers.
pub struct Encoder {
    format: PixelFormat,
    zlib: Compress,
    pixels: Vec<u32>,
    tile: Vec<u32>,
    plain: Vec<u8>,
    compressed: Vec<u8>,
    palette: HashMap<u32, u8>,
    palette_order: Vec<u32>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder for the server's own pixel format.
    pub fn new() -> Self {
        Encoder {
            format: PixelFormat::XRGB8888,
            zlib: Compress::new(Compression::new(6), true),
            pixels: Vec::new(),
            tile: Vec::new(),
            plain: Vec::new(),
            compressed: Vec::new(),
            palette: HashMap::with_capacity(MAX_PALETTE + 1),
            palette_order: Vec::with_capacity(MAX_PALETTE + 1),
        }
    }

    /// The client's pixel format from now on.
    pub fn set_format(&mut self, format: PixelFormat) {
        self.format = format;
    }

    /// Rows per band of a rectangle `width` pixels wide: one tile row in Raw; in ZRLE whole
    /// tile rows, as many as [`BAND_PIXELS`] allows, at least one.
    pub fn band_rows(width: u32, zrle: bool) -> u32 {
        if !zrle {
            return TILE;
        }
        (BAND_PIXELS / width.max(1) / TILE * TILE).max(TILE)
    }

    /// How many rectangles `rect` is sent as.
    pub fn band_count(rect: &Rect, zrle: bool) -> u32 {
        rect.height.div_ceil(Self::band_rows(rect.width, zrle))
    }

    /// Writes `rect` of `framebuffer` as [`Encoder::band_count`] rectangles in `encoding`
    /// (RAW or ZRLE), each with its header.
    pub fn write_rect<W: Write>(
        &mut self,
        framebuffer: &dyn Framebuffer,
        rect: Rect,
        zrle: bool,
        out: &mut W,
    ) -> io::Result<()> {
        let mut y = rect.y;
        while y < rect.bottom() {
            let rows = Self::band_rows(rect.width, zrle);
            let band = Rect::new(rect.x, y, rect.width, rows.min(rect.bottom() - y));
            self.pixels.clear();
            self.pixels.resize(band.area() as usize, 0);
            framebuffer.read_rect(band, &mut self.pixels);
            out.write_all(&rect_header(
                &band,
                if zrle { encoding::ZRLE } else { encoding::RAW },
            ))?;
            if zrle {
                self.write_zrle(band, out)?;
            } else {
                self.write_raw(out)?;
            }
            y = band.bottom();
        }
        Ok(())
    }

    fn write_raw<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.plain.clear();
        let format = self.format;
        if format == PixelFormat::XRGB8888 {
            for &pixel in &self.pixels {
                self.plain.extend_from_slice(&pixel.to_le_bytes());
            }
        } else {
            for &pixel in &self.pixels {
                format.put(format.convert(pixel), &mut self.plain);
            }
        }
        out.write_all(&self.plain)
    }

    fn write_zrle<W: Write>(&mut self, band: Rect, out: &mut W) -> io::Result<()> {
        self.plain.clear();
        // Tiles of 64x64 (smaller at the right and bottom edges), left to right, top to bottom.
        let mut tile_y = 0;
        while tile_y < band.height {
            let height = TILE.min(band.height - tile_y);
            let mut tile_x = 0;
            while tile_x < band.width {
                let width = TILE.min(band.width - tile_x);
                self.tile.clear();
                for row in tile_y..tile_y + height {
                    let start = (row * band.width + tile_x) as usize;
                    let converted = self.pixels[start..start + width as usize]
                        .iter()
                        .map(|&p| self.format.convert(p));
                    self.tile.extend(converted);
                }
                self.encode_tile(width);
                tile_x += width;
            }
            tile_y += height;
        }
        self.compress()?;
        out.write_all(&(self.compressed.len() as u32).to_be_bytes())?;
        out.write_all(&self.compressed)
    }

    /// Runs `self.plain` through the connection's zlib stream, ending on a sync flush.
    fn compress(&mut self) -> io::Result<()> {
        self.compressed.clear();
        self.compressed.reserve(self.plain.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if self.compressed.capacity() - self.compressed.len() < 64 {
                self.compressed.reserve(self.compressed.capacity().max(4096));
            }
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(&self.plain[consumed..], &mut self.compressed, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            consumed += (self.zlib.total_in() - before) as usize;
            // The sync flush is complete once all input is in and it left room in the output.
            if consumed == self.plain.len() && self.compressed.len() < self.compressed.capacity() {
                return Ok(());
            }
        }
    }

    /// Appends one tile (in `self.tile`, `width` pixels per row) to `self.plain`, in whichever
    /// subencoding is smallest: solid, packed palette, plain RLE, palette RLE or raw.
    fn encode_tile(&mut self, width: u32) {
        let cpixel = cpixel_layout(&self.format);
        let count = self.tile.len();
        let height = count / width as usize;
        // Runs of equal pixels (row-major across the tile) and the palette, up to its limit.
        self.palette.clear();
        self.palette_order.clear();
        let mut rle_bytes = 0usize;
        let mut palette_rle_bytes = 0usize;
        let mut i = 0;
        while i < count {
            let colour = self.tile[i];
            let mut run = 1;
            while i + run < count && self.tile[i + run] == colour {
                run += 1;
            }
            rle_bytes += cpixel.size + run_length_bytes(run);
            palette_rle_bytes += if run == 1 { 1 } else { 1 + run_length_bytes(run) };
            if self.palette_order.len() <= MAX_PALETTE && !self.palette.contains_key(&colour) {
                self.palette.insert(colour, self.palette_order.len() as u8);
                self.palette_order.push(colour);
            }
            i += run;
        }
        let colours = self.palette_order.len();
        if colours == 1 {
            self.plain.push(1);
            cpixel.put(&self.format, self.tile[0], &mut self.plain);
            return;
        }
        let raw = count * cpixel.size;
        let packed_bits = match colours {
            2 => 1,
            3..=4 => 2,
            5..=16 => 4,
            _ => 0,
        };
        let packed = if packed_bits > 0 {
            colours * cpixel.size + height * (width as usize * packed_bits).div_ceil(8)
        } else {
            usize::MAX
        };
        let palette_rle = if colours <= MAX_PALETTE {
            colours * cpixel.size + palette_rle_bytes
        } else {
            usize::MAX
        };
        let best = raw.min(packed).min(rle_bytes).min(palette_rle);
        if best == raw {
            self.plain.push(0);
            for &pixel in &self.tile {
                cpixel.put(&self.format, pixel, &mut self.plain);
            }
        } else if best == packed {
            self.plain.push(colours as u8);
            for &colour in &self.palette_order {
                cpixel.put(&self.format, colour, &mut self.plain);
            }
            for row in self.tile.chunks_exact(width as usize) {
                let mut byte = 0u8;
                let mut used = 0;
                for pixel in row {
                    byte = (byte << packed_bits) | self.palette[pixel];
                    used += packed_bits;
                    if used == 8 {
                        self.plain.push(byte);
                        byte = 0;
                        used = 0;
                    }
                }
                if used > 0 {
                    self.plain.push(byte << (8 - used));
                }
            }
        } else if best == rle_bytes {
            self.plain.push(128);
            let format = self.format;
            for_each_run(&self.tile, |colour, run| {
                cpixel.put(&format, colour, &mut self.plain);
                push_run_length(run, &mut self.plain);
            });
        } else {
            self.plain.push(128 + colours as u8);
            for &colour in &self.palette_order {
                cpixel.put(&self.format, colour, &mut self.plain);
            }
            let palette = &self.palette;
            let plain = &mut self.plain;
            for_each_run(&self.tile, |colour, run| {
                let index = palette[&colour];
                if run == 1 {
                    plain.push(index);
                } else {
                    plain.push(index | 128);
                    push_run_length(run, plain);
                }
            });
        }
    }
}

fn for_each_run(pixels: &[u32], mut f: impl FnMut(u32, usize)) {
    let mut i = 0;
    while i < pixels.len() {
        let colour = pixels[i];
        let mut run = 1;
        while i + run < pixels.len() && pixels[i + run] == colour {
            run += 1;
        }
        f(colour, run);
        i += run;
    }
}

/// Bytes ZRLE's run length takes: `run - 1` as 255s and a last byte below 255.
fn run_length_bytes(run: usize) -> usize {
    (run - 1) / 255 + 1
}

fn push_run_length(run: usize, out: &mut Vec<u8>) {
    let mut left = run - 1;
    while left >= 255 {
        out.push(255);
        left -= 255;
    }
    out.push(left as u8);
}

/// ZRLE's compressed pixel: 3 bytes when a 32-bpp true-colour pixel's colour bits fit in its
/// three low (or three high) bytes, else the whole pixel.
#[derive(Debug, Clone, Copy)]
struct CpixelLayout {
    size: usize,
    /// Offset of the 3 bytes inside the pixel's wire bytes.
    skip: usize,
}

impl CpixelLayout {
    fn put(&self, format: &PixelFormat, value: u32, out: &mut Vec<u8>) {
        if self.size == 3 {
            let bytes = if format.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            };
            out.extend_from_slice(&bytes[self.skip..self.skip + 3]);
        } else {
            format.put(value, out);
        }
    }
}

fn cpixel_layout(format: &PixelFormat) -> CpixelLayout {
    let full = CpixelLayout {
        size: format.bytes_per_pixel(),
        skip: 0,
    };
    if format.bits_per_pixel != 32 || format.depth > 24 {
        return full;
    }
    let mask = |max: u16, shift: u8| u64::from(max) << shift;
    let used = mask(format.red_max, format.red_shift)
        | mask(format.green_max, format.green_shift)
        | mask(format.blue_max, format.blue_shift);
    let low = used & !0x00ff_ffff == 0;
    let high = used & 0xff == 0;
    match (low, high, format.big_endian) {
        (true, _, false) => CpixelLayout { size: 3, skip: 0 },
        (true, _, true) => CpixelLayout { size: 3, skip: 1 },
        (false, true, false) => CpixelLayout { size: 3, skip: 1 },
        (false, true, true) => CpixelLayout { size: 3, skip: 0 },
        _ => full,
    }
}

/// A rectangle's header in a FramebufferUpdate.
pub fn rect_header(rect: &Rect, encoding: i32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&(rect.x as u16).to_be_bytes());
    b[2..4].copy_from_slice(&(rect.y as u16).to_be_bytes());
    b[4..6].copy_from_slice(&(rect.width as u16).to_be_bytes());
    b[6..8].copy_from_slice(&(rect.height as u16).to_be_bytes());
    b[8..12].copy_from_slice(&encoding.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use flate2::{Decompress, FlushDecompress};

    use super::*;
    use crate::framebuffer::MemoryFramebuffer;

    /// A ZRLE decoder for the 3-byte CPIXEL of the server's format, as a client does it.
    fn decode_zrle(stream: &[u8], width: usize, height: usize) -> Vec<u32> {
        let mut out = vec![0u32; width * height];
        let mut pos = 0;
        let cpixel = |b: &[u8], pos: &mut usize| {
            let v = u32::from_le_bytes([b[*pos], b[*pos + 1], b[*pos + 2], 0]);
            *pos += 3;
            v
        };
        let run_length = |b: &[u8], pos: &mut usize| {
            let mut run = 1;
            loop {
                let byte = b[*pos];
                *pos += 1;
                run += usize::from(byte);
                if byte != 255 {
                    return run;
                }
            }
        };
        for ty in (0..height).step_by(64) {
            for tx in (0..width).step_by(64) {
                let (tw, th) = (64.min(width - tx), 64.min(height - ty));
                let mut tile = Vec::with_capacity(tw * th);
                let sub = stream[pos];
                pos += 1;
                match sub {
                    0 => (0..tw * th).for_each(|_| tile.push(cpixel(stream, &mut pos))),
                    1 => {
                        let c = cpixel(stream, &mut pos);
                        tile.resize(tw * th, c);
                    }
                    2..=16 => {
                        let palette: Vec<u32> = (0..sub).map(|_| cpixel(stream, &mut pos)).collect();
                        let bits = match sub {
                            2 => 1,
                            3..=4 => 2,
                            _ => 4,
                        };
                        for _ in 0..th {
                            let row_bytes = (tw * bits).div_ceil(8);
                            let bytes = &stream[pos..pos + row_bytes];
                            pos += row_bytes;
                            for x in 0..tw {
                                let bit = x * bits;
                                let index = (bytes[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                                tile.push(palette[usize::from(index)]);
                            }
                        }
                    }
                    128 => {
                        while tile.len() < tw * th {
                            let c = cpixel(stream, &mut pos);
                            let run = run_length(stream, &mut pos);
                            tile.extend(std::iter::repeat_n(c, run));
                        }
                    }
                    130..=255 => {
                        let palette: Vec<u32> = (0..sub - 128).map(|_| cpixel(stream, &mut pos)).collect();
                        while tile.len() < tw * th {
                            let index = stream[pos];
                            pos += 1;
                            let run = if index & 128 != 0 {
                                run_length(stream, &mut pos)
                            } else {
                                1
                            };
                            tile.extend(std::iter::repeat_n(palette[usize::from(index & 127)], run));
                        }
                    }
                    other => panic!("bad subencoding {other}"),
                }
                for row in 0..th {
                    let dst = (ty + row) * width + tx;
                    out[dst..dst + tw].copy_from_slice(&tile[row * tw..(row + 1) * tw]);
                }
            }
        }
        assert_eq!(pos, stream.len());
        out
    }

    fn pattern(width: u32, height: u32) -> MemoryFramebuffer {
        let fb = MemoryFramebuffer::new(width, height);
        // Solid, two-colour stripes, a few colours, runs and noise, so every subencoding shows.
        let mut seed = 0x1234_5678u32;
        let pixels: Vec<u32> = (0..width * height)
            .map(|i| {
                let (x, y) = (i % width, i / width);
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                match (x / 64, y / 64) {
                    (0, _) => 0x0010_2030,
                    (1, _) => [0x00ff_0000, 0x0000_ff00][(x % 2) as usize],
                    (2, _) => (x / 8 % 7) * 0x0011_1111,
                    (3, _) => (x / 20) * 0x0000_0101 + y,
                    _ => seed & 0x00ff_ffff,
                }
            })
            .collect();
        fb.write_rect(Rect::full(width, height), &pixels);
        fb
    }

    #[test]
    fn bands_are_whole_tile_rows_within_the_pixel_budget() {
        assert_eq!(Encoder::band_rows(800, true), 640);
        assert_eq!(Encoder::band_rows(4096, true), 128);
        assert_eq!(Encoder::band_rows(1_000_000, true), 64, "at least one tile row");
        assert_eq!(Encoder::band_count(&Rect::full(800, 600), true), 1);
        assert_eq!(Encoder::band_count(&Rect::full(4096, 4096), true), 32);
        assert_eq!(
            Encoder::band_count(&Rect::full(800, 600), false),
            10,
            "Raw: 64 rows"
        );
    }

    #[test]
    fn zrle_round_trips_through_one_zlib_stream() {
        // One band of three tile rows (the last one short).
        let fb = pattern(300, 150);
        assert_eq!(Encoder::band_count(&Rect::full(300, 150), true), 1);
        let (_, _, expected) = fb.snapshot();
        let mut encoder = Encoder::new();
        let mut inflater = Decompress::new(true);
        // Twice: the second update continues the same zlib stream.
        for _ in 0..2 {
            let mut out = Vec::new();
            encoder
                .write_rect(&fb, Rect::full(300, 150), true, &mut out)
                .unwrap();
            let mut pixels = Vec::new();
            let mut pos = 0;
            while pos < out.len() {
                let header = &out[pos..pos + 12];
                let height = usize::from(u16::from_be_bytes([header[6], header[7]]));
                assert_eq!(
                    i32::from_be_bytes([header[8], header[9], header[10], header[11]]),
                    encoding::ZRLE
                );
                let length = u32::from_be_bytes(out[pos + 12..pos + 16].try_into().unwrap()) as usize;
                let compressed = &out[pos + 16..pos + 16 + length];
                pos += 16 + length;
                let mut plain = Vec::with_capacity(300 * 150 * 4 + 1024);
                inflater
                    .decompress_vec(compressed, &mut plain, FlushDecompress::Sync)
                    .unwrap();
                pixels.extend(decode_zrle(&plain, 300, height));
            }
            assert_eq!(pixels.len(), expected.len());
            assert!(
                pixels.iter().zip(&expected).all(|(a, b)| a == b),
                "ZRLE pixels differ"
            );
        }
    }

    #[test]
    fn raw_converts_to_the_client_format() {
        let fb = MemoryFramebuffer::new(2, 1);
        fb.write_rect(Rect::full(2, 1), &[0x00ff_0000, 0x0000_00ff]);
        let mut encoder = Encoder::new();
        encoder.set_format(PixelFormat {
            red_shift: 0,
            blue_shift: 16,
            big_endian: true,
            ..PixelFormat::XRGB8888
        });
        let mut out = Vec::new();
        encoder
            .write_rect(&fb, Rect::full(2, 1), false, &mut out)
            .unwrap();
        assert_eq!(&out[..12], &[0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0]);
        assert_eq!(&out[12..], &[0, 0, 0, 0xff, 0, 0xff, 0, 0]);
    }

    #[test]
    fn run_lengths() {
        let mut out = Vec::new();
        push_run_length(1, &mut out);
        push_run_length(255, &mut out);
        push_run_length(256, &mut out);
        push_run_length(511, &mut out);
        assert_eq!(out, vec![0, 254, 255, 0, 255, 255, 0]);
        assert_eq!(run_length_bytes(256), 2);
        assert_eq!(run_length_bytes(255), 1);
    }
}
