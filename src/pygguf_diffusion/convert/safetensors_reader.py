"""Read safetensors checkpoints tensor by tensor through memory maps (no torch, bf16 included).

The format is an 8-byte little-endian header length, a JSON header mapping names to
{dtype, shape, data_offsets}, then the raw little-endian data.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError

# safetensors dtype -> (numpy storage dtype, bytes per element)
_DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # widened to f32 on read
    "F64": (np.dtype("<f8"), 8),
}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives; reading it maps the file, it does not load the checkpoint."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset
    nbytes: int

    def read_f32(self, row_start: int = 0, row_end: int | None = None) -> np.ndarray:
        """Rows [row_start, row_end) of the tensor viewed as 2-D (rows, last dim), as float32."""
        storage, itemsize = _DTYPES[self.dtype]
        ncol = self.shape[-1] if self.shape else 1
        nrow = self.nbytes // (itemsize * ncol) if ncol else 0
        row_end = nrow if row_end is None else min(row_end, nrow)
        count = (row_end - row_start) * ncol
        if count <= 0:
            return np.zeros((0, ncol), dtype=np.float32)
        mm = np.memmap(self.file, dtype=storage, mode="r", offset=self.start + row_start * ncol * itemsize,
                       shape=(count,))
        if self.dtype == "BF16":
            out = (mm.astype(np.uint32) << 16).view(np.float32)
        else:
            out = mm.astype(np.float32)
        del mm
        return out.reshape(row_end - row_start, ncol)

    @property
    def n_rows(self) -> int:
        ncol = self.shape[-1] if self.shape else 1
        return int(np.prod(self.shape)) // ncol if self.shape else 1


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ConversionError(f"{path}: not a safetensors file (shorter than its header)")
            (hlen,) = struct.unpack("<Q", raw)
            if hlen > size - 8 or hlen > 100 * 2**20:
                raise ConversionError(f"{path}: not a safetensors file or truncated (header length {hlen})")
            header = json.loads(f.read(hlen))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConversionError(f"{path}: cannot read safetensors header: {e}") from e
    except RecursionError:
        raise ConversionError(f"{path}: cannot read safetensors header: nested too deeply") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: malformed safetensors header")
    return header, 8 + hlen


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _shard_refs(path: Path) -> list[TensorRef]:
    """The tensors of one shard, each checked: a known dtype, a shape of non-negative integers, a byte
    range [begin, end) inside the data region that matches the shape, and no two ranges overlapping
    (safetensors' own rule; an overlap would make two tensors alias one another's bytes)."""
    header, data_start = _read_header(path)
    size = path.stat().st_size
    refs: list[TensorRef] = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(meta, dict):
            raise ConversionError(f"{path}: tensor {name!r}: malformed header entry")
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise ConversionError(f"{path}: tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(x) for x in offsets)
                and offsets[0] <= offsets[1]):
            raise ConversionError(f"{path}: tensor {name!r}: data_offsets {offsets!r} are not [begin, end] with "
                                  "0 <= begin <= end (relative to the data after the header)")
        if dtype not in _DTYPES:
            raise ConversionError(
                f"{path}: tensor {name!r} has dtype {dtype}, which the converter does not read "
                f"(supported: {', '.join(_DTYPES)}); dequantize the checkpoint to bf16/f16/f32 first")
        begin, end = offsets
        if data_start + end > size:
            raise ConversionError(f"{path}: truncated: tensor {name!r} ends at byte {data_start + end} but the "
                                  f"file has {size} bytes; download the checkpoint again")
        n = int(np.prod(shape, dtype=np.float64)) if shape else 1
        if end - begin != n * _DTYPES[dtype][1]:
            raise ConversionError(f"{path}: tensor {name!r}: {end - begin} bytes do not match shape {tuple(shape)}")
        refs.append(TensorRef(name, dtype, tuple(shape), path, data_start + begin, end - begin))
    by_start = sorted((r for r in refs if r.nbytes), key=lambda r: r.start)
    for a, b in zip(by_start, by_start[1:]):
        if b.start < a.start + a.nbytes:
            raise ConversionError(f"{path}: tensors {a.name!r} and {b.name!r} overlap (bytes {b.start - data_start}.."
                                  f"{a.start + a.nbytes - data_start} of the data); the file is corrupt")
    return refs


def index_checkpoint(model_dir: Path) -> dict[str, TensorRef]:
    """All tensors of a checkpoint directory (sharded with an index, single file, or loose shards)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            raise ConversionError(f"{index}: unreadable index ({type(e).__name__}: {e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConversionError(f"{index}: weight_map must map tensor names to shard file names")
        files = sorted(set(weight_map.values()))
        root = model_dir.resolve()
        for f in files:
            # a shard is a file of this checkpoint: never a path that leaves its directory
            if Path(f).is_absolute() or root not in (root / f).resolve().parents:
                raise ConversionError(f"{index}: shard {f!r} is outside the checkpoint directory; refusing to read it")
        missing = [f for f in files if not (model_dir / f).exists()]
        if missing:
            raise ConversionError(f"{model_dir}: shards listed in {index.name} are missing: {', '.join(missing)}")
        paths = [model_dir / f for f in files]
    else:
        paths = sorted(model_dir.glob("*.safetensors"))
        if not paths:
            raise ConversionError(f"{model_dir}: no *.safetensors weights found; expected model.safetensors or "
                                  "shards with model.safetensors.index.json")
    refs: dict[str, TensorRef] = {}
    for p in paths:
        if not os.access(p, os.R_OK):
            raise ConversionError(f"{p}: not readable")
        for ref in _shard_refs(p):
            if ref.name in refs:
                raise ConversionError(f"{model_dir}: tensor {ref.name!r} is in both {refs[ref.name].file.name} and "
                                      f"{p.name}; the checkpoint is inconsistent")
            refs[ref.name] = ref
    return refs
