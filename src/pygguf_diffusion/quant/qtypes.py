"""The ggml weight types, as this build's ggml describes them (`_core.quant_types()`), and the fallback used
when a tensor's rows do not fit a type's block.

A k-quant block holds 256 values; DiffusionGemma's expert FFN rows are 704 long and the dense MLP's down
rows 2112: neither is a multiple of 256. Such a tensor takes the first type of the requested type's
fallback chain whose block divides the row (same idea as llama.cpp's): 2- and 3-bit types go to iq4_nl,
q4_K to q5_0, q5_K to q5_1, q6_K to q8_0, and anything else to f16.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .. import _core


@dataclass(frozen=True)
class QType:
    id: int
    name: str           # ggml's spelling: q4_K, iq2_xxs, bf16
    block_size: int
    type_size: int
    is_quantized: bool
    can_quantize: bool
    can_dequantize: bool

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_per_row: int) -> int:
        return n_per_row // self.block_size * self.type_size

    def fits(self, n_per_row: int) -> bool:
        return n_per_row % self.block_size == 0


# Types a file of ours may be written in. Ternary (tq*) and 1-/2-bit experimental (q1_0, q2_0) types are
# known to ggml but no published model uses them; nvfp4 has no CPU kernels in every build.
WRITABLE = ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
            "iq4_nl", "iq4_xs", "mxfp4", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m")
# Types whose quality without an importance matrix is poor enough that we refuse them without one (ggml
# itself refuses only iq2_xxs, iq2_xs and iq1_s).
NEEDS_IMATRIX = ("iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m")

_FALLBACK = {
    "q2_K": "iq4_nl", "q3_K": "iq4_nl", "iq2_xxs": "iq4_nl", "iq2_xs": "iq4_nl", "iq2_s": "iq4_nl",
    "iq3_xxs": "iq4_nl", "iq3_s": "iq4_nl", "iq1_s": "iq4_nl", "iq1_m": "iq4_nl", "iq4_xs": "iq4_nl",
    "q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0",
}


@lru_cache(maxsize=1)
def _table() -> dict[str, QType]:
    return {d["name"]: QType(d["id"], d["name"], d["block_size"], d["type_size"], d["is_quantized"],
                             d["can_quantize"], d["can_dequantize"]) for d in _core.quant_types()}


def all_types() -> dict[str, QType]:
    """Every type ggml knows, by ggml's name."""
    return dict(_table())


def by_id(type_id: int) -> QType:
    for q in _table().values():
        if q.id == type_id:
            return q
    raise KeyError(f"unknown ggml type id {type_id}")


def lookup(name: str) -> QType:
    """A writable type by name, case-insensitive (q4_k, Q4_K, q4_K)."""
    for n in WRITABLE:
        if n.lower() == name.lower():
            return _table()[n]
    raise KeyError(f"unknown weight type {name!r}; types: {', '.join(t.lower() for t in WRITABLE)}")


def fitting(q: QType, n_per_row: int) -> tuple[QType, str | None]:
    """q, or the first type of its fallback chain whose block divides n_per_row, with the reason."""
    t = q
    while not t.fits(n_per_row):
        nxt = _FALLBACK.get(t.name, "f16")
        t = _table()[nxt]
    if t is q:
        return q, None
    return t, (f"rows of {n_per_row} are not a multiple of {q.name}'s block of {q.block_size}; "
               f"{t.name} instead")
