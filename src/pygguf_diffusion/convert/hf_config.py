"""Resolve a Hugging Face DiffusionGemma config.json / generation_config.json the way transformers 5.24.0
does (SPEC.md §1.2), into the plain numbers the GGUF records."""
from __future__ import annotations

import logging
import math
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


INT32_MAX = 2**31 - 1
# Bounds a config's numbers must meet before anything is written: the engine's own limits on what a GGUF
# may state (cpp/src/dgemma-hparams.cpp), so the converter never writes a file the engine then rejects.
MAX_WIDTH = 1 << 20
MAX_LAYERS = 4096
MAX_CANVAS = 4096
MAX_STEPS = 1024


def _req(cfg: dict[str, Any], key: str, src: Path) -> Any:
    if cfg.get(key) is None:
        raise ConversionError(f"{src}: text_config has no {key!r}")
    return cfg[key]


def _int(v: Any, what: str, src: Path, lo: int = 1, hi: int = MAX_WIDTH) -> int:
    """v as an integer in [lo, hi] (an integral float is accepted), else a ConversionError naming it."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConversionError(f"{src}: {what} = {v!r}: must be an integer in [{lo}, {hi}]")
    return v


def _float(v: Any, what: str, src: Path, lo: float, hi: float = float("inf"), lo_open: bool = True) -> float:
    """v as a finite number in (lo, hi] (or [lo, hi] with lo_open False), else a ConversionError."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v <= hi and \
        (v > lo if lo_open else v >= lo)
    if not ok:
        raise ConversionError(f"{src}: {what} = {v!r}: must be a finite number in "
                              f"{'(' if lo_open else '['}{lo}, {hi}]")
    return float(v)


def _or(v: Any, default: Any) -> Any:
    """default where a key is absent or null (not where it is 0, [] or "": those are errors to report)."""
    return default if v is None else v


def _token_id(v: Any, what: str, src: Path, n_vocab: int) -> int:
    """A token id, or the first of a list of ids (eos_token_id may list several)."""
    if isinstance(v, list):
        if not v:
            raise ConversionError(f"{src}: {what} is an empty list; it needs at least one token id")
        v = v[0]
    return _int(v, what, src, 0, n_vocab - 1)


def load_params(model_dir: Path) -> ModelParams:
    cfg_path = model_dir / "config.json"
    top = load_json(cfg_path, "config.json")
    archs = top.get("architectures") if isinstance(top.get("architectures"), list) else []
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

    n_layer = _int(_req(tc, "num_hidden_layers", cfg_path), "text_config.num_hidden_layers", cfg_path, 1, MAX_LAYERS)
    # reference: layer_types default 5 sliding : 1 full; the last layer is forced to full attention
    if tc.get("layer_types") is not None and not isinstance(tc["layer_types"], list):
        raise ConversionError(f"{cfg_path}: text_config.layer_types must be a list of layer type names")
    layer_types = list(tc.get("layer_types") or [
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layer)])
    if len(layer_types) != n_layer:
        raise ConversionError(f"{cfg_path}: layer_types has {len(layer_types)} entries for {n_layer} layers")
    bad = sorted({repr(t) for t in layer_types if t not in ("sliding_attention", "full_attention")})
    if bad:
        raise ConversionError(f"{cfg_path}: unknown layer types {bad}")
    if layer_types[-1] != "full_attention":
        logger.warning("last layer is %s; transformers forces it to full_attention, so does the converter",
                       layer_types[-1])
        layer_types[-1] = "full_attention"

    head_dim_swa = _int(_req(tc, "head_dim", cfg_path), "text_config.head_dim", cfg_path)
    n_kv_swa = _int(_req(tc, "num_key_value_heads", cfg_path), "text_config.num_key_value_heads", cfg_path)
    head_dim = [head_dim_swa] * n_layer
    n_kv = [n_kv_swa] * n_layer
    plc = tc.get("per_layer_config")
    if plc is not None and not isinstance(plc, dict):
        raise ConversionError(f"{cfg_path}: text_config.per_layer_config must be an object of layer overrides")
    if isinstance(plc, dict):
        # serialized form: {"5": {...}} or zero-padded {"05": {...}}
        for k, over in plc.items():
            try:
                il = int(k)
            except ValueError as e:
                raise ConversionError(f"{cfg_path}: per_layer_config key {k!r} is not a layer index") from e
            if not 0 <= il < n_layer or not isinstance(over, dict):
                raise ConversionError(f"{cfg_path}: per_layer_config entry {k!r} is invalid")
            head_dim[il] = _int(over.get("head_dim", head_dim[il]), f"per_layer_config[{k}].head_dim", cfg_path)
            n_kv[il] = _int(over.get("num_key_value_heads", n_kv[il]),
                            f"per_layer_config[{k}].num_key_value_heads", cfg_path)
    else:
        # the released config.json form; transformers defaults global_head_dim to 512
        g_hd = _int(_or(tc.get("global_head_dim"), 512), "text_config.global_head_dim", cfg_path)
        g_kv = tc.get("num_global_key_value_heads")
        for il, t in enumerate(layer_types):
            if t == "full_attention":
                head_dim[il] = g_hd
                if g_kv is not None:
                    n_kv[il] = _int(g_kv, "text_config.num_global_key_value_heads", cfg_path)

    rope = tc.get("rope_parameters") or {}
    full_rope = rope.get("full_attention") if isinstance(rope, dict) else None
    full_rope = full_rope or {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6}
    swa_rope = (rope.get("sliding_attention") if isinstance(rope, dict) else None) or \
        {"rope_type": "default", "rope_theta": 1e4}
    if not isinstance(rope, dict) or not isinstance(full_rope, dict) or not isinstance(swa_rope, dict):
        raise ConversionError(f"{cfg_path}: text_config.rope_parameters must map layer types to objects")
    if swa_rope.get("rope_type", "default") != "default" or swa_rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConversionError(f"{cfg_path}: sliding-layer RoPE {swa_rope} is not supported (expected default, full)")
    ftype = full_rope.get("rope_type", "default")
    if ftype not in ("proportional", "default"):
        raise ConversionError(f"{cfg_path}: full-layer rope_type {ftype!r} is not supported")

    T = "text_config."
    n_vocab = _int(_req(tc, "vocab_size", cfg_path), T + "vocab_size", cfg_path, 1, 1 << 24)
    softcap = tc.get("final_logit_softcapping", 30.0)
    params = ModelParams(
        n_layer=n_layer,
        n_embd=_int(_req(tc, "hidden_size", cfg_path), T + "hidden_size", cfg_path),
        n_ff=_int(_req(tc, "intermediate_size", cfg_path), T + "intermediate_size", cfg_path),
        n_head=_int(_req(tc, "num_attention_heads", cfg_path), T + "num_attention_heads", cfg_path),
        n_head_kv_swa=n_kv_swa,
        head_dim_swa=head_dim_swa,
        layer_types=layer_types,
        head_dim=head_dim,
        n_head_kv=n_kv,
        n_vocab=n_vocab,
        n_ctx_train=_int(_or(tc.get("max_position_embeddings"), 131072), T + "max_position_embeddings", cfg_path,
                         1, INT32_MAX),
        sliding_window=_int(_req(tc, "sliding_window", cfg_path), T + "sliding_window", cfg_path),
        rms_eps=_float(_or(tc.get("rms_norm_eps"), 1e-6), T + "rms_norm_eps", cfg_path, 0.0, 1.0),
        rope_base_full=_float(full_rope.get("rope_theta", 1e6), T + "rope_parameters.full_attention.rope_theta",
                              cfg_path, 0.0),
        rope_base_swa=_float(swa_rope.get("rope_theta", 1e4), T + "rope_parameters.sliding_attention.rope_theta",
                             cfg_path, 0.0),
        n_rot_full_pairs=0,
        # reference: a class attribute that config.json never carries; null means no softcap
        softcap=0.0 if softcap is None else _float(softcap, T + "final_logit_softcapping", cfg_path, 0.0,
                                                   lo_open=False),
        n_expert=_int(_req(tc, "num_experts", cfg_path), T + "num_experts", cfg_path, 1, 1 << 16),
        n_expert_used=_int(_req(tc, "top_k_experts", cfg_path), T + "top_k_experts", cfg_path, 1, 1 << 16),
        n_ff_expert=_int(_req(tc, "moe_intermediate_size", cfg_path), T + "moe_intermediate_size", cfg_path),
        canvas_length=_int(_or(top.get("canvas_length"), 256), "canvas_length", cfg_path, 1, MAX_CANVAS),
        bos_id=_token_id(tc.get("bos_token_id", 2), T + "bos_token_id", cfg_path, n_vocab),
        eos_id=_token_id(tc.get("eos_token_id", 1), T + "eos_token_id", cfg_path, n_vocab),
        pad_id=_token_id(tc.get("pad_token_id") if tc.get("pad_token_id") is not None else 0, T + "pad_token_id",
                         cfg_path, n_vocab),
    )
    for il in range(n_layer):
        if head_dim[il] % 2:
            raise ConversionError(f"{cfg_path}: layer {il}: head_dim {head_dim[il]} is odd; RoPE rotates pairs")
    hd_full = params.head_dim_full
    factor = _float(full_rope.get("partial_rotary_factor", 1.0), T + "rope_parameters.full_attention."
                    "partial_rotary_factor", cfg_path, 0.0, 1.0) if ftype == "proportional" else 1.0
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
    out["max_denoising_steps"] = _int(out["max_denoising_steps"], "max_denoising_steps", path, 1, MAX_STEPS)
    out["stability_threshold"] = _int(out["stability_threshold"], "stability_threshold", path, 0, MAX_STEPS)
    out["t_min"] = _float(out["t_min"], "t_min", path, 0.0, lo_open=False)
    out["t_max"] = _float(out["t_max"], "t_max", path, 0.0)
    if out["t_max"] <= out["t_min"]:
        raise ConversionError(f"{path}: t_min = {out['t_min']} and t_max = {out['t_max']}: the schedule needs "
                              "t_min < t_max")
    out["entropy_bound"] = _float(out["entropy_bound"], "entropy_bound", path, 0.0)
    out["confidence_threshold"] = _float(out["confidence_threshold"], "confidence_threshold", path, 0.0)
    return out
