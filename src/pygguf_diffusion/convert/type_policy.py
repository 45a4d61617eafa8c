"""Which ggml type each tensor is stored in, and the numpy encoders for those types.

Policy: vectors (norms, scales, layer scalars, rope_freqs) and the router stay f32 whatever the output
type; matrices take the requested type when their rows fit its block size, else f16 (llama.cpp's rule).
Later quantized types (k-quants via ggml's quantizer) plug in as further OutType entries.
"""
from __future__ import annotations

import logging
from enum import Enum

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants as gq

logger = logging.getLogger(__name__)

T = GGMLQuantizationType


class OutType(str, Enum):
    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    Q8_0 = "q8_0"

    @property
    def matrix_type(self) -> GGMLQuantizationType:
        return {OutType.F32: T.F32, OutType.F16: T.F16, OutType.BF16: T.BF16, OutType.Q8_0: T.Q8_0}[self]

    @property
    def file_type(self) -> int:
        return int({OutType.F32: LlamaFileType.ALL_F32, OutType.F16: LlamaFileType.MOSTLY_F16,
                    OutType.BF16: LlamaFileType.MOSTLY_BF16, OutType.Q8_0: LlamaFileType.MOSTLY_Q8_0}[self])


def choose_type(name: str, shape: tuple[int, ...], vector: bool, out: OutType) -> GGMLQuantizationType:
    if vector:
        return T.F32
    want = out.matrix_type
    block, _ = GGML_QUANT_SIZES[want]
    if shape[-1] % block:
        logger.info("%s: row length %d is not a multiple of %s's block %d; storing f16", name, shape[-1],
                    want.name, block)
        return T.F16
    return want


def nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    return n // block * size


def encode(rows_f32: np.ndarray, qtype: GGMLQuantizationType) -> bytes:
    """Encode a 2-D float32 block of whole rows into qtype's byte layout."""
    if qtype == T.F32:
        return np.ascontiguousarray(rows_f32, dtype="<f4").tobytes()
    if qtype == T.F16:
        return np.ascontiguousarray(rows_f32.astype("<f2")).tobytes()
    return np.ascontiguousarray(gq.quantize(rows_f32, qtype)).tobytes()
