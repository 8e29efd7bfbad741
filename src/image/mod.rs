//! Image preprocessing for multimodal PRMs (VisualPRM / InternVL2.5), reproducing the authors'
//! Python path: `load_image` → `dynamic_preprocess` → `build_transform` (OpenGVLab/InternVL,
//! `internvl_chat/internvl/train/dataset.py` and the model card's `load_image`).
//!
//! The steps, each matching what PIL/torchvision do:
//! 1. [`decode`]: bytes + media type → an 8-bit RGB image ([`Rgb8`]), like `Image.open(..).convert('RGB')`
//!    (PNG, JPEG; greyscale DICOM windowed to 8 bit as a medical extra, see [`decode`]).
//! 2. [`tile_grid`] / [`tiles`]: `dynamic_preprocess`: the (cols, rows) grid whose aspect ratio is
//!    closest to the image's among 1..=12 tiles, the image resized to `448·cols × 448·rows`, cut
//!    into 448×448 tiles row by row, then a 448×448 thumbnail of the whole image when there is more
//!    than one tile.
//! 3. [`resize_bicubic`]: Pillow's `Image.resize(size, BICUBIC)` bit for bit (the default filter of
//!    `Image.resize` for RGB images). torchvision's `T.Resize((448, 448), BICUBIC)` that follows in
//!    `build_transform` is a copy on a 448×448 PIL image, so it has no counterpart here.
//! 4. [`to_tensor`]: `T.ToTensor()` + `T.Normalize(IMAGENET_MEAN, IMAGENET_STD)` in f32, N×3×S×S.
//!
//! Bit-exactness with Pillow 12.1.1 (and torch for the tensor) for PNG input is checked by the unit
//! tests' fixtures (made by `scripts/golden/check_image_preprocess.py fixtures`) and, over 48
//! generated PNGs (RGB and grey) from 1×1 to 4032×3024 with aspect ratios up to 1:5000, by the
//! ignored test `image::tests::matches_pil_dir` (`check_image_preprocess.py check DIR`): 0 differing bytes in
//! 260 M tile bytes, the same grid for every image, bit-identical f32 tensors. JPEG is decoded by
//! libjpeg-turbo's own decoder (see [`jpeg`]), so its pixels are PIL's too.
//!
//! The resampling passes and the tensor conversion run on rayon's pool.

mod decode;
mod dicom;
mod jpeg;
mod resize;
mod tensor;
mod tile;

pub use decode::{decode, MEDIA_TYPES};
pub use resize::resize_bicubic;
pub use tensor::{to_tensor, IMAGENET_MEAN, IMAGENET_STD};
pub use tile::{candidate_grids, tile_grid, tiles, TileConfig};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `R G B`.
#[derive(Clone, PartialEq, Eq)]
pub struct Rgb8 {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl Rgb8 {
    /// `None` unless `data.len() == width * height * 3` and both sides are non-zero.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Option<Rgb8> {
        let len = (width as usize).checked_mul(height as usize)?.checked_mul(3)?;
        (width > 0 && height > 0 && data.len() == len).then_some(Rgb8 { width, height, data })
    }
    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    /// The interleaved RGB bytes, `width * height * 3` of them.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }
    pub fn into_raw(self) -> Vec<u8> {
        self.data
    }
    /// The `w × h` block whose top-left corner is `(x, y)`; the caller keeps it inside the image.
    fn crop(&self, x: u32, y: u32, w: u32, h: u32) -> Rgb8 {
        debug_assert!(x + w <= self.width && y + h <= self.height);
        let stride = self.width as usize * 3;
        let mut data = Vec::with_capacity(w as usize * h as usize * 3);
        for row in y..y + h {
            let start = row as usize * stride + x as usize * 3;
            data.extend_from_slice(&self.data[start..start + w as usize * 3]);
        }
        Rgb8 { width: w, height: h, data }
    }
}

impl std::fmt::Debug for Rgb8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rgb8({}x{})", self.width, self.height)
    }
}

/// Why an image was refused. The messages are meant for a 422 body (the caller puts the field
/// name in front); [`ImageError::TooLarge`] is the one to answer with 413.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// The header announces more pixels than allowed; nothing was decoded.
    #[error("image is {width}x{height} = {pixels} pixels, more than the limit of {max_pixels}")]
    TooLarge { width: u64, height: u64, pixels: u64, max_pixels: u64 },
    /// The bytes are not a valid image of the announced type (truncated, corrupt, wrong type).
    #[error("cannot decode the {media_type} image: {reason}")]
    Decode { media_type: String, reason: String },
    /// A media type or an image variant that is not handled; the message says which and why.
    #[error("unsupported image: {0}")]
    Unsupported(String),
}

impl ImageError {
    /// True for [`ImageError::TooLarge`] (HTTP 413 rather than 422).
    pub fn is_too_large(&self) -> bool {
        matches!(self, ImageError::TooLarge { .. })
    }
}

/// `Err(TooLarge)` when `width × height > max_pixels` (also for a zero-sized image: `Decode`).
fn check_size(media_type: &str, width: u64, height: u64, max_pixels: u64) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Decode {
            media_type: media_type.to_string(),
            reason: format!("the image is {width}x{height}"),
        });
    }
    let pixels = width.saturating_mul(height);
    if pixels > max_pixels {
        return Err(ImageError::TooLarge { width, height, pixels, max_pixels });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
