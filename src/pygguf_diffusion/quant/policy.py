"""Which ggml type each tensor of a DiffusionGemma GGUF is stored in: named mixes as users know them from
llama.cpp (Q4_K_M, ...), uniform types, per-tensor-pattern overrides, and the row-length fallback.

Tensor classes (GGUF names):
  embedding       token_embd (tied: also the output layer and, transposed, the self-conditioning input)
  attn_q/k/v      attn_q, attn_k, attn_v;   attn_output
  dense_gate_up   ffn_gate, ffn_up          dense_down      ffn_down          (the dense MLP of each layer)
  expert_gate_up  ffn_gate_up_exps (or split ffn_gate_exps, ffn_up_exps)   expert_down   ffn_down_exps
  self_cond       self_cond_gate, self_cond_up, self_cond_down
  router          ffn_gate_inp.weight: always f32, as llama.cpp does (tiny, and routing is sensitive)
  vector          every 1-D tensor (norms, scales, layer scalars, rope_freqs): always f32 (the graphs'
                  element-wise ops take f32 only)
A mix gives each class a type; a few classes take more bits on the "more bits" layers (the first and last
eighth of the layers and every third in between, llama.cpp's use_more_bits rule). Overrides
(`--tensor-type PATTERN=TYPE`, PATTERN a regular expression searched in the tensor name, first match wins)
apply after the mix, to every class but the router and the vectors. A row length the chosen type's block does not divide falls back (qtypes.fitting).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from enum import Enum

from gguf import LlamaFileType as FT

from . import qtypes
from .qtypes import QType

logger = logging.getLogger(__name__)


class TensorClass(str, Enum):
    EMBEDDING = "embedding"
    ATTN_Q = "attn_q"
    ATTN_K = "attn_k"
    ATTN_V = "attn_v"
    ATTN_OUTPUT = "attn_output"
    DENSE_GATE_UP = "dense_gate_up"
    DENSE_DOWN = "dense_down"
    EXPERT_GATE_UP = "expert_gate_up"
    EXPERT_DOWN = "expert_down"
    SELF_COND = "self_cond"
    ROUTER = "router"
    VECTOR = "vector"
    OTHER = "other"


_SUFFIX_CLASS = {
    "attn_q.weight": TensorClass.ATTN_Q, "attn_k.weight": TensorClass.ATTN_K, "attn_v.weight": TensorClass.ATTN_V,
    "attn_output.weight": TensorClass.ATTN_OUTPUT,
    "ffn_gate.weight": TensorClass.DENSE_GATE_UP, "ffn_up.weight": TensorClass.DENSE_GATE_UP,
    "ffn_down.weight": TensorClass.DENSE_DOWN,
    "ffn_gate_up_exps.weight": TensorClass.EXPERT_GATE_UP, "ffn_gate_exps.weight": TensorClass.EXPERT_GATE_UP,
    "ffn_up_exps.weight": TensorClass.EXPERT_GATE_UP, "ffn_down_exps.weight": TensorClass.EXPERT_DOWN,
    "ffn_gate_inp.weight": TensorClass.ROUTER,
}


def classify(name: str, n_dims: int) -> tuple[TensorClass, int | None]:
    """(class, layer index or None) of a GGUF tensor name."""
    if n_dims <= 1:
        return TensorClass.VECTOR, None
    m = re.match(r"blk\.(\d+)\.(.+)$", name)
    if m:
        return _SUFFIX_CLASS.get(m.group(2), TensorClass.OTHER), int(m.group(1))
    if name in ("token_embd.weight", "output.weight"):
        return TensorClass.EMBEDDING, None
    if name.startswith("self_cond_") and name.endswith(".weight"):
        return TensorClass.SELF_COND, None
    return TensorClass.OTHER, None


def more_bits(layer: int, n_layer: int) -> bool:
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


C = TensorClass


@dataclass(frozen=True)
class Mix:
    name: str
    file_type: int
    base: str                                                   # every matrix class not listed below
    types: dict[TensorClass, str] = field(default_factory=dict)
    more_bits: dict[TensorClass, str] = field(default_factory=dict)  # on more-bits layers only
    summary: str = ""

    def type_for(self, cls: TensorClass, layer: int | None, n_layer: int) -> str:
        if cls in (C.VECTOR, C.ROUTER):
            return "f32"
        if layer is not None and cls in self.more_bits and more_bits(layer, n_layer):
            return self.more_bits[cls]
        return self.types.get(cls, self.base)


_DOWN = {C.DENSE_DOWN, C.EXPERT_DOWN}
MIXES: dict[str, Mix] = {m.name: m for m in [
    Mix("Q8_0", FT.MOSTLY_Q8_0, "q8_0", summary="every matrix q8_0"),
    Mix("Q6_K", FT.MOSTLY_Q6_K, "q6_K", summary="every matrix q6_K"),
    Mix("Q5_K_M", FT.MOSTLY_Q5_K_M, "q5_K", {C.EMBEDDING: "q6_K", C.ATTN_V: "q6_K"},
        {c: "q6_K" for c in _DOWN}, "q5_K; embedding and attn_v q6_K; down projections q6_K on more-bits layers"),
    Mix("Q5_K_S", FT.MOSTLY_Q5_K_S, "q5_K", {C.EMBEDDING: "q6_K"}, summary="q5_K; embedding q6_K"),
    Mix("Q4_K_M", FT.MOSTLY_Q4_K_M, "q4_K", {C.EMBEDDING: "q6_K", C.ATTN_V: "q6_K"},
        {c: "q6_K" for c in _DOWN}, "q4_K; embedding and attn_v q6_K; down projections q6_K on more-bits layers"),
    Mix("Q4_K_S", FT.MOSTLY_Q4_K_S, "q4_K", {C.EMBEDDING: "q6_K", C.ATTN_V: "q5_K"},
        {c: "q5_K" for c in _DOWN}, "q4_K; embedding q6_K; attn_v q5_K; down projections q5_K on more-bits layers"),
    Mix("Q3_K_M", FT.MOSTLY_Q3_K_M, "q3_K", {C.EMBEDDING: "q6_K", C.ATTN_V: "q5_K", C.ATTN_OUTPUT: "q4_K"},
        {c: "q4_K" for c in _DOWN},
        "q3_K; embedding q6_K; attn_v q5_K; attn_output q4_K; down projections q4_K on more-bits layers"),
    Mix("Q2_K", FT.MOSTLY_Q2_K, "q2_K",
        {C.EMBEDDING: "q6_K", C.ATTN_V: "q4_K", C.ATTN_OUTPUT: "q3_K", C.DENSE_DOWN: "q3_K", C.EXPERT_DOWN: "q3_K"},
        summary="q2_K; embedding q6_K; attn_v q4_K; attn_output and down projections q3_K"),
    # the experts are ~90% of the real model's weights: they take the 2-bit type, everything else 4-5 bits
    Mix("IQ2_XXS", FT.MOSTLY_IQ2_XXS, "q4_K",
        {C.EMBEDDING: "q5_K", C.EXPERT_GATE_UP: "iq2_xxs", C.EXPERT_DOWN: "iq2_xs"},
        {C.EXPERT_DOWN: "iq3_xxs"},
        "experts gate/up iq2_xxs, down iq2_xs (iq3_xxs on more-bits layers); embedding q5_K; the rest q4_K; "
        "needs an importance matrix"),
    Mix("IQ3_XXS", FT.MOSTLY_IQ3_XXS, "q4_K",
        {C.EMBEDDING: "q5_K", C.EXPERT_GATE_UP: "iq3_xxs", C.EXPERT_DOWN: "iq3_s"},
        summary="experts gate/up iq3_xxs, down iq3_s; embedding q5_K; the rest q4_K; needs an importance matrix"),
]}

_UNIFORM_FILE_TYPE = {
    "f32": FT.ALL_F32, "f16": FT.MOSTLY_F16, "bf16": FT.MOSTLY_BF16, "q4_0": FT.MOSTLY_Q4_0, "q4_1": FT.MOSTLY_Q4_1,
    "q5_0": FT.MOSTLY_Q5_0, "q5_1": FT.MOSTLY_Q5_1, "q8_0": FT.MOSTLY_Q8_0, "q2_K": FT.MOSTLY_Q2_K,
    "q3_K": FT.MOSTLY_Q3_K_S, "q4_K": FT.MOSTLY_Q4_K_S, "q5_K": FT.MOSTLY_Q5_K_S, "q6_K": FT.MOSTLY_Q6_K,
    "iq4_nl": FT.MOSTLY_IQ4_NL, "iq4_xs": FT.MOSTLY_IQ4_XS, "mxfp4": FT.MOSTLY_MXFP4_MOE,
    "iq2_xxs": FT.MOSTLY_IQ2_XXS, "iq2_xs": FT.MOSTLY_IQ2_XS, "iq2_s": FT.MOSTLY_IQ2_S,
    "iq3_xxs": FT.MOSTLY_IQ3_XXS, "iq3_s": FT.MOSTLY_IQ3_S, "iq1_s": FT.MOSTLY_IQ1_S, "iq1_m": FT.MOSTLY_IQ1_M,
}


def resolve_mix(key: str) -> Mix | None:
    """The mix `key` names, or None for a type. Mix names are upper case as llama.cpp spells them (Q2_K,
    Q4_K_M); a name with a lower-case letter that is also a type (q2_k, q4_K, iq2_xxs) means that type for
    every matrix. Other spellings of a mix (q4_k_m) still name the mix."""
    mix = next((m for m in MIXES.values() if m.name.lower() == key.lower()), None)
    if mix is None or key == key.upper():
        return mix
    try:
        qtypes.lookup(key)
    except KeyError:
        return mix
    return None


def target_names() -> list[str]:
    """What --outtype / dgemma-quantize accept: the mixes (upper case), then the uniform types (lower case)."""
    return list(MIXES) + [t.lower() for t in qtypes.WRITABLE]


@dataclass(frozen=True)
class Choice:
    qtype: QType
    cls: TensorClass
    reason: str | None      # why it is not what the mix asked for (fallback, override), or None


class Policy:
    """A mix or uniform type plus overrides: choose(name, n_dims, n_per_row) -> Choice."""

    def __init__(self, target: str, n_layer: int, overrides: list[tuple[str, str]] | None = None) -> None:
        key = target.strip()
        mix = resolve_mix(key)
        if mix is None:
            try:
                q = qtypes.lookup(key)
            except KeyError:
                raise ValueError(f"unsupported type or mix {target!r}; choose a mix ({', '.join(MIXES)}) or a "
                                 f"type ({', '.join(target_names()[len(MIXES):])})") from None
            mix = Mix(q.name, _UNIFORM_FILE_TYPE[q.name], q.name,
                      summary=f"every matrix {q.name}")
        self.mix = mix
        self.n_layer = n_layer
        self.overrides: list[tuple[re.Pattern[str], QType, str]] = []
        for pat, tname in overrides or []:
            try:
                rx = re.compile(pat)
            except re.error as e:
                raise ValueError(f"--tensor-type {pat}={tname}: bad pattern: {e}") from None
            try:
                self.overrides.append((rx, qtypes.lookup(tname), pat))
            except KeyError as e:
                raise ValueError(f"--tensor-type {pat}={tname}: {e.args[0]}") from None

    @property
    def name(self) -> str:
        return self.mix.name

    @property
    def file_type(self) -> int:
        return int(self.mix.file_type)

    def types_used(self) -> set[str]:
        m = self.mix
        return {m.base, *m.types.values(), *m.more_bits.values(), *(q.name for _, q, _ in self.overrides)}

    @property
    def needs_imatrix(self) -> bool:
        return any(t in qtypes.NEEDS_IMATRIX for t in self.types_used())

    def choose(self, name: str, n_dims: int, n_per_row: int) -> Choice:
        cls, layer = classify(name, n_dims)
        if cls in (C.VECTOR, C.ROUTER):  # overrides never reach them: `ffn_gate` would match ffn_gate_inp
            return Choice(qtypes.lookup("f32"), cls, None)
        want = qtypes.lookup(self.mix.type_for(cls, layer, self.n_layer))
        reason = None
        for rx, q, pat in self.overrides:
            if rx.search(name):
                want, reason = q, f"--tensor-type {pat}={q.name}"
                break
        got, why = qtypes.fitting(want, n_per_row)
        if why:
            reason = f"{reason}; {why}" if reason else why
        return Choice(got, cls, reason)


def parse_override(s: str) -> tuple[str, str]:
    """'PATTERN=TYPE' -> (pattern, type name)."""
    pat, sep, t = s.rpartition("=")
    if not sep or not pat or not t:
        raise ValueError(f"--tensor-type {s!r}: expected PATTERN=TYPE, e.g. 'ffn_down_exps=q6_K'")
    return pat, t
