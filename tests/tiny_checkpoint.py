"""Tiny random DiffusionGemma checkpoints, built at test time with transformers 5.24.0 on CPU.

Every norm weight, router scale, per-expert scale and layer scalar is randomised (encoder and decoder
layer scalars differ), so a converter or engine that confuses two tensors produces different numbers.
The tokenizer is Gemma-4 shaped: the real special-token ids, <0xXX> byte tokens at 238..493, a few merges.
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import gemma4_tokenizer  # noqa: E402

VOCAB = 512

SINGLE = ["▁", "t", "h", "e", "a", "o", "n", "s", "\n"]
MERGES = [("t", "h"), ("th", "e"), ("▁", "the"), ("o", "n"), ("a", "n"), ("e", "s"), ("▁", "a"), ("\n", "\n"),
          ("▁", "t")]


@dataclass
class TinySpec:
    name: str
    text: dict[str, Any]
    canvas_length: int = 8
    dtype: str = "float32"
    released_form: bool = False  # rewrite config.json with global_head_dim / num_global_key_value_heads
    max_shard_size: str | None = None
    generation: dict[str, Any] | None = field(default_factory=lambda: {
        "max_new_tokens": 256, "max_denoising_steps": 48, "t_min": 0.4, "t_max": 0.8, "stability_threshold": 1,
        "confidence_threshold": 0.005, "sampler_config": {"entropy_bound": 0.1,
                                                          "_cls_name": "EntropyBoundSamplerConfig"},
        "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": [1, 106, 50]})
    seed: int = 0


SPECS = {
    # SPEC §9: 5 sliding + 1 full, GQA 4:2 / 4:1, head dims 16 / 32, 6 experts top-2
    "spec9": TinySpec("spec9", dict(
        vocab_size=VOCAB, hidden_size=80, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, global_head_dim=32, num_global_key_value_heads=1, sliding_window=8,
        num_experts=6, top_k_experts=2, moe_intermediate_size=32, use_bidirectional_attention="vision",
        max_position_embeddings=1024)),
    # the released config form, sharded bf16 weights, 7 layers (SSSSSFF), 8 heads over 4 / 2 KV heads
    "released": TinySpec("released", dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=7, num_attention_heads=8,
        num_key_value_heads=4, head_dim=8, global_head_dim=16, num_global_key_value_heads=2, sliding_window=16,
        num_experts=4, top_k_experts=1, moe_intermediate_size=32, use_bidirectional_attention="vision",
        max_position_embeddings=2048), canvas_length=16, dtype="bfloat16", released_form=True,
        max_shard_size="200KB", seed=1,
        generation={"max_denoising_steps": 24, "t_min": 0.3, "t_max": 0.9, "stability_threshold": 2,
                    "confidence_threshold": 0.01,
                    "sampler_config": {"entropy_bound": 0.25, "_cls_name": "EntropyBoundSamplerConfig"},
                    "eos_token_id": [1, 106, 50], "pad_token_id": 0}),
    # explicit layer types whose last entry transformers forces to full; no generation_config.json
    "explicit": TinySpec("explicit", dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, global_head_dim=64, num_global_key_value_heads=1, sliding_window=4,
        num_experts=8, top_k_experts=3, moe_intermediate_size=32, use_bidirectional_attention="vision",
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
        max_position_embeddings=512), canvas_length=4, generation=None, seed=2),
}

# Long-position fixtures (RoPE at 8k..128k): two layers (sliding + full), a large max_position_embeddings.
# "long256" has the released model's head dims (256 sliding, 512 full): the RoPE angle error grows with
# the number of pairs, so the real widths are the honest test; "long16" is cheap enough for 128k.
def _long(name: str, hd: int, seed: int) -> TinySpec:
    return TinySpec(name, dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=hd, global_head_dim=2 * hd, num_global_key_value_heads=1,
        sliding_window=8, num_experts=4, top_k_experts=2, moe_intermediate_size=16,
        use_bidirectional_attention="vision", max_position_embeddings=262144), canvas_length=8, seed=seed)


LONG_SPECS = {"long256": _long("long256", 256, 3), "long16": _long("long16", 16, 4)}


def spec(name: str) -> TinySpec:
    return SPECS[name] if name in SPECS else LONG_SPECS[name]


VISION = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=64, patch_size=4)


def build_tokenizer_files(out: Path) -> None:
    gemma4_tokenizer.write(out, SINGLE, MERGES, VOCAB, special_unused_below=60)


def build(spec: TinySpec, out: Path) -> Path:
    import torch
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    out.mkdir(parents=True, exist_ok=True)
    cfg = DiffusionGemmaConfig(text_config=copy.deepcopy(spec.text), vision_config=dict(VISION),
                               canvas_length=spec.canvas_length)
    torch.manual_seed(spec.seed)
    model = DiffusionGemmaForBlockDiffusion(cfg).eval()
    g = torch.Generator().manual_seed(spec.seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision" in name:
                continue
            if p.dim() == 1 or name.endswith("scale"):
                # norms and scales around 1 so activations stay sane, but each one different
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    model = model.to(getattr(torch, spec.dtype))
    kw = {"max_shard_size": spec.max_shard_size} if spec.max_shard_size else {}
    model.save_pretrained(out, **kw)

    if spec.released_form:
        cfg_path = out / "config.json"
        c = json.loads(cfg_path.read_text())
        tc = c["text_config"]
        tc.pop("per_layer_config")
        tc["global_head_dim"] = spec.text["global_head_dim"]
        tc["num_global_key_value_heads"] = spec.text["num_global_key_value_heads"]
        cfg_path.write_text(json.dumps(c, indent=2))
    gen_path = out / "generation_config.json"
    if spec.generation is None:
        gen_path.unlink(missing_ok=True)
    else:
        gen_path.write_text(json.dumps(spec.generation, indent=2))
    build_tokenizer_files(out)
    return out


def source_tensors(ckpt: Path) -> dict[str, Any]:
    """All tensors of the saved checkpoint as float32 numpy arrays (reference values for the tests)."""
    import torch
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[k] = v.to(torch.float32).numpy()
    return out
