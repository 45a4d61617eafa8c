"""Importance matrices in llama.cpp's GGUF imatrix format, which `llama-quantize --imatrix` reads and
`llama-imatrix` writes:

  general.type = "imatrix"; imatrix.datasets (strings); imatrix.chunk_count, imatrix.chunk_size (u32)
  per weight W (its GGUF tensor name): "W.in_sum2" f32 [row length, n_mat] — the sum over the tokens that
  reached each matrix of the squared input activation of each column; "W.counts" f32 [1, n_mat] — those
  token counts. n_mat is 1 for a plain matrix, the number of experts for an expert tensor.

The importance of a column is in_sum2 / count (1 where a matrix saw no token), as llama-quantize does.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from ..atomic_output import atomic_output

# split and fused expert gate/up projections read the same activations
_ALIASES = {"ffn_gate_up_exps.weight": ("ffn_gate_exps.weight", "ffn_up_exps.weight"),
            "ffn_gate_exps.weight": ("ffn_gate_up_exps.weight", "ffn_up_exps.weight"),
            "ffn_up_exps.weight": ("ffn_gate_up_exps.weight", "ffn_gate_exps.weight"),
            "ffn_gate.weight": ("ffn_up.weight",), "ffn_up.weight": ("ffn_gate.weight",),
            "self_cond_gate.weight": ("self_cond_up.weight",), "self_cond_up.weight": ("self_cond_gate.weight",)}


@dataclass
class Imatrix:
    sums: dict[str, np.ndarray] = field(default_factory=dict)     # name -> (n_mat, row length) float64
    counts: dict[str, np.ndarray] = field(default_factory=dict)   # name -> (n_mat,) float64
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    path: str = ""

    def add(self, name: str, sum_sq: np.ndarray, count: np.ndarray) -> None:
        """Accumulate (n_mat, row length) squared-activation sums and (n_mat,) token counts."""
        sum_sq = np.asarray(sum_sq, np.float64).reshape(len(count), -1)
        if name in self.sums:
            self.sums[name] += sum_sq
            self.counts[name] += np.asarray(count, np.float64)
        else:
            self.sums[name] = sum_sq.copy()
            self.counts[name] = np.asarray(count, np.float64).copy()

    def _find(self, name: str) -> str | None:
        if name in self.sums:
            return name
        m = re.match(r"(blk\.\d+\.)?(.+)$", name)
        assert m is not None
        prefix = m.group(1) or ""
        for alt in _ALIASES.get(m.group(2), ()):
            if prefix + alt in self.sums:
                return prefix + alt
        return None

    def for_tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """(n_mat, row length) float32 importances for a tensor of numpy shape `shape`, or None if absent."""
        key = self._find(name)
        if key is None:
            return None
        s, c = self.sums[key], self.counts[key]
        n_mat = shape[0] if len(shape) == 3 else 1
        if s.shape[1] != shape[-1]:
            raise ValueError(f"{self.path}: '{key}' has rows of {s.shape[1]}, the tensor {name} rows of {shape[-1]}")
        if s.shape[0] == 1 and n_mat > 1:
            s, c = np.repeat(s, n_mat, 0), np.repeat(c, n_mat)
        if s.shape[0] != n_mat:
            raise ValueError(f"{self.path}: '{key}' has {s.shape[0]} matrices, the tensor {name} {n_mat}")
        with np.errstate(invalid="ignore", divide="ignore"):
            imp = np.where(c[:, None] > 0, s / np.maximum(c[:, None], 1e-30), 1.0)
        return imp.astype(np.float32)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Imatrix:
        path = os.fspath(path)
        try:
            r = GGUFReader(path)
        except (ValueError, OSError) as e:
            raise ValueError(f"not a GGUF imatrix file ({e}); the legacy .dat format is not read: convert it "
                             "with llama.cpp's llama-imatrix --output-format gguf") from None
        gtype = r.fields.get("general.type")
        if gtype is None or gtype.contents() != "imatrix":
            raise ValueError("not an importance matrix (general.type is not 'imatrix')")
        im = cls(path=path)
        ds = r.fields.get("imatrix.datasets")
        im.datasets = list(ds.contents()) if ds is not None else []
        for key, attr in (("imatrix.chunk_count", "chunk_count"), ("imatrix.chunk_size", "chunk_size")):
            f = r.fields.get(key)
            setattr(im, attr, int(f.contents()) if f is not None else 0)
        tensors = {t.name: t for t in r.tensors}
        for tname, t in tensors.items():
            if not tname.endswith(".in_sum2"):
                continue
            name = tname[: -len(".in_sum2")]
            ct = tensors.get(name + ".counts")
            if ct is None:
                raise ValueError(f"'{tname}' has no '{name}.counts'")
            if t.tensor_type.name != "F32" or ct.tensor_type.name != "F32":
                raise ValueError(f"'{tname}': importance data must be f32")
            n_mat = int(t.shape[1]) if len(t.shape) > 1 else 1
            sums = np.array(t.data, dtype=np.float64).reshape(n_mat, int(t.shape[0]))
            counts = np.array(ct.data, dtype=np.float64).reshape(-1)
            if counts.size != n_mat or not np.all(np.isfinite(sums)) or np.any(counts < 0):
                raise ValueError(f"'{tname}': {n_mat} matrices but {counts.size} counts, or non-finite data")
            im.sums[name], im.counts[name] = sums, counts
        if not im.sums:
            raise ValueError("holds no importance data")
        return im

    def save(self, path: str | os.PathLike[str], force: bool = True) -> Path:
        out = Path(path)
        with atomic_output(out, force, ValueError) as tmp:
            w = GGUFWriter(tmp, arch="imatrix")
            w.add_string("general.type", "imatrix")
            w.add_key_value("imatrix.datasets", list(self.datasets), GGUFValueType.ARRAY, GGUFValueType.STRING)
            w.add_uint32("imatrix.chunk_count", int(self.chunk_count))
            w.add_uint32("imatrix.chunk_size", int(self.chunk_size))
            for name in sorted(self.sums):
                w.add_tensor(name + ".in_sum2", self.sums[name].astype(np.float32))
                w.add_tensor(name + ".counts", self.counts[name].astype(np.float32).reshape(-1, 1))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
        return out


def load_for(path: str | os.PathLike[str] | None, policy) -> Imatrix | None:
    """The importance matrix a conversion or requantization to `policy` uses (None without one); raises
    ValueError, saying what to do, when it cannot be read or the policy needs one and none was given."""
    from .qtypes import NEEDS_IMATRIX

    if path is None:
        if policy.needs_imatrix:
            need = ", ".join(sorted(t for t in policy.types_used() if t in NEEDS_IMATRIX))
            raise ValueError(f"{policy.name} needs an importance matrix (types {need}); make one with "
                             "dgemma-imatrix and pass --imatrix")
        return None
    try:
        return Imatrix.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the importance matrix: {e}") from None


def importance_for(imat: Imatrix | None, name: str, shape: tuple[int, ...], qtype, target: str) -> np.ndarray | None:
    """The (n_mat, row length) importances for tensor `name` stored as `qtype`, or None when there is none
    to use; raises ValueError when the matrix belongs to another model or lacks a tensor the type needs."""
    from .qtypes import NEEDS_IMATRIX

    if imat is None or not qtype.is_quantized:
        if qtype.name in NEEDS_IMATRIX:
            raise ValueError(f"{name}: {qtype.name} needs an importance matrix; pass --imatrix")
        return None
    try:
        imp = imat.for_tensor(name, shape)
    except ValueError as e:
        raise ValueError(f"{e}; the importance matrix belongs to another model") from None
    if imp is None and qtype.name in NEEDS_IMATRIX:
        raise ValueError(f"{imat.path}: has no data for {name}, which {target} stores as {qtype.name}; compute the "
                         "matrix with this model's dgemma-imatrix")
    return imp
