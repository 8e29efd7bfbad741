//! torchvision's `ToTensor()` + `Normalize(mean, std)` for 8-bit RGB tiles.

use rayon::prelude::*;

use super::Rgb8;

/// ImageNet channel means and standard deviations (`IMAGENET_MEAN` / `IMAGENET_STD` in InternVL).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The tiles as one f32 tensor of shape `N × 3 × H × W` (channel-major per tile), each value
/// `(v / 255 − mean[c]) / std[c]` computed in f32 in that order, as torchvision does
/// (`ToTensor`: `u8 → f32`, `/ 255`; `Normalize`: `sub_(mean).div_(std)` with f32 mean and std),
/// so the result is bit-identical to `torch.stack([transform(t) for t in tiles])`.
///
/// All tiles must have the same size (the tiler's are all `image_size` squares); a tile of
/// another size panics, as it is a programming error.
pub fn to_tensor(tiles: &[Rgb8], mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let Some(first) = tiles.first() else { return Vec::new() };
    let (w, h) = (first.width as usize, first.height as usize);
    let plane = w * h;
    let mut out = vec![0f32; tiles.len() * 3 * plane];
    // One lookup table per channel: 256 values instead of a division per pixel, same f32 results.
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, x) in table.iter_mut().enumerate() {
            *x = (v as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    out.par_chunks_exact_mut(3 * plane).zip(tiles).for_each(|(dst, tile)| {
        assert_eq!((tile.width as usize, tile.height as usize), (w, h), "tiles must share one size");
        let (r, rest) = dst.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in tile.data.chunks_exact(3).enumerate() {
            r[i] = lut[0][px[0] as usize];
            g[i] = lut[1][px[1] as usize];
            b[i] = lut[2][px[2] as usize];
        }
    });
    out
}
