#!/usr/bin/env python3
"""Memory of a GGUF at several context sizes and KV store types, measured on this machine's CPU backend,
and what fits a GPU of a given size with the offload controls (-ngl, --cpu-moe, --n-cpu-moe).

    python benchmarks/memory_table.py MODEL.gguf [--ctx 8192,32768,131072] [--kv f32,f16,q8_0] [--json out]

Per context the engine reports its KV store, self-conditioning state and the compute buffers it reserves
at creation for its largest graphs (a full encoder batch and a decoder step at the end of the store).
The state measured here is the CPU path's (the softmax in the transposed embedding's type); a GPU keeps
it in f32, n_vocab x canvas, which the GPU column counts. Weights come from the file's
tensor table; the transposed embedding (self-conditioning: n_vocab x hidden, 2 bytes for 16-bit and
quantized embeddings) is computed. On a GPU the KV store, state, transposed embedding and the layers'
weights live on the device; the compute buffers are the CPU
backend's, an estimate of CUDA's (its kernels need no larger intermediates; it keeps ~0.5 GiB for its own
context, counted below as overhead).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

GIB = 2**30
CUDA_OVERHEAD = 0.5 * GIB   # the CUDA context and cuBLAS workspace, not ours to allocate


def weights(info: dict) -> dict[str, float]:
    """Bytes: globals (embedding and the self-conditioning MLP, output norm), per-layer non-expert, and
    per-layer experts."""
    out = {"globals": 0, "layers": 0, "experts": 0}
    per_layer_experts: dict[int, int] = {}
    for t in info["tensors"]:
        m = re.match(r"blk\.(\d+)\.", t["name"])
        if not m:
            out["globals"] += t["nbytes"]
        elif "_exps." in t["name"]:
            out["experts"] += t["nbytes"]
            per_layer_experts[int(m.group(1))] = per_layer_experts.get(int(m.group(1)), 0) + t["nbytes"]
        else:
            out["layers"] += t["nbytes"]
    out["experts_per_layer"] = per_layer_experts
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--ctx", default="8192,32768,131072")
    ap.add_argument("--kv", default="f32,f16,q8_0")
    ap.add_argument("--cards", default="16,24,32", help="GPU sizes in GB (10^9 bytes, as sold)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from pygguf_diffusion import _core

    model = _core.Model(args.model, 0, False)
    info = model.info()
    hp = info["hparams"]
    w = weights(info)
    emb = next(t for t in info["tensors"] if t["name"] == "token_embd.weight")
    t_bytes = 4 if emb["type"] == "f32" else 2
    w["token_embd_t"] = hp["n_vocab"] * hp["n_embd"] * t_bytes
    rows = []
    for n_ctx in (int(x) for x in args.ctx.split(",")):
        for kv in args.kv.split(","):
            ctx = _core.Context(model, n_ctx=n_ctx, n_batch=512, n_threads=2, type_k=kv, type_v=kv)
            mem = ctx.memory()
            del ctx
            rows.append({"n_ctx": n_ctx, "kv_type": kv, "kv": mem["kv_bytes"], "sc": mem["sc_bytes"],
                         "sc_gpu": 4 * hp["n_vocab"] * info["diffusion"]["canvas_length"],
                         "compute": mem["compute_bytes"]})
            print(json.dumps(rows[-1]), flush=True)

    print(f"\nweights: globals {w['globals'] / GIB:.2f} GiB (of which the embedding {emb['nbytes'] / GIB:.2f}), "
          f"layers without experts {w['layers'] / GIB:.2f} GiB, experts {w['experts'] / GIB:.2f} GiB; "
          f"transposed embedding {w['token_embd_t'] / GIB:.2f} GiB")
    print("\n| n_ctx | KV type | KV store | sc state (CPU / GPU) | compute | all on the GPU | fits 16 GB | fits 24 GB | "
          "fits 32 GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    n_layer = hp["n_layer"]
    per_exp = [w["experts_per_layer"].get(i, 0) for i in range(n_layer)]
    for r in rows:
        fixed = w["globals"] + w["layers"] + w["token_embd_t"] + r["kv"] + r["sc_gpu"] + r["compute"] + CUDA_OVERHEAD
        total = fixed + w["experts"]
        fits = []
        for gb in (int(x) for x in args.cards.split(",")):
            cap = gb * 1e9
            if total <= cap:
                fits.append("yes")
                continue
            # --n-cpu-moe N: the experts of the first N layers stay on the CPU
            on_gpu, n = total, 0
            while n < n_layer and on_gpu > cap:
                on_gpu -= per_exp[n]
                n += 1
            fits.append(f"--n-cpu-moe {n}" if on_gpu <= cap and n < n_layer else
                        ("--cpu-moe" if fixed <= cap else "no"))
        r["gpu_total"] = total
        r["fits"] = fits
        print(f"| {r['n_ctx']} | {r['kv_type']} | {r['kv'] / GIB:.2f} GiB | {r['sc'] / GIB:.2f} / {r['sc_gpu'] / GIB:.2f} GiB | "
              f"{r['compute'] / GIB:.2f} GiB | {total / GIB:.1f} GiB | " + " | ".join(fits) + " |")
    if args.json:
        args.json.write_text(json.dumps({"weights": {k: v for k, v in w.items() if k != "experts_per_layer"},
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
