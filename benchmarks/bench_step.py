#!/usr/bin/env python3
"""Decoder step time and prompt throughput: pygguf_diffusion next to transformers, same model, same run.

Builds (once, cached) a random DiffusionGemma checkpoint of a mid-size shape with the real vocabulary,
converts it to GGUF, then times:
  - prompt encode (tokens/s): engine encode vs transformers' encoder forward filling a DynamicCache;
  - one decoder step with self-conditioning (ms): engine decode_step(sc="previous") vs transformers'
    forward(cache=..., decoder_input_ids=..., self_conditioning_logits=...) incl. lm_head and softcap.
Medians of --repeats runs; threads pinned for both (torch.set_num_threads / n_threads).

    python benchmarks/bench_step.py [--threads 2] [--vocab 262144] [--outtype f32] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


# "mid": the proxy of ANCHORS.md (hidden 256, 6 layers, 16 experts top-4). "real2": the released model's
# widths (hidden 2816, 16 heads, head dims 256/512, 128 experts top-8, FF 704/2112) with two layers, one
# sliding and one full: a real-width step costs the globals plus 15 times this model's layers.
SHAPES = {
    "mid": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4,
                num_key_value_heads=2, head_dim=64, global_head_dim=128, num_global_key_value_heads=1,
                sliding_window=128, num_experts=16, top_k_experts=4, moe_intermediate_size=128),
    "real2": dict(hidden_size=2816, intermediate_size=2112, num_hidden_layers=2, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=256, global_head_dim=512, num_global_key_value_heads=2,
                  sliding_window=1024, num_experts=128, top_k_experts=8, moe_intermediate_size=704),
}


def build_checkpoint(out: Path, vocab: int, canvas: int, shape: str = "mid") -> Path:
    import tiny_checkpoint as tc

    spec = tc.TinySpec("bench", dict(vocab_size=vocab, use_bidirectional_attention="vision",
                                     max_position_embeddings=8192, **SHAPES[shape]),
                       canvas_length=canvas, seed=7, dtype="float32" if shape == "mid" else "bfloat16")
    if not (out / "config.json").exists():
        tc.build(spec, out)   # the 512-token test tokenizer; the converter pads the vocabulary
    return out


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--canvas", type=int, default=256)
    ap.add_argument("--shape", default="mid", choices=sorted(SHAPES), help="model widths (see SHAPES)")
    ap.add_argument("--n-gpu-layers", type=int, default=-1, help="as Model(n_gpu_layers=...); 0: CPU only")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"])
    ap.add_argument("--cache", default=str(HERE / ".cache"), help="where the model is built and converted")
    ap.add_argument("--no-reference", action="store_true", help="skip transformers")
    ap.add_argument("--gguf", default=None, help="time this GGUF instead (e.g. make_real_shape.py's; no reference)")


def prepare(args: argparse.Namespace) -> tuple[Path, Path, np.ndarray]:
    """(checkpoint dir, GGUF, prompt ids) of the benchmark model, built and converted once."""
    from pygguf_diffusion.convert import convert

    if getattr(args, "gguf", None):
        args.no_reference = True
        from pygguf_diffusion import _core

        vocab = int(_core.inspect_gguf(args.gguf)["hparams"]["n_vocab"])
        prompt = np.random.default_rng(0).integers(3, min(vocab, 512), args.prompt).astype(np.int32)
        return Path(args.gguf), Path(args.gguf), prompt
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    tag = "" if args.shape == "mid" else f"-{args.shape}"
    ckpt = build_checkpoint(cache / f"ckpt{tag}-v{args.vocab}-c{args.canvas}", args.vocab, args.canvas, args.shape)
    gguf = cache / f"bench{tag}-v{args.vocab}-c{args.canvas}-{args.outtype}.gguf"
    if not gguf.exists():
        convert(ckpt, gguf, args.outtype)
    prompt = np.random.default_rng(0).integers(0, args.vocab, args.prompt).astype(np.int32)
    return ckpt, gguf, prompt


def median_ms(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch

    from pygguf_diffusion import _core

    ckpt, gguf, prompt = prepare(args)
    canvas = np.random.default_rng(1).integers(0, args.vocab, args.canvas).astype(np.int32)
    res: dict[str, object] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.processor() or platform.platform()}",
        "shape": args.shape, "threads": args.threads,
        "weights": Path(args.gguf).name if args.gguf else args.outtype, "vocab": args.vocab, "canvas": args.canvas, "prompt": args.prompt, "repeats": args.repeats,
    }

    model = _core.Model(str(gguf), args.n_gpu_layers)
    ctx = _core.Context(model, n_ctx=args.prompt + 2 * args.canvas, n_threads=args.threads)
    res["backend"] = ctx.memory()["device"]

    def engine_encode():
        ctx.truncate(0)
        ctx.encode(prompt)

    engine_encode()  # warm-up (pages in the mapping)
    enc_ms, _ = median_ms(engine_encode, args.repeats)
    ctx.decode_step(canvas, temperature=0.8, return_logits=False)
    step_ms, steps = median_ms(lambda: ctx.decode_step(canvas, sc="previous", temperature=0.8,
                                                       return_logits=False), args.repeats)
    res["engine"] = {"prompt_tok_s": args.prompt / (enc_ms / 1000), "step_ms": step_ms,
                     "step_ms_all": [round(t, 1) for t in steps]}

    if not args.no_reference:
        from reference import Reference

        torch.set_num_threads(args.threads)
        ref = Reference(ckpt)
        tprompt = torch.as_tensor(prompt, dtype=torch.long)[None]

        def ref_encode():
            from transformers import DynamicCache

            c = DynamicCache(config=ref.model.config.text_config)
            with torch.no_grad():
                ref.model.model.encoder(input_ids=tprompt, cache=c, position_ids=torch.arange(args.prompt)[None])
            return c

        ref_encode()
        r_enc_ms, _ = median_ms(ref_encode, args.repeats)
        ref.step(canvas, encode=prompt)
        sc = torch.randn(1, args.canvas, args.vocab)
        tcanvas = torch.as_tensor(canvas, dtype=torch.long)[None]
        pos = torch.arange(args.prompt, args.prompt + args.canvas)[None]

        def ref_step():
            with torch.no_grad():
                ref.model(cache=ref.cache, decoder_input_ids=tcanvas, decoder_position_ids=pos,
                          self_conditioning_logits=sc)

        r_step_ms, r_steps = median_ms(ref_step, args.repeats)
        res["transformers"] = {"prompt_tok_s": args.prompt / (r_enc_ms / 1000), "step_ms": r_step_ms,
                               "step_ms_all": [round(t, 1) for t in r_steps], "torch": torch.__version__}
        res["speedup_step"] = r_step_ms / step_ms
        res["speedup_prompt"] = r_enc_ms / enc_ms

    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
