//! InternVL's vision side: the InternViT encoder (patch embedding, class token, absolute position
//! embedding, pre-norm blocks with layer scale), the pixel shuffle that folds 2×2 patches into one
//! token, and the MLP projector into the text model's hidden size. Image tiles in, one embedding
//! per `<IMG_CONTEXT>` token out.
//!
//! Tensors are named here as InternVL's own (remote-code) checkpoints name them (`vision_model.*`,
//! `mlp1.*`, fused `qkv`); [`super::internvl`] maps the transformers layout onto these names.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};

use super::Weights;
use crate::error::{Error, Result};

/// The encoder's shape and the projector's input folding.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    /// Side of a square input tile, in pixels (448).
    pub image_size: usize,
    /// Side of a patch, in pixels (14).
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    /// Pixel-shuffle factor (0.5: 2×2 patches per token).
    pub downsample_ratio: f64,
    /// Hidden size of the text model the projector feeds.
    pub text_hidden_size: usize,
}

impl VisionConfig {
    /// Patches per tile side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches folded into one token per side (2 for a ratio of 0.5).
    pub fn fold(&self) -> usize {
        (1.0 / self.downsample_ratio).round() as usize
    }

    /// Image tokens one tile becomes (256 for 448-pixel tiles, 14-pixel patches and a 0.5 ratio).
    pub fn tokens_per_tile(&self) -> usize {
        let side = self.grid() / self.fold();
        side * side
    }

    /// Rejects shapes the encoder cannot run.
    pub fn check(&self) -> Result<()> {
        let bad = |r: String| Err(Error::Unsupported(format!("vision config: {r}")));
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            return bad(format!("image_size {} is not a multiple of patch_size {}", self.image_size, self.patch_size));
        }
        let fold = self.fold();
        if fold == 0 || (1.0 / fold as f64 - self.downsample_ratio).abs() > 1e-9 || self.grid() % fold != 0 {
            return bad(format!("downsample_ratio {} does not fold the {}-patch grid evenly", self.downsample_ratio, self.grid()));
        }
        if self.num_heads == 0 || self.hidden_size % self.num_heads != 0 {
            return bad(format!("hidden_size {} is not a multiple of num_attention_heads {}", self.hidden_size, self.num_heads));
        }
        Ok(())
    }
}

/// One pre-norm encoder block: `x + ls1·attn(norm1(x))`, then `x + ls2·mlp(norm2(x))`.
struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ls1: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ls2: Tensor,
}

/// InternViT + pixel shuffle + projector.
pub struct VisionTower {
    cfg: VisionConfig,
    /// The patch convolution as a matrix over flattened (channel, row, column) patches.
    patch: Linear,
    /// (1, 1, hidden).
    cls: Tensor,
    /// (1, 1 + patches, hidden).
    pos: Tensor,
    blocks: Vec<Block>,
    proj_norm: LayerNorm,
    proj1: Linear,
    proj2: Linear,
    device: Device,
    dtype: DType,
}

fn layer_norm(w: &Weights, prefix: &str, n: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm::new(w.get(&format!("{prefix}.weight"), n)?, w.get(&format!("{prefix}.bias"), n)?, eps))
}

/// A linear layer with its bias; a missing bias is zero when `optional_bias` (checkpoints
/// without q/k/v biases: `qkv_bias` / `attention_bias` false).
fn linear(w: &Weights, prefix: &str, out: usize, inp: usize, optional_bias: bool) -> Result<Linear> {
    let bias = format!("{prefix}.bias");
    let bias = if optional_bias && !w.contains(&bias) { Tensor::zeros(out, w.dtype(), w.device())? } else { w.get(&bias, out)? };
    Ok(Linear::new(w.get(&format!("{prefix}.weight"), (out, inp))?, Some(bias)))
}

impl VisionTower {
    /// Loads the tower from tensors under InternVL's names.
    pub fn load(w: &Weights, cfg: VisionConfig) -> Result<Self> {
        cfg.check()?;
        let (c, p, eps) = (cfg.hidden_size, cfg.patch_size, cfg.layer_norm_eps);
        let patches = cfg.grid() * cfg.grid();
        let conv = w.get("vision_model.embeddings.patch_embedding.weight", (c, 3, p, p))?;
        let patch = Linear::new(conv.reshape((c, 3 * p * p))?, Some(w.get("vision_model.embeddings.patch_embedding.bias", c)?));
        let cls = w.get("vision_model.embeddings.class_embedding", (1, 1, c))?;
        let pos = w.get("vision_model.embeddings.position_embedding", (1, 1 + patches, c))?;
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let b = format!("vision_model.encoder.layers.{i}");
                Ok(Block {
                    norm1: layer_norm(w, &format!("{b}.norm1"), c, eps)?,
                    qkv: linear(w, &format!("{b}.attn.qkv"), 3 * c, c, true)?,
                    proj: linear(w, &format!("{b}.attn.proj"), c, c, false)?,
                    ls1: w.get(&format!("{b}.ls1"), c)?,
                    norm2: layer_norm(w, &format!("{b}.norm2"), c, eps)?,
                    fc1: linear(w, &format!("{b}.mlp.fc1"), cfg.intermediate_size, c, false)?,
                    fc2: linear(w, &format!("{b}.mlp.fc2"), c, cfg.intermediate_size, false)?,
                    ls2: w.get(&format!("{b}.ls2"), c)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let folded = c * cfg.fold() * cfg.fold();
        // The projector's LayerNorm takes PyTorch's default epsilon (1e-5), not the encoder's.
        let proj_norm = layer_norm(w, "mlp1.0", folded, 1e-5)?;
        let proj1 = linear(w, "mlp1.1", cfg.text_hidden_size, folded, false)?;
        let proj2 = linear(w, "mlp1.3", cfg.text_hidden_size, cfg.text_hidden_size, false)?;
        let (device, dtype) = (cls.device().clone(), cls.dtype());
        Ok(VisionTower { cfg, patch, cls, pos, blocks, proj_norm, proj1, proj2, device, dtype })
    }

    pub fn cfg(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Embeddings of the image tokens of `tiles` normalised tiles (N × 3 × S × S values, CHW,
    /// f32): (N · tokens_per_tile, text hidden), tile by tile, tokens row-major within a tile.
    pub fn embed(&self, pixels: &[f32], tiles: usize) -> Result<Tensor> {
        let s = self.cfg.image_size;
        if pixels.len() != tiles * 3 * s * s {
            return Err(Error::Backend(format!("{} pixel values for {tiles} tiles of {s}×{s}", pixels.len())));
        }
        let mut out = Vec::with_capacity(tiles);
        // One tile at a time: the attention matrix of a tile is heads × 1025² values.
        for t in 0..tiles {
            let one = &pixels[t * 3 * s * s..(t + 1) * 3 * s * s];
            let x = Tensor::from_slice(one, (1, 3, s, s), &Device::Cpu)?.to_device(&self.device)?.to_dtype(self.dtype)?;
            out.push(self.embed_tiles(&x)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    /// (n, 3, S, S) → (n · tokens_per_tile, text hidden).
    fn embed_tiles(&self, pixels: &Tensor) -> Result<Tensor> {
        let (n, _, _, _) = pixels.dims4()?;
        let (c, p, g) = (self.cfg.hidden_size, self.cfg.patch_size, self.cfg.grid());
        // The stride-p convolution: each patch's (channel, row, column) values times the kernel.
        let patches = pixels
            .reshape((n, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * g * g, 3 * p * p))?;
        let x = self.patch.forward(&patches)?.reshape((n, g * g, c))?;
        let cls = self.cls.broadcast_as((n, 1, c))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos)?;
        for b in &self.blocks {
            let a = self.attention(b, &b.norm1.forward(&x)?)?;
            x = (x + a.broadcast_mul(&b.ls1)?)?;
            let h = b.fc2.forward(&b.fc1.forward(&b.norm2.forward(&x)?)?.gelu_erf()?)?;
            x = (x + h.broadcast_mul(&b.ls2)?)?;
        }
        let x = pixel_shuffle(&x.narrow(1, 1, g * g)?, g, self.cfg.fold())?;
        let x = self.proj1.forward(&self.proj_norm.forward(&x)?)?.gelu_erf()?;
        Ok(self.proj2.forward(&x)?)
    }

    /// Bidirectional multi-head attention over one tile's tokens: (n, T, C) → (n, T, C).
    fn attention(&self, b: &Block, x: &Tensor) -> Result<Tensor> {
        let (n, t, c) = x.dims3()?;
        let heads = self.cfg.num_heads;
        let d = c / heads;
        let qkv = b.qkv.forward(x)?.reshape((n, t, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * (d as f64).powf(-0.5))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let w = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let o = w.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((n, t, c))?;
        Ok(b.proj.forward(&o)?)
    }
}

/// Folds `f`×`f` neighbouring patches of a `g`×`g` grid into one token: (n, g², c) →
/// (n · (g/f)², f² · c). Token (i, j) holds patches (fi, fj), (fi, fj+1), …, (fi+1, fj), … in
/// row-major order, as InternVL's `pixel_shuffle` (version 2) lays them out.
fn pixel_shuffle(x: &Tensor, g: usize, f: usize) -> Result<Tensor> {
    let (n, _, c) = x.dims3()?;
    let side = g / f;
    Ok(x.reshape((n, side, f, side, f, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((n * side * side, f * f * c))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VisionConfig {
        VisionConfig {
            hidden_size: 8,
            num_layers: 1,
            num_heads: 2,
            intermediate_size: 16,
            image_size: 28,
            patch_size: 7,
            layer_norm_eps: 1e-6,
            downsample_ratio: 0.5,
            text_hidden_size: 6,
        }
    }

    /// InternVL's `pixel_shuffle` (ps_version v2) written out as its four view/permute steps on
    /// an (n, rows, cols, c) grid, to compare with the one reshape/permute used here.
    fn reference_shuffle(x: &[f32], rows: usize, cols: usize, c: usize) -> Vec<f32> {
        // view (rows, cols/2, 2c) → permute → (cols/2, rows, 2c) → view (cols/2, rows/2, 4c)
        // → permute → (rows/2, cols/2, 4c).
        let (r2, c2) = (rows / 2, cols / 2);
        let mut y2 = vec![0f32; rows * cols * c]; // [j'][i][2c]
        for i in 0..rows {
            for jp in 0..c2 {
                for k in 0..2 * c {
                    y2[(jp * rows + i) * 2 * c + k] = x[(i * c2 + jp) * 2 * c + k];
                }
            }
        }
        let mut z = vec![0f32; rows * cols * c]; // [i'][j'][4c]
        for jp in 0..c2 {
            for ip in 0..r2 {
                for k in 0..4 * c {
                    // view (c2, rows, 2c) as (c2, r2, 4c): the same memory.
                    z[(ip * c2 + jp) * 4 * c + k] = y2[(jp * r2 + ip) * 4 * c + k];
                }
            }
        }
        z
    }

    #[test]
    fn pixel_shuffle_matches_internvl_view_permute_steps() {
        let (g, c) = (6, 3);
        let x: Vec<f32> = (0..g * g * c).map(|v| v as f32).collect();
        let t = Tensor::from_vec(x.clone(), (1, g * g, c), &Device::Cpu).unwrap();
        let got = pixel_shuffle(&t, g, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, reference_shuffle(&x, g, g, c));
        // Token 0 holds patches 0, 1, g, g+1.
        let tok0: Vec<f32> = [0, 1, g, g + 1].iter().flat_map(|&p| (0..c).map(move |k| (p * c + k) as f32)).collect();
        assert_eq!(&got[..4 * c], tok0.as_slice());
    }

    #[test]
    fn tokens_per_tile_and_shape_checks() {
        let real = VisionConfig { image_size: 448, patch_size: 14, ..cfg() };
        assert_eq!(real.tokens_per_tile(), 256);
        assert!(VisionConfig { image_size: 30, ..cfg() }.check().is_err());
        assert!(VisionConfig { downsample_ratio: 0.3, ..cfg() }.check().is_err());
    }
}
