"""dgemma-bench: how fast a DiffusionGemma GGUF runs here, and how close a decoder step comes to the
hardware's matrix-product rate.

    dgemma-bench [-m model.gguf] [-p 64] [--steps 16] [-r 5] [-t N] [-ngl N] [-ctk T -ctv T] [--profile]

Measured, medians of -r runs after a warm-up:
- load time; prompt tok/s (encoder, -p random tokens); one canvas generated with a fixed number of
  denoising steps (adaptive stop off, no EOS, so every run does the same work): ms per step, steps per
  canvas, TTFT (prompt + the first canvas), decode tok/s, committed tok/s, tokens per forward;
  --adaptive also runs the GGUF's own stopping rule (then the figures depend on the weights).
- the achieved GFLOP/s of a decoder step (a decode_step with self-conditioning, logits not read back)
  next to a plain ggml product of the step's dominant matrix shapes and types, timed in turn with the step
  within each repeat; the percentage is the median of the per-repeat ratios (a busy moment slows both).
  FLOPs counted: 2*K*M*N for every matrix product (MUL_MAT, and MUL_MAT_ID over the rows each expert
  receives) and 4*head_dim*queries*keys*heads for attention, the padded key length included; element-wise
  ops, norms and softmaxes are not counted.
- peak RSS, the KV store, self-conditioning state and compute buffers, and weights per device.
--profile adds where a step's time goes, per op and weight (nodes run one at a time: slower in total).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np

from ._defaults import MAX_THREADS
from ._placement import KV_TYPES


def node_flops(n: dict[str, Any]) -> float:
    """Floating-point operations of one graph node as counted here (see the module docstring)."""
    ne, src = n["ne"], n["src"]
    if n["op"] in ("MUL_MAT", "MUL_MAT_ID"):
        return 2.0 * src[0]["ne"][0] * ne[0] * ne[1] * ne[2] * ne[3]
    if n["op"] == "FLASH_ATTN_EXT":
        q, k = src[0], src[1]
        return 4.0 * q["ne"][0] * q["ne"][1] * k["ne"][1] * q["ne"][2] * q["ne"][3]
    return 0.0


def dominant_products(graph: list[dict[str, Any]], n: int = 2) -> list[dict[str, Any]]:
    """The n plain matrix products (type, K, M, N) with the most FLOPs in a graph, with their node count."""
    by_shape: dict[tuple[int, int, int, int], dict[str, Any]] = {}
    for node in graph:
        if node["op"] != "MUL_MAT":
            continue
        w, out = node["src"][0], node["ne"]
        key = (w["type"], w["ne"][0], out[0], out[1] * out[2] * out[3])
        e = by_shape.setdefault(key, {"type_id": w["type"], "K": w["ne"][0], "M": out[0], "N": key[3],
                                      "nodes": 0, "flops": 0.0, "weight": w["name"]})
        e["nodes"] += 1
        e["flops"] += node_flops(node)
    return sorted(by_shape.values(), key=lambda e: -e["flops"])[:n]


def _type_names() -> dict[int, str]:
    from . import _core

    return {t["id"]: t["name"] for t in _core.quant_types()}


def _median_s(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _host() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        have = set(next(ln for ln in info.splitlines() if ln.startswith("flags")).split(":")[1].split())
        flags = " ".join(x for x in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if x in have)
        model = next(ln for ln in info.splitlines() if ln.startswith("model name")).split(":")[1].strip()
    except (OSError, StopIteration, IndexError):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cpus" + (f" ({flags})" if flags else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from . import _core
    from .bundled import bundled_model_path

    path = args.model or bundled_model_path()
    if path is None:
        raise FileNotFoundError("no -m given and this install has no bundled model")
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    res: dict[str, Any] = {"model": os.path.basename(path), "host": _host(), "threads": threads,
                           "date": time.strftime("%Y-%m-%d"), "type_k": args.cache_type_k,
                           "type_v": args.cache_type_v, "prompt": args.prompt, "steps": args.steps,
                           "repeats": args.repeats}
    t0 = time.perf_counter()
    model = _core.Model(path, args.n_gpu_layers, args.cpu_moe, cpu_repack=not args.no_repack)
    res["load_s"] = time.perf_counter() - t0
    info = model.info()
    V, C = int(info["hparams"]["n_vocab"]), int(info["diffusion"]["canvas_length"])
    n_ctx = args.prompt + 2 * C
    ctx = _core.Context(model, n_ctx=n_ctx, n_batch=max(args.prompt, 1), n_threads=threads,
                        type_k=args.cache_type_k, type_v=args.cache_type_v)
    res["backend"] = ctx.memory()["device"]
    res["canvas"] = C
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, min(V, 512), args.prompt).astype(np.int32)

    def encode():
        ctx.truncate(0)
        ctx.encode(prompt)

    encode()   # pages the weights in
    enc_s, _ = _median_s(encode, args.repeats)
    res["prompt_tok_s"] = args.prompt / enc_s

    # one canvas with a fixed step count: no EOS (an id outside the vocabulary's specials is never drawn
    # on purpose; random or trained weights alike run every step), adaptive stop off
    runs = []
    for i in range(args.repeats + 1):
        ctx.truncate(0)
        r = _core.generate(ctx, prompt, max_new_tokens=C, max_denoising_steps=args.steps, adaptive_stop=False,
                           seed=i, eos_ids=[V - 1])
        if i:
            runs.append(r["stats"])
    med = lambda f: statistics.median(f(s) for s in runs)  # noqa: E731
    res["fixed"] = {"ms_per_step": med(lambda s: s["decode_ms"] / s["decoder_forwards"]),
                    "steps_per_canvas": med(lambda s: s["decoder_forwards"]),
                    "ttft_ms": med(lambda s: s["ttft_ms"]),
                    "decode_tok_s": med(lambda s: s["committed_tokens"] / (s["decode_ms"] / 1000)),
                    "committed_tok_s": med(lambda s: s["committed_tokens"] / (s["total_ms"] / 1000)),
                    "tokens_per_forward": med(lambda s: s["tokens_per_forward"])}
    if args.adaptive:
        runs = []
        for i in range(args.repeats):
            ctx.truncate(0)
            runs.append(_core.generate(ctx, prompt, max_new_tokens=C, seed=i)["stats"])
        res["adaptive"] = {"ms_per_step": med(lambda s: s["decode_ms"] / max(1, s["decoder_forwards"])),
                           "steps_per_canvas": med(lambda s: s["decoder_forwards"]),
                           "committed_tokens": med(lambda s: s["committed_tokens"]),
                           "tokens_per_forward": med(lambda s: s["tokens_per_forward"])}

    # the decoder step alone, its FLOPs, and the matched plain products, timed in turn within each repeat: a
    # busy moment on a shared machine slows the step and its yardstick alike, and the ratio is taken per
    # repeat (its median is reported)
    ctx.truncate(0)
    ctx.encode(prompt)
    canvas = rng.integers(3, V, C).astype(np.int32)
    ctx.decode_step(canvas, None, 1.0, False)
    ctx.decode_step(canvas, "previous", 1.0, False)
    graph = ctx.last_graph()
    flops = sum(node_flops(n) for n in graph)
    names = _type_names()
    products = dominant_products(graph)
    tnames = [names.get(p["type_id"], str(p["type_id"])) for p in products]
    on_gpu = res["backend"] != "CPU"
    step_times: list[float] = []
    prod_times: list[list[float]] = [[] for _ in products]

    def time_step() -> None:
        t0 = time.perf_counter()
        ctx.decode_step(canvas, "previous", 1.0, False)
        step_times.append(time.perf_counter() - t0)

    for r in range(args.repeats):
        if r % 2 == 0:   # the step first on even repeats, last on odd ones: neither always follows the other
            time_step()
        for i, p in enumerate(products):
            prod_times[i].append(_core.time_matmul(tnames[i], p["K"], p["M"], p["N"], threads, 1, on_gpu)[0])
        if r % 2 == 1:
            time_step()
    step_s = statistics.median(step_times)
    matched = []
    for p, tname, times in zip(products, tnames, prod_times):
        secs = statistics.median(times)
        matched.append({"weight": p["weight"], "type": tname, "K": p["K"],
                        "M": p["M"], "N": p["N"], "nodes": p["nodes"],
                        "gflop_s": 2.0 * p["K"] * p["M"] * p["N"] / secs / 1e9, "ms": secs * 1000})
    m_flops = sum(2.0 * m["K"] * m["M"] * m["N"] for m in matched)
    m_secs = sum(m["ms"] / 1000 for m in matched)
    step_gflop_s = flops / step_s / 1e9
    # per repeat: (step GFLOP/s) / (matched GFLOP/s) = (flops / step) / (m_flops / sum of the products)
    ratios = [(flops / st) / (m_flops / sum(pt[r] for pt in prod_times))
              for r, st in enumerate(step_times)] if products else []
    res["step"] = {"ms": step_s * 1000, "gflop": flops / 1e9, "gflop_s": step_gflop_s,
                   "ms_all": [t * 1000 for t in step_times],
                   "matched_products": matched,
                   "matched_gflop_s": m_flops / m_secs / 1e9 if m_secs else None,
                   "of_matched": statistics.median(ratios) if ratios else None,
                   "of_matched_all": ratios}

    mem = ctx.memory()
    placement = model.placement()
    sizes = {t["name"]: t["nbytes"] for t in info["tensors"]}
    per_dev: dict[str, int] = {}
    for name, buf in placement.items():
        per_dev[buf] = per_dev.get(buf, 0) + sizes.get(name, 0)
    res["memory"] = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     "weights_mib": {k: v / 2**20 for k, v in per_dev.items()},
                     "kv_mib": mem["kv_bytes"] / 2**20, "sc_state_mib": mem["sc_bytes"] / 2**20,
                     "compute_mib": mem["compute_bytes"] / 2**20}
    if args.profile:
        ctx.profile_ops(True)
        for _ in range(args.repeats):
            ctx.decode_step(canvas, "previous", 1.0, False)
        ctx.profile_ops(False)
        prof = ctx.op_profile()
        total = sum(e["seconds"] for e in prof)
        res["profile"] = [{"op": e["op"], "what": e["what"], "per_step": e["count"] / args.repeats,
                           "ms_per_step": e["seconds"] * 1000 / args.repeats, "share": e["seconds"] / total}
                          for e in prof]
    return res


def report(res: dict[str, Any]) -> str:
    f, s, m = res["fixed"], res["step"], res["memory"]
    out = [f"{res['model']} | {res['backend']} | {res['threads']} threads | {res['host']} | {res['date']}",
           f"load {res['load_s']:.2f} s | prompt {res['prompt']} tok at {res['prompt_tok_s']:.1f} tok/s | "
           f"KV {res['type_k']}/{res['type_v']}",
           f"canvas {res['canvas']}, {f['steps_per_canvas']:.0f} steps (fixed): {f['ms_per_step']:.2f} ms/step | "
           f"TTFT {f['ttft_ms']:.1f} ms | decode {f['decode_tok_s']:.1f} tok/s | end-to-end "
           f"{f['committed_tok_s']:.1f} tok/s | {f['tokens_per_forward']:.2f} tok/forward"]
    if "adaptive" in res:
        a = res["adaptive"]
        out.append(f"adaptive stop: {a['steps_per_canvas']:.0f} steps, {a['ms_per_step']:.2f} ms/step, "
                   f"{a['committed_tokens']:.0f} tokens, {a['tokens_per_forward']:.2f} tok/forward")
    out.append(f"decoder step {s['ms']:.2f} ms, {s['gflop']:.2f} GFLOP -> {s['gflop_s']:.1f} GFLOP/s")
    for p in s["matched_products"]:
        out.append(f"  plain ggml product {p['type']} [{p['K']} x {p['M']}] x [{p['K']} x {p['N']}] ({p['weight']}, "
                   f"{p['nodes']} per step): {p['ms']:.2f} ms, {p['gflop_s']:.1f} GFLOP/s")
    if s["of_matched"] is not None:
        out.append(f"  the step achieves {100 * s['of_matched']:.0f}% of the matched products' rate (median of "
                   "the per-repeat ratios: " + ", ".join(f"{100 * r:.0f}%" for r in s["of_matched_all"])
                   + f"; medians apart: {s['gflop_s']:.1f} against {s['matched_gflop_s']:.1f} GFLOP/s)")
    w = ", ".join(f"{k} {v:.1f}" for k, v in m["weights_mib"].items())
    out.append(f"memory MiB: peak RSS {m['peak_rss_mib']:.0f} | weights {w} | KV {m['kv_mib']:.1f} | "
               f"sc state {m['sc_state_mib']:.1f} | compute {m['compute_mib']:.1f}")
    if "profile" in res:
        out.append("\n| op | what | nodes/step | ms/step | share |\n|---|---|---|---|---|")
        for e in res["profile"][:25]:
            out.append(f"| {e['op']} | {e['what'] or '-'} | {e['per_step']:.0f} | {e['ms_per_step']:.3f} | "
                       f"{100 * e['share']:.1f}% |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dgemma-bench", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[4:]))
    ap.add_argument("-m", "--model", help="a .gguf file (default: the bundled tiny model)")
    ap.add_argument("-p", "--prompt", type=int, default=64, metavar="N", help="prompt tokens (default 64)")
    ap.add_argument("--steps", type=int, default=16, metavar="N", help="denoising steps per canvas (default 16)")
    ap.add_argument("-r", "--repeats", type=int, default=5, metavar="N", help="runs per figure (default 5)")
    ap.add_argument("-t", "--threads", type=int, metavar="N", help="CPU threads (default: the CPUs available)")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1, metavar="N")
    ap.add_argument("--cpu-moe", action="store_true")
    ap.add_argument("--no-repack", action="store_true", help="the CPU's experts read from the mapping as stored")
    ap.add_argument("-ctk", "--cache-type-k", default="f32", metavar="TYPE")
    ap.add_argument("-ctv", "--cache-type-v", default="f32", metavar="TYPE")
    ap.add_argument("--adaptive", action="store_true", help="also run the GGUF's adaptive stopping rule")
    ap.add_argument("--profile", action="store_true", help="per-op profile of the decoder step")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, v, lo, hi in (("--prompt", args.prompt, 1, 1 << 20), ("--steps", args.steps, 1, 1 << 16),
                            ("--repeats", args.repeats, 1, 1000), ("--threads", args.threads, 1, MAX_THREADS)):
        if v is not None and not lo <= v <= hi:
            print(f"error: invalid option: {flag} {v}: must be in [{lo}, {hi}]", file=sys.stderr)
            return 2
    for flag, v in (("--cache-type-k", args.cache_type_k), ("--cache-type-v", args.cache_type_v)):
        if v not in KV_TYPES:
            print(f"error: invalid option: {flag} {v}: must be one of {', '.join(KV_TYPES)}", file=sys.stderr)
            return 2
    from . import EngineError

    try:
        res = run(args)
    except (EngineError, FileNotFoundError, MemoryError) as e:
        print(f"error: cannot benchmark: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return write_results(res, report(res), args.json)


def write_results(res: dict[str, Any], text: str, json_path: str | None) -> int:
    """Prints a benchmark's report and writes its figures as JSON, whole or not at all; the exit status."""
    from pathlib import Path

    from .atomic_output import atomic_output

    print(text)
    if json_path:
        try:
            with atomic_output(Path(json_path), True, OSError) as tmp:
                tmp.write_text(json.dumps(res, indent=2))
        except OSError as e:
            print(f"error: cannot write the results: {e}: pass a --json path in a writable directory",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
