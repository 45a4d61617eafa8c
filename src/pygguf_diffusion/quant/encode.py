"""Tensor data through ggml's quantizer, in bounded chunks of whole rows.

An expert tensor (ne0 x ne1 x n_expert) is n_expert matrices; with an importance matrix each expert has
its own row of importances, so chunks never straddle two matrices."""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from .. import _core
from .qtypes import QType

CHUNK_BYTES = 64 * 2**20  # float32 working set per chunk


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def chunks(n_rows: int, rows_per_matrix: int, n_per_row: int,
           chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int, int]]:
    """(first row, end row, matrix index) of chunks of at most chunk_bytes of float32, within one matrix."""
    step = max(1, min(rows_per_matrix, chunk_bytes // (4 * n_per_row)))
    for m0 in range(0, n_rows, rows_per_matrix):
        m1 = min(n_rows, m0 + rows_per_matrix)
        for r0 in range(m0, m1, step):
            yield r0, min(m1, r0 + step), m0 // rows_per_matrix


def encode_rows(rows: np.ndarray, q: QType, importance: np.ndarray | None = None,
                n_threads: int = 1) -> np.ndarray:
    """float32 rows (n, n_per_row) -> q's bytes (uint8), by ggml's routine for q."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if q.name == "f32":
        return rows.reshape(-1).view(np.uint8)
    imp = None if importance is None or not q.is_quantized else np.ascontiguousarray(importance, np.float32)
    return _core.quantize(q.id, rows, imp, n_threads)


def decode_rows(data: np.ndarray, q: QType, n_rows: int, n_per_row: int, n_threads: int = 1) -> np.ndarray:
    """q's bytes -> float32 rows (n_rows, n_per_row)."""
    if q.name == "f32":
        return np.frombuffer(data, dtype=np.float32, count=n_rows * n_per_row).reshape(n_rows, n_per_row)
    return _core.dequantize(q.id, np.frombuffer(data, dtype=np.uint8), n_rows, n_per_row, n_threads)
