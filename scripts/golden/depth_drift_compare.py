#!/usr/bin/env python3
"""Per-layer divergence of one or more medprm builds from transformers, on the model and record
depth_drift.py prepared (its --work directory), from dumps already made.

For each build: `MEDPRM_DEBUG_HIDDEN_STATES=DUMP medprm score --no-prefix-sharing` on
WORK/kernels-dump.in.json (one solution, whole prompt) writes DUMP/layer-*.f32 and OUT.jsonl.
This script computes transformers' hidden states (sdpa and eager, f32; cached in WORK/hf-*.npy)
and step scores, and writes per-layer max |Δ| of every build against sdpa next to eager's:

    python scripts/golden/depth_drift_compare.py --work /tmp/depth-drift \\
        --build before=/tmp/dump-before,/tmp/before.out.jsonl --build after=/tmp/dump-after,/tmp/after.out.jsonl \\
        --out docs/figures/depth-drift.json
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import score_case  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--build", action="append", required=True, help="LABEL=DUMP_DIR,OUT_JSONL")
    ap.add_argument("--out", required=True)
    ap.add_argument("--f64-layers", type=int, default=2,
                    help="also run the first N layers in float64 (eager) and give each f32 result's distance to it")
    args = ap.parse_args()
    model_dir = f"{args.work}/model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = json.load(open(f"{model_dir}/config.json"))
    layers, hidden = cfg["num_hidden_layers"], cfg["hidden_size"]
    rec = json.load(open(f"{args.work}/kernels-dump.in.json"))[0]
    case = {"question": rec["question"], "related_docs": rec["related_docs"], **rec["solutions"][0]}
    plus = tok(" +", add_special_tokens=False)["input_ids"][0]
    minus = tok(" -", add_special_tokens=False)["input_ids"][0]
    hs, scores = {}, {}
    for impl in ("sdpa", "eager"):
        cache = f"{args.work}/hf-{impl}.npy"
        m = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=impl).eval()
        c = score_case(tok, m, plus, minus, case)
        scores[impl] = c["PRM_score_list"]
        if not os.path.exists(cache):
            ids = c["input_ids"][: c["tag_positions"][-1] + 1]
            with torch.no_grad():
                out = m(torch.tensor([ids]), output_hidden_states=True, logits_to_keep=1).hidden_states
            np.save(cache, np.stack([h[0].numpy() for h in out[:layers]]))
        hs[impl] = np.load(cache)
        del m
    sd, ea = hs["sdpa"], hs["eager"]
    per_layer = [{"layer": i, "max_abs_sdpa": float(np.abs(sd[i]).max()), "eager_vs_sdpa": float(np.abs(ea[i] - sd[i]).max())}
                 for i in range(layers)]
    truth = None
    if args.f64_layers:
        c64 = dict(cfg, num_hidden_layers=args.f64_layers + 1)
        m = LlamaForCausalLM.from_pretrained(model_dir, config=transformers.LlamaConfig(**{k: v for k, v in c64.items() if not k.startswith("_")}),
                                             dtype=torch.float64, attn_implementation="eager").eval()
        c = score_case(tok, lambda ids: type("R", (), {"logits": torch.zeros(1, ids.shape[1], max(plus, minus) + 1)})(), plus, minus, case)
        with torch.no_grad():
            out = m(torch.tensor([c["input_ids"][: c["tag_positions"][-1] + 1]]), output_hidden_states=True, logits_to_keep=1).hidden_states
        truth = [h[0].numpy() for h in out[: args.f64_layers + 1]]
        for i in range(1, args.f64_layers + 1):
            per_layer[i]["sdpa_vs_f64"] = float(np.abs(sd[i] - truth[i]).max())
            per_layer[i]["eager_vs_f64"] = float(np.abs(ea[i] - truth[i]).max())
        del m
    builds = {}
    for spec in args.build:
        label, rest = spec.split("=", 1)
        dump, out_jsonl = rest.split(",")
        got = json.loads(open(out_jsonl).readline())["solutions"][0]["PRM_score_list"]
        for i in range(layers):
            path = f"{dump}/layer-{i}.f32"
            if os.path.exists(path):
                ours = np.fromfile(path, dtype="<f4").reshape(-1, hidden)
                per_layer[i][f"medprm_{label}_vs_sdpa"] = float(np.abs(ours - sd[i]).max())
                if truth is not None and 0 < i < len(truth):
                    per_layer[i][f"medprm_{label}_vs_f64"] = float(np.abs(ours - truth[i]).max())
        builds[label] = {"step_scores": got, "max_vs_sdpa": max(abs(a - b) for a, b in zip(got, scores["sdpa"])),
                         "max_vs_eager": max(abs(a - b) for a, b in zip(got, scores["eager"]))}
    result = {
        "generated_by": "scripts/golden/depth_drift_compare.py",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": cfg.get("_medprm_test_model"),
        "scored_rows": int(sd.shape[1]),
        "hf_sdpa_scores": scores["sdpa"], "hf_eager_scores": scores["eager"],
        "eager_vs_sdpa": max(abs(a - b) for a, b in zip(scores["eager"], scores["sdpa"])),
        "builds": builds, "per_layer_hidden_max_abs": per_layer,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    json.dump(result, open(args.out, "w"), indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "per_layer_hidden_max_abs"}), file=sys.stderr)
    for r in per_layer:
        print(r, file=sys.stderr)


if __name__ == "__main__":
    main()
