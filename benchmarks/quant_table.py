#!/usr/bin/env python3
"""Quantization table of the bundled model: for each mix, file size, bits per weight, task accuracy (the
held-out problems of tiny_accuracy.py, the GGUF's default settings, seed 0), and the error of decoder
logits against the f32 file (NMSE and top-1 agreement).

Every file is made from the shipped F16 GGUF by dgemma-quantize's code path (requantize); the f32 file is
that F16 file's values exactly, so "against f32" isolates the quantization. Logits are compared on two
canvas states per prompt: the first denoising step (uniform random tokens, as generation starts) and the
f32 model's final answer canvas (where denoising ends), both with no self-conditioning, pooled over all
positions and vocabulary entries: NMSE = sum((l - l_f32)^2) / sum(l_f32^2).

    python benchmarks/quant_table.py [--n 300] [--mixes Q8_0,Q6_K,...] [--imatrix FILE|auto] [--json out.json]

--model mid: the mid-size random model of bench_step.py at the real 262,144-token vocabulary (hidden 256,
6 layers, 16 experts top-4; built once with transformers, cached in benchmarks/.cache) instead of the
bundled model: sizes and logits error only (random weights have no task accuracy), on 4 random 64-token
prompts with a random canvas each.

--imatrix flat: every importance 1 (no information: the baseline for the types that need a matrix).
--imatrix auto computes one with dgemma-imatrix's code on calibration questions of the three tasks (40 per
task from another seed, none of them a test problem) and quantizes every listed mix with it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import tiny_tasks as T  # noqa: E402

TEST_SEED = 2027
DEFAULT_MIXES = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q3_K_M", "Q2_K", "iq4_xs", "q4_0"]
N_LOGIT_PROMPTS = 8  # per task


def bundled_f16() -> Path:
    from pygguf_diffusion.bundled import bundled_model_path

    p = bundled_model_path()
    if p is None:
        raise SystemExit("error: the bundled model is missing from this installation")
    return Path(p)


def make(src: Path, out_dir: Path, target: str, imatrix: str | None = None) -> tuple[Path, object]:
    """Requantize src into out_dir as target; returns (path, WriteSummary)."""
    from pygguf_diffusion.quant.requantize import requantize

    got = []
    out = out_dir / f"{src.stem}-{target}{'-imat' if imatrix else ''}.gguf"
    requantize(src, out, target, imatrix=imatrix, force=True, report=got.append)
    return out, got[0]


def auto_imatrix(out_dir: Path) -> Path:
    from pygguf_diffusion.quant.collect import imatrix_from_file

    test = {q for task in T.TASKS for q, _ in T.held_out(task, 300, TEST_SEED)}
    calib = out_dir / "tiny-calibration.txt"
    calib.write_text("\n".join(q for task in T.TASKS for q, _ in T.held_out(task, 40, 99) if q not in test) + "\n")
    return imatrix_from_file(bundled_f16(), calib, chat=True).save(out_dir / "tiny-imatrix.gguf")


def flat_imatrix(src: Path, out_dir: Path) -> Path:
    from gguf import GGUFReader

    from pygguf_diffusion.quant.imatrix import Imatrix

    im = Imatrix(datasets=["flat"])
    for t in GGUFReader(src).tensors:
        if len(t.shape) >= 2 and t.name.endswith(".weight"):
            n_mat = int(t.shape[2]) if len(t.shape) == 3 else 1
            im.add(t.name, np.ones((n_mat, int(t.shape[0]))), np.ones(n_mat))
    return im.save(out_dir / "flat-imatrix.gguf")


def mid_model() -> tuple[Path, list[tuple[list[int], np.ndarray]]]:
    """The f32 GGUF of bench_step.py's mid-size model and random (prompt, canvas) states."""
    import argparse as _a

    from bench_step import prepare

    _, gguf, _ = prepare(_a.Namespace(cache=str(HERE / ".cache"), vocab=262144, canvas=256, prompt=64,
                                      outtype="f32", shape="mid"))
    rng = np.random.default_rng(11)
    states = [(rng.integers(0, 262144, 64).tolist(), rng.integers(0, 262144, 256).astype(np.int32))
              for _ in range(4)]
    return gguf, states


def logit_prompts(n: int, seed: int) -> list[list[int]]:
    """Chat-formatted prompt ids of the first n held-out problems of each task."""
    from pygguf_diffusion import Model

    m = Model(str(bundled_f16()), n_ctx=256)
    out = []
    for task in T.TASKS:
        for q, _ in T.held_out(task, n, seed):
            out.append(m.tokenize(m.apply_chat_template([{"role": "user", "content": q}]), add_bos=False))
    m.close()
    return out


def canvases(ref: Path, prompts: list[list[int]], threads: int | None) -> list[tuple[list[int], np.ndarray]]:
    """(prompt, canvas) pairs: a uniform-noise canvas and the reference model's final answer canvas."""
    from pygguf_diffusion import Model

    m = Model(str(ref), n_ctx=256, seed=0, n_threads=threads)
    C, V = m.canvas_length, int(m.info["hparams"]["n_vocab"])
    rng = np.random.default_rng(7)
    out = []
    for p in prompts:
        out.append((p, rng.integers(0, V, C).astype(np.int32)))
        ids = m.generate(p).tokens[:C]
        final = np.asarray(list(ids) + [int(x) for x in rng.integers(0, V, C - len(ids))], dtype=np.int32)
        out.append((p, final))
    m.close()
    return out


def step_logits(gguf: Path, states: list[tuple[list[int], np.ndarray]], threads: int | None) -> list[np.ndarray]:
    from pygguf_diffusion import _core

    m = _core.Model(str(gguf), 0, False)
    ctx = _core.Context(m, 512, 512, threads or 2)
    out = []
    for prompt, canvas in states:
        ctx.truncate(0)
        ctx.encode(np.asarray(prompt, dtype=np.int32))
        out.append(np.array(ctx.decode_step(canvas, None, 1.0, True)))
    return out


def logit_error(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    num = sum(float(((g.astype(np.float64) - r) ** 2).sum()) for r, g in zip(ref, got))
    den = sum(float((r.astype(np.float64) ** 2).sum()) for r in ref)
    top1 = np.mean(np.concatenate([r.argmax(-1) == g.argmax(-1) for r, g in zip(ref, got)]))
    return num / den, float(top1)


def accuracy(gguf: Path, n: int, seed: int, threads: int | None) -> dict[str, float]:
    from pygguf_diffusion import Model

    m = Model(str(gguf), n_ctx=256, seed=0, n_threads=threads)
    res = {task: T.runtime_eval(m, T.held_out(task, n, seed))["acc"] for task in T.TASKS}
    m.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixes", default=",".join(DEFAULT_MIXES))
    ap.add_argument("--n", type=int, default=300, help="held-out problems per task (0: no accuracy)")
    ap.add_argument("--seed", type=int, default=TEST_SEED)
    ap.add_argument("--imatrix", default=None, help="importance matrix for every mix (and the IQ mixes)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", choices=["bundled", "mid"], default="bundled")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if args.imatrix == "auto":
            args.imatrix = str(auto_imatrix(tmp))
        elif args.imatrix == "flat":
            args.imatrix = str(flat_imatrix(bundled_f16(), tmp))
        if args.model == "mid":
            src, states = mid_model()
            args.n = 0
        else:
            src = bundled_f16()
        ref, ref_sum = make(src, tmp, "f32")
        if args.model == "bundled":
            states = canvases(ref, logit_prompts(N_LOGIT_PROMPTS, args.seed), args.threads)
        ref_logits = step_logits(ref, states, args.threads)
        for target in (["f32", "f16"] if not args.imatrix else []) + args.mixes.split(","):
            t0 = time.perf_counter()
            path, sm = (ref, ref_sum) if target == "f32" else make(src, tmp, target, args.imatrix)
            nmse, top1 = logit_error(ref_logits, step_logits(path, states, args.threads))
            tag = " +flat" if args.imatrix and "flat" in args.imatrix else " +imatrix"
            row = {"type": sm.target + (tag if args.imatrix and target not in ("f32", "f16") else ""),
                   "bytes": path.stat().st_size, "bpw": round(sm.bits_per_weight, 3),
                   "nmse": nmse, "top1": round(top1, 5)}
            if args.n:
                row["acc"] = accuracy(path, args.n, args.seed, args.threads)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| type | size | bits/weight | " + " | ".join(T.TASKS) + " | logits NMSE vs f32 | top-1 vs f32 |")
    print("|---|---|---|" + "---|" * len(T.TASKS) + "---|---|")
    for r in rows:
        acc = " | ".join(f"{100 * r['acc'][t]:.1f}%" for t in T.TASKS) if "acc" in r else " | ".join("" for _ in T.TASKS)
        print(f"| {r['type']} | {r['bytes'] / 2**20:.2f} MiB | {r['bpw']:.2f} | {acc} | {r['nmse']:.2e} | "
              f"{100 * r['top1']:.2f}% |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
