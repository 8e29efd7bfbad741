"""llama.cpp's side of `medprm bench vs-llamacpp`: loads a GGUF in llama.cpp's server (the pinned
xllamacpp wheel, in process, no HTTP), evaluates the given prompt token ids `--iters` times with
no prompt cache and no generation, and writes the best prompt-processing rate to `--out` (JSON).

usage: llamacpp.py --model GGUF --prompt-ids IDS.json --threads N --iters N --out OUT.json
"""
import argparse
import json
import os

import xllamacpp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.prompt_ids) as f:
        ids = json.load(f)
    p = xllamacpp.CommonParams()
    p.model.path = a.model
    p.n_ctx = max(4096, len(ids) + 64)
    p.n_parallel = 1
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.warmup = False
    p.port = 0
    server = xllamacpp.Server(p)
    runs = []
    # One evaluation to warm up, then the measured ones; every one re-evaluates the whole prompt.
    for _ in range(a.iters + 1):
        r = server.handle_completions({"prompt": ids, "n_predict": 0, "cache_prompt": False})
        t = r["timings"]
        if t["cache_n"] != 0 or t["prompt_n"] != len(ids):
            raise SystemExit(f"llama.cpp evaluated {t['prompt_n']} of {len(ids)} tokens ({t['cache_n']} cached)")
        runs.append(t["prompt_per_second"])
    version = getattr(xllamacpp, "__version__", "unknown")
    info = f"llama.cpp via xllamacpp {version}, {a.threads} threads, n_batch {p.n_batch}, n_ubatch {p.n_ubatch}"
    with open(a.out, "w") as f:
        json.dump({"prompt_tokens": len(ids), "tokens_per_s": max(runs[1:]), "runs": runs[1:], "info": info}, f)
    # The server's threads need not be joined: the measurement is written.
    os._exit(0)


if __name__ == "__main__":
    main()
