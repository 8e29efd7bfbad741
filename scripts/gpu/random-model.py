#!/usr/bin/env python3
"""Writes a Llama-3.1-shaped model directory with random bf16 weights, for GPU benchmarks only.

    python3 scripts/gpu/random-model.py --shape 8b --tokenizer-from DIR --out DIR

The weights are random (nothing is downloaded): speed depends on the shapes alone, and the scores
it gives mean nothing. Shapes are Llama-3.1-8B's (Med-PRM's backbone: 4096 hidden, 32 layers,
32 heads, 8 KV heads, 14336 intermediate) with Med-PRM's vocabulary of 128,257 (the Llama-3
tokenizer plus the step tag). tokenizer.json and tokenizer_config.json are copied from
--tokenizer-from, a directory written by `medprm gen-test-model` (same vocabulary and tag).
Needs only numpy; writes the safetensors format directly (numpy has no bfloat16).
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

SHAPES = {
    # name: hidden, intermediate, layers, heads, kv_heads
    "8b": (4096, 14336, 32, 32, 8),
    # Small enough for a quick check of the pipeline on any GPU.
    "1b": (2048, 8192, 16, 32, 8),
    # For testing this script.
    "toy": (128, 256, 2, 4, 2),
}
VOCAB = 128_257


def bf16_random(rng, n, scale_exp):
    """n random bfloat16 values (as uint16 bits), |x| in [2^scale_exp, 2^(scale_exp+1)), random sign."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    exponent = np.uint16((127 + scale_exp) << 7)
    return (bits & np.uint16(0x807F)) | exponent


def bf16_const(n, value):
    bits = np.frombuffer(np.float32(value).tobytes(), dtype=np.uint32)[0] >> 16
    return np.full(n, bits, dtype=np.uint16)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--tokenizer-from", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20250613)
    a = ap.parse_args()

    h, inter, layers, heads, kv_heads = SHAPES[a.shape]
    head_dim = h // heads
    kv = kv_heads * head_dim
    tensors = [("model.embed_tokens.weight", (VOCAB, h), "rand")]
    for l in range(layers):
        p = f"model.layers.{l}"
        tensors += [
            (f"{p}.input_layernorm.weight", (h,), "one"),
            (f"{p}.self_attn.q_proj.weight", (h, h), "rand"),
            (f"{p}.self_attn.k_proj.weight", (kv, h), "rand"),
            (f"{p}.self_attn.v_proj.weight", (kv, h), "rand"),
            (f"{p}.self_attn.o_proj.weight", (h, h), "rand"),
            (f"{p}.post_attention_layernorm.weight", (h,), "one"),
            (f"{p}.mlp.gate_proj.weight", (inter, h), "rand"),
            (f"{p}.mlp.up_proj.weight", (inter, h), "rand"),
            (f"{p}.mlp.down_proj.weight", (h, inter), "rand"),
        ]
    tensors += [("model.norm.weight", (h,), "one"), ("lm_head.weight", (VOCAB, h), "rand")]

    os.makedirs(a.out, exist_ok=True)
    header, offset = {}, 0
    for name, shape, _ in tensors:
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", "medprm": f"random-llama31-{a.shape}"}
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    rng = np.random.default_rng(a.seed)
    path = os.path.join(a.out, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for name, shape, kind in tensors:
            n = int(np.prod(shape))
            # std of a uniform-magnitude draw in [2^-7, 2^-6) is about 0.011: keeps activations finite
            # through 32 layers of random weights.
            arr = bf16_const(n, 1.0) if kind == "one" else bf16_random(rng, n, -7)
            f.write(arr.tobytes())
    os.replace(path + ".tmp", path)

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "max_position_embeddings": 131072, "vocab_size": VOCAB, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128009,
        "torch_dtype": "bfloat16", "_medprm_random_model": f"random-llama31-{a.shape}",
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(a.tokenizer_from, name), os.path.join(a.out, name))
    params = sum(int(np.prod(s)) for _, s, _ in tensors)
    print(f"wrote {a.out}: {params / 1e9:.2f}B parameters, {offset / 2**30:.1f} GiB bf16", file=sys.stderr)


if __name__ == "__main__":
    main()
