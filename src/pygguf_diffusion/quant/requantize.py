"""GGUF -> GGUF requantization (dgemma-quantize): every tensor decoded by ggml and encoded again in the
type the policy chooses, streamed in bounded chunks into a temporary file renamed into place when done.
Metadata is copied; general.file_type, general.quantization_version and (with an importance matrix)
llama-quantize's quantize.imatrix.* keys are set."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from .._progress import progress_bar
from ..atomic_output import atomic_output
from ..gguf_info import inspect_gguf
from . import qtypes
from .encode import chunks, decode_rows, default_threads, encode_rows
from .imatrix import Imatrix
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
    imat = None
    if imatrix is not None:
        try:
            imat = Imatrix.load(imatrix)
        except (OSError, ValueError) as e:
            raise QuantizeError(f"{imatrix}: cannot read the importance matrix: {e}") from None
    elif policy.needs_imatrix:
        raise QuantizeError(f"{policy.name} needs an importance matrix (types "
                            f"{', '.join(sorted(t for t in policy.types_used() if t in qtypes.NEEDS_IMATRIX))}); "
                            "make one with dgemma-imatrix and pass --imatrix")
    r = GGUFReader(src)
    lossy = sorted({t.tensor_type.name.lower() for t in r.tensors
                    if qtypes.by_id(int(t.tensor_type)).is_quantized})
    if lossy and not allow_requantize:
        raise QuantizeError(f"{src}: is already quantized ({', '.join(lossy)}); quantizing it again adds the "
                            "errors of both: start from the bf16/f16/f32 file, or pass --allow-requantize")
    threads = n_threads or default_threads()

    plan = []
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        c = policy.choose(t.name, len(shape), shape[-1])
        if imat is None and c.qtype.name in qtypes.NEEDS_IMATRIX:
            raise QuantizeError(f"{t.name}: {c.qtype.name} needs an importance matrix; pass --imatrix")
        importance = None
        if imat is not None and c.qtype.is_quantized:
            try:
                importance = imat.for_tensor(t.name, shape)
            except ValueError as e:
                raise QuantizeError(str(e)) from None
            if importance is None and c.qtype.name in qtypes.NEEDS_IMATRIX:
                raise QuantizeError(f"{imatrix}: has no data for {t.name}, which {policy.name} stores as "
                                    f"{c.qtype.name}; compute the matrix with this model's dgemma-imatrix")
        plan.append((t, shape, c, importance))

    summary = WriteSummary(path=str(dst), target=policy.name)
    total = sum(int(np.prod(shape)) for _, shape, _, _ in plan)
    with atomic_output(dst, force, QuantizeError) as tmp:
        w = GGUFWriter(tmp, r.fields["general.architecture"].contents())
        _copy_metadata(r, w, policy, imat)
        for t, shape, c, _ in plan:
            nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * c.qtype.row_bytes(shape[-1])
            w.add_tensor_info(t.name, shape, np.dtype(np.float32), nbytes, raw_dtype=GGMLQuantizationType(c.qtype.id))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        f = w.fout[0]
        bar = progress_bar(total, progress, "quantizing")
        for t, shape, c, importance in plan:
            f.write(b"\0" * ((-f.tell()) % GGUF_DEFAULT_ALIGNMENT))
            n = _write_tensor(f, t, shape, c.qtype, importance, threads, bar.update)
            summary.add(t.name, c.cls, c.qtype.name, int(np.prod(shape)), n, c.reason)
        f.write(b"\0" * ((-f.tell()) % GGUF_DEFAULT_ALIGNMENT))
        w.close()
        bar.close()
    summary.file_bytes = dst.stat().st_size
    logger.info("%s", summary.text())
    if report is not None:
        report(summary)
    return dst


def _write_tensor(f, t, shape: tuple[int, ...], q: qtypes.QType, importance: np.ndarray | None, threads: int,
                  progress: Callable[[int], None]) -> int:
    sq = qtypes.by_id(int(t.tensor_type))
    ncol = shape[-1]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64))
    raw = np.asarray(t.data).reshape(-1).view(np.uint8)
    if sq.id == q.id:  # same type: the bytes as they are (no second rounding)
        f.write(raw.tobytes())
        progress(n_rows * ncol)
        return raw.size
    src_row = sq.row_bytes(ncol)
    rows_per_matrix = shape[-2] if len(shape) == 3 else n_rows
    written = 0
    for r0, r1, m in chunks(n_rows, rows_per_matrix, ncol):
        rows = decode_rows(raw[r0 * src_row:r1 * src_row], sq, r1 - r0, ncol, threads)
        out = encode_rows(rows, q, None if importance is None else importance[m], threads)
        f.write(out.tobytes())
        written += out.size
        progress(rows.size)
    return written


def _copy_metadata(r: GGUFReader, w: GGUFWriter, policy: Policy, imat: Imatrix | None) -> None:
    replaced = {"general.file_type", "general.quantization_version", "quantize.imatrix.file",
                "quantize.imatrix.dataset", "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"}
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in replaced:
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vtype, sub)
    w.add_uint32("general.file_type", policy.file_type)
    w.add_uint32("general.quantization_version", QUANTIZATION_VERSION)
    if imat is not None:
        w.add_string("quantize.imatrix.file", os.fspath(imat.path))
        if imat.datasets:
            w.add_string("quantize.imatrix.dataset", imat.datasets[0])
        w.add_int32("quantize.imatrix.entries_count", len(imat.sums))
        if imat.chunk_count:
            w.add_int32("quantize.imatrix.chunks_count", imat.chunk_count)
