//! Fixtures in tests/data/images/ are written by `scripts/golden/check_image_preprocess.py
//! fixtures` (Pillow 12.1.1) and `scripts/golden/print_tile_ratios.py` (CPython 3.11).

use super::*;
use std::path::PathBuf;

fn data(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/images").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The same picture as `pattern` in check_image_preprocess.py.
fn pattern(w: u32, h: u32) -> Rgb8 {
    let mut v = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            for c in 0..3 {
                v.push(((x * x * 3 + y * 5 + x * y + c * 77) % 256) as u8);
            }
        }
    }
    Rgb8::from_raw(w, h, v).unwrap()
}

/// (largest |Δ|, number of differing bytes)
fn diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(m, n), (&x, &y)| (m.max(x.abs_diff(y)), n + (x != y) as usize))
}

#[test]
fn candidate_order_matches_cpython_set_order() {
    let text = String::from_utf8(data("tile_ratios.txt")).unwrap();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut it = line.split(' ');
        let lo: u32 = it.next().unwrap().parse().unwrap();
        let hi: u32 = it.next().unwrap().parse().unwrap();
        let want: Vec<(u32, u32)> = it
            .map(|p| {
                let (i, j) = p.split_once(',').unwrap();
                (i.parse().unwrap(), j.parse().unwrap())
            })
            .collect();
        assert_eq!(candidate_grids(lo, hi), want, "min {lo} max {hi}");
        lines += 1;
    }
    assert_eq!(lines, 16 * 17 / 2);
    // The default's order as printed by Python, spelled out.
    assert_eq!(
        candidate_grids(1, 12)[..12],
        [(1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1)]
    );
}

#[test]
fn tile_grid_cases() {
    // Every expected grid below was printed by check_image_preprocess.py's pick_grid.
    let c = TileConfig::default();
    assert_eq!(tile_grid(448, 448, &c), (1, 1));
    // Same aspect ratio as 1:1; the tie goes to the larger grid when the image is large enough.
    assert_eq!(tile_grid(800, 800, &c), (2, 2)); // 640000 > 0.5·448²·4
    assert_eq!(tile_grid(1000, 1000, &c), (3, 3)); // 1000000 > 0.5·448²·9
    assert_eq!(tile_grid(896, 448, &c), (2, 1));
    assert_eq!(tile_grid(448, 896, &c), (1, 2));
    assert_eq!(tile_grid(4000, 3000, &c), (4, 3));
    assert_eq!(tile_grid(1, 700, &c), (1, 12));
    assert_eq!(tile_grid(5000, 30, &c), (12, 1));
    assert_eq!(tile_grid(37, 23, &c), (3, 2));
    let no_thumb = TileConfig { max_tiles: 6, use_thumbnail: false, ..c };
    assert_eq!(tile_grid(1, 700, &no_thumb), (1, 6));
    // min > max: no candidate, InternVL's default (1, 1).
    assert_eq!(tile_grid(10, 10, &TileConfig { min_tiles: 5, max_tiles: 4, ..c }), (1, 1));
    // Two grids with the same tile count at exactly the same distance: (2, 1) and (1, 2) for an
    // aspect ratio of 1.25; the first in CPython's set order wins for a small image, the second
    // for one above half the grid area.
    let two = TileConfig { min_tiles: 2, max_tiles: 2, ..c };
    assert_eq!(candidate_grids(2, 2), [(1, 2), (2, 1)]);
    assert_eq!(tile_grid(5, 4, &two), (1, 2));
    assert_eq!(tile_grid(500, 400, &two), (1, 2)); // 200000 < 0.5·448²·2
    assert_eq!(tile_grid(1000, 800, &two), (2, 1));
}

fn rgb_fixture(name: &str, w: u32, h: u32) -> Rgb8 {
    Rgb8::from_raw(w, h, data(name)).unwrap()
}

#[test]
fn resize_is_bit_exact_with_pillow() {
    let src = decode(&data("noise_37x23.png"), "image/png", u64::MAX).unwrap();
    assert_eq!((src.width(), src.height()), (37, 23));
    for (w, h) in [(61, 45), (13, 9), (37, 40), (50, 23), (5, 200), (1, 1)] {
        let want = rgb_fixture(&format!("noise_37x23_to_{w}x{h}.rgb"), w, h);
        let got = resize_bicubic(&src, w, h);
        assert_eq!(diff(got.as_raw(), want.as_raw()), (0, 0), "37x23 -> {w}x{h}");
    }
    assert_eq!(resize_bicubic(&src, 37, 23), src);
}

#[test]
fn pipeline_matches_pil_and_torch() {
    let text = String::from_utf8(data("pipeline_hashes.txt")).unwrap();
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(' ').collect();
        let n = |i: usize| f[i].parse::<u32>().unwrap();
        let cfg = TileConfig { image_size: 448, min_tiles: n(2), max_tiles: n(3), use_thumbnail: n(4) == 1 };
        let img = pattern(n(0), n(1));
        assert_eq!(tile_grid(n(0), n(1), &cfg), (n(5), n(6)), "{line}");
        let ts = tiles(&img, &cfg);
        assert_eq!(ts.len(), n(7) as usize, "{line}");
        let mut h = crc32fast::Hasher::new();
        for t in &ts {
            assert_eq!((t.width(), t.height()), (448, 448));
            h.update(t.as_raw());
        }
        assert_eq!(format!("{:08x}", h.finalize()), f[8], "u8 tiles: {line}");
        let tensor = to_tensor(&ts, IMAGENET_MEAN, IMAGENET_STD);
        assert_eq!(tensor.len(), ts.len() * 3 * 448 * 448);
        let mut h = crc32fast::Hasher::new();
        for v in &tensor {
            h.update(&v.to_le_bytes());
        }
        assert_eq!(format!("{:08x}", h.finalize()), f[9], "f32 tensor: {line}");
        checked += 1;
    }
    assert_eq!(checked, 30);
}

#[test]
fn to_tensor_layout_and_values() {
    let img = Rgb8::from_raw(2, 1, vec![0, 128, 255, 10, 20, 30]).unwrap();
    let t = to_tensor(&[img.clone(), img], IMAGENET_MEAN, IMAGENET_STD);
    assert_eq!(t.len(), 2 * 3 * 2);
    // CHW: R plane (pixel 0, pixel 1), then G, then B.
    let want = |v: u8, c: usize| (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
    assert_eq!(t[..6], [want(0, 0), want(10, 0), want(128, 1), want(20, 1), want(255, 2), want(30, 2)]);
    assert_eq!(t[..6], t[6..]);
    assert!(to_tensor(&[], IMAGENET_MEAN, IMAGENET_STD).is_empty());
}

#[test]
fn png_modes_convert_like_pil() {
    for mode in [
        "rgb", "l", "la", "rgba", "p", "p_trns", "l_trns", "bit1", "l4", "l2", "rgb16", "rgba16", "la16",
        "interlaced",
    ] {
        let got = decode(&data(&format!("mode_{mode}.png")), "image/png", 1000)
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!((got.width(), got.height()), (7, 5), "{mode}");
        assert_eq!(diff(got.as_raw(), &data(&format!("mode_{mode}.rgb"))), (0, 0), "{mode}");
    }
}

#[test]
fn jpeg_decodes_as_libjpeg_turbo_in_pil() {
    let got = decode(&data("smooth_64x48.jpg"), "image/jpeg", 1 << 20).unwrap();
    assert_eq!((got.width(), got.height()), (64, 48));
    assert_eq!(diff(got.as_raw(), &data("smooth_64x48.jpg.rgb")), (0, 0));
}

fn encode_png(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(pixels).unwrap();
    wr.finish().unwrap();
    out
}

#[test]
fn png_errors() {
    let png = data("noise_37x23.png");
    // Truncated in the pixel data, and cut inside the header.
    for cut in [png.len() - 30, png.len() / 2, 20, 0] {
        let e = decode(&png[..cut], "image/png", 1 << 20).unwrap_err();
        assert!(matches!(e, ImageError::Decode { .. }), "cut at {cut}: {e:?}");
    }
    // Corrupt pixel data (the bytes after the IDAT header).
    let mut bad = png.clone();
    let idat = bad.windows(4).position(|w| w == b"IDAT").unwrap();
    for b in &mut bad[idat + 6..idat + 40] {
        *b ^= 0x5a;
    }
    assert!(matches!(decode(&bad, "image/png", 1 << 20), Err(ImageError::Decode { .. })));
    // A JPEG sent as PNG.
    assert!(matches!(decode(&data("smooth_64x48.jpg"), "image/png", 1 << 20), Err(ImageError::Decode { .. })));
    // Unknown media types.
    for mt in ["image/gif", "text/plain", "", "image/jpg"] {
        let e = decode(&png, mt, 1 << 20).unwrap_err();
        assert!(matches!(e, ImageError::Unsupported(_)), "{mt}");
        assert!(e.to_string().contains("image/png, image/jpeg, application/dicom"), "{e}");
    }
    // Media type case and parameters do not matter.
    assert!(decode(&png, " Image/PNG; charset=binary", 1 << 20).is_ok());
    // Too large: refused from the header, distinguishable from the other errors.
    let e = decode(&png, "image/png", 37 * 23 - 1).unwrap_err();
    assert!(e.is_too_large());
    assert_eq!(e.to_string(), "image is 37x23 = 851 pixels, more than the limit of 850");
    assert!(decode(&png, "image/png", 37 * 23).is_ok());
    // A header announcing a huge image with no data behind it is refused before any allocation.
    let mut huge = png[..33].to_vec();
    huge[16..20].copy_from_slice(&60000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&60000u32.to_be_bytes());
    let crc = crc32fast::hash(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    assert!(decode(&huge, "image/png", 100_000_000).unwrap_err().is_too_large());
    // 16-bit greyscale is refused with the reason.
    let g16 = encode_png(2, 1, png::ColorType::Grayscale, png::BitDepth::Sixteen, &[1, 0, 0, 7]);
    let e = decode(&g16, "image/png", 100).unwrap_err();
    assert!(matches!(e, ImageError::Unsupported(ref m) if m.contains("16-bit greyscale")), "{e}");
    // ... and 8-bit greyscale made the same way is read.
    let g8 = encode_png(2, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[1, 200]);
    assert_eq!(decode(&g8, "image/png", 100).unwrap().as_raw(), [1, 1, 1, 200, 200, 200]);
}

#[test]
fn jpeg_variants_decode_as_in_pil() {
    for (name, w, h) in [
        ("progressive_422", 33, 17),
        ("baseline_444", 19, 11),
        ("grey", 21, 13),
        ("restart_420", 40, 24),
        ("one_wide_420", 1, 40),
    ] {
        let got = decode(&data(&format!("jpeg_{name}.jpg")), "image/jpeg", 1 << 20).unwrap();
        assert_eq!((got.width(), got.height()), (w, h), "{name}");
        assert_eq!(diff(got.as_raw(), &data(&format!("jpeg_{name}.rgb"))), (0, 0), "{name}");
    }
}

#[test]
fn jpeg_errors() {
    let jpg = data("smooth_64x48.jpg");
    // Cut in the entropy-coded data, just before the end marker, in the tables, in the header.
    for cut in [jpg.len() - 200, jpg.len() - 2, jpg.len() / 2, 10, 2, 0] {
        let e = decode(&jpg[..cut], "image/jpeg", 1 << 20).unwrap_err();
        assert!(matches!(e, ImageError::Decode { .. }), "cut at {cut}: {e:?}");
    }
    let e = decode(&jpg[..jpg.len() - 200], "image/jpeg", 1 << 20).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // Corrupt tables: libjpeg's fatal error comes back as a decode error with its message.
    let mut bad = jpg.clone();
    let dqt = bad.windows(2).position(|w| w == [0xff, 0xdb]).unwrap();
    bad[dqt + 2..dqt + 4].copy_from_slice(&[0, 1]);
    let e = decode(&bad, "image/jpeg", 1 << 20).unwrap_err();
    assert!(matches!(e, ImageError::Decode { ref reason, .. } if !reason.is_empty()), "{e:?}");
    // Bytes after the end marker are ignored, as PIL ignores them.
    let mut trailing = jpg.clone();
    trailing.extend_from_slice(b"trailing garbage");
    assert_eq!(diff(decode(&trailing, "image/jpeg", 1 << 20).unwrap().as_raw(), &data("smooth_64x48.jpg.rgb")), (0, 0));
    // A progressive file whose first scan is repeated: a few times still decodes (libjpeg only
    // warns about the bogus progression), past the scan limit it is refused.
    let prog = data("jpeg_progressive_422.jpg");
    let sos = prog.windows(2).position(|w| w == [0xff, 0xda]).unwrap();
    let next = sos + 2 + prog[sos + 2..].windows(2).position(|w| w[0] == 0xff && w[1] != 0 && !(0xd0..=0xd7).contains(&w[1])).unwrap();
    let repeated = |n: usize| [&prog[..sos], &prog[sos..next].repeat(n), &prog[next..]].concat();
    assert!(decode(&repeated(5), "image/jpeg", 1 << 20).is_ok());
    let e = decode(&repeated(super::jpeg::MAX_SCANS as usize + 1), "image/jpeg", 1 << 20).unwrap_err();
    assert!(e.to_string().contains("more than 100 scans"), "{e}");
    let e = decode(&data("jpeg_cmyk.jpg"), "image/jpeg", 1 << 20).unwrap_err();
    assert!(matches!(e, ImageError::Unsupported(ref m) if m.contains("JCS_CMYK")), "{e:?}");
    assert!(decode(&jpg, "image/jpeg", 64 * 48 - 1).unwrap_err().is_too_large());
    assert!(matches!(decode(&data("noise_37x23.png"), "image/jpeg", 1 << 20), Err(ImageError::Decode { .. })));
}

#[test]
fn tiles_are_crops_of_the_resized_image() {
    let img = pattern(1000, 500);
    let c = TileConfig::default();
    let (cols, rows) = tile_grid(1000, 500, &c);
    assert_eq!((cols, rows), (2, 1));
    let ts = tiles(&img, &c);
    assert_eq!(ts.len(), 3);
    let big = resize_bicubic(&img, 896, 448);
    assert_eq!(ts[0], big.crop(0, 0, 448, 448));
    assert_eq!(ts[1], big.crop(448, 0, 448, 448));
    assert_eq!(ts[2], resize_bicubic(&img, 448, 448));
    // One tile: no thumbnail.
    assert_eq!(tiles(&pattern(448, 448), &c), vec![pattern(448, 448)]);
}

/// Compares medprm with a directory written by `check_image_preprocess.py check DIR`:
/// `MEDPRM_IMAGE_CHECK_DIR=DIR cargo test --release --lib image::tests::matches_pil_dir -- --ignored --nocapture`
#[test]
#[ignore = "needs MEDPRM_IMAGE_CHECK_DIR from scripts/golden/check_image_preprocess.py check"]
fn matches_pil_dir() {
    let dir = PathBuf::from(std::env::var("MEDPRM_IMAGE_CHECK_DIR").expect("MEDPRM_IMAGE_CHECK_DIR"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let cfg = TileConfig::default();
    let mut png_worst = (0u8, 0usize, 0usize);
    let mut jpeg_worst = (0u8, 0usize, 0usize, 0u8, 0usize);
    let mut failures = Vec::new();
    for item in manifest["images"].as_array().unwrap() {
        let name = item["file"].as_str().unwrap();
        let mt = item["media_type"].as_str().unwrap();
        let read = |ext: &str| std::fs::read(dir.join(format!("{name}{ext}"))).unwrap();
        let t0 = std::time::Instant::now();
        let img = decode(&read(""), mt, u64::MAX).unwrap();
        let t_decode = t0.elapsed();
        let ts = tiles(&img, &cfg);
        let tensor = to_tensor(&ts, IMAGENET_MEAN, IMAGENET_STD);
        let t_all = t0.elapsed();
        let grid = tile_grid(img.width(), img.height(), &cfg);
        let want_grid = (item["cols"].as_u64().unwrap() as u32, item["rows"].as_u64().unwrap() as u32);
        if grid != want_grid {
            failures.push(format!("{name}: grid {grid:?} vs {want_grid:?}"));
        }
        let got_tiles: Vec<u8> = ts.iter().flat_map(|t| t.as_raw().iter().copied()).collect();
        let (dmax, dcount) = diff(img.as_raw(), &read(".decoded"));
        let (tmax, tcount) = diff(&got_tiles, &read(".tiles"));
        let mut fdiff = 0f32;
        if item["tensor"].as_bool().unwrap() {
            let want: Vec<f32> =
                read(".f32").chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            assert_eq!(want.len(), tensor.len());
            fdiff = tensor.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            if mt == "image/png" && tensor.iter().zip(&want).any(|(a, b)| a.to_bits() != b.to_bits()) {
                failures.push(format!("{name}: tensor differs (max {fdiff})"));
            }
        }
        println!(
            "{name}: grid {grid:?}, {} tiles; decode max|Δ| {dmax} ({dcount} bytes); tiles max|Δ| {tmax} \
             ({tcount} of {} bytes); tensor max|Δ| {fdiff:e}; decode {:.1} ms, total {:.1} ms",
            ts.len(),
            got_tiles.len(),
            t_decode.as_secs_f64() * 1e3,
            t_all.as_secs_f64() * 1e3
        );
        if mt == "image/png" {
            if dmax > 0 || tmax > 0 {
                failures.push(format!("{name}: PNG differs"));
            }
            png_worst = (png_worst.0.max(tmax), png_worst.1 + tcount, png_worst.2 + got_tiles.len());
        } else {
            jpeg_worst = (
                jpeg_worst.0.max(tmax),
                jpeg_worst.1 + tcount,
                jpeg_worst.2 + got_tiles.len(),
                jpeg_worst.3.max(dmax),
                jpeg_worst.4 + dcount,
            );
        }
    }
    println!(
        "PNG: tiles max|Δ| {} ({} of {} bytes differ)\nJPEG: decoded max|Δ| {} ({} bytes differ); \
         tiles max|Δ| {} ({} of {} bytes differ)",
        png_worst.0, png_worst.1, png_worst.2, jpeg_worst.3, jpeg_worst.4, jpeg_worst.0, jpeg_worst.1, jpeg_worst.2
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
