"""Score token ids the way the Med-PRM authors' script does, and time it: Hugging Face
transformers, one prompt per forward pass, the full vocabulary head, softmax over the two label
logits at every step-tag row. Called by `medprm bench vs-reference`, which passes the very token
ids it scores itself (tokenization is outside both timings).

usage: reference.py --model DIR --prompts prompts.json --out reference.json
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.prompts) as f:
        job = json.load(f)
    plus_id, minus_id = job["label_ids"]
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        model(torch.tensor([job["prompts"][0]["ids"][:16]]))  # warm up
        start = time.perf_counter()
        scores = []
        for p in job["prompts"]:
            logits = model(torch.tensor([p["ids"]])).logits[0]
            scores.append(
                [torch.softmax(torch.stack([logits[r][plus_id], logits[r][minus_id]]), 0)[0].item() for r in p["rows"]]
            )
        seconds = time.perf_counter() - start
    info = f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention {model.config._attn_implementation}"
    with open(args.out, "w") as f:
        json.dump({"seconds": seconds, "scores": scores, "info": info}, f)


if __name__ == "__main__":
    main()
