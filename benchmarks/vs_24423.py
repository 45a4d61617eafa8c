#!/usr/bin/env python3
"""Denoising step time, pygguf_diffusion next to llama.cpp PR #24423 (Unsloth's fork), the same GGUF files,
interleaved in one run.

    python benchmarks/vs_24423.py --llama-bin /path/to/llama-diffusion-cli [--types bf16,q8_0,Q4_K_M]
        [--steps 16] [--repeats 3] [--threads 2]

Building #24423 (its source is the public fork unslothai/llama.cpp, the pin carrying
examples/diffusion-gemma-server; never copied here):
    cmake -S SRC -B SRC/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \\
        -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
    cmake --build SRC/build -j2 --target llama-diffusion-cli

The model is bench_step.py's mid-size proxy (hidden 256, 6 layers, 16 experts top-4, vocabulary 262,144,
canvas 256), random weights, converted once to f32 and requantized here to each type. One canvas after a
64-token prompt, a fixed number of denoising steps (random weights never meet the adaptive stop; both
runtimes run every step). The figure for both is #24423's own: (the whole turn, prompt and sampling
included) / steps; ours is the same quotient from generate()'s statistics.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def proxy_files(cache: Path, types: list[str]) -> dict[str, Path]:
    import argparse as _a

    from bench_step import prepare

    from pygguf_diffusion.quant.requantize import requantize

    _, f32, _ = prepare(_a.Namespace(cache=str(cache), vocab=262144, canvas=256, prompt=64, outtype="f32",
                                     shape="mid"))
    out = {}
    for t in types:
        p = cache / f"bench-v262144-c256-{t}.gguf"
        if t == "f32":
            p = f32
        elif not p.exists():
            requantize(f32, p, t, force=True)
        out[t] = p
    return out


def ours(path: Path, prompt: np.ndarray, steps: int, threads: int) -> float:
    from pygguf_diffusion import _core

    m = _core.Model(str(path), 0, False)
    ctx = _core.Context(m, n_ctx=len(prompt) + 512, n_threads=threads)
    V = int(m.info()["hparams"]["n_vocab"])
    r = _core.generate(ctx, prompt, max_new_tokens=256, max_denoising_steps=steps, adaptive_stop=False, seed=0,
                       eos_ids=[V - 1])
    s = r["stats"]
    return s["total_ms"] / s["decoder_forwards"]


def theirs(binary: str, path: Path, prompt_text: str, steps: int, threads: int) -> float:
    cmd = [binary, "-m", str(path), "-p", prompt_text, "-no-cnv", "-t", str(threads), "-n", "256",
           "--diffusion-eb", "on", "--diffusion-eb-max-steps", str(steps), "--diffusion-eb-stability", "100000",
           "--diffusion-eb-confidence", "1e-30", "-c", "1024", "-s", "0"]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=3600)
    m = re.search(r"time per step: ([0-9.]+)ms \((\d+) steps", p.stdout + p.stderr)
    if not m:
        raise SystemExit(f"error: #24423 printed no step time (rc {p.returncode}):\n{(p.stdout + p.stderr)[-2000:]}")
    if int(m.group(2)) != steps:
        raise SystemExit(f"error: #24423 ran {m.group(2)} steps, not {steps}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--types", default="bf16,q8_0,Q4_K_M")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(HERE / ".cache"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from pygguf_diffusion import Model
    from pygguf_diffusion.bench import _host

    files = proxy_files(Path(args.cache), args.types.split(","))
    # a 64-token prompt as text (the proxy's tokenizer is the tiny test one, padded to the real vocabulary)
    m = Model(str(files[args.types.split(",")[0]]), n_ctx=512)
    ids = np.random.default_rng(0).integers(3, 500, 64).tolist()
    prompt_text = m.detokenize(ids)
    prompt = np.asarray(m.tokenize(prompt_text, add_bos=True), dtype=np.int32)
    m.close()
    res = {"host": _host(), "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "steps": args.steps,
           "repeats": args.repeats, "prompt_tokens": int(len(prompt)), "rows": []}
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}), flush=True)
    for t, path in files.items():
        a, b = [], []
        for _ in range(args.repeats):   # interleaved: a busy moment slows both
            a.append(ours(path, prompt, args.steps, args.threads))
            b.append(theirs(args.llama_bin, path, prompt_text, args.steps, args.threads))
        row = {"type": t, "file_mib": round(os.path.getsize(path) / 2**20, 1),
               "ours_ms_per_step": statistics.median(a), "theirs_ms_per_step": statistics.median(b),
               "ours_all": [round(x, 1) for x in a], "theirs_all": [round(x, 1) for x in b]}
        row["speedup"] = row["theirs_ms_per_step"] / row["ours_ms_per_step"]
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    print("\n| weights | file | ours ms/step | #24423 ms/step | ours faster by |\n|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['type']} | {r['file_mib']} MiB | {r['ours_ms_per_step']:.0f} | {r['theirs_ms_per_step']:.0f} | "
              f"{r['speedup']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
