"""Where a decoder step's GPU time goes, kernel by kernel: decoder steps traced with PyTorch's profiler
(CUPTI records every CUDA kernel the process launches, ggml's included), grouped by kernel name.

    python3 benchmarks/gpu_kernels.py -m real30-q4km.gguf [--steps 4] [--top 30] [--json out.json]

Reports per step: wall time, the time the GPU was busy (kernel intervals merged), what is left idle (host
work and launch gaps: the part CUDA graphs and fewer, larger kernels win back), the kernel count, and the
kernels with the most time. dgemma-bench --profile runs nodes one at a time with a sync after each, which
puts tens of microseconds on every small op; this is the step as it runs.
Needs a CUDA build of the module and PyTorch with CUDA (the GPU machine has both).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np


def merged_busy_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of a union of [start, end) intervals."""
    busy, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy


def short_name(name: str) -> str:
    """A kernel's name without its parameter list, and with its first two template arguments only (for
    ggml's kernels: the type and the tile, or the op)."""
    name = name.removeprefix("void ")
    depth, cut, args, arg_start = 0, len(name), [], -1
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
            if depth == 1:
                arg_start = i + 1
        elif ch == ">":
            depth -= 1
            if depth == 0:
                args.append(name[arg_start:i].strip())
        elif ch == "," and depth == 1:
            args.append(name[arg_start:i].strip())
            arg_start = i + 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    head = name[:cut].split("<")[0]
    return (f"{head}<{', '.join(args[:2])}>" if args else head)[:100]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pygguf_diffusion import _core

    if not torch.cuda.is_available() or not _core.gpu_backends():
        raise RuntimeError("needs a GPU: PyTorch with CUDA and a CUDA build of the module")
    model = _core.Model(args.model, -1, False)
    info = model.info()
    V, C = int(info["hparams"]["n_vocab"]), int(info["diffusion"]["canvas_length"])
    ctx = _core.Context(model, n_ctx=args.prompt + 2 * C, n_batch=args.prompt, n_threads=args.threads)
    rng = np.random.default_rng(0)
    ctx.encode(rng.integers(3, min(V, 512), args.prompt).astype(np.int32))
    canvas = rng.integers(3, V, C).astype(np.int32)
    ctx.decode_step(canvas, None, 1.0, False)
    for _ in range(3):   # warm-up: CUDA graphs need two identical calls before they are captured
        ctx.decode_step(canvas, "previous", 1.0, False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            ctx.decode_step(canvas, "previous", 1.0, False)
        wall_s = time.perf_counter() - t0
    # device events are kernels, copies and memsets; the copies and memsets count apart
    device = [e for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    kernels = [e for e in device if not e.name.startswith(("Memcpy", "Memset"))]
    copies = [e for e in device if e.name.startswith(("Memcpy", "Memset"))]
    if not kernels:
        raise RuntimeError("the profiler recorded no CUDA kernels (CUPTI unavailable?)")
    spans = [(e.time_range.start, e.time_range.end) for e in device]
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        by_name[short_name(e.name)].append(e.time_range.end - e.time_range.start)
    total_us = sum(sum(v) for v in by_name.values())
    n = args.steps
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    return {
        "model": args.model, "steps": n, "wall_ms_per_step": wall_s * 1000 / n,
        "gpu_busy_ms_per_step": merged_busy_us(spans) / 1000 / n,
        "kernel_ms_per_step": total_us / 1000 / n, "kernels_per_step": len(kernels) / n,
        "copies_per_step": len(copies) / n,
        "copy_ms_per_step": sum(e.time_range.end - e.time_range.start for e in copies) / 1000 / n,
        "first_to_last_ms_per_step": (max(s[1] for s in spans) - min(s[0] for s in spans)) / 1000 / n,
        "top": [{"kernel": k, "per_step": len(v) / n, "ms_per_step": sum(v) / 1000 / n,
                 "mean_us": sum(v) / len(v), "share": sum(v) / total_us} for k, v in top[:args.top]],
    }


def report(r: dict[str, Any]) -> str:
    idle = r["wall_ms_per_step"] - r["gpu_busy_ms_per_step"]
    out = [f"{r['model']}: {r['steps']} decoder steps traced",
           f"wall {r['wall_ms_per_step']:.2f} ms/step | GPU busy {r['gpu_busy_ms_per_step']:.2f} ms "
           f"(kernels {r['kernel_ms_per_step']:.2f} ms, {r['kernels_per_step']:.0f} launches; copies and memsets "
           f"{r['copy_ms_per_step']:.2f} ms, {r['copies_per_step']:.0f}) | "
           f"idle {idle:.2f} ms ({idle / r['wall_ms_per_step']:.0%})",
           "| kernel | per step | ms/step | mean us | share |", "|---|---|---|---|---|"]
    for t in r["top"]:
        out.append(f"| {t['kernel']} | {t['per_step']:.0f} | {t['ms_per_step']:.3f} | {t['mean_us']:.1f} | "
                   f"{t['share']:.1%} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-p", "--prompt", type=int, default=64, help="prompt tokens (random ids)")
    ap.add_argument("--steps", type=int, default=4, help="decoder steps traced")
    ap.add_argument("-t", "--threads", type=int, default=8)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    try:
        res = run(args)
    except (RuntimeError, OSError, ValueError, ImportError) as e:
        print(f"error: cannot profile the GPU kernels: {e}", file=sys.stderr)
        return 1
    from pygguf_diffusion.bench import write_results

    return write_results(res, report(res), args.json)


if __name__ == "__main__":
    sys.exit(main())
