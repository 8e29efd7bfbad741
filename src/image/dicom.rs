//! Greyscale DICOM → 8-bit RGB, windowed as a viewer would show it.
//!
//! Accepted: a DICOM Part 10 file (with or without the 128-byte preamble) in Implicit or
//! Explicit VR Little Endian (uncompressed), Samples per Pixel 1, Photometric Interpretation
//! MONOCHROME1 or MONOCHROME2, Bits Allocated 8 or 16, any Bits Stored up to that with High Bit
//! = Bits Stored − 1, unsigned or signed (Pixel Representation 0/1). Of a multi-frame object the
//! first frame is used. Everything else (compressed transfer syntaxes, Big Endian, colour,
//! 32-bit or float pixels) is refused with a reason; the Modality LUT Sequence and VOI LUT
//! Sequence, when present, are ignored.
//!
//! The conversion, per pixel, in f64:
//! 1. the stored value (masked to Bits Stored, sign-extended when signed) is rescaled:
//!    `x = v · RescaleSlope + RescaleIntercept` (1 and 0 when absent);
//! 2. with a Window Center `c` / Window Width `w` (the first pair when several), the VOI function
//!    of PS3.3 C.11.2.1.2 maps `x` to `y` in `[0, 255]`, following VOI LUT Function:
//!    - `LINEAR` (the default, needs `w ≥ 1`): `y = 0` if `x ≤ c − 0.5 − (w − 1)/2`, `y = 255` if
//!      `x > c − 0.5 + (w − 1)/2`, else `y = ((x − (c − 0.5)) / (w − 1) + 0.5) · 255`;
//!    - `LINEAR_EXACT` (`w > 0`): `y = 0` if `x ≤ c − w/2`, `255` if `x > c + w/2`, else
//!      `y = ((x − c) / w + 0.5) · 255`;
//!    - `SIGMOID` (`w > 0`): `y = 255 / (1 + exp(−4 (x − c) / w))`;
//!
//!    without a usable window (absent, or a width out of range), min–max of the rescaled values
//!    of the frame: `y = (x − min) / (max − min) · 255` (all 0 when `max = min`);
//! 3. `y` becomes the byte `floor(y + 0.5)` clamped to 0..=255; MONOCHROME1 (0 is white) is
//!    inverted to `255 − byte`;
//! 4. the grey byte is replicated to R, G and B.
//!
//! Before the file is parsed, its element headers are walked once: a value length that runs past
//! the end of the upload is refused there (see `check_lengths`), since the parser would allocate
//! the declared length first. The fuzz target `damaged_images_are_errors_never_panics` found
//! 40 KB uploads that cost seconds and gigabytes that way.

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::header::HasLength;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

use super::{check_size, ImageError, Rgb8};

const MT: &str = "application/dicom";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

fn bad(reason: impl Into<String>) -> ImageError {
    ImageError::Decode { media_type: MT.into(), reason: reason.into() }
}

fn unsupported(reason: impl std::fmt::Display) -> ImageError {
    ImageError::Unsupported(format!("DICOM: {reason}"))
}

fn int_attr(obj: &DefaultDicomObject, tag: dicom_core::Tag, name: &str) -> Result<Option<i64>, ImageError> {
    match obj.element_opt(tag).map_err(|e| bad(format!("{name}: {e}")))? {
        None => Ok(None),
        Some(e) => e.to_int::<i64>().map(Some).map_err(|e| bad(format!("{name}: {e}"))),
    }
}

fn required_int(obj: &DefaultDicomObject, tag: dicom_core::Tag, name: &str) -> Result<i64, ImageError> {
    int_attr(obj, tag, name)?.ok_or_else(|| bad(format!("missing {name}")))
}

fn floats_attr(obj: &DefaultDicomObject, tag: dicom_core::Tag, name: &str) -> Result<Vec<f64>, ImageError> {
    match obj.element_opt(tag).map_err(|e| bad(format!("{name}: {e}")))? {
        None => Ok(Vec::new()),
        Some(e) if e.value().is_empty() => Ok(Vec::new()),
        Some(e) => e.to_multi_float64().map_err(|e| bad(format!("{name}: {e}"))),
    }
}

fn str_attr(obj: &DefaultDicomObject, tag: dicom_core::Tag, name: &str) -> Result<Option<String>, ImageError> {
    match obj.element_opt(tag).map_err(|e| bad(format!("{name}: {e}")))? {
        None => Ok(None),
        Some(e) => {
            let s = e.to_str().map_err(|e| bad(format!("{name}: {e}")))?;
            Ok(Some(s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_ascii_uppercase()))
        }
    }
}

/// The VOI function of the file's first window, if it has a usable one.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Window {
    Linear { c: f64, w: f64 },
    LinearExact { c: f64, w: f64 },
    Sigmoid { c: f64, w: f64 },
}

impl Window {
    fn apply(self, x: f64) -> f64 {
        match self {
            Window::Linear { c, w } => {
                if x <= c - 0.5 - (w - 1.0) / 2.0 {
                    0.0
                } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                    255.0
                } else {
                    ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
                }
            }
            Window::LinearExact { c, w } => {
                if x <= c - w / 2.0 {
                    0.0
                } else if x > c + w / 2.0 {
                    255.0
                } else {
                    ((x - c) / w + 0.5) * 255.0
                }
            }
            Window::Sigmoid { c, w } => 255.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
        }
    }
}

fn to_byte(y: f64) -> u8 {
    (y + 0.5).floor().clamp(0.0, 255.0) as u8
}

fn check_transfer_syntax(ts: &str) -> Result<(), ImageError> {
    let ts = ts.trim_end_matches(['\0', ' ']);
    if ts != IMPLICIT_VR_LE && ts != EXPLICIT_VR_LE {
        return Err(unsupported(format!(
            "transfer syntax {ts}: only uncompressed Implicit/Explicit VR Little Endian \
             ({IMPLICIT_VR_LE}, {EXPLICIT_VR_LE}) is read"
        )));
    }
    Ok(())
}

/// Walks the file's element headers as dicom-object reads them (the meta group, then the data
/// set in its transfer syntax) and refuses the file when a defined value length runs past the end
/// of the bytes.
///
/// dicom-object allocates and zero-fills a value's declared length before reading it, so a
/// 40 KB upload declaring a 4 GB element would cost 4 GB of memory and seconds of a worker;
/// here it costs one pass over the headers. The walk follows the parser's rules: the meta group
/// is Explicit VR Little Endian and ends where its group length (0002,0000) says, its elements
/// skipped whole; in the data set, sequences, items and undefined lengths (encapsulated data) are
/// descended into rather than skipped, so nested lengths are checked too; Implicit VR sequences
/// come from the standard dictionary, and an Explicit VR code that is not a known 2-byte-length
/// VR has a 4-byte length (the parser reads unknown codes as UN). Anything the walk cannot read
/// is left to the parser, which then fails before allocating.
fn check_lengths(body: &[u8]) -> Result<(), ImageError> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    use dicom_core::{Tag, VR};
    const UNDEFINED: u32 = u32::MAX;
    let u16_at = |at: usize| u16::from_le_bytes([body[at], body[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    let too_long = |tag: (u16, u16), len: u32, at: usize| {
        bad(format!(
            "element ({:04X},{:04X}) declares {len} bytes but only {} follow",
            tag.0,
            tag.1,
            body.len() - at
        ))
    };
    // An element header at `pos`: (tag, VR code if explicit, value length, header size), or
    // `None` when the bytes end inside it.
    let header = |pos: usize, explicit: bool| -> Option<((u16, u16), Option<[u8; 2]>, u32, usize)> {
        if pos + 8 > body.len() {
            return None;
        }
        let tag = (u16_at(pos), u16_at(pos + 2));
        if tag.0 == 0xFFFE || !explicit {
            return Some((tag, None, u32_at(pos + 4), 8));
        }
        let vr = [body[pos + 4], body[pos + 5]];
        // PS3.5 7.1.2: these have a 2-byte length; every other VR, unknown codes included (the
        // parser reads them as UN), has 2 reserved bytes and a 4-byte one.
        let short = matches!(
            VR::from_binary(vr),
            Some(
                VR::AE | VR::AS | VR::AT | VR::CS | VR::DA | VR::DS | VR::DT | VR::FL | VR::FD | VR::IS | VR::LO
                    | VR::LT | VR::PN | VR::SH | VR::SL | VR::SS | VR::ST | VR::TM | VR::UI | VR::UL | VR::US
            )
        );
        if short {
            Some((tag, Some(vr), u16_at(pos + 6) as u32, 8))
        } else if pos + 12 <= body.len() {
            Some((tag, Some(vr), u32_at(pos + 8), 12))
        } else {
            None
        }
    };

    // The meta group: (0002,0000) with the group's length, then elements until that many bytes
    // are consumed, each skipped whole, whatever its tag.
    let mut pos = 4; // after "DICM"
    let Some(((0x0002, 0x0000), _, 4, size)) = header(pos, true) else { return Ok(()) };
    if pos + size + 4 > body.len() {
        return Ok(());
    }
    let group_length = u32_at(pos + size) as u64;
    pos += size + 4;
    let mut consumed = 0u64;
    let mut ts = None;
    while consumed < group_length {
        let Some((tag, _, len, size)) = header(pos, true) else { return Ok(()) };
        if len == UNDEFINED {
            return Ok(()); // refused by the parser
        }
        if len as usize > body.len() - (pos + size) {
            return Err(too_long(tag, len, pos + size));
        }
        if tag == (0x0002, 0x0010) {
            ts = std::str::from_utf8(&body[pos + size..pos + size + len as usize]).ok();
        }
        pos += size + len as usize;
        consumed += (size + len as usize) as u64;
    }
    let Some(ts) = ts else { return Ok(()) }; // the parser names what is missing
    check_transfer_syntax(ts)?;
    let explicit = ts.trim_end_matches(['\0', ' ']) == EXPLICIT_VR_LE;

    // The data set.
    while let Some((tag, vr, len, size)) = header(pos, explicit) {
        pos += size;
        if tag.0 == 0xFFFE {
            // An item (its elements follow) or a delimiter (no value).
            if tag.1 == 0xE000 && len != UNDEFINED && len as usize > body.len() - pos {
                return Err(too_long(tag, len, pos));
            }
            continue;
        }
        if len == UNDEFINED {
            continue; // a sequence or encapsulated data: items follow
        }
        if len as usize > body.len() - pos {
            return Err(too_long(tag, len, pos));
        }
        let sequence = match vr {
            Some(code) => code == *b"SQ",
            None => dicom_dictionary_std::StandardDataDictionary
                .by_tag(Tag(tag.0, tag.1))
                .is_some_and(|e| e.vr() == VirtualVr::Exact(VR::SQ)),
        };
        if !sequence {
            pos += len as usize;
        }
    }
    Ok(())
}

/// Decode a DICOM file as described in the module documentation.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Rgb8, ImageError> {
    let body = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        &bytes[128..]
    } else if bytes.starts_with(b"DICM") {
        bytes
    } else {
        return Err(bad("not a DICOM Part 10 file (no `DICM` marker after the 128-byte preamble)"));
    };
    check_lengths(body)?;
    let obj = OpenFileOptions::new().from_reader(body).map_err(|e| bad(e.to_string()))?;
    check_transfer_syntax(obj.meta().transfer_syntax())?;
    let rows = required_int(&obj, tags::ROWS, "Rows")?;
    let cols = required_int(&obj, tags::COLUMNS, "Columns")?;
    if rows <= 0 || cols <= 0 {
        return Err(bad(format!("the image is {cols}x{rows}")));
    }
    check_size(MT, cols as u64, rows as u64, max_pixels)?;
    let samples = int_attr(&obj, tags::SAMPLES_PER_PIXEL, "Samples per Pixel")?.unwrap_or(1);
    let photometric = str_attr(&obj, tags::PHOTOMETRIC_INTERPRETATION, "Photometric Interpretation")?
        .ok_or_else(|| bad("missing Photometric Interpretation"))?;
    let invert = match photometric.as_str() {
        "MONOCHROME1" => true,
        "MONOCHROME2" => false,
        other => {
            return Err(unsupported(format!(
                "Photometric Interpretation {other} with {samples} samples per pixel: only \
                 greyscale (MONOCHROME1/MONOCHROME2) images are read"
            )))
        }
    };
    if samples != 1 {
        return Err(unsupported(format!("{samples} samples per pixel in a {photometric} image")));
    }
    let allocated = required_int(&obj, tags::BITS_ALLOCATED, "Bits Allocated")?;
    let stored = int_attr(&obj, tags::BITS_STORED, "Bits Stored")?.unwrap_or(allocated);
    let high = int_attr(&obj, tags::HIGH_BIT, "High Bit")?.unwrap_or(stored - 1);
    let signed = int_attr(&obj, tags::PIXEL_REPRESENTATION, "Pixel Representation")?.unwrap_or(0) == 1;
    if allocated != 8 && allocated != 16 {
        return Err(unsupported(format!("Bits Allocated {allocated}: only 8 and 16 are read")));
    }
    if stored < 1 || stored > allocated || high != stored - 1 {
        return Err(unsupported(format!(
            "Bits Stored {stored} / High Bit {high} with Bits Allocated {allocated}: pixel values \
             must sit in the low bits"
        )));
    }

    let n = rows as usize * cols as usize;
    let pixel = obj.element_opt(tags::PIXEL_DATA).map_err(|e| bad(e.to_string()))?;
    let pixel = pixel.ok_or_else(|| bad("no Pixel Data"))?;
    let raw: Vec<i64> = {
        let mask: u32 = if stored >= 32 { u32::MAX } else { (1u32 << stored) - 1 };
        let sign_bit = 1u32 << (stored - 1);
        let value = |u: u32| -> i64 {
            let u = u & mask;
            if signed && u & sign_bit != 0 {
                u as i64 - (mask as i64 + 1)
            } else {
                u as i64
            }
        };
        let short = || bad(format!("Pixel Data holds fewer than the {n} pixels of {cols}x{rows}"));
        match pixel.value() {
            Value::Primitive(PrimitiveValue::U8(b)) if allocated == 8 => {
                b.get(..n).ok_or_else(short)?.iter().map(|&v| value(v as u32)).collect()
            }
            Value::Primitive(PrimitiveValue::U8(b)) => b
                .get(..2 * n)
                .ok_or_else(short)?
                .chunks_exact(2)
                .map(|p| value(u16::from_le_bytes([p[0], p[1]]) as u32))
                .collect(),
            Value::Primitive(PrimitiveValue::U16(v)) if allocated == 8 => {
                // 8-bit samples read as OW words: little-endian byte order is pixel order.
                let bytes: Vec<u8> = v.iter().flat_map(|w| w.to_le_bytes()).collect();
                bytes.get(..n).ok_or_else(short)?.iter().map(|&v| value(v as u32)).collect()
            }
            Value::Primitive(PrimitiveValue::U16(v)) if allocated == 16 => {
                v.get(..n).ok_or_else(short)?.iter().map(|&v| value(v as u32)).collect()
            }
            Value::Primitive(PrimitiveValue::I16(v)) if allocated == 16 => {
                v.get(..n).ok_or_else(short)?.iter().map(|&v| value(v as u16 as u32)).collect()
            }
            Value::PixelSequence(_) => return Err(unsupported("encapsulated (compressed) Pixel Data")),
            _ => return Err(bad("Pixel Data of an unexpected type")),
        }
    };

    let slope = floats_attr(&obj, tags::RESCALE_SLOPE, "Rescale Slope")?.first().copied().unwrap_or(1.0);
    let intercept =
        floats_attr(&obj, tags::RESCALE_INTERCEPT, "Rescale Intercept")?.first().copied().unwrap_or(0.0);
    let rescaled: Vec<f64> = raw.iter().map(|&v| v as f64 * slope + intercept).collect();

    let centers = floats_attr(&obj, tags::WINDOW_CENTER, "Window Center")?;
    let widths = floats_attr(&obj, tags::WINDOW_WIDTH, "Window Width")?;
    let function = str_attr(&obj, tags::VOILUT_FUNCTION, "VOI LUT Function")?;
    let window = match (centers.first(), widths.first()) {
        (Some(&c), Some(&w)) => match function.as_deref() {
            None | Some("") | Some("LINEAR") => (w >= 1.0).then_some(Window::Linear { c, w }),
            Some("LINEAR_EXACT") => (w > 0.0).then_some(Window::LinearExact { c, w }),
            Some("SIGMOID") => (w > 0.0).then_some(Window::Sigmoid { c, w }),
            Some(other) => return Err(unsupported(format!("VOI LUT Function {other}"))),
        },
        _ => None,
    };
    let grey: Vec<u8> = match window {
        Some(win) => rescaled.iter().map(|&x| to_byte(win.apply(x))).collect(),
        None => {
            let lo = rescaled.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rescaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if hi > lo {
                rescaled.iter().map(|&x| to_byte((x - lo) / (hi - lo) * 255.0)).collect()
            } else {
                vec![0; n]
            }
        }
    };
    let data = grey.iter().flat_map(|&g| {
        let g = if invert { 255 - g } else { g };
        [g, g, g]
    });
    Rgb8::from_raw(cols as u32, rows as u32, data.collect()).ok_or_else(|| bad("pixel count mismatch"))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_ps3_3() {
        let w = Window::Linear { c: 40.0, w: 400.0 };
        // Bounds: c − 0.5 ∓ (w − 1)/2 = −160.0 and 239.0.
        assert_eq!(w.apply(-160.0), 0.0);
        assert_eq!(w.apply(239.5), 255.0);
        assert_eq!(to_byte(w.apply(39.5)), 128); // centre → 0.5·255 = 127.5 → 128
        let one = Window::Linear { c: 100.0, w: 1.0 };
        assert_eq!((one.apply(99.5), one.apply(99.6)), (0.0, 255.0));
        let exact = Window::LinearExact { c: 0.0, w: 10.0 };
        assert_eq!((exact.apply(-5.0), exact.apply(0.0), exact.apply(5.1)), (0.0, 127.5, 255.0));
        let s = Window::Sigmoid { c: 0.0, w: 10.0 };
        assert_eq!(s.apply(0.0), 127.5);
    }

    use dicom_core::{dicom_value, DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::uids;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    /// A greyscale DICOM file: `pixels` stored as `allocated`-bit samples, plus `extra` elements.
    pub(in crate::image) fn dicom_file(
        ts: &str,
        cols: u16,
        rows: u16,
        allocated: u16,
        signed: bool,
        photometric: &str,
        pixels: PrimitiveValue,
        extra: Vec<DataElement<InMemDicomObject>>,
    ) -> Vec<u8> {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE));
        obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1234567"));
        obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, dicom_value!(U16, [1])));
        obj.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric));
        obj.put(DataElement::new(tags::ROWS, VR::US, dicom_value!(U16, [rows])));
        obj.put(DataElement::new(tags::COLUMNS, VR::US, dicom_value!(U16, [cols])));
        obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [allocated])));
        obj.put(DataElement::new(tags::BITS_STORED, VR::US, dicom_value!(U16, [allocated])));
        obj.put(DataElement::new(tags::HIGH_BIT, VR::US, dicom_value!(U16, [allocated - 1])));
        obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, dicom_value!(U16, [signed as u16])));
        for e in extra {
            obj.put(e);
        }
        let vr = if allocated == 8 { VR::OB } else { VR::OW };
        obj.put(DataElement::new(tags::PIXEL_DATA, vr, pixels));
        let file = obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(ts)).unwrap();
        let mut out = Vec::new();
        file.write_all(&mut out).unwrap();
        out
    }

    fn greys(img: &Rgb8) -> Vec<u8> {
        img.as_raw().chunks_exact(3).map(|p| {
            assert!(p[0] == p[1] && p[1] == p[2]);
            p[0]
        }).collect()
    }

    fn ds(tag: dicom_core::Tag, v: &str) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::DS, v)
    }

    #[test]
    fn ct_rescale_and_window() {
        // Signed 16-bit CT: HU = v·1 − 1024; window 40/400 (soft tissue).
        let stored: Vec<i16> = vec![0, 864, 1024, 1063, 1064, 1263, 1264, 3000];
        let hu: Vec<f64> = stored.iter().map(|&v| v as f64 - 1024.0).collect();
        let extra = vec![
            ds(tags::RESCALE_SLOPE, "1"),
            ds(tags::RESCALE_INTERCEPT, "-1024"),
            ds(tags::WINDOW_CENTER, "40\\300"),
            ds(tags::WINDOW_WIDTH, "400\\1500"),
        ];
        for ts in [uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN] {
            let f = dicom_file(ts, 4, 2, 16, true, "MONOCHROME2", PrimitiveValue::I16(stored.clone().into()), extra.clone());
            let img = decode(&f, 100).unwrap();
            assert_eq!((img.width(), img.height()), (4, 2));
            let want: Vec<u8> = hu.iter().map(|&x| to_byte(Window::Linear { c: 40.0, w: 400.0 }.apply(x))).collect();
            assert_eq!(greys(&img), want, "{ts}");
            // Spelled out: −1024 and −160 HU are black; 0 HU → (−39.5/399 + 0.5)·255 = 102.25;
            // 39 and 40 HU straddle mid-grey (127.18, 127.82); 239 HU and above are white.
            assert_eq!(want, [0, 0, 102, 127, 128, 255, 255, 255]);
            // Without the 128-byte preamble too.
            assert_eq!(decode(&f[128..], 100).unwrap(), img);
        }
    }

    #[test]
    fn minmax_monochrome1_and_8bit() {
        // No window: min–max of the rescaled values; MONOCHROME1 inverted.
        let px = vec![10u16, 20, 30, 110];
        let f = dicom_file(uids::EXPLICIT_VR_LITTLE_ENDIAN, 2, 2, 16, false, "MONOCHROME1", PrimitiveValue::U16(px.into()), vec![]);
        // (x − 10)/100·255 = 0, 25.5, 51, 255 → 0, 26, 51, 255 → inverted.
        assert_eq!(greys(&decode(&f, 4).unwrap()), [255, 229, 204, 0]);
        let f8 = dicom_file(uids::EXPLICIT_VR_LITTLE_ENDIAN, 3, 1, 8, false, "MONOCHROME2", PrimitiveValue::U8(vec![5, 5, 5].into()), vec![]);
        assert_eq!(greys(&decode(&f8, 3).unwrap()), [0, 0, 0]); // flat image → black
        let f8 = dicom_file(uids::IMPLICIT_VR_LITTLE_ENDIAN, 3, 1, 8, false, "MONOCHROME2", PrimitiveValue::U8(vec![0, 51, 255].into()), vec![]);
        assert_eq!(greys(&decode(&f8, 3).unwrap()), [0, 51, 255]);
    }

    #[test]
    fn dicom_errors() {
        let px = || PrimitiveValue::U16(vec![1u16; 6].into());
        let ok = dicom_file(uids::EXPLICIT_VR_LITTLE_ENDIAN, 3, 2, 16, false, "MONOCHROME2", px(), vec![]);
        assert!(decode(&ok, 6).is_ok());
        let e = decode(&ok, 5).unwrap_err();
        assert!(e.is_too_large(), "{e}");
        for cut in [ok.len() - 5, 200, 131, 10] {
            assert!(matches!(decode(&ok[..cut], 100), Err(ImageError::Decode { .. })), "cut {cut}");
        }
        let rgb = dicom_file(uids::EXPLICIT_VR_LITTLE_ENDIAN, 3, 2, 16, false, "RGB", px(), vec![]);
        assert!(matches!(decode(&rgb, 100), Err(ImageError::Unsupported(ref m)) if m.contains("RGB")));
        let be = dicom_file(uids::JPEG_BASELINE8_BIT, 3, 2, 16, false, "MONOCHROME2", px(), vec![]);
        let e = decode(&be, 100).unwrap_err();
        assert!(matches!(e, ImageError::Unsupported(ref m) if m.contains("transfer syntax")), "{e}");
        let short = dicom_file(uids::EXPLICIT_VR_LITTLE_ENDIAN, 3, 3, 16, false, "MONOCHROME2", px(), vec![]);
        assert!(matches!(decode(&short, 100), Err(ImageError::Decode { ref reason, .. }) if reason.contains("fewer")));
        assert!(matches!(decode(b"not a dicom file at all", 100), Err(ImageError::Decode { .. })));
    }

    /// A small file declaring a value far longer than itself is refused from the headers, before
    /// the parser would allocate the declared length (in the meta group, in the data set, in
    /// both VR encodings, and inside a sequence item).
    #[test]
    fn declared_lengths_beyond_the_file_are_refused_before_parsing() {
        let px = || PrimitiveValue::U16(vec![1u16; 6].into());
        let huge = 0xFFFF_FFF0u32.to_le_bytes();
        // The reason is `check_lengths`' own, so the file was refused before the parser ran.
        let refused = |bytes: &[u8]| {
            let e = decode(bytes, 100).unwrap_err();
            assert!(matches!(e, ImageError::Decode { ref reason, .. } if reason.contains("declares 4294967280 bytes")), "{e:?}");
        };
        for ts in [uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN] {
            let file = dicom_file(ts, 3, 2, 16, false, "MONOCHROME2", px(), vec![]);
            let at = file.windows(4).rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00]).unwrap();
            let len_at = if ts == uids::EXPLICIT_VR_LITTLE_ENDIAN { at + 8 } else { at + 4 };
            let mut bad = file.clone();
            bad[len_at..len_at + 4].copy_from_slice(&huge);
            refused(&bad);
        }
        // In the meta group: (0002,0001) File Meta Information Version, OB (a 4-byte length).
        let file = dicom_file(uids::EXPLICIT_VR_LITTLE_ENDIAN, 3, 2, 16, false, "MONOCHROME2", px(), vec![]);
        let at = file.windows(6).position(|w| w == [0x02, 0x00, 0x01, 0x00, b'O', b'B']).unwrap();
        let mut bad = file.clone();
        bad[at + 8..at + 12].copy_from_slice(&huge);
        refused(&bad);
        // An Explicit VR code the parser does not know is read as UN, with a 4-byte length.
        let file = dicom_file(uids::EXPLICIT_VR_LITTLE_ENDIAN, 3, 2, 16, false, "MONOCHROME2", px(), vec![]);
        let at = file.windows(4).rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00]).unwrap();
        let mut bad = file.clone();
        bad[at + 4..at + 12].copy_from_slice(&[b'Z', b'Z', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF]);
        refused(&bad);
        // A meta group length that stops before the last meta element: the parser reads that
        // element in the data set's encoding (Implicit VR: a 4-byte length over "UI" and the
        // 2-byte one), and so does the check.
        let file = dicom_file(uids::IMPLICIT_VR_LITTLE_ENDIAN, 3, 2, 16, false, "MONOCHROME2", px(), vec![]);
        let last = file.windows(6).position(|w| w == [0x02, 0x00, 0x12, 0x00, b'U', b'I']).unwrap();
        let size = 8 + u16::from_le_bytes([file[last + 6], file[last + 7]]) as usize;
        let mut bad = file.clone();
        let group = bad.windows(4).position(|w| w == [0x02, 0x00, 0x00, 0x00]).unwrap() + 8;
        let g = u32::from_le_bytes(bad[group..group + 4].try_into().unwrap()) - size as u32;
        bad[group..group + 4].copy_from_slice(&g.to_le_bytes());
        bad[last + 6..last + 8].copy_from_slice(&[0xF0, 0xFF]);
        let e = decode(&bad, 100).unwrap_err();
        assert!(matches!(e, ImageError::Decode { ref reason, .. } if reason.contains("(0002,0012) declares")), "{e:?}");
        // The item of the real CT slice's Other Patient IDs Sequence (Explicit VR).
        let ct = fixture("ct_small.dcm");
        assert!(decode(&ct, 1 << 20).is_ok());
        let item = ct.windows(4).position(|w| w == [0xFE, 0xFF, 0x00, 0xE0]).unwrap();
        let mut bad = ct.clone();
        bad[item + 4..item + 8].copy_from_slice(&huge);
        refused(&bad);
    }

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/images").join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// pydicom's CT_small.dcm (a real CT slice written by another toolkit), against the same
    /// conversion done in numpy by check_image_preprocess.py (whose window formula agrees with
    /// pydicom's `apply_voi_lut` on every pixel).
    #[test]
    fn ct_small_matches_numpy_reference() {
        let file = fixture("ct_small.dcm");
        let img = decode(&file, 128 * 128).unwrap();
        assert_eq!((img.width(), img.height()), (128, 128));
        assert_eq!(greys(&img), fixture("ct_small_minmax.grey"));
        // The same file with a 40/400 window added.
        let mut obj = OpenFileOptions::new().from_reader(&file[128..]).unwrap();
        obj.put(ds(tags::WINDOW_CENTER, "40"));
        obj.put(ds(tags::WINDOW_WIDTH, "400"));
        let mut windowed = Vec::new();
        obj.write_all(&mut windowed).unwrap();
        assert_eq!(greys(&decode(&windowed, 128 * 128).unwrap()), fixture("ct_small_w40_400.grey"));
    }
}
