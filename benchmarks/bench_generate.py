#!/usr/bin/env python3
"""End-to-end generation: pygguf_diffusion's loop next to transformers' generate(), same model, same run.

One canvas (default 256 tokens) after a 64-token prompt, a fixed number of denoising steps for both
(adaptive stop off: random weights never converge), so the figure is ms per full step — decoder forward
plus the sampler's vocabulary-wide work (softmax, entropy, categorical sample, argmax) — and committed
tok/s for the canvas. Uses the model bench_step.py builds (cached).

    python benchmarks/bench_generate.py [--threads 2] [--steps 4] [--outtype f32]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_step import add_model_args, prepare


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-device", default="cpu", help="where transformers runs (cpu, cuda)")
    ap.add_argument("--ref-dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    import torch

    from pygguf_diffusion import _core

    ckpt, gguf, prompt = prepare(args)
    # stopping only on an id the tiny test tokenizer never produces keeps every run at one full canvas
    never = [args.vocab - 1]

    model = _core.Model(str(gguf), args.n_gpu_layers)
    ours = []
    for i in range(args.repeats + 1):
        ctx = _core.Context(model, n_ctx=args.prompt + 2 * args.canvas, n_threads=args.threads)
        r = _core.generate(ctx, prompt, max_new_tokens=args.canvas, max_denoising_steps=args.steps,
                           adaptive_stop=False, seed=i, eos_ids=never)
        if i:  # the first run pages the weights in
            ours.append(r["stats"])
    weights = Path(args.gguf).name if args.gguf else args.outtype
    res = {"shape": args.shape, "backend": ctx.memory()["device"], "threads": args.threads, "weights": weights,
           "vocab": args.vocab, "canvas": args.canvas, "prompt": args.prompt, "steps": args.steps,
           "repeats": args.repeats,
           "engine": {"ms_per_step": statistics.median(s["decode_ms"] / s["decoder_forwards"] for s in ours),
                      "committed_tok_s": statistics.median(s["committed_tokens"] / (s["total_ms"] / 1000) for s in ours),
                      "total_ms": statistics.median(s["total_ms"] for s in ours)}}
    if not args.no_reference:
        from transformers import DiffusionGemmaForBlockDiffusion

        torch.set_num_threads(args.threads)
        dev = torch.device(args.ref_device)
        hf = DiffusionGemmaForBlockDiffusion.from_pretrained(ckpt, dtype=getattr(torch, args.ref_dtype))
        hf = hf.to(dev).eval()
        tprompt = torch.as_tensor(prompt, dtype=torch.long, device=dev)[None]
        times = []
        for i in range(args.repeats + 1):
            torch.manual_seed(i)
            t0 = time.perf_counter()
            with torch.no_grad():
                hf.generate(tprompt, max_new_tokens=args.canvas,
                            max_denoising_steps=args.steps, stability_threshold=0, confidence_threshold=1e-30,
                            eos_token_id=never, pad_token_id=0)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first run warms up (CUDA kernels, allocator)
                times.append((time.perf_counter() - t0) * 1000)
        t = statistics.median(times)
        res["transformers"] = {"total_ms": t, "committed_tok_s": args.canvas / (t / 1000),
                               "ms_per_step_incl_prompt": t / args.steps, "torch": torch.__version__,
                               "device": args.ref_device, "dtype": args.ref_dtype}
        res["speedup"] = t / res["engine"]["total_ms"]
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
