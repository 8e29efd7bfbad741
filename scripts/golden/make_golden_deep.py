#!/usr/bin/env python3
"""Reference step scores at depth: medprm's deep test model (24 layers, Hugging Face's init scale)
on ~3k-token Med-PRM prompts, with transformers' sdpa AND eager attention (f32), so the test can
state the reference's own spread. Same scoring path as make_golden.py.

Run by hand (not in CI), in the venv `make golden-venv` builds:

    medprm gen-test-model --kind med-prm-deep --out /tmp/medprm-test-deep
    ~/.cache/medprm/venv-golden/bin/python scripts/golden/make_golden_deep.py \\
        --model /tmp/medprm-test-deep --out tests/golden/med-prm-deep.json

The documents are guideline pages of the open_medicine asset ($MEDPRM_HOME/assets), stored in the
golden file, so the test needs only the model.
"""
import argparse
import json
import os
import sys

import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from depth_drift import guideline_documents  # noqa: E402
from make_golden import REFERENCE_DIR, score_case  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    cfg = json.load(open(f"{args.model}/config.json"))
    samples = json.load(open(f"{REFERENCE_DIR}/medprm_train_samples48.json"))
    s = samples[0]
    opts = [l.strip() for l in s["options"].strip().split("\n") if l.strip()]
    opts = [f"({o[0]}) {o[3:].strip()}" if len(o) > 2 and o[1] == "." else o for o in opts]
    question = s["question"] + "\n\n" + "\n".join(opts)
    docs = guideline_documents(tok, 2900)
    # Short suffixes: a few steps each, so the test stays cheap.
    cases = [{"name": f"deep_{k}", "question": question, "related_docs": docs,
              "prm_processed_solution": " ".join(st.strip() for st in samples[k]["steps"][:3])} for k in (0, 1)]
    plus_id = tok(" +", add_special_tokens=False)["input_ids"][0]
    minus_id = tok(" -", add_special_tokens=False)["input_ids"][0]
    scored = {}
    for impl in ("sdpa", "eager"):
        model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=impl).eval()
        scored[impl] = [score_case(tok, model, plus_id, minus_id, c) for c in cases]
    out_cases = []
    for sd, ea in zip(scored["sdpa"], scored["eager"]):
        c = {k: sd[k] for k in ("name", "question", "related_docs", "prm_processed_solution", "n_docs_kept", "tag_positions")}
        c["n_tokens"] = len(sd["input_ids"])
        c["PRM_score_list_sdpa"] = sd["PRM_score_list"]
        c["PRM_score_list_eager"] = ea["PRM_score_list"]
        out_cases.append(c)
    spread = max(abs(a - b) for c in out_cases for a, b in zip(c["PRM_score_list_sdpa"], c["PRM_score_list_eager"]))
    out = {
        "test_model": cfg.get("_medprm_test_model"),
        "generated_by": "scripts/golden/make_golden_deep.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "label_ids": [plus_id, minus_id],
        "sdpa_eager_spread": spread,
        "cases": out_cases,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    for c in out_cases:
        print(f"{c['name']} tokens={c['n_tokens']} docs={c['n_docs_kept']} sdpa={c['PRM_score_list_sdpa']} "
              f"eager={c['PRM_score_list_eager']}", file=sys.stderr)
    print(f"sdpa/eager spread {spread:.3g}", file=sys.stderr)


if __name__ == "__main__":
    main()
