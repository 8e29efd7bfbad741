#!/usr/bin/env python3
"""What torch's CPU f32 kernels compute, bit for bit: the matmul for the reduction lengths whose
summation order `src/model/numerics.rs` follows (`k_blocks`), SiLU (whose vectorised `exp`
`src/model/simd.rs` follows), causal attention (torch's CPU flash attention, which
`src/model/attention.rs` follows) and the rotary cos/sin tables (MKL's vmsCos/vmsSin, which
`src/model/mkl_vml.rs` calls). The inputs come from an integer hash that the Rust tests compute the
same way, so only the outputs are stored.

Run by hand in the venv `make golden-venv` builds (torch's CPU matmul; 2 threads as on the
machine the goldens were made on):

    ~/.cache/medprm/venv-golden/bin/python scripts/golden/make_golden_torch_cpu.py \\
        --out tests/golden/torch-cpu.json
"""
import argparse
import json

import numpy as np
import torch

ROWS, OUT = 8, 48  # rows·out > 256: the gemm crate takes its normal kernels, as for real shapes
KS = [64, 192, 256, 300, 384, 576, 1536, 4096]


def values(n, seed):
    """x_i = (h(i) >> 8) / 2^24 - 0.5, times 3: the integer hash and the first two steps are exact in f32."""
    i = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(1_000_003)
    h = (i * np.uint64(2654435761)) % np.uint64(1 << 32)
    u = (h >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24) - np.float32(0.5)
    return (u * np.float32(3.0)).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = []
    for k in KS:
        x = torch.from_numpy(values(ROWS * k, 1).reshape(ROWS, k))
        w = torch.from_numpy(values(OUT * k, 2).reshape(OUT, k))
        y = torch.nn.functional.linear(x, w).numpy().astype(np.float32)
        cases.append({"k": k, "y_bits": [int(b) for b in y.view(np.uint32).reshape(-1)]})
    # SiLU over hashed values times 12 (|x| < 18) and 16 values at and past exp's limits.
    x = np.concatenate([values(4096, 3) * np.float32(12.0),
                        np.array([-120, -104.5, -103.9, -100, -95, -88, -87.5, -20, 20, 87.5, 88.8, 95, 99.9, 100.5, 101, 120],
                                 dtype=np.float32)])
    silu = torch.nn.functional.silu(torch.from_numpy(x)).numpy().astype(np.float32)
    # Causal scaled-dot-product attention (transformers' sdpa path: torch's CPU flash attention),
    # one head of 64, 530 positions (a full key block of 512 and 18 more, 2 of them past the last
    # vector of 16): the rows kept are the first, around the key-block edge and the last.
    length, dim = 530, 64
    q = torch.from_numpy(values(length * dim, 4).reshape(1, 1, length, dim) * np.float32(4.0))
    k = torch.from_numpy(values(length * dim, 5).reshape(1, 1, length, dim) * np.float32(4.0))
    v = torch.from_numpy(values(length * dim, 6).reshape(1, 1, length, dim))
    att = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)[0, 0].numpy().astype(np.float32)
    keep = [0, 1, 17, 300, 511, 512, 513, 528, 529]
    sdpa = {"length": length, "dim": dim, "rows": keep, "y_bits": [int(b) for b in att[keep].view(np.uint32).reshape(-1)]}
    # transformers' LlamaRMSNorm (eps 1e-5) over 64 rows of 576 and of 64 (values times 30; the
    # weight hashed around 1).
    rms = {}
    for width in (576, 64):
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
        norm = LlamaRMSNorm(width, eps=1e-5)
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(values(width, 8) * np.float32(0.5) + np.float32(1.0)))
            y = norm(torch.from_numpy(values(64 * width, 7).reshape(64, width) * np.float32(30.0))).numpy().astype(np.float32)
        rms[str(width)] = [int(b) for b in y.view(np.uint32).reshape(-1)]
    # transformers' rotary tables for Llama-3.1-8B's rope (theta 500000, llama3 scaling, head_dim
    # 128) at 64 positions up to 8191: torch takes cos/sin from MKL's VML on x86.
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, head_dim=128, max_position_embeddings=131072,
                         rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    rotary = LlamaRotaryEmbedding(config)
    positions = torch.tensor([list(range(0, 8192, 128)) + [8191]])
    cos, sin = rotary(torch.zeros(1, 1, 128), positions)
    half = cos.shape[-1] // 2
    angles = (positions[0].float()[:, None] * rotary.inv_freq.float()[None, :]).contiguous()
    assert torch.equal(torch.cos(angles), cos[0, :, :half]) and torch.equal(torch.sin(angles), sin[0, :, :half])
    bits = lambda t: [int(b) for b in t.contiguous().numpy().astype(np.float32).view(np.uint32).reshape(-1)]
    rope = {"angles": bits(angles), "cos": bits(cos[0, :, :half]), "sin": bits(sin[0, :, :half])}
    json.dump({"generated_by": "scripts/golden/make_golden_torch_cpu.py", "torch": torch.__version__,
               "threads": args.threads, "rows": ROWS, "out": OUT, "cases": cases,
               "sdpa": sdpa, "rms_norm": rms, "rope": rope, "silu": {"extremes": [float(v) for v in x[4096:]], "y_bits": [int(b) for b in silu.view(np.uint32)]}},
              open(args.out, "w"))


if __name__ == "__main__":
    main()
