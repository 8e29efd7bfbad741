//! JPEG decoding with libjpeg-turbo's decoder, as PIL decodes it.
//!
//! The `mozjpeg` crate builds MozJPEG, a fork of libjpeg-turbo whose decoder is libjpeg-turbo's,
//! from source with the C compiler (no SIMD, so no assembler is needed; libjpeg-turbo's SIMD
//! paths give the same pixels as its C ones). With libjpeg's defaults (integer IDCT, fancy
//! upsampling, block smoothing for progressive files), which are also PIL's, the decoded pixels
//! are PIL's `Image.open(..).convert('RGB')` bit for bit: checked on baseline and progressive,
//! 4:4:4, 4:2:2 and 4:2:0, greyscale, restart markers and 1-pixel-wide images against Pillow
//! 12.1.1 (libjpeg-turbo 3.1.3).
//!
//! libjpeg reports a fatal error by calling `error_exit`, which must not return. Ours unwinds
//! (the crate builds the C code with unwinding support) and [`decode`] catches it, so a corrupt
//! file is an [`ImageError::Decode`] naming libjpeg's message, never a crash.

use std::os::raw::c_int;

use mozjpeg::ColorSpace;
use mozjpeg_sys as ffi;

use super::{check_size, ImageError, Rgb8};

const MEDIA_TYPE: &str = "image/jpeg";

fn decode_err(reason: impl Into<String>) -> ImageError {
    ImageError::Decode { media_type: MEDIA_TYPE.into(), reason: reason.into() }
}

/// What `error_exit` and `emit_message` unwind with, back to [`decode`].
struct Failure(String);

/// libjpeg's text for the message code in `cinfo.err` (e.g. "Bogus marker length").
fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    // libjpeg formats into up to JMSG_LENGTH_MAX (200) bytes, more than the binding's `[u8; 80]`.
    let mut buf = [0u8; 200];
    // SAFETY: `cinfo.err` is the error manager libjpeg was given and outlives this call. The
    // binding declares the output buffer as `&[u8; 80]` although libjpeg writes into it (up to
    // JMSG_LENGTH_MAX bytes); it is called through the ABI-identical raw-pointer type with a
    // buffer of that size, so that the write is allowed and in bounds.
    unsafe {
        let Some(format) = (*cinfo.err).format_message else {
            return format!("libjpeg error {}", (*cinfo.err).msg_code);
        };
        let format: unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8) = std::mem::transmute(format);
        format(cinfo, buf.as_mut_ptr());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let text = message(cinfo);
    std::panic::resume_unwind(Box::new(Failure(text)));
}

/// Scans a progressive JPEG may have. Encoders write about 10 (libjpeg's default script) to a
/// few dozen; each scan costs a pass over the image's blocks, so a small file of thousands of
/// empty scans would hold a worker for minutes (PIL sets no limit).
pub const MAX_SCANS: u32 = 100;

thread_local! {
    /// Start-of-scan markers seen by the decode running on this thread.
    static SCANS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Warnings (level -1) are ignored, as PIL ignores them, except one: libjpeg treats data that
/// ends early as a warning and decodes the rest as grey, whereas PIL refuses such a file as
/// truncated. So do we. Trace messages (level ≥ 1) are never printed; the one libjpeg sends at
/// every start of scan counts the scans against [`MAX_SCANS`].
extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    // SAFETY: as in `message`.
    let code = unsafe { (*cinfo.err).msg_code };
    if level == -1 && code == ffi::JWRN_JPEG_EOF as c_int {
        std::panic::resume_unwind(Box::new(Failure("the file is truncated".into())));
    }
    if level == 1 && code == ffi::JTRC_SOS as c_int {
        let n = SCANS.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        if n > MAX_SCANS {
            std::panic::resume_unwind(Box::new(Failure(format!("more than {MAX_SCANS} scans"))));
        }
    }
}

fn error_manager() -> ffi::jpeg_error_mgr {
    // SAFETY: an all-zero `jpeg_error_mgr` is valid (null pointers, `None` callbacks), and
    // `jpeg_std_error` fills in every field; its message tables are static.
    let mut err: ffi::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { ffi::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

/// Decode a JPEG into 8-bit RGB: greyscale replicated, YCbCr (or Adobe RGB) converted to RGB;
/// CMYK/YCCK refused (PIL converts them with its own formula). More than `max_pixels` pixels
/// announced in the header: [`ImageError::TooLarge`] before any pixel is decoded.
pub(super) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Rgb8, ImageError> {
    match std::panic::catch_unwind(|| decode_unguarded(bytes, max_pixels)) {
        Ok(result) => result,
        Err(payload) => Err(decode_err(match payload.downcast::<Failure>() {
            Ok(failure) => failure.0,
            // A panic in the wrapper itself, not a libjpeg error: still the client's file that
            // caused it, so still a decode error rather than a failed request, but a bug to see.
            Err(other) => {
                let text = other
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| other.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the JPEG decoder failed".into());
                tracing::error!(panic = %text, "the JPEG decoder panicked on an upload");
                text
            }
        })),
    }
}

fn decode_unguarded(bytes: &[u8], max_pixels: u64) -> Result<Rgb8, ImageError> {
    SCANS.with(|s| s.set(0));
    let io = |e: std::io::Error| decode_err(e.to_string());
    let header = mozjpeg::decompress::DecompressBuilder::new().with_err(error_manager()).from_mem(bytes).map_err(io)?;
    let (w, h) = header.size();
    check_size(MEDIA_TYPE, w as u64, h as u64, max_pixels)?;
    match header.color_space() {
        ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB => {}
        other => {
            return Err(ImageError::Unsupported(format!(
                "JPEG in the {other:?} colour space; only greyscale and YCbCr/RGB JPEGs are read"
            )))
        }
    }
    let mut pixels = header.rgb().map_err(io)?;
    let data: Vec<u8> = pixels.read_scanlines().map_err(io)?;
    pixels.finish().map_err(io)?;
    Rgb8::from_raw(w as u32, h as u32, data).ok_or_else(|| decode_err("decoded data does not match the header"))
}
