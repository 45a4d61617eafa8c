#!/usr/bin/env python3
"""A random-weights GGUF with the exact tensor set and shapes of the released DiffusionGemma 26B-A4B, in
any type or mix, written streaming: for timing, memory and load measurements at the real shape without
the 51 GB download.

    python benchmarks/make_real_shape.py OUT.gguf [--type Q4_K_M] [--layers 30] [--force]

Weights are N(0, 0.02) (norms and scales 1), quantized by ggml through the engine. Quantizing 26 billion
random values at q4_K would take over ten minutes on two cores, so each tensor's rows are a quantized
block of at most BLOCK_ROWS rows repeated: the bytes differ between tensors (each block has its own
random values) but repeat within one. That changes no computation's cost. The metadata (vocabulary
262,144 from the 512-token test tokenizer padded as the converter pads it, chat template, sampler
defaults) goes through the converter's own writer. --layers keeps the released layer pattern (every
sixth layer full, the last one full) with fewer layers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

BLOCK_ROWS = 2048

REAL_TEXT_CONFIG = dict(
    vocab_size=262144, hidden_size=2816, intermediate_size=2112, num_attention_heads=16, num_key_value_heads=8,
    head_dim=256, global_head_dim=512, num_global_key_value_heads=2, sliding_window=1024, num_experts=128,
    top_k_experts=8, moe_intermediate_size=704, max_position_embeddings=262144, rms_norm_eps=1e-6,
    use_bidirectional_attention="vision", hidden_activation="gelu_pytorch_tanh", attention_bias=False,
    tie_word_embeddings=True, final_logit_softcapping=30.0, model_type="diffusion_gemma_text",
    bos_token_id=2, eos_token_id=1, pad_token_id=0,
    rope_parameters={"full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                                        "rope_type": "proportional"},
                     "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}})
GENERATION = {"max_new_tokens": 256, "max_denoising_steps": 48, "t_min": 0.4, "t_max": 0.8,
              "stability_threshold": 1, "confidence_threshold": 0.005,
              "sampler_config": {"entropy_bound": 0.1, "_cls_name": "EntropyBoundSamplerConfig"},
              "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": [1, 106, 50]}


def write_config_dir(d: Path, n_layer: int) -> None:
    import tiny_checkpoint

    tc = dict(REAL_TEXT_CONFIG, num_hidden_layers=n_layer)
    tc["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 or i == n_layer - 1 else "sliding_attention"
                         for i in range(n_layer)]
    cfg = {"architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
           "canvas_length": 256, "tie_word_embeddings": True, "text_config": tc,
           "vision_config": tiny_checkpoint.VISION}
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    (d / "generation_config.json").write_text(json.dumps(GENERATION, indent=2))
    tiny_checkpoint.build_tokenizer_files(d)


def tensor_rows(name: str, shape: tuple[int, ...], q, threads: int):
    """(block bytes, rows in the block, total rows) of a random tensor stored as q."""
    from pygguf_diffusion.quant.encode import encode_rows

    ncol = shape[-1]
    n_rows = int(np.prod(shape[:-1]))
    rows = min(n_rows, BLOCK_ROWS)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if len(shape) == 1 or name.endswith((".scale", "_scale.weight")):
        block = np.ones((rows, ncol), np.float32)
    else:
        block = (0.02 * rng.standard_normal((rows, ncol))).astype(np.float32)
    return encode_rows(block, q, None, threads), rows, n_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--type", default="Q4_K_M", help="a mix or type, as dgemma-quantize takes")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()

    from gguf import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFWriter

    from pygguf_diffusion.atomic_output import atomic_output
    from pygguf_diffusion.convert import tensor_map
    from pygguf_diffusion.convert.converter import _write_metadata
    from pygguf_diffusion.convert.hf_config import load_params
    from pygguf_diffusion.quant.encode import default_threads
    from pygguf_diffusion.quant.policy import Policy
    from pygguf_diffusion.quant.summary import WriteSummary

    threads = args.threads or default_threads()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        cfg_dir = Path(td)
        write_config_dir(cfg_dir, args.layers)
        p = load_params(cfg_dir)
        policy = Policy(args.type, p.n_layer)
        specs = tensor_map.expected_tensors(p)
        plan = []
        for name, spec in specs.items():
            c = policy.choose(name, len(spec.shape), spec.shape[-1])
            nbytes = int(np.prod(spec.shape[:-1])) * c.qtype.row_bytes(spec.shape[-1])
            plan.append((name, spec.shape, c, nbytes))
        summary = WriteSummary(path=str(args.out), target=policy.name)
        with atomic_output(args.out, args.force, SystemExit) as tmp:
            w = GGUFWriter(tmp, "diffusion-gemma")
            _write_metadata(w, p, policy, f"random-real-shape-{args.layers}L", cfg_dir)
            for name, shape, c, nbytes in plan:
                w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=GGMLQuantizationType(c.qtype.id))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            f = w.fout[0]
            for i, (name, shape, c, nbytes) in enumerate(plan):
                f.write(b"\0" * (-f.tell() % GGUF_DEFAULT_ALIGNMENT))
                if name == tensor_map.ROPE_FREQS:
                    from pygguf_diffusion.quant.encode import encode_rows

                    data = encode_rows(np.asarray(tensor_map.rope_freqs(p), np.float32)[None], c.qtype)
                    f.write(data)
                else:
                    block, rows, n_rows = tensor_rows(name, shape, c.qtype, threads)
                    full, rest = divmod(n_rows, rows)
                    for _ in range(full):
                        f.write(block)
                    if rest:
                        f.write(block[: rest * c.qtype.row_bytes(shape[-1])])
                summary.add(name, c.cls, c.qtype.name, int(np.prod(shape)), nbytes, c.reason)
                if i % 50 == 0:
                    print(f"\r{i + 1}/{len(plan)} tensors, {f.tell() / 2**30:.1f} GiB", end="", file=sys.stderr,
                          flush=True)
            f.write(b"\0" * (-f.tell() % GGUF_DEFAULT_ALIGNMENT))
            w.close()
    summary.finish(args.out, None)
    print(f"\n{summary.text()}\n{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
