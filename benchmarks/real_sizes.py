#!/usr/bin/env python3
"""File size and bits per weight of the released 26B-A4B model for each type or mix, computed from our
policy over the exact tensor set (no file is written): what a quantized GGUF of the real model weighs.

    python benchmarks/real_sizes.py [--mixes Q8_0,Q6_K,...]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np

from pygguf_diffusion.convert.hf_config import ModelParams
from pygguf_diffusion.convert.tensor_map import expected_tensors
from pygguf_diffusion.quant.policy import MIXES, Policy

METADATA_BYTES = 16 * 10**6  # vocabulary, merges, chat template: llama.cpp's ggml-vocab-gemma-4.gguf is 15.8 MB


def real_params() -> ModelParams:
    n = 30
    full = [(i + 1) % 6 == 0 for i in range(n)]
    return ModelParams(
        n_layer=n, n_embd=2816, n_ff=2112, n_head=16, n_head_kv_swa=8, head_dim_swa=256,
        layer_types=["full_attention" if f else "sliding_attention" for f in full],
        head_dim=[512 if f else 256 for f in full], n_head_kv=[2 if f else 8 for f in full], n_vocab=262144,
        n_ctx_train=262144, sliding_window=1024, rms_eps=1e-6, rope_base_full=1e6, rope_base_swa=1e4,
        n_rot_full_pairs=64, softcap=30.0, n_expert=128, n_expert_used=8, n_ff_expert=704, canvas_length=256,
        bos_id=2, eos_id=1, pad_id=0)


def size_of(target: str, p: ModelParams) -> tuple[int, int, Counter[str]]:
    pol = Policy(target, p.n_layer)
    total_bytes, weights, by_type = 0, 0, Counter()
    for name, spec in expected_tensors(p).items():
        c = pol.choose(name, len(spec.shape), spec.shape[-1])
        n = int(np.prod(spec.shape))
        b = int(np.prod(spec.shape[:-1])) * c.qtype.row_bytes(spec.shape[-1])
        total_bytes += b + (-b % 32)
        weights += n
        by_type[c.qtype.name] += n
    return total_bytes + METADATA_BYTES, weights, by_type


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixes", default="bf16," + ",".join(MIXES) + ",q4_0,iq4_xs")
    args = ap.parse_args()
    p = real_params()
    print("| type | GB (10^9) | GiB | bits/weight | weights by type |")
    print("|---|---|---|---|---|")
    for t in args.mixes.split(","):
        size, weights, by_type = size_of(t, p)
        share = ", ".join(f"{k} {100 * v / weights:.0f}%" for k, v in by_type.most_common(4))
        print(f"| {Policy(t, 30).name} | {size / 1e9:.1f} | {size / 2**30:.1f} | {8 * size / weights:.2f} | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
