"""Hugging Face tensor names -> GGUF names and expected shapes (GGUF_SCHEMA.md).

Shapes here are numpy/PyTorch order (slowest first); the GGUF records them reversed (ggml order).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .hf_config import ModelParams

DEC = "model.decoder."
ENC_SCALAR = re.compile(r"^model\.encoder\.language_model\.layers\.(\d+)\.layer_scalar$")
# Checkpoint parts that the text GGUF does not carry.
IGNORED = re.compile(r"^model\.encoder\.(vision_tower|embed_vision|audio_tower|embed_audio)\.")

_GLOBAL = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "self_conditioning.pre_norm.weight": "self_cond_pre_norm.weight",
    "self_conditioning.gate_proj.weight": "self_cond_gate.weight",
    "self_conditioning.up_proj.weight": "self_cond_up.weight",
    "self_conditioning.down_proj.weight": "self_cond_down.weight",
}

_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
    "router.proj.weight": "ffn_gate_inp.weight",
    "router.scale": "ffn_gate_inp.scale",
    "router.per_expert_scale": "ffn_down_exps.scale",
    "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
    "experts.gate_up_proj": "ffn_gate_up_exps.weight",
    "experts.down_proj": "ffn_down_exps.weight",
    "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "layer_scalar": "layer_output_scale.weight",
}

ROPE_FREQS = "rope_freqs.weight"


@dataclass(frozen=True)
class TensorSpec:
    gguf_name: str
    shape: tuple[int, ...]  # numpy order


def gguf_name(hf_name: str) -> str | None:
    """GGUF name for a checkpoint tensor; None for tensors the text GGUF does not carry; KeyError if unknown."""
    if IGNORED.match(hf_name) or hf_name == "lm_head.weight":
        return None
    m = ENC_SCALAR.match(hf_name)
    if m:
        return f"blk.{int(m.group(1))}.enc_layer_output_scale.weight"
    if hf_name.startswith(DEC):
        rest = hf_name[len(DEC):]
        if rest in _GLOBAL:
            return _GLOBAL[rest]
        m = re.match(r"^layers\.(\d+)\.(.+)$", rest)
        if m and m.group(2) in _LAYER:
            return f"blk.{int(m.group(1))}.{_LAYER[m.group(2)]}"
    raise KeyError(hf_name)


def expected_tensors(p: ModelParams) -> dict[str, TensorSpec]:
    """Every tensor the GGUF must contain, in the order they are written."""
    H, V, I, E, EI = p.n_embd, p.n_vocab, p.n_ff, p.n_expert, p.n_ff_expert
    specs = [
        TensorSpec("token_embd.weight", (V, H)),
        TensorSpec("output_norm.weight", (H,)),
        TensorSpec(ROPE_FREQS, (p.head_dim_full // 2,)),
        TensorSpec("self_cond_pre_norm.weight", (H,)),
        TensorSpec("self_cond_gate.weight", (I, H)),
        TensorSpec("self_cond_up.weight", (I, H)),
        TensorSpec("self_cond_down.weight", (H, I)),
    ]
    for il in range(p.n_layer):
        hd, nkv = p.head_dim[il], p.n_head_kv[il]
        b = f"blk.{il}."
        layer = [
            TensorSpec(b + "attn_norm.weight", (H,)),
            TensorSpec(b + "attn_q.weight", (p.n_head * hd, H)),
            TensorSpec(b + "attn_k.weight", (nkv * hd, H)),
        ]
        if p.is_swa(il):
            layer.append(TensorSpec(b + "attn_v.weight", (nkv * hd, H)))
        layer += [
            TensorSpec(b + "attn_output.weight", (H, p.n_head * hd)),
            TensorSpec(b + "attn_q_norm.weight", (hd,)),
            TensorSpec(b + "attn_k_norm.weight", (hd,)),
            TensorSpec(b + "post_attention_norm.weight", (H,)),
            TensorSpec(b + "ffn_norm.weight", (H,)),
            TensorSpec(b + "ffn_gate.weight", (I, H)),
            TensorSpec(b + "ffn_up.weight", (I, H)),
            TensorSpec(b + "ffn_down.weight", (H, I)),
            TensorSpec(b + "post_ffw_norm_1.weight", (H,)),
            TensorSpec(b + "ffn_gate_inp.weight", (E, H)),
            TensorSpec(b + "ffn_gate_inp.scale", (H,)),
            TensorSpec(b + "pre_ffw_norm_2.weight", (H,)),
            TensorSpec(b + "ffn_gate_up_exps.weight", (E, 2 * EI, H)),
            TensorSpec(b + "ffn_down_exps.weight", (E, H, EI)),
            TensorSpec(b + "ffn_down_exps.scale", (E,)),
            TensorSpec(b + "post_ffw_norm_2.weight", (H,)),
            TensorSpec(b + "post_ffw_norm.weight", (H,)),
            TensorSpec(b + "layer_output_scale.weight", (1,)),
            TensorSpec(b + "enc_layer_output_scale.weight", (1,)),
        ]
        specs += layer
    return {s.gguf_name: s for s in specs}


def rope_freqs(p: ModelParams) -> list[float]:
    """Frequency factors of the full layers: proportional RoPE as ggml NEOX rope over the whole head with
    the non-rotating pairs' frequencies divided by 1e30 (angle ~0, identity)."""
    n_pairs = p.head_dim_full // 2
    return [1.0] * p.n_rot_full_pairs + [1e30] * (n_pairs - p.n_rot_full_pairs)
