//! Bytes → [`Rgb8`], like PIL's `Image.open(..).convert('RGB')`.

use std::io::Cursor;

use super::{check_size, dicom, jpeg, ImageError, Rgb8};

/// The media types [`decode`] accepts.
pub const MEDIA_TYPES: &[&str] = &["image/png", "image/jpeg", "application/dicom"];

/// Decode an image sent as `media_type` into 8-bit RGB, refusing it before any pixel is decoded
/// when its header announces more than `max_pixels` pixels ([`ImageError::TooLarge`]).
///
/// The media type is compared case-insensitively, parameters (`; ...`) ignored.
///
/// - `image/png` (the `png` crate): every colour type and bit depth converts as PIL's
///   `convert('RGB')` does: grey replicated to R, G and B; alpha (and `tRNS` transparency)
///   dropped without compositing; palettes looked up; 1/2/4-bit grey scaled to 0..=255; 16-bit
///   RGB, RGBA and grey+alpha keep the high byte (PIL reads them as 8-bit modes that way).
///   16-bit greyscale without alpha is refused: PIL opens it as `I;16` and `convert('RGB')`
///   clamps every value above 255 to white, so the reference path would not see the image; send
///   it as 8-bit PNG or as DICOM.
/// - `image/jpeg`: see [`super::jpeg`]: libjpeg-turbo's decoder, so the pixels are PIL's;
///   greyscale replicated, YCbCr converted to RGB, CMYK/YCCK refused, a truncated file refused
///   as in PIL. EXIF orientation is not applied, as in PIL's `open`.
/// - `application/dicom`: see [`super::dicom`]: 8/16-bit greyscale, uncompressed, windowed to 8 bit.
pub fn decode(bytes: &[u8], media_type: &str, max_pixels: u64) -> Result<Rgb8, ImageError> {
    let mt = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mt.as_str() {
        "image/png" => decode_png(bytes, max_pixels),
        "image/jpeg" => jpeg::decode(bytes, max_pixels),
        "application/dicom" => dicom::decode(bytes, max_pixels),
        _ => Err(ImageError::Unsupported(format!(
            "media type `{media_type}`; expected one of {}",
            MEDIA_TYPES.join(", ")
        ))),
    }
}

fn png_err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Decode { media_type: "image/png".into(), reason: e.to_string() }
}

fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<Rgb8, ImageError> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    let info = decoder.read_header_info().map_err(png_err)?;
    let (w, h) = (info.width, info.height);
    check_size("image/png", w as u64, h as u64, max_pixels)?;
    let (color, depth) = (info.color_type, info.bit_depth);
    if color == png::ColorType::Grayscale && depth == png::BitDepth::Sixteen {
        return Err(ImageError::Unsupported(
            "16-bit greyscale PNG: the reference preprocessing (PIL convert('RGB')) clips every \
             value above 255, so the model would not see this image; send an 8-bit PNG or the \
             DICOM file"
                .into(),
        ));
    }
    // Palette → RGB(A), low-bit grey → 8 bit (scaled), tRNS → alpha; 16 bit stays 16 bit.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(png_err)?;
    let size = reader.output_buffer_size().ok_or_else(|| png_err("image too large for memory"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(png_err)?;
    let (out_color, out_depth) = (frame.color_type, frame.bit_depth);
    let channels = out_color.samples();
    let bytes_per_sample = if out_depth == png::BitDepth::Sixteen { 2 } else { 1 };
    let line = frame.line_size;
    let mut data = Vec::with_capacity(w as usize * h as usize * 3);
    for row in buf.chunks_exact(line).take(h as usize) {
        let row = &row[..w as usize * channels * bytes_per_sample];
        // Big-endian 16-bit samples: the first byte of each is the high byte.
        for px in row.chunks_exact(channels * bytes_per_sample) {
            let s = |c: usize| px[c * bytes_per_sample];
            match channels {
                1 | 2 => data.extend_from_slice(&[s(0), s(0), s(0)]),
                _ => data.extend_from_slice(&[s(0), s(1), s(2)]),
            }
        }
    }
    Rgb8::from_raw(w, h, data).ok_or_else(|| png_err("decoded data does not match the header"))
}
