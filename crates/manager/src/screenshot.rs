//! `screenshot`: what the VM's display shows, as a PNG image carried base64-encoded in the
//! control response (the VM process's threads create no files; the client writes it).

use base64::Engine;
use virtkit::{Frame, VirtualMachine};

use crate::control::ControlResponse;

/// The PNG encoding of `frame` (8-bit RGBA).
pub fn encode_png(frame: &Frame) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, frame.width, frame.height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&frame.rgba)?;
    writer.finish()?;
    Ok(out)
}

/// Answers `screenshot`: the PNG in `screenshot_png` (base64), with its size.
pub(crate) fn screenshot(vm: &VirtualMachine) -> ControlResponse {
    match vm.screenshot() {
        Ok(Some(frame)) => match encode_png(&frame) {
            Ok(png) => ControlResponse {
                screenshot: Some(Box::new(Screenshot {
                    width: frame.width,
                    height: frame.height,
                    png_base64: base64::engine::general_purpose::STANDARD.encode(png),
                })),
                ..ControlResponse::success(vm.state())
            },
            Err(e) => ControlResponse::failure(format!("cannot encode the screenshot: {e}")),
        },
        Ok(None) => ControlResponse::failure(
            "the display is dark: the guest has not set a mode yet (the firmware does early in its boot); try again in a moment",
        ),
        Err(e) => ControlResponse::failure(e),
    }
}

/// A screenshot in a control response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    /// The PNG file, base64 (standard alphabet, padded).
    pub png_base64: String,
}

impl Screenshot {
    /// The PNG file's bytes.
    pub fn png(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.png_base64)
    }
}
