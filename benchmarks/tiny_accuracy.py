#!/usr/bin/env python3
"""Task accuracy of the bundled tiny model: pygguf_diffusion next to transformers' generate(), same weights.

The same held-out problems (a seed the training never used) go through our runtime (the GGUF's default
settings, seed 0) and, given the training run's checkpoint (`--hf DIR`, written by examples/train_tiny.py
as OUT/hf), through transformers' `generate()` with the same settings (the checkpoint's generation_config,
which the converter copied into the GGUF). The checkpoint's matrices are rounded to f16 first, as the
shipped GGUF stores them (norms and scales stay f32 in both), so both sides run the same weights. Reports
accuracy, tokens per forward and steps per canvas per task, and the accuracy gap (issue: within 3 points).

    python benchmarks/tiny_accuracy.py                       # runtime only, the bundled GGUF
    python benchmarks/tiny_accuracy.py --hf tiny-run/hf      # and the transformers reference
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import tiny_tasks as T  # noqa: E402

TEST_SEED = 2027  # held-out problems; training used seed 0 and evaluated on seed 12345


def runtime_side(gguf: str | None, tasks: list[str], n: int, seed: int, threads: int | None) -> dict:
    from pygguf_diffusion import Model

    m = Model(gguf, n_ctx=256, seed=0, n_threads=threads)
    res = {}
    for task in tasks:
        t0 = time.perf_counter()
        r = T.runtime_eval(m, T.held_out(task, n, seed))
        r["seconds"] = round(time.perf_counter() - t0, 1)
        res[task] = r
    res["gguf"] = m.path
    m.close()
    return res


def reference_side(hf_dir: Path, tasks: list[str], n: int, seed: int, threads: int | None) -> dict:
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    import train_tiny

    if threads:
        torch.set_num_threads(threads)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:  # the converter's f16 outtype keeps 1-D tensors (norms, scales) in f32
                p.copy_(p.half().float())
    codec = T.Codec(hf_dir)
    torch.manual_seed(0)
    res = {}
    for task in tasks:
        t0 = time.perf_counter()
        acc, tpf, outs = train_tiny.hf_eval(model, codec, T.held_out(task, n, seed), model.config.canvas_length)
        res[task] = {"n": n, "acc": acc, "tokens_per_forward_mean": tpf, "outputs": outs,
                     "seconds": round(time.perf_counter() - t0, 1)}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="GGUF to evaluate (default: the bundled model)")
    ap.add_argument("--hf", type=Path, default=None, help="the training run's transformers checkpoint")
    ap.add_argument("--tasks", default="add,sort,sudoku")
    ap.add_argument("--n", type=int, default=300, help="held-out problems per task")
    ap.add_argument("--seed", type=int, default=TEST_SEED)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the full results (answers included) here")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    ours = runtime_side(args.gguf, tasks, args.n, args.seed, args.threads)
    ref = reference_side(args.hf, tasks, args.n, args.seed, args.threads) if args.hf else None
    print(f"{args.n} held-out problems per task (seed {args.seed}); GGUF {ours['gguf']}")
    print(f"{'task':8} {'ours':>7} {'tok/fwd':>8} {'steps/canvas':>13}" + (f" {'transformers':>13} {'gap':>6} "
                                                                           f"{'agree':>6}" if ref else ""))
    for t in tasks:
        o = ours[t]
        line = f"{t:8} {o['acc']:7.1%} {o['tokens_per_forward']:8.2f} {o['steps_per_canvas']:13.2f}"
        if ref:
            r = ref[t]
            agree = sum(a.strip() == b.strip() for a, b in zip(o["outputs"], r["outputs"])) / args.n
            r["agree_with_ours"] = agree
            line += f" {r['acc']:13.1%} {100 * (o['acc'] - r['acc']):+6.1f} {agree:6.1%}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"ours": ours, "transformers": ref, "seed": args.seed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
