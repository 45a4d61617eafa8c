"""Resolve a Hugging Face DiffusionGemma config.json / generation_config.json the way transformers 5.24.0
does (SPEC.md §1.2), into the plain numbers the GGUF records."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConversionError
from .jsonfile import load_json

logger = logging.getLogger(__name__)

# reference: DiffusionGemmaGenerationConfig._get_default_generation_params
SAMPLER_DEFAULTS = {
    "max_denoising_steps": 48,
    "t_min": 0.4,
    "t_max": 0.8,
    "entropy_bound": 0.1,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
}


@dataclass
class ModelParams:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv_swa: int
    head_dim_swa: int
    layer_types: list[str]  # "sliding_attention" | "full_attention"
    head_dim: list[int]  # per layer
    n_head_kv: list[int]  # per layer
    n_vocab: int
    n_ctx_train: int
    sliding_window: int
    rms_eps: float
    rope_base_full: float
    rope_base_swa: float
    n_rot_full_pairs: int  # rotating pairs of the full layers (proportional RoPE)
    softcap: float
    n_expert: int
    n_expert_used: int
    n_ff_expert: int
    canvas_length: int
    bos_id: int
    eos_id: int
    pad_id: int
    sampler: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim_full(self) -> int:
        dims = {d for d, t in zip(self.head_dim, self.layer_types) if t == "full_attention"}
        if len(dims) > 1:
            raise ConversionError(f"full-attention layers disagree on head_dim ({sorted(dims)}); the GGUF "
                                  "schema stores one key_length")
        return dims.pop() if dims else self.head_dim_swa

    def is_swa(self, il: int) -> bool:
        return self.layer_types[il] == "sliding_attention"


def _req(cfg: dict[str, Any], key: str, src: Path) -> Any:
    if cfg.get(key) is None:
        raise ConversionError(f"{src}: text_config has no {key!r}")
    return cfg[key]


def _first_id(v: Any) -> int:
    return int(v[0]) if isinstance(v, list) else int(v)


def load_params(model_dir: Path) -> ModelParams:
    cfg_path = model_dir / "config.json"
    top = load_json(cfg_path, "config.json")
    archs = top.get("architectures") or []
    if top.get("model_type") != "diffusion_gemma" and "DiffusionGemmaForBlockDiffusion" not in archs:
        raise ConversionError(
            f"{cfg_path}: model_type is {top.get('model_type')!r} (architectures {archs}), not a DiffusionGemma "
            "checkpoint; this converter handles google/diffusiongemma-* models only")
    tc = top.get("text_config")
    if not isinstance(tc, dict):
        raise ConversionError(f"{cfg_path}: no text_config section")

    if tc.get("use_bidirectional_attention") == "all":
        raise ConversionError(f"{cfg_path}: use_bidirectional_attention='all' is not supported (the released "
                              "model uses 'vision': causal text encoding)")
    act = tc.get("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise ConversionError(f"{cfg_path}: hidden_activation {act!r} is not supported (expected gelu_pytorch_tanh)")
    if tc.get("attention_bias"):
        raise ConversionError(f"{cfg_path}: attention_bias=true is not supported")
    if top.get("tie_word_embeddings") is False or tc.get("tie_word_embeddings") is False:
        raise ConversionError(f"{cfg_path}: untied word embeddings are not supported (DiffusionGemma ties lm_head)")

    n_layer = int(_req(tc, "num_hidden_layers", cfg_path))
    # reference: layer_types default 5 sliding : 1 full; the last layer is forced to full attention
    layer_types = list(tc.get("layer_types") or [
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layer)])
    if len(layer_types) != n_layer:
        raise ConversionError(f"{cfg_path}: layer_types has {len(layer_types)} entries for {n_layer} layers")
    bad = sorted({t for t in layer_types if t not in ("sliding_attention", "full_attention")})
    if bad:
        raise ConversionError(f"{cfg_path}: unknown layer types {bad}")
    if layer_types[-1] != "full_attention":
        logger.warning("last layer is %s; transformers forces it to full_attention, so does the converter",
                       layer_types[-1])
        layer_types[-1] = "full_attention"

    head_dim_swa = int(_req(tc, "head_dim", cfg_path))
    n_kv_swa = int(_req(tc, "num_key_value_heads", cfg_path))
    head_dim = [head_dim_swa] * n_layer
    n_kv = [n_kv_swa] * n_layer
    plc = tc.get("per_layer_config")
    if isinstance(plc, dict):
        # serialized form: {"5": {...}} or zero-padded {"05": {...}}
        for k, over in plc.items():
            try:
                il = int(k)
            except ValueError as e:
                raise ConversionError(f"{cfg_path}: per_layer_config key {k!r} is not a layer index") from e
            if not 0 <= il < n_layer or not isinstance(over, dict):
                raise ConversionError(f"{cfg_path}: per_layer_config entry {k!r} is invalid")
            head_dim[il] = int(over.get("head_dim", head_dim[il]))
            n_kv[il] = int(over.get("num_key_value_heads", n_kv[il]))
    else:
        # the released config.json form; transformers defaults global_head_dim to 512
        g_hd = int(tc.get("global_head_dim") or 512)
        g_kv = tc.get("num_global_key_value_heads")
        for il, t in enumerate(layer_types):
            if t == "full_attention":
                head_dim[il] = g_hd
                if g_kv is not None:
                    n_kv[il] = int(g_kv)

    rope = tc.get("rope_parameters") or {}
    full_rope = rope.get("full_attention") or {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                               "rope_theta": 1e6}
    swa_rope = rope.get("sliding_attention") or {"rope_type": "default", "rope_theta": 1e4}
    if swa_rope.get("rope_type", "default") != "default" or float(swa_rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConversionError(f"{cfg_path}: sliding-layer RoPE {swa_rope} is not supported (expected default, full)")
    ftype = full_rope.get("rope_type", "default")
    if ftype not in ("proportional", "default"):
        raise ConversionError(f"{cfg_path}: full-layer rope_type {ftype!r} is not supported")

    params = ModelParams(
        n_layer=n_layer,
        n_embd=int(_req(tc, "hidden_size", cfg_path)),
        n_ff=int(_req(tc, "intermediate_size", cfg_path)),
        n_head=int(_req(tc, "num_attention_heads", cfg_path)),
        n_head_kv_swa=n_kv_swa,
        head_dim_swa=head_dim_swa,
        layer_types=layer_types,
        head_dim=head_dim,
        n_head_kv=n_kv,
        n_vocab=int(_req(tc, "vocab_size", cfg_path)),
        n_ctx_train=int(tc.get("max_position_embeddings") or 131072),
        sliding_window=int(_req(tc, "sliding_window", cfg_path)),
        rms_eps=float(tc.get("rms_norm_eps") or 1e-6),
        rope_base_full=float(full_rope.get("rope_theta", 1e6)),
        rope_base_swa=float(swa_rope.get("rope_theta", 1e4)),
        n_rot_full_pairs=0,
        # reference: a class attribute that config.json never carries; null means no softcap
        softcap=float(tc["final_logit_softcapping"]) if tc.get("final_logit_softcapping") is not None else (
            0.0 if "final_logit_softcapping" in tc else 30.0),
        n_expert=int(_req(tc, "num_experts", cfg_path)),
        n_expert_used=int(_req(tc, "top_k_experts", cfg_path)),
        n_ff_expert=int(_req(tc, "moe_intermediate_size", cfg_path)),
        canvas_length=int(top.get("canvas_length") or 256),
        bos_id=_first_id(tc.get("bos_token_id", 2)),
        eos_id=_first_id(tc.get("eos_token_id", 1)),
        pad_id=_first_id(tc.get("pad_token_id", 0) if tc.get("pad_token_id") is not None else 0),
    )
    hd_full = params.head_dim_full
    factor = float(full_rope.get("partial_rotary_factor", 1.0)) if ftype == "proportional" else 1.0
    # reference: n_rot = int(factor * hd / 2) pairs rotate, frequencies over the FULL head dim
    params.n_rot_full_pairs = int(factor * hd_full / 2)
    if params.n_rot_full_pairs < 1:
        raise ConversionError(f"{cfg_path}: partial_rotary_factor {factor} leaves no rotating dimension")

    for il in range(n_layer):
        if params.n_head % n_kv[il]:
            raise ConversionError(f"{cfg_path}: layer {il}: {params.n_head} query heads are not a multiple of "
                                  f"{n_kv[il]} KV heads")
    if params.n_expert_used > params.n_expert:
        raise ConversionError(f"{cfg_path}: top_k_experts {params.n_expert_used} > num_experts {params.n_expert}")
    params.sampler = load_sampler_defaults(model_dir)
    return params


def load_sampler_defaults(model_dir: Path) -> dict[str, Any]:
    """generation_config.json's diffusion parameters, reference defaults where absent or null."""
    out = dict(SAMPLER_DEFAULTS)
    path = model_dir / "generation_config.json"
    if not path.exists():
        logger.warning("%s: absent; writing the reference sampler defaults", path)
        return out
    gc = load_json(path, "generation_config.json")
    for key in ("max_denoising_steps", "t_min", "t_max", "stability_threshold", "confidence_threshold"):
        if gc.get(key) is not None:
            out[key] = gc[key]
    sc = gc.get("sampler_config")
    if isinstance(sc, dict) and sc.get("entropy_bound") is not None:
        out["entropy_bound"] = sc["entropy_bound"]
    if gc.get("entropy_bound") is not None:
        out["entropy_bound"] = gc["entropy_bound"]
    try:
        out["max_denoising_steps"] = int(out["max_denoising_steps"])
        out["stability_threshold"] = int(out["stability_threshold"])
        for k in ("t_min", "t_max", "entropy_bound", "confidence_threshold"):
            out[k] = float(out[k])
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{path}: invalid sampler parameter: {e}") from e
    if out["max_denoising_steps"] < 1 or out["stability_threshold"] < 0 or not 0 <= out["t_min"] < out["t_max"] \
            or out["entropy_bound"] <= 0 or out["confidence_threshold"] <= 0:
        raise ConversionError(f"{path}: sampler parameters out of range: {out}")
    return out
