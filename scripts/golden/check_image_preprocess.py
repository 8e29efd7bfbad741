"""Reference outputs of VisualPRM's image preprocessing (PIL + torch), for medprm's `image` module.

The reference path is InternVL's `load_image`: `Image.open(f).convert('RGB')`, `dynamic_preprocess`
(grid pick, `Image.resize` with its default filter, BICUBIC for RGB; crops; thumbnail) and
`build_transform` (`T.Resize((448, 448), BICUBIC)`, a copy on a 448x448 image; `T.ToTensor()`;
`T.Normalize(IMAGENET_MEAN, IMAGENET_STD)`). torchvision is not installed here (its wheels pin a
torch of their own); ToTensor/Normalize are done with the same torch operations torchvision runs:
`u8 -> float32`, `.div(255)`, `.sub_(mean).div_(std)` with float32 mean/std of shape (3, 1, 1).

Two uses:

    python scripts/golden/check_image_preprocess.py fixtures
        rewrites the small committed fixtures in tests/data/images/ used by `cargo test --lib image`.

    python scripts/golden/check_image_preprocess.py check DIR
        writes many generated images (PNG of many sizes and modes, JPEGs) with PIL's tiles and a few
        tensors to DIR; then
        MEDPRM_IMAGE_CHECK_DIR=DIR cargo test --lib image::tests::matches_pil_dir -- --ignored --nocapture
        compares medprm against them and prints the pixel differences.

Requirements: pillow and torch pinned in scripts/golden/requirements.txt.
"""
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
import torch
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "images")


# ---- the reference path ------------------------------------------------------------------------

def grid_candidates(lo, hi):
    found = set((i, j) for n in range(lo, hi + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                if lo <= i * j <= hi)
    return sorted(found, key=lambda g: g[0] * g[1])


def pick_grid(w, h, lo, hi, size):
    aspect = w / h
    best, best_diff = (1, 1), float("inf")
    for g in grid_candidates(lo, hi):
        diff = abs(aspect - g[0] / g[1])
        if diff < best_diff:
            best, best_diff = g, diff
        elif diff == best_diff and w * h > 0.5 * size * size * g[0] * g[1]:
            best = g
    return best


def reference_tiles(img, lo=1, hi=12, size=448, thumbnail=True):
    """InternVL's dynamic_preprocess, step for step."""
    cols, rows = pick_grid(img.width, img.height, lo, hi, size)
    big = img.resize((size * cols, size * rows))
    out = [big.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))
           for r in range(rows) for c in range(cols)]
    if thumbnail and len(out) != 1:
        out.append(img.resize((size, size)))
    return (cols, rows), out


def reference_tensor(tiles):
    mean = torch.as_tensor(MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(STD, dtype=torch.float32).view(-1, 1, 1)
    ts = []
    for t in tiles:
        t = t.resize((t.width, t.height), Image.BICUBIC)  # T.Resize((448, 448)): a copy here
        x = torch.from_numpy(np.array(t, copy=True)).permute(2, 0, 1).contiguous()
        ts.append(x.to(dtype=torch.float32).div(255).sub_(mean).div_(std))
    return torch.stack(ts)


# ---- generated inputs --------------------------------------------------------------------------

def pattern(w, h):
    """Deterministic test picture, also computed by the Rust tests: smooth ramps with wrap-around
    edges (full-range jumps exercise the clipping)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    chans = [(x * x * 3 + y * 5 + x * y + c * 77) % 256 for c in range(3)]
    return np.stack(chans, axis=-1).astype(np.uint8)


def noise(rng, w, h, channels=3):
    base = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return base if channels > 1 else base[:, :, 0]


def png16(arr, color_type):
    """A 16-bit PNG written by hand (PIL cannot save 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def encode(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


# ---- fixtures for `cargo test --lib image` -----------------------------------------------------

JPEG_VARIANTS = [
    ("progressive_422", (33, 17), "RGB", dict(quality=85, subsampling=1, progressive=True)),
    ("baseline_444", (19, 11), "RGB", dict(quality=95, subsampling=0)),
    ("grey", (21, 13), "L", dict(quality=90)),
    ("restart_420", (40, 24), "RGB", dict(quality=75, subsampling=2, restart_marker_blocks=1)),
    ("one_wide_420", (1, 40), "RGB", dict(quality=90, subsampling=2)),
]

def write_fixtures():
    d = os.path.abspath(FIXTURES)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(11)
    lines = []

    # 1. Resize exactness on a noise image (full expected output, small).
    src = Image.fromarray(noise(rng, 37, 23))
    with open(os.path.join(d, "noise_37x23.png"), "wb") as f:
        f.write(encode(src, "PNG"))
    for w, h in [(61, 45), (13, 9), (37, 40), (50, 23), (5, 200), (1, 1)]:
        out = np.array(src.resize((w, h), Image.BICUBIC))
        with open(os.path.join(d, f"noise_37x23_to_{w}x{h}.rgb"), "wb") as f:
            f.write(out.tobytes())

    # 2. Whole pipeline on `pattern` pictures: CRC-32 of PIL's tiles (u8, tile after tile,
    #    HWC) and of the torch tensor (f32 little-endian), per size and tile config.
    configs = [(1, 12, True), (1, 6, False), (2, 4, True)]
    sizes = [(37, 23), (1, 700), (700, 1), (448, 448), (896, 448), (3000, 20), (20, 3000),
             (500, 375), (1001, 999), (640, 480)]
    for (w, h) in sizes:
        img = Image.fromarray(pattern(w, h))
        for lo, hi, thumb in configs:
            grid, tiles = reference_tiles(img, lo, hi, 448, thumb)
            u8 = b"".join(np.array(t).tobytes() for t in tiles)
            f32 = reference_tensor(tiles).numpy().astype("<f4").tobytes()
            lines.append(f"{w} {h} {lo} {hi} {int(thumb)} {grid[0]} {grid[1]} {len(tiles)} "
                         f"{zlib.crc32(u8):08x} {zlib.crc32(f32):08x}")
    with open(os.path.join(d, "pipeline_hashes.txt"), "w") as f:
        f.write("# w h min max thumbnail cols rows tiles crc32(u8 tiles) crc32(f32 tensor)\n")
        f.write("# made by scripts/golden/check_image_preprocess.py fixtures (Pillow "
                f"{Image.__version__}, torch {torch.__version__})\n")
        f.write("\n".join(lines) + "\n")

    # 3. PNG modes → convert('RGB'), 7x5 each: the input and PIL's RGB bytes.
    for name, data in png_variants(rng, 7, 5):
        with open(os.path.join(d, f"mode_{name}.png"), "wb") as f:
            f.write(data)
        rgb = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        with open(os.path.join(d, f"mode_{name}.rgb"), "wb") as f:
            f.write(rgb.tobytes())

    # 4. A small JPEG (4:2:0) and PIL's (libjpeg-turbo) decode of it.
    jpg = encode(Image.fromarray(smooth(rng, 64, 48)), "JPEG", quality=90)
    with open(os.path.join(d, "smooth_64x48.jpg"), "wb") as f:
        f.write(jpg)
    with open(os.path.join(d, "smooth_64x48.jpg.rgb"), "wb") as f:
        f.write(np.array(Image.open(io.BytesIO(jpg)).convert("RGB")).tobytes())
    # 4b. JPEGs that take libjpeg-turbo's other decoding paths (progressive, 4:2:2, 4:4:4,
    #     greyscale, restart markers, a 1-pixel-wide 4:2:0 image where chroma edge handling
    #     dominates) and PIL's decode of each. Their own generator, so the fixtures above stay put.
    jrng = np.random.default_rng(12)
    for name, (w, h), mode, kw in JPEG_VARIANTS:
        jpg = encode(Image.fromarray(smooth(jrng, w, h)).convert(mode), "JPEG", **kw)
        with open(os.path.join(d, f"jpeg_{name}.jpg"), "wb") as f:
            f.write(jpg)
        with open(os.path.join(d, f"jpeg_{name}.rgb"), "wb") as f:
            f.write(np.array(Image.open(io.BytesIO(jpg)).convert("RGB")).tobytes())
    # A CMYK JPEG, which medprm refuses (PIL converts CMYK to RGB with its own formula).
    with open(os.path.join(d, "jpeg_cmyk.jpg"), "wb") as f:
        f.write(encode(Image.fromarray(smooth(jrng, 8, 8)).convert("CMYK"), "JPEG", quality=90))
    # 5. pydicom's CT_small.dcm (MIT, shipped in the pydicom wheel; 128x128 signed 16-bit CT,
    #    rescale intercept -1024, no window): medprm's DICOM conversion (src/image/dicom.rs) done
    #    in numpy, with min-max (the file has no window) and with a 40/400 LINEAR window.
    ct_small(d)
    print(f"fixtures written to {d}")


def ct_small(d):
    import shutil

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = get_testdata_file("CT_small.dcm")
    shutil.copyfile(path, os.path.join(d, "ct_small.dcm"))
    ds = pydicom.dcmread(path)
    x = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    minmax = np.floor((x - x.min()) / (x.max() - x.min()) * 255 + 0.5)
    c, w = 40.0, 400.0
    lin = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
                   np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / (w - 1) + 0.5) * 255))
    windowed = np.floor(lin + 0.5)
    for name, y in [("minmax", minmax), ("w40_400", windowed)]:
        with open(os.path.join(d, f"ct_small_{name}.grey"), "wb") as f:
            f.write(np.clip(y, 0, 255).astype(np.uint8).tobytes())
    # Independent check of the window formula against pydicom's own VOI implementation (its
    # output range is the stored range put through the rescale, mapped here to 0..255).
    ds.WindowCenter, ds.WindowWidth = c, w
    ref = apply_voi_lut(x, ds)
    lo, hi = (v * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for v in (-(2 ** 15), 2 ** 15 - 1))
    ref8 = np.floor((ref - lo) / (hi - lo) * 255 + 0.5)
    print(f"CT_small 40/400: max |medprm formula - pydicom| = {np.abs(ref8 - windowed).max()} "
          f"({int((ref8 != windowed).sum())} of {windowed.size} pixels differ)")


def smooth(rng, w, h):
    """A photo-like picture: blurred noise plus a gradient (JPEG's usual material)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([x / max(w - 1, 1) * 200, y / max(h - 1, 1) * 180, (x + y) % 97 * 2], -1)
    img += rng.normal(0, 20, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_variants(rng, w, h):
    rgb = noise(rng, w, h)
    grey = noise(rng, w, h, 1)
    alpha = noise(rng, w, h, 1)
    out = [
        ("rgb", encode(Image.fromarray(rgb), "PNG")),
        ("l", encode(Image.fromarray(grey), "PNG")),
        ("la", encode(Image.fromarray(np.stack([grey, alpha], -1), "LA"), "PNG")),
        ("rgba", encode(Image.fromarray(np.concatenate([rgb, alpha[:, :, None]], -1), "RGBA"), "PNG")),
        ("p", encode(Image.fromarray(rgb).quantize(16), "PNG")),
        ("p_trns", encode(Image.fromarray(rgb).quantize(8), "PNG", transparency=3)),
        ("l_trns", encode(Image.fromarray(grey), "PNG", transparency=17)),
        ("bit1", encode(Image.fromarray(grey > 127), "PNG")),
        ("l4", grey_low_bits_png(grey >> 4, 4)),
        ("l2", grey_low_bits_png(grey >> 6, 2)),
        ("rgb16", png16(rng.integers(0, 65536, size=(h, w, 3)), 2)),
        ("rgba16", png16(rng.integers(0, 65536, size=(h, w, 4)), 6)),
        ("la16", png16(rng.integers(0, 65536, size=(h, w, 2)), 4)),
        ("interlaced", interlaced_png(rgb)),
    ]
    return out


def grey_low_bits_png(values, bits):
    """A greyscale PNG of 2 or 4 bits per pixel written by hand (PIL writes 8-bit L)."""
    h, w = values.shape
    per = 8 // bits
    rows = []
    for y in range(h):
        packed = bytearray((w + per - 1) // per)
        for x in range(w):
            packed[x // per] |= int(values[y, x]) << (8 - bits * (x % per + 1))
        rows.append(b"\x00" + bytes(packed))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, bits, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def interlaced_png(rgb):
    """PIL does not write Adam7; build one by hand (8-bit RGB)."""
    h, w = rgb.shape[:2]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = rgb[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        raw += b"".join(b"\x00" + row.tobytes() for row in sub)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


# ---- the broad check ---------------------------------------------------------------------------

def write_check(d):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(2024)
    sizes = [(1, 1), (2, 3), (1, 900), (900, 1), (5000, 30), (30, 5000), (448, 448), (449, 447),
             (896, 448), (1344, 1344), (2000, 1500), (1500, 2000), (4032, 3024)]
    sizes += [(int(rng.integers(1, 2500)), int(rng.integers(1, 2500))) for _ in range(25)]
    manifest = []
    for k, (w, h) in enumerate(sizes):
        kind = ["noise", "pattern", "smooth"][k % 3]
        arr = noise(rng, w, h) if kind == "noise" else pattern(w, h) if kind == "pattern" else smooth(rng, w, h)
        items = [(f"{k:02d}_{kind}_{w}x{h}.png", "image/png", encode(Image.fromarray(arr), "PNG"))]
        if k % 4 == 0:
            items.append((f"{k:02d}_{kind}_{w}x{h}_grey.png", "image/png",
                          encode(Image.fromarray(arr[:, :, 0]), "PNG")))
        if k % 3 == 2 or k in (6, 10, 12):
            items.append((f"{k:02d}_{kind}_{w}x{h}.jpg", "image/jpeg",
                          encode(Image.fromarray(arr), "JPEG", quality=90)))
        for name, media_type, data in items:
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            img = Image.open(io.BytesIO(data)).convert("RGB")
            grid, tiles = reference_tiles(img)
            with open(os.path.join(d, name + ".decoded"), "wb") as f:
                f.write(np.array(img).tobytes())
            with open(os.path.join(d, name + ".tiles"), "wb") as f:
                for t in tiles:
                    f.write(np.array(t).tobytes())
            tensor = len(manifest) % 8 == 0
            if tensor:
                with open(os.path.join(d, name + ".f32"), "wb") as f:
                    f.write(reference_tensor(tiles).numpy().astype("<f4").tobytes())
            manifest.append({"file": name, "media_type": media_type, "width": w, "height": h,
                             "cols": grid[0], "rows": grid[1], "tiles": len(tiles), "tensor": tensor})
            print(name, grid, len(tiles), flush=True)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump({"pillow": Image.__version__, "torch": torch.__version__, "images": manifest}, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["fixtures"]:
        write_fixtures()
    elif sys.argv[1:2] == ["check"] and len(sys.argv) == 3:
        write_check(sys.argv[2])
    else:
        sys.exit(__doc__)
