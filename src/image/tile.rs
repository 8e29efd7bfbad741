//! InternVL's dynamic tiling (`dynamic_preprocess`), reproduced exactly.
//!
//! The authors collect every grid `(i, j)` with `min ≤ i·j ≤ max` into a Python `set` and sort it
//! by `i·j`. `sorted` is stable, so among grids with the same tile count the order is CPython's
//! set iteration order, and that order can decide the pick: on an exact tie of aspect-ratio
//! distance the later grid wins when the image area exceeds half the grid's pixel area.
//! [`candidate_grids`] therefore replays CPython's set (tuple hash and open-addressing table, as
//! in CPython 3.8 to 3.13; checked against CPython 3.11's output in the unit tests) instead of
//! guessing an order.

use super::{resize_bicubic, Rgb8};

/// The tiling parameters of `dynamic_preprocess`; the default is VisualPRM's (InternVL2.5: 1 to
/// 12 tiles of 448 pixels, plus a thumbnail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileConfig {
    /// Side of a square tile in pixels.
    pub image_size: u32,
    pub min_tiles: u32,
    pub max_tiles: u32,
    /// Append a resize of the whole image as a last tile when there is more than one tile.
    pub use_thumbnail: bool,
}

impl Default for TileConfig {
    fn default() -> Self {
        TileConfig { image_size: 448, min_tiles: 1, max_tiles: 12, use_thumbnail: true }
    }
}

/// CPython's hash of a tuple of two small non-negative ints (xxHash-based, CPython ≥ 3.8).
fn py_tuple_hash(a: u64, b: u64) -> u64 {
    const P1: u64 = 11400714785074694791;
    const P2: u64 = 14029467366897019727;
    const P5: u64 = 2870177450012600261;
    let mut acc = P5;
    for lane in [a, b] {
        acc = acc.wrapping_add(lane.wrapping_mul(P2));
        acc = acc.rotate_left(31);
        acc = acc.wrapping_mul(P1);
    }
    acc = acc.wrapping_add(2 ^ (P5 ^ 3527539));
    if acc == u64::MAX {
        1546275796
    } else {
        acc
    }
}

/// A CPython set of `(i, j)` tuples: open addressing with 9 linear probes then perturbation,
/// grown to the smallest power of two above 4·used when 5·fill ≥ 3·mask.
struct PySet {
    table: Vec<Option<(u64, (u32, u32))>>,
    used: usize,
}

impl PySet {
    const LINEAR_PROBES: usize = 9;
    const PERTURB_SHIFT: u32 = 5;

    fn new() -> PySet {
        PySet { table: vec![None; 8], used: 0 }
    }

    /// The slot for `key`: where it is, or the first free slot on its probe path.
    fn slot(table: &[Option<(u64, (u32, u32))>], hash: u64, key: Option<(u32, u32)>) -> usize {
        let mask = table.len() - 1;
        let mut i = hash as usize & mask;
        let mut perturb = hash;
        loop {
            let probes = if i + Self::LINEAR_PROBES <= mask { Self::LINEAR_PROBES } else { 0 };
            for j in i..=i + probes {
                match table[j] {
                    None => return j,
                    Some((h, k)) if h == hash && Some(k) == key => return j,
                    Some(_) => {}
                }
            }
            perturb >>= Self::PERTURB_SHIFT;
            i = (i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb as usize)) & mask;
        }
    }

    fn add(&mut self, key: (u32, u32)) {
        let hash = py_tuple_hash(key.0 as u64, key.1 as u64);
        let j = Self::slot(&self.table, hash, Some(key));
        if self.table[j].is_some() {
            return;
        }
        self.table[j] = Some((hash, key));
        self.used += 1;
        let mask = self.table.len() - 1;
        // No deletions, so fill == used.
        if self.used * 5 >= mask * 3 {
            let min_used = if self.used > 50000 { self.used * 2 } else { self.used * 4 };
            let mut size = 8;
            while size <= min_used {
                size <<= 1;
            }
            let old = std::mem::replace(&mut self.table, vec![None; size]);
            for (hash, key) in old.into_iter().flatten() {
                let j = Self::slot(&self.table, hash, None);
                self.table[j] = Some((hash, key));
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.table.iter().flatten().map(|&(_, k)| k)
    }
}

/// The candidate grids `(cols, rows)` in the order `dynamic_preprocess` tries them.
pub fn candidate_grids(min_tiles: u32, max_tiles: u32) -> Vec<(u32, u32)> {
    let mut set = PySet::new();
    for n in min_tiles..=max_tiles {
        for i in 1..=n {
            for j in 1..=n {
                let p = i as u64 * j as u64;
                if p <= max_tiles as u64 && p >= min_tiles as u64 {
                    set.add((i, j));
                }
            }
        }
    }
    let mut grids: Vec<(u32, u32)> = set.iter().collect();
    grids.sort_by_key(|&(i, j)| i as u64 * j as u64); // stable, like Python's sorted
    grids
}

/// The grid `(cols, rows)` that `dynamic_preprocess` picks for a `width × height` image
/// (`find_closest_aspect_ratio`; `(1, 1)` when there is no candidate).
pub fn tile_grid(width: u32, height: u32, cfg: &TileConfig) -> (u32, u32) {
    let aspect = width as f64 / height as f64;
    let area = width as f64 * height as f64;
    let size = cfg.image_size as f64;
    let mut best_diff = f64::INFINITY;
    let mut best = (1, 1);
    for (i, j) in candidate_grids(cfg.min_tiles, cfg.max_tiles) {
        let diff = (aspect - i as f64 / j as f64).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (i, j);
        } else if diff == best_diff && area > 0.5 * size * size * i as f64 * j as f64 {
            best = (i, j);
        }
    }
    best
}

/// `dynamic_preprocess`: the image resized to the picked grid and cut into `image_size` squares,
/// row by row, then (with `use_thumbnail` and more than one tile) the whole image resized to one
/// square. Every tile is `image_size × image_size`.
pub fn tiles(img: &Rgb8, cfg: &TileConfig) -> Vec<Rgb8> {
    let s = cfg.image_size.max(1);
    let (cols, rows) = tile_grid(img.width, img.height, cfg);
    let resized = resize_bicubic(img, s * cols, s * rows);
    let mut out = Vec::with_capacity((cols * rows) as usize + 1);
    for r in 0..rows {
        for c in 0..cols {
            out.push(resized.crop(c * s, r * s, s, s));
        }
    }
    if cfg.use_thumbnail && out.len() != 1 {
        out.push(resize_bicubic(img, s, s));
    }
    out
}
