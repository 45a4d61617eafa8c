"""GGUF -> GGUF requantization (dgemma-quantize): every tensor decoded by ggml and encoded again in the
type the policy chooses, streamed in bounded chunks into a temporary file renamed into place when done.
Metadata is copied byte for byte (gguf_raw: no per-string objects for a 262,144-token vocabulary), except
general.file_type, general.quantization_version and (with an importance matrix) llama-quantize's
quantize.imatrix.* keys, which are set."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._progress import progress_bar
from .._core import EngineError
from ..atomic_output import atomic_output
from ..gguf_info import inspect_gguf
from . import gguf_raw, qtypes
from .encode import chunks, decode_rows, default_threads, encode_rows
from .imatrix import Imatrix, importance_for, load_for
from .policy import Policy
from .summary import WriteSummary

logger = logging.getLogger(__name__)

LOSSLESS_SOURCES = ("f32", "f16", "bf16")
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION


class QuantizeError(Exception):
    """A requantization that cannot be done as asked; the message says why and what to do."""


def requantize(src: str | os.PathLike[str], dst: str | os.PathLike[str], target: str, *,
               tensor_types: list[tuple[str, str]] | None = None, imatrix: str | os.PathLike[str] | None = None,
               allow_requantize: bool = False, force: bool = False, n_threads: int | None = None,
               progress: bool = False, report: Callable[[WriteSummary], None] | None = None) -> Path:
    """Requantize the DiffusionGemma GGUF `src` into `dst` as `target` (a mix such as Q4_K_M or a type)."""
    src, dst = Path(src), Path(dst)
    info = inspect_gguf(src)  # the engine's schema check: a foreign or broken file fails here, named
    if dst.exists() and os.path.samefile(src, dst):
        raise QuantizeError(f"{dst}: is the input file; choose another output path")
    try:
        policy = Policy(target, info.hparams["n_layer"], tensor_types)
    except ValueError as e:
        raise QuantizeError(str(e)) from None
    try:
        imat = load_for(imatrix, policy)
    except ValueError as e:
        raise QuantizeError(str(e)) from None
    try:
        r = gguf_raw.RawGGUF(src)
    except gguf_raw.RawGGUFError as e:
        raise QuantizeError(str(e)) from None
    try:
        return _requantize(r, src, dst, policy, imat, allow_requantize, force,
                           n_threads or default_threads(), progress, report)
    finally:
        r.close()


def _requantize(r: gguf_raw.RawGGUF, src: Path, dst: Path, policy: Policy, imat: Imatrix | None,
                allow_requantize: bool, force: bool, threads: int,
                progress: bool, report: Callable[[WriteSummary], None] | None) -> Path:
    lossy = sorted({qtypes.by_id(t.type_id).name for t in r.tensors if qtypes.by_id(t.type_id).is_quantized})
    if lossy and not allow_requantize:
        raise QuantizeError(f"{src}: is already quantized ({', '.join(lossy)}); quantizing it again adds the "
                            "errors of both: start from the bf16/f16/f32 file, or pass --allow-requantize")
    plan = []
    offset = 0
    for t in r.tensors:
        shape = t.shape
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        c = policy.choose(t.name, len(shape), shape[-1])
        try:
            importance = importance_for(imat, t.name, shape, c.qtype, policy.name)
        except ValueError as e:
            raise QuantizeError(str(e)) from None
        nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * c.qtype.row_bytes(shape[-1])
        offset += -offset % r.alignment
        plan.append((t, shape, c, importance, offset))
        offset += nbytes

    summary = WriteSummary(path=str(dst), target=policy.name)
    total = sum(int(np.prod(shape)) for _, shape, _, _, _ in plan)
    kept, added = _metadata(r, policy, imat)
    with atomic_output(dst, force, QuantizeError) as tmp, open(tmp, "wb") as f:
        f.write(gguf_raw.header(r.version, len(plan), len(kept) + len(added)))
        for kv in kept:
            f.write(r.kv_bytes(kv))
        for b in added:
            f.write(b)
        for t, _, c, _, off in plan:
            f.write(gguf_raw.tensor_info(t.name, t.ne, c.qtype.id, off))
        f.write(b"\0" * (-f.tell() % r.alignment))
        data_start = f.tell()
        bar = progress_bar(total, progress, "quantizing")
        for t, shape, c, importance, off in plan:
            f.write(b"\0" * (data_start + off - f.tell()))
            try:
                n = _write_tensor(f, r, t, shape, c.qtype, importance, threads, bar.update)
            except EngineError as e:  # the quantizer's refusals (non-finite values, out of range)
                raise QuantizeError(f"tensor {t.name}: {e}") from None
            summary.add(t.name, c.cls, c.qtype.name, int(np.prod(shape)), n, c.reason)
        f.write(b"\0" * (-(f.tell() - data_start) % r.alignment))
        bar.close()
    return summary.finish(dst, report)


def _write_tensor(f, r: gguf_raw.RawGGUF, t: gguf_raw.RawTensor, shape: tuple[int, ...], q: qtypes.QType,
                  importance: np.ndarray | None, threads: int, progress: Callable[[int], None]) -> int:
    sq = qtypes.by_id(t.type_id)
    ncol = shape[-1]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64))
    src_row = sq.row_bytes(ncol)
    raw = r.tensor_data(t, n_rows * src_row)
    if sq.id == q.id:  # same type: the bytes as they are (no second rounding)
        for r0 in range(0, raw.size, 64 * 2**20):
            f.write(raw[r0:r0 + 64 * 2**20])
        progress(n_rows * ncol)
        return raw.size
    rows_per_matrix = shape[-2] if len(shape) == 3 else n_rows
    written = 0
    for r0, r1, m in chunks(n_rows, rows_per_matrix, ncol):
        rows = decode_rows(raw[r0 * src_row:r1 * src_row], sq, r1 - r0, ncol, threads)
        out = encode_rows(rows, q, None if importance is None else importance[m], threads)
        f.write(out)
        written += out.size
        progress(rows.size)
    return written


def _metadata(r: gguf_raw.RawGGUF, policy: Policy, imat: Imatrix | None) -> tuple[list[gguf_raw.RawKV], list[bytes]]:
    """(pairs copied as they are, new pairs encoded)."""
    replaced = {"general.file_type", "general.quantization_version", "quantize.imatrix.file",
                "quantize.imatrix.dataset", "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"}
    kept = [kv for kv in r.kvs if kv.key not in replaced]
    added = [gguf_raw.kv_u32("general.file_type", policy.file_type),
             gguf_raw.kv_u32("general.quantization_version", QUANTIZATION_VERSION)]
    if imat is not None:
        added.append(gguf_raw.kv_str("quantize.imatrix.file", os.fspath(imat.path)))
        if imat.datasets:
            added.append(gguf_raw.kv_str("quantize.imatrix.dataset", imat.datasets[0]))
        added.append(gguf_raw.kv_i32("quantize.imatrix.entries_count", len(imat.sums)))
        if imat.chunk_count:
            added.append(gguf_raw.kv_i32("quantize.imatrix.chunks_count", imat.chunk_count))
    return kept, added
