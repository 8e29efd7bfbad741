#!/usr/bin/env python3
"""Reference step scores for VisualPRM (issue 11), computed with Hugging Face transformers on
medprm's seeded small InternVL2.5 test checkpoint, following the authors' scoring code as
described point by point in VISUALPRM_RECIPE.md beside this file:

* images: Image.open().convert("RGB"); InternVL's dynamic tiling (grids i x j with
  1 <= i*j <= max_tiles, closest aspect ratio, ties to the larger grid when the image area exceeds
  half the grid's), Pillow resize to the grid (default filter, bicubic for RGB), 448 x 448 tiles
  row-major, a 448 x 448 thumbnail last when there is more than one tile; then Resize(448, bicubic)
  (a no-op), /255, ImageNet mean/std. Reproduced with Pillow + numpy: torchvision's transform on a
  Pillow image is Pillow's resize followed by exactly these float32 operations.
  DICOM (no such path in the authors' code; documented here for medprm): pydicom pixel array
  * RescaleSlope + RescaleIntercept; window WindowCenter/WindowWidth when present (DICOM's linear
  VOI rule), else min-max over the image; floor(x * 255 + 0.5) clipped to 0..255; grey to RGB.
* question: "<image>\\n" prepended when it has no "<image>" (multi-image questions carry one
  "<image>" per image, "Image-1: <image>\\nImage-2: <image>\\n..." as VLMEvalKit builds them);
  each "<image>" in order becomes "<img>" + "<IMG_CONTEXT>" x 256 * tiles + "</img>".
* conversation (template internvl2_5): "<|im_start|>system\\n{system}<|im_end|>\\n", then per step
  "<|im_start|>user\\n{turn}<|im_end|>\\n<|im_start|>assistant\\n+<|im_end|>\\n"; turn 1 =
  "### Question:\\n{question}\\n\\n### Solution Process:\\n{step 1}", turn k = step k; steps =
  solution.split("\\n\\n") (no strip, empty steps kept); system = the internvl2_5 default (the
  released VisualPRM config sets none).
* one forward per candidate (batch of one, generate_steps_with_soft_score_v2's layout); the score
  of step k = softmax([logit("+"), logit("-")])[0] at the last token of the k-th
  "<|im_start|>assistant\\n" (found the authors' way: by matching the ids of
  "<|im_start|>assistant\\n+<|im_end|>\\n"); a candidate scores the mean of its steps; best = the
  first maximum. For one candidate the per-step forwards of generate_steps_with_soft_score (v1:
  history answered "+", prompt ending at "<|im_start|>assistant\\n", last position) are checked to
  give the same scores.

The `internvl-chat` layout written by medprm is checked against this script's own repacking of
the transformers state dict (q/k/v fused; InternLM2 wqkv per KV head: query heads, key, value).

Run by hand (not in CI):

    cargo run --release -- gen-test-model --kind visualprm --out /tmp/vprm-hf
    cargo run --release -- gen-test-model --kind visualprm --layout internvl-chat --out /tmp/vprm-chat
    python scripts/golden/make_golden_visualprm.py --model /tmp/vprm-hf --chat-model /tmp/vprm-chat \\
        --out tests/golden/visualprm.json

Test images are made by --make-images (deterministic Pillow drawings) into tests/data/images/;
ct_small.dcm is pydicom's CT_small.dcm test file (from NEMA's public WG04 sample set), copied.

Needs: torch, transformers, safetensors, pillow, pydicom (see requirements.txt beside this file).
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from PIL import Image, ImageDraw
from safetensors.numpy import load_file as load_np
from transformers import AutoTokenizer, InternVLForConditionalGeneration

IMAGE_SIZE = 448
TOKENS_PER_TILE = 256
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
ROLE_USER, ROLE_ASSISTANT, SEP = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IMAGES_DIR = "tests/data/images"


# ----------------------------------------------------------------------------------- images
def make_images(root):
    """Deterministic drawings (and pydicom's CT_small.dcm) into `root`."""
    os.makedirs(root, exist_ok=True)

    def canvas(w, h, seed):
        # Smooth colour ramps plus a fine checker texture (so that resampling filters matter),
        # cheap to store as PNG.
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        a = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], -1)
        a = np.floor(a / 8) * 8 + ((x // 3 + y // 3 + seed) % 2)[..., None] * 12
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")

    im = canvas(300, 300, 1)
    d = ImageDraw.Draw(im)
    d.ellipse((60, 60, 240, 240), outline=(255, 255, 255), width=6)
    d.rectangle((120, 130, 180, 170), fill=(20, 20, 160))
    im.save(os.path.join(root, "square_300.png"), optimize=True)

    im = canvas(900, 450, 2)
    d = ImageDraw.Draw(im)
    for i in range(8):
        d.line((50 + 100 * i, 40, 90 + 100 * i, 410), fill=(250, 240, 30), width=5)
    d.text((20, 20), "ECG lead II", fill=(0, 0, 0))
    im.save(os.path.join(root, "wide_900x450.png"), optimize=True)

    im = canvas(500, 1400, 3)
    d = ImageDraw.Draw(im)
    d.rectangle((100, 200, 400, 1200), outline=(0, 0, 0), width=8)
    d.ellipse((180, 500, 320, 700), fill=(200, 40, 40))
    im.save(os.path.join(root, "tall_500x1400.png"), optimize=True)

    im = canvas(1000, 700, 4)
    d = ImageDraw.Draw(im)
    d.ellipse((300, 150, 700, 550), fill=(230, 180, 160), outline=(90, 40, 30), width=10)
    d.ellipse((450, 300, 520, 360), fill=(60, 30, 20))
    im.save(os.path.join(root, "skin_1000x700.jpg"), quality=80)

    import pydicom.data
    shutil.copyfile(pydicom.data.get_testdata_file("CT_small.dcm"), os.path.join(root, "ct_small.dcm"))


def dicom_to_rgb(path):
    """DICOM -> 8-bit RGB Pillow image, by the rule in the module docstring (returned with it)."""
    import pydicom

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0))
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    if wc is not None and ww is not None:
        c = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
        w = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
        x = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
        rule = {"window": "center/width", "center": c, "width": w,
                "formula": "clip((v - (c - 0.5)) / (w - 1) + 0.5, 0, 1)"}
    else:
        lo, hi = float(hu.min()), float(hu.max())
        x = (hu - lo) / (hi - lo) if hi > lo else np.zeros_like(hu)
        rule = {"window": "min-max", "min": lo, "max": hi, "formula": "(v - min) / (max - min)"}
    g = np.clip(np.floor(x * 255 + 0.5), 0, 255).astype(np.uint8)
    rule.update({
        "value": "pixel_array * RescaleSlope + RescaleIntercept (float64)",
        "to_8bit": "clip(floor(x * 255 + 0.5), 0, 255)",
        "to_rgb": "grey replicated to R, G, B",
        "photometric": str(ds.PhotometricInterpretation),
        "bits_stored": int(ds.BitsStored), "pixel_representation": int(ds.PixelRepresentation),
        "rows": int(ds.Rows), "columns": int(ds.Columns),
    })
    return Image.fromarray(g, "L").convert("RGB"), rule


def closest_grid(aspect, grids, width, height):
    best_diff, best = float("inf"), (1, 1)
    area = width * height
    for g in grids:
        diff = abs(aspect - g[0] / g[1])
        if diff < best_diff:
            best_diff, best = diff, g
        elif diff == best_diff and area > 0.5 * IMAGE_SIZE * IMAGE_SIZE * g[0] * g[1]:
            best = g
    return best


def tiles_of(image, max_tiles):
    """InternVL's dynamic_preprocess with use_thumbnail=True: (tiles, (cols, rows))."""
    w, h = image.size
    grids = sorted({(i, j) for n in range(1, max_tiles + 1) for i in range(1, n + 1)
                    for j in range(1, n + 1) if 1 <= i * j <= max_tiles}, key=lambda g: g[0] * g[1])
    cols, rows = closest_grid(w / h, grids, w, h)
    resized = image.resize((IMAGE_SIZE * cols, IMAGE_SIZE * rows))
    tiles = []
    for k in range(cols * rows):
        x, y = (k % cols) * IMAGE_SIZE, (k // cols) * IMAGE_SIZE
        tiles.append(resized.crop((x, y, x + IMAGE_SIZE, y + IMAGE_SIZE)))
    if len(tiles) != 1:
        tiles.append(image.resize((IMAGE_SIZE, IMAGE_SIZE)))
    return tiles, (cols, rows)


def to_pixels(tile):
    """build_transform: RGB, Resize((448, 448), bicubic), ToTensor, Normalize -> (3, 448, 448)."""
    tile = tile.convert("RGB") if tile.mode != "RGB" else tile
    tile = tile.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    a = np.asarray(tile, dtype=np.uint8).astype(np.float32) / np.float32(255)
    a = (a - MEAN) / STD
    return a.transpose(2, 0, 1).copy()


def load_image(path, max_tiles):
    info = {"path": path, "max_tiles": max_tiles}
    if path.endswith(".dcm"):
        image, rule = dicom_to_rgb(path)
        info["media_type"] = "application/dicom"
        info["dicom_to_rgb"] = rule
    else:
        image = Image.open(path).convert("RGB")
        info["media_type"] = "image/png" if path.endswith(".png") else "image/jpeg"
    info["size"] = list(image.size)
    tiles, grid = tiles_of(image, max_tiles)
    pv = np.stack([to_pixels(t) for t in tiles]).astype(np.float32)
    info.update({
        "grid": list(grid), "thumbnail": len(tiles) > 1, "tiles": len(tiles),
        "pixel_sum": float(pv.astype(np.float64).sum()),
        "pixel_abs_sum": float(np.abs(pv.astype(np.float64)).sum()),
        "pixel_first8": [float(v) for v in pv.reshape(-1)[:8]],
        "tile_sums": [float(t.astype(np.float64).sum()) for t in pv],
    })
    return pv, info


# ----------------------------------------------------------------------------------- prompts
def split_steps(solution):
    return solution.split("\n\n")


def with_image_placeholders(question, n_images):
    if n_images and "<image>" not in question:
        question = "<image>\n" + question
    assert question.count("<image>") == n_images, "one <image> per image"
    return question


def conversation(question, steps, system):
    text = "<|im_start|>system\n" + system + SEP
    for k, step in enumerate(steps):
        turn = f"### Question:\n{question}\n\n### Solution Process:\n{step}" if k == 0 else step
        # MPT style (conversation.py get_prompt): an empty message is its role opening alone.
        text += ROLE_USER + (turn + SEP if turn else "") + ROLE_ASSISTANT + "+" + SEP
    return text


def expand_images(text, tiles_per_image):
    for n in tiles_per_image:
        text = text.replace("<image>", IMG_START + IMG_CONTEXT * (TOKENS_PER_TILE * n) + IMG_END, 1)
    return text


def placeholder_positions(tok, ids):
    """The authors' find_placeholder_idx: last token of the assistant role before each "+"."""
    role = tok(ROLE_ASSISTANT, add_special_tokens=False).input_ids
    target = tok(ROLE_ASSISTANT + "+" + SEP, add_special_tokens=False).input_ids
    return [i + len(role) - 1 for i in range(len(ids)) if ids[i:i + len(target)] == target]


def collapse(ids, run_id):
    """Token ids with runs of `run_id` written as [run_id, count]."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] == run_id:
            j = i
            while j < len(ids) and ids[j] == run_id:
                j += 1
            out.append([run_id, j - i])
            i = j
        else:
            out.append(ids[i])
            i += 1
    return out


# ----------------------------------------------------------------------------------- scoring
class Scorer:
    def __init__(self, model_dir):
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model, info = InternVLForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
        bad = {k: sorted(v) for k, v in info.items() if v}
        if bad:
            sys.exit(f"loading {model_dir}: {bad}")
        self.model.eval()
        self.plus = self.tok.convert_tokens_to_ids("+")
        self.minus = self.tok.convert_tokens_to_ids("-")
        self.ctx = self.tok.convert_tokens_to_ids(IMG_CONTEXT)
        assert self.ctx == self.model.config.image_token_id
        assert self.tok.unk_token_id not in (self.plus, self.minus) or self.tok.unk_token_id is None

    @torch.no_grad()
    def logits(self, text, pixel_values):
        ids = self.tok(text).input_ids
        kw = {}
        if pixel_values is not None:
            kw["pixel_values"] = torch.from_numpy(pixel_values)
        out = self.model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), **kw)
        return ids, out.logits[0]

    def soft(self, row):
        return float(torch.softmax(row[[self.plus, self.minus]], -1)[0])

    @torch.no_grad()
    def projector_sum(self, pixel_values):
        feats = self.model.model.get_image_features(
            pixel_values=torch.from_numpy(pixel_values), vision_feature_layer=-1,
            vision_feature_select_strategy="default")
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        if isinstance(feats, (list, tuple)):
            feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
        return feats.reshape(-1, feats.shape[-1]), float(feats.double().sum())

    def score(self, question, solution, pixel_values, tiles_per_image, system):
        steps = split_steps(solution)
        text = expand_images(conversation(question, steps, system), tiles_per_image)
        ids, logits = self.logits(text, pixel_values)
        pos = placeholder_positions(self.tok, ids)
        assert len(pos) == len(steps), (len(pos), len(steps))
        scores = [self.soft(logits[p]) for p in pos]
        return steps, ids, pos, scores

    def score_v1(self, question, solution, pixel_values, tiles_per_image, system):
        """generate_steps_with_soft_score: one forward per step, score at the last position."""
        out, history = [], ""
        for k, step in enumerate(split_steps(solution)):
            turn = f"### Question:\n{question}\n\n### Solution Process:\n{step}" if k == 0 else step
            user = ROLE_USER + (turn + SEP if turn else "")
            text = "<|im_start|>system\n" + system + SEP + history + user + ROLE_ASSISTANT
            _, logits = self.logits(expand_images(text, tiles_per_image), pixel_values)
            out.append(self.soft(logits[-1]))
            history += user + ROLE_ASSISTANT + "+" + SEP
        return out


# ----------------------------------------------------------------------------------- cases
Q_SKIN = "A 54-year-old presents with this pigmented lesion. Which feature is most concerning for melanoma?"
Q_ECG = "The rhythm strip shows regular narrow complexes. What is the most likely rhythm?"
CASES = [
    {"id": "one_tile", "images": ["square_300.png"], "max_tiles": 12,
     "question": "What shape surrounds the blue rectangle?",
     "candidates": ["The image shows a white circle.\n\nInside it there is a blue rectangle.\n\nAnswer: a circle."]},
    {"id": "two_tiles", "images": ["wide_900x450.png"], "max_tiles": 12, "question": Q_ECG,
     "candidates": ["There are eight regularly spaced deflections.\n\nThe rate is about 75 per minute.\n\n"
                    "Answer: normal sinus rhythm."]},
    {"id": "several_tiles", "images": ["skin_1000x700.jpg"], "max_tiles": 12, "question": Q_SKIN,
     "candidates": ["The lesion is large and round.\n\nIts border is irregular in places.\n\n"
                    "Answer: the irregular border."]},
    {"id": "rank", "images": ["wide_900x450.png"], "max_tiles": 12, "question": Q_ECG,
     "candidates": [
         "Eight regular complexes are visible.\n\nP waves precede each QRS.\n\nAnswer: sinus rhythm.",
         "The complexes are irregular.\n\nAnswer: atrial fibrillation.",
         "Step 1: count the complexes, there are eight.\nStep 2: the spacing is even.\n\n"
         "The QRS is narrow.\n\nThere are no flutter waves.\n\nAnswer: normal sinus rhythm.",
         "Answer: ventricular tachycardia.",
     ]},
    {"id": "max_tiles_4", "images": ["skin_1000x700.jpg"], "max_tiles": 4, "question": Q_SKIN,
     "candidates": ["The pigment is uneven.\n\nAnswer: colour variegation."]},
    {"id": "dicom_inline_image", "images": ["ct_small.dcm"], "max_tiles": 12,
     "question": "Axial CT slice: <image>\nIs there free air under the diaphragm?",
     "candidates": ["This is an axial CT image.\n\nNo free air is seen.\n\nAnswer: no."]},
    {"id": "two_images", "images": ["square_300.png", "tall_500x1400.png"], "max_tiles": 12,
     "question": "Image-1: <image>\nImage-2: <image>\nWhich image contains a red ellipse?",
     "candidates": ["Image-1 has a blue rectangle.\n\nImage-2 has a red ellipse.\n\nAnswer: Image-2."]},
    {"id": "blank_and_padded_steps", "images": ["square_300.png"], "max_tiles": 12,
     "question": "What colour is the rectangle?",
     "candidates": ["  It is blue.  \n\n\n\nAnswer: blue.\n"]},
]


def repack_internvl_chat(hf, heads, kv_heads):
    """The transformers state dict in InternVL's remote-code layout (numpy, this script's own)."""
    out = {}
    e = "vision_tower.embeddings."
    out["vision_model.embeddings.class_embedding"] = hf[e + "cls_token"]
    out["vision_model.embeddings.patch_embedding.weight"] = hf[e + "patch_embeddings.projection.weight"]
    out["vision_model.embeddings.patch_embedding.bias"] = hf[e + "patch_embeddings.projection.bias"]
    out["vision_model.embeddings.position_embedding"] = hf[e + "position_embeddings"]
    n_vis = 1 + max(int(k.split(".")[3]) for k in hf if k.startswith("vision_tower.encoder.layer."))
    for l in range(n_vis):
        p, o = f"vision_tower.encoder.layer.{l}.", f"vision_model.encoder.layers.{l}."
        for s in ("weight", "bias"):
            out[o + f"attn.qkv.{s}"] = np.concatenate([hf[p + f"attention.{m}_proj.{s}"] for m in "qkv"])
            out[o + f"attn.proj.{s}"] = hf[p + f"attention.projection_layer.{s}"]
            out[o + f"norm1.{s}"] = hf[p + f"layernorm_before.{s}"]
            out[o + f"norm2.{s}"] = hf[p + f"layernorm_after.{s}"]
            out[o + f"mlp.fc1.{s}"] = hf[p + f"mlp.fc1.{s}"]
            out[o + f"mlp.fc2.{s}"] = hf[p + f"mlp.fc2.{s}"]
        out[o + "ls1"], out[o + "ls2"] = hf[p + "lambda_1"], hf[p + "lambda_2"]
    for a, b in (("layer_norm", 0), ("linear_1", 1), ("linear_2", 3)):
        for s in ("weight", "bias"):
            out[f"mlp1.{b}.{s}"] = hf[f"multi_modal_projector.{a}.{s}"]
    out["language_model.model.tok_embeddings.weight"] = hf["language_model.model.embed_tokens.weight"]
    n_txt = 1 + max(int(k.split(".")[3]) for k in hf if k.startswith("language_model.model.layers."))
    for l in range(n_txt):
        p = f"language_model.model.layers.{l}."
        q, k, v = (hf[p + f"self_attn.{m}_proj.weight"] for m in "qkv")
        d = q.shape[0] // heads
        groups = heads // kv_heads
        q = q.reshape(kv_heads, groups, d, -1)
        k, v = k.reshape(kv_heads, 1, d, -1), v.reshape(kv_heads, 1, d, -1)
        out[p + "attention.wqkv.weight"] = np.concatenate([q, k, v], 1).reshape(-1, q.shape[-1])
        out[p + "attention.wo.weight"] = hf[p + "self_attn.o_proj.weight"]
        out[p + "feed_forward.w1.weight"] = hf[p + "mlp.gate_proj.weight"]
        out[p + "feed_forward.w3.weight"] = hf[p + "mlp.up_proj.weight"]
        out[p + "feed_forward.w2.weight"] = hf[p + "mlp.down_proj.weight"]
        out[p + "attention_norm.weight"] = hf[p + "input_layernorm.weight"]
        out[p + "ffn_norm.weight"] = hf[p + "post_attention_layernorm.weight"]
    out["language_model.model.norm.weight"] = hf["language_model.model.norm.weight"]
    out["language_model.output.weight"] = hf["language_model.lm_head.weight"]
    return out


def check_chat_layout(hf_dir, chat_dir):
    hf = load_np(os.path.join(hf_dir, "model.safetensors"))
    chat = load_np(os.path.join(chat_dir, "model.safetensors"))
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))["text_config"]
    ccfg = json.load(open(os.path.join(chat_dir, "config.json")))
    assert ccfg["architectures"] == ["InternVLChatModel"] and ccfg["template"] == "internvl2_5"
    assert ccfg["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    want = repack_internvl_chat(hf, cfg["num_attention_heads"], cfg["num_key_value_heads"])
    assert sorted(want) == sorted(chat), set(want) ^ set(chat)
    for k, v in want.items():
        assert chat[k].shape == v.shape and np.array_equal(chat[k], v), k
    return len(want)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="gen-test-model --kind visualprm (hf layout)")
    ap.add_argument("--chat-model", help="gen-test-model --kind visualprm --layout internvl-chat")
    ap.add_argument("--images", default=IMAGES_DIR)
    ap.add_argument("--make-images", action="store_true", help="(re)write the test images first")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.make_images:
        make_images(a.images)
    checked = check_chat_layout(a.model, a.chat_model) if a.chat_model else None

    s = Scorer(a.model)
    cases = []
    for c in CASES:
        pvs, infos = [], []
        for name in c["images"]:
            pv, info = load_image(os.path.join(a.images, name), c["max_tiles"])
            info["path"] = f"{IMAGES_DIR}/{name}"
            feats, info["projector_sum"] = s.projector_sum(pv)
            assert feats.shape[0] == TOKENS_PER_TILE * info["tiles"]
            pvs.append(pv)
            infos.append(info)
        pixel_values = np.concatenate(pvs)
        tiles = [i["tiles"] for i in infos]
        question = with_image_placeholders(c["question"], len(c["images"]))
        cands = []
        for sol in c["candidates"]:
            steps, ids, pos, scores = s.score(question, sol, pixel_values, tiles, SYSTEM)
            assert ids.count(s.ctx) == TOKENS_PER_TILE * sum(tiles)
            cands.append({
                "solution": sol, "steps": steps, "step_scores": scores,
                "mean": sum(scores) / len(scores),
                "score_positions": pos, "prompt_len": len(ids),
                "prompt_ids": collapse(ids, s.ctx),
            })
        means = [x["mean"] for x in cands]
        best = max(range(len(means)), key=lambda i: (means[i], -i))
        v1 = s.score_v1(question, c["candidates"][0], pixel_values, tiles, SYSTEM)
        gap = max(abs(x - y) for x, y in zip(v1, cands[0]["step_scores"]))
        assert gap < 1e-5, (c["id"], gap)
        cases.append({"id": c["id"], "max_tiles": c["max_tiles"], "images": infos,
                      "question": c["question"], "prompt_question": question,
                      "candidates": cands, "best": best, "v1_max_abs_diff": gap})
        print(c["id"], tiles, [round(m, 6) for m in means], "best", best, f"v1 gap {gap:.2e}", file=sys.stderr)

    allscores = [x for c in cases for cand in c["candidates"] for x in cand["step_scores"]]
    out = {
        "model": json.load(open(os.path.join(a.model, "config.json"))).get("_medprm_test_model"),
        "generator": "scripts/golden/make_golden_visualprm.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "pillow": Image.__version__, "numpy": np.__version__},
        "recipe": {
            "system": SYSTEM, "template": "internvl2_5", "step_separator": "\n\n",
            "first_turn": "### Question:\n{question}\n\n### Solution Process:\n{step}",
            "image_prefix_when_absent": "<image>\n", "tokens_per_tile": TOKENS_PER_TILE,
            "image_tokens": "<img> + <IMG_CONTEXT> * 256 * tiles + </img>",
            "score": "softmax([logit(+), logit(-)])[0] at the last token of <|im_start|>assistant\\n before each +",
            "aggregate": "mean", "best": "first argmax", "bos": "added by the tokenizer",
            "plus_id": s.plus, "minus_id": s.minus, "image_context_id": s.ctx,
            "bos_id": s.tok.bos_token_id,
        },
        "chat_layout_tensors_checked": checked,
        "score_range": [min(allscores), max(allscores)],
        "cases": cases,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print(f"wrote {a.out}: {len(cases)} cases, scores in [{min(allscores):.4f}, {max(allscores):.4f}]",
          file=sys.stderr)


if __name__ == "__main__":
    main()
