#!/usr/bin/env python3
"""Where medprm drifts from Hugging Face transformers on a deep model and a long prompt.

Builds a Med-PRM-shaped model the way the issue's independent check did: SmolLM2's widths (30
layers, hidden 576, 9 query / 3 kv heads, head_dim 64), Llama-3.1 rope scaling, tied embeddings,
initialised by transformers itself (normal(0, initializer_range) with initializer_range 0.2, norms
1, seeded), the vocabulary and chat template of medprm's Med-PRM test model. Saves it (safetensors
+ config + tokenizer, what medprm reads), then scores one record (a Med-PRM training question, real
guideline documents from the open_medicine asset up to ~2.7k tokens, a few real solutions) with
transformers (sdpa and eager, f32) and with medprm (`medprm score`, CPU kernels and
--generic-attention, shared prefix and whole prompts), and compares the hidden state entering
every layer (`output_hidden_states` against medprm's MEDPRM_DEBUG_HIDDEN_STATES dump) and every
step score. Writes the figures as JSON.

Run by hand (not in CI), in the venv `make golden-venv` builds:

    medprm gen-test-model --out /tmp/medprm-test-model
    ~/.cache/medprm/venv-golden/bin/python scripts/golden/depth_drift.py \\
        --base /tmp/medprm-test-model --medprm before=/tmp/medprm-old --medprm after=target/release/medprm \\
        --solutions 8 --work /tmp/depth-drift --out docs/figures/depth-drift.json
"""
import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import REFERENCE_DIR, keep_documents, score_case  # noqa: E402


def build_model(base, out, layers, seed):
    cfg = json.load(open(f"{base}/config.json"))
    cfg.update(hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, initializer_range=0.2, tie_word_embeddings=True,
               _medprm_test_model=f"depth-drift-hf-init-{layers}l-seed{seed}")
    cfg.pop("architectures", None)
    config = LlamaConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    saved = json.load(open(f"{out}/config.json"))
    saved["_medprm_test_model"] = cfg["_medprm_test_model"]
    json.dump(saved, open(f"{out}/config.json", "w"), indent=1)
    for f in glob.glob(f"{base}/*"):
        name = os.path.basename(f)
        if name.startswith("tokenizer") or name.startswith("special_tokens") or name.endswith(".jinja"):
            with open(f, "rb") as src, open(f"{out}/{name}", "wb") as dst:
                dst.write(src.read())


def guideline_documents(tok, budget_tokens):
    home = os.environ.get("MEDPRM_HOME", os.path.expanduser("~/.cache/medprm"))
    files = sorted(glob.glob(f"{home}/assets/open_medicine/guidelines/content/*/*.md"))
    if not files:
        sys.exit(f"no guideline documents under {home}/assets (run `make assets`)")
    docs, used = [], 0
    for f in files:
        text = " ".join(open(f).read().split())[:2500]
        cost = len(tok(text, add_special_tokens=False)["input_ids"]) + 1
        if used + cost > budget_tokens:
            break
        docs.append(text)
        used += cost
    return docs


def record(tok, n_solutions, doc_tokens):
    samples = json.load(open(f"{REFERENCE_DIR}/medprm_train_samples48.json"))
    s = samples[0]
    opts = [l.strip() for l in s["options"].strip().split("\n") if l.strip()]
    opts = [f"({o[0]}) {o[3:].strip()}" if len(o) > 2 and o[1] == "." else o for o in opts]
    question = s["question"] + "\n\n" + "\n".join(opts)
    sols = [{"prm_processed_solution": " ".join(st.strip() for st in samples[k]["steps"])} for k in range(n_solutions)]
    return {"question": question, "related_docs": guideline_documents(tok, doc_tokens), "solutions": sols}


def medprm_score(binary, model, rec, work, tag, extra, env=None):
    inp, out = f"{work}/{tag}.in.json", f"{work}/{tag}.out.jsonl"
    json.dump([rec], open(inp, "w"))
    cmd = [binary, "score", "--model", model, "--input", inp, "--output", out, "--quiet", "--max-batch-tokens", "4096"] + extra
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    line = json.loads(open(out).readline())
    return [s["PRM_score_list"] for s in line["solutions"]]


def worst(a, b):
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="medprm's Med-PRM test model (gen-test-model): tokenizer, template")
    ap.add_argument("--medprm", required=True, action="append",
                    help="a medprm binary, as PATH or LABEL=PATH, optionally @PATHS to override --paths for it; repeat to "
                         "compare builds (e.g. before=... after=...@kernels,kernels-mkl) against one transformers run")
    ap.add_argument("--work", required=True, help="scratch directory (model ~300 MB, dumps)")
    ap.add_argument("--out", required=True, help="figures JSON")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solutions", type=int, default=3)
    ap.add_argument("--doc-tokens", type=int, default=2700)
    ap.add_argument("--paths", default="kernels,generic",
                    help="medprm configurations to compare: kernels, generic (--generic-attention), kernels-mkl (the CPU "
                         "kernels with --mkl-vml: rotary cos/sin from MKL, as torch computes them)")
    ap.add_argument("--mkl-vml", help="libmkl_rt.so.2 for the kernels-mkl configuration (`make mkl` fetches it)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    model_dir = f"{args.work}/model"
    if not os.path.exists(f"{model_dir}/model.safetensors"):
        build_model(args.base, model_dir, args.layers, args.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rec = record(tok, args.solutions, args.doc_tokens)
    plus_id = tok(" +", add_special_tokens=False)["input_ids"][0]
    minus_id = tok(" -", add_special_tokens=False)["input_ids"][0]

    ref, hidden, lengths = {}, {}, []
    for impl in ("sdpa", "eager"):
        m = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=impl).eval()
        cases = [score_case(tok, m, plus_id, minus_id, {"question": rec["question"], "related_docs": rec["related_docs"], **s})
                 for s in rec["solutions"]]
        ref[impl] = [c["PRM_score_list"] for c in cases]
        c0 = cases[0]
        ids = c0["input_ids"][: c0["tag_positions"][-1] + 1]
        with torch.no_grad():
            hs = m(torch.tensor([ids]), output_hidden_states=True, logits_to_keep=1).hidden_states
        hidden[impl] = [h[0].numpy() for h in hs[: args.layers]]
        lengths = [len(c["input_ids"]) for c in cases]
        del m
        print(f"{impl}: {ref[impl]}", file=sys.stderr)

    builds = {}
    paths = {"kernels": [], "generic": ["--generic-attention"]}
    if args.mkl_vml:
        paths["kernels-mkl"] = ["--mkl-vml", args.mkl_vml]
    for spec in args.medprm:
        spec, _, names = spec.partition("@")
        label, binary = spec.split("=", 1) if "=" in spec else ("medprm", spec)
        runs = {}
        for name in (names or args.paths).split(","):
            if name not in paths:
                sys.exit(f"unknown configuration `{name}` (kernels-mkl needs --mkl-vml)")
            extra = paths[name]
            dump = f"{args.work}/hidden-{label}-{name}"
            one = dict(rec, solutions=rec["solutions"][:1])
            medprm_score(binary, model_dir, one, args.work, f"{label}-{name}-dump", extra + ["--no-prefix-sharing"],
                         {"MEDPRM_DEBUG_HIDDEN_STATES": dump})
            layers = []
            for i in range(args.layers):
                ours = np.fromfile(f"{dump}/layer-{i}.f32", dtype="<f4").reshape(-1, 576)
                sd, ea = hidden["sdpa"][i], hidden["eager"][i]
                scale = float(np.abs(sd).max())
                layers.append({"layer": i, "max_abs_sdpa": scale,
                               "medprm_vs_sdpa": float(np.abs(ours - sd).max()),
                               "eager_vs_sdpa": float(np.abs(ea - sd).max())})
            shared = medprm_score(binary, model_dir, rec, args.work, f"{label}-{name}-shared", extra)
            whole = medprm_score(binary, model_dir, rec, args.work, f"{label}-{name}-whole", extra + ["--no-prefix-sharing"])
            runs[name] = {
                "shared_vs_sdpa": worst(shared, ref["sdpa"]), "whole_vs_sdpa": worst(whole, ref["sdpa"]),
                "shared_vs_eager": worst(shared, ref["eager"]), "whole_vs_eager": worst(whole, ref["eager"]),
                "shared_vs_whole": worst(shared, whole), "per_layer_hidden": layers,
            }
            print(f"medprm {label} {name}: " + json.dumps({k: v for k, v in runs[name].items() if k != "per_layer_hidden"}),
                  file=sys.stderr)
        builds[label] = {"binary": binary, "paths": runs}

    out = {
        "generated_by": "scripts/golden/depth_drift.py",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": {"layers": args.layers, "hidden": 576, "heads": 9, "kv_heads": 3, "initializer_range": 0.2,
                  "rope_scaling": "llama3", "tied_embeddings": True, "seed": args.seed},
        "prompt_tokens": lengths, "documents": len(rec["related_docs"]),
        "steps": sum(len(x) for x in ref["sdpa"]),
        "eager_vs_sdpa": worst(ref["eager"], ref["sdpa"]),
        "command": " ".join(["scripts/golden/depth_drift.py"] + sys.argv[1:]),
        "builds": builds,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    json.dump(out, open(args.out, "w"), indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "builds"}), file=sys.stderr)


if __name__ == "__main__":
    main()
