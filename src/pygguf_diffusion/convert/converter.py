"""HF DiffusionGemma checkpoint -> GGUF, streamed tensor by tensor into a temporary file that is renamed
into place only when complete."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, GGUFWriter

from .._progress import progress_bar
from .. import _core
from .._core import EngineError
from ..atomic_output import atomic_output
from ..quant.encode import chunks, default_threads, encode_rows
from ..quant.imatrix import Imatrix, importance_for, load_for
from ..quant.policy import Policy, TensorClass
from ..quant.qtypes import QType
from ..quant.summary import WriteSummary
from . import tensor_map
from .errors import ConversionError
from .hf_config import ModelParams, load_params
from .safetensors_reader import TensorRef, index_checkpoint
from .vocab import load_vocab

logger = logging.getLogger(__name__)

ARCH = "diffusion-gemma"
_ARRAY, _INT32, _BOOL, _STRING, _FLOAT32 = (GGUFValueType.ARRAY, GGUFValueType.INT32, GGUFValueType.BOOL,
                                            GGUFValueType.STRING, GGUFValueType.FLOAT32)


@dataclass(frozen=True)
class _Planned:
    name: str
    shape: tuple[int, ...]  # numpy order
    qtype: QType
    cls: TensorClass
    reason: str | None        # why qtype is not what the mix asked for
    importance: np.ndarray | None  # (n_mat, row length) from the importance matrix
    source: TensorRef | None  # None: generated (rope_freqs)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64)) * self.qtype.row_bytes(self.shape[-1])


def _write_metadata(w: GGUFWriter, p: ModelParams, policy: Policy, name: str, model_dir: Path) -> None:
    A = ARCH
    w.add_string("general.name", name)
    w.add_uint32("general.file_type", policy.file_type)
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32(f"{A}.block_count", p.n_layer)
    w.add_uint32(f"{A}.context_length", p.n_ctx_train)
    w.add_uint32(f"{A}.embedding_length", p.n_embd)
    w.add_uint32(f"{A}.feed_forward_length", p.n_ff)
    w.add_uint32(f"{A}.attention.head_count", p.n_head)
    w.add_key_value(f"{A}.attention.head_count_kv", list(p.n_head_kv), _ARRAY, _INT32)
    w.add_uint32(f"{A}.attention.key_length", p.head_dim_full)
    w.add_uint32(f"{A}.attention.value_length", p.head_dim_full)
    w.add_uint32(f"{A}.attention.key_length_swa", p.head_dim_swa)
    w.add_uint32(f"{A}.attention.value_length_swa", p.head_dim_swa)
    w.add_uint32(f"{A}.attention.sliding_window", p.sliding_window)
    w.add_key_value(f"{A}.attention.sliding_window_pattern", [p.is_swa(i) for i in range(p.n_layer)], _ARRAY,
                    _BOOL)
    w.add_float32(f"{A}.attention.layer_norm_rms_epsilon", p.rms_eps)
    w.add_bool(f"{A}.attention.causal", False)
    w.add_uint32(f"{A}.attention.shared_kv_layers", 0)
    w.add_uint32(f"{A}.embedding_length_per_layer_input", 0)
    w.add_float32(f"{A}.rope.freq_base", p.rope_base_full)
    w.add_float32(f"{A}.rope.freq_base_swa", p.rope_base_swa)
    w.add_uint32(f"{A}.rope.dimension_count", p.head_dim_full)
    w.add_uint32(f"{A}.rope.dimension_count_swa", p.head_dim_swa)
    w.add_float32(f"{A}.final_logit_softcapping", p.softcap)
    w.add_uint32(f"{A}.expert_count", p.n_expert)
    w.add_uint32(f"{A}.expert_used_count", p.n_expert_used)
    w.add_uint32(f"{A}.expert_feed_forward_length", p.n_ff_expert)
    s = p.sampler
    w.add_uint32("diffusion.canvas_length", p.canvas_length)
    w.add_uint32("diffusion.eb_max_steps", s["max_denoising_steps"])
    w.add_float32("diffusion.eb_t_min", s["t_min"])
    w.add_float32("diffusion.eb_t_max", s["t_max"])
    w.add_float32("diffusion.eb_entropy_bound", s["entropy_bound"])
    w.add_uint32("diffusion.eb_stability_threshold", s["stability_threshold"])
    w.add_float32("diffusion.eb_confidence_threshold", s["confidence_threshold"])

    v = load_vocab(model_dir, p.n_vocab)
    w.add_string("tokenizer.ggml.model", "gemma4")
    w.add_key_value("tokenizer.ggml.tokens", v.tokens, _ARRAY, _STRING)
    w.add_key_value("tokenizer.ggml.scores", v.scores, _ARRAY, _FLOAT32)
    w.add_key_value("tokenizer.ggml.token_type", v.types, _ARRAY, _INT32)
    if v.merges:
        w.add_key_value("tokenizer.ggml.merges", v.merges, _ARRAY, _STRING)
    else:
        logger.warning("tokenizer.json has no merges; the GGUF tokenizer will fall back to bytes")
    w.add_uint32("tokenizer.ggml.bos_token_id", p.bos_id)
    w.add_uint32("tokenizer.ggml.eos_token_id", p.eos_id)
    w.add_uint32("tokenizer.ggml.padding_token_id", p.pad_id)
    if v.unk_id is not None:
        w.add_uint32("tokenizer.ggml.unknown_token_id", v.unk_id)
    if v.mask_id is not None:
        w.add_uint32("tokenizer.ggml.mask_token_id", v.mask_id)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_space_prefix", False)
    if v.chat_template:
        w.add_string("tokenizer.chat_template", v.chat_template)
    else:
        logger.warning("%s: no chat template found (chat_template.jinja or tokenizer_config.json)", model_dir)


def _plan(p: ModelParams, refs: dict[str, TensorRef], policy: Policy, model_dir: Path,
          imatrix: Imatrix | None) -> list[_Planned]:
    expected = tensor_map.expected_tensors(p)
    found: dict[str, TensorRef] = {}
    unknown: list[str] = []
    for hf_name, ref in refs.items():
        try:
            g = tensor_map.gguf_name(hf_name)
        except KeyError:
            unknown.append(hf_name)
            continue
        if g is None:
            continue
        if g not in expected:
            raise ConversionError(f"{model_dir}: tensor {hf_name!r} -> {g!r} is not expected by config.json "
                                  "(a layer beyond num_hidden_layers, or v_proj on a full-attention layer?)")
        found[g] = ref
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ConversionError(f"{model_dir}: unrecognised tensors {unknown[:5]}{more}; not a DiffusionGemma "
                              "checkpoint, or a newer layout than this converter knows")
    missing = [n for n in expected if n not in found and n != tensor_map.ROPE_FREQS]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ConversionError(f"{model_dir}: missing tensors for {missing[:5]}{more}; the checkpoint is "
                              "incomplete (re-download it) or does not match config.json")
    plan: list[_Planned] = []
    for name, spec in expected.items():
        ref = found.get(name)
        if ref is not None and tuple(ref.shape) != spec.shape:
            raise ConversionError(f"{ref.file}: tensor {ref.name!r} has shape {list(ref.shape)}, expected "
                                  f"{list(spec.shape)} from config.json")
        c = policy.choose(name, len(spec.shape), spec.shape[-1])  # the policy keeps vectors and the router f32
        try:
            importance = importance_for(imatrix, name, spec.shape, c.qtype, policy.name)
        except ValueError as e:
            raise ConversionError(str(e)) from None
        plan.append(_Planned(name, spec.shape, c.qtype, c.cls, c.reason, importance, ref))
    return plan


def _pad(f, align: int) -> None:
    pad = (-f.tell()) % align
    if pad:
        f.write(b"\0" * pad)


def _write_tensor(f, t: _Planned, data: np.ndarray | None, n_threads: int, progress: Callable[[int], None]) -> None:
    ncol = t.shape[-1]
    if data is not None:  # generated
        f.write(encode_rows(data.reshape(-1, ncol), t.qtype, None, n_threads))
        progress(int(np.prod(t.shape)))
        return
    ref = t.source
    assert ref is not None
    importance = t.importance
    rows_per_matrix = t.shape[-2] if len(t.shape) == 3 else ref.n_rows
    for r0, r1, m in chunks(ref.n_rows, rows_per_matrix, ncol):
        rows = ref.read_f32(r0, r1)
        f.write(encode_rows(rows, t.qtype, None if importance is None else importance[m], n_threads))
        progress(rows.size)


def _refuse_an_input_as_output(outfile: Path, model_dir: Path, refs: dict[str, TensorRef]) -> None:
    """--force overwrites an earlier output, never what this run reads (a shard, config.json, a tokenizer
    file): replacing it would destroy the checkpoint the conversion needs."""
    if not outfile.exists():
        return
    inputs = {r.file for r in refs.values()} | {f for f in model_dir.iterdir() if f.is_file() and f.suffix != ".gguf"}
    for f in inputs:
        if os.path.samefile(outfile, f):
            raise ConversionError(f"{outfile}: is one of the checkpoint's own files ({f.name}); choose another "
                                  "--outfile")


def convert(model_dir: str | os.PathLike[str], outfile: str | os.PathLike[str] | None = None,
            outtype: str = "bf16", *, force: bool = False, progress: bool = False,
            name: str | None = None, tensor_types: list[tuple[str, str]] | None = None,
            imatrix: str | os.PathLike[str] | None = None, n_threads: int | None = None,
            report: Callable[[WriteSummary], None] | None = None) -> Path:
    """Convert a Hugging Face DiffusionGemma checkpoint directory into a GGUF file and return its path.

    outtype: a uniform type (f32, f16, bf16, q8_0, q4_k, iq4_xs, ...) or a mix (Q4_K_M, ...; see
    pygguf_diffusion.quant.policy); tensor_types: (pattern, type) overrides; imatrix: an importance matrix
    GGUF (needed by the IQ2/IQ3 types). Memory stays bounded by a chunk of rows, whatever the model size.
    The output appears only when complete; an error or interruption leaves no partial file. report, if
    given, receives the closing summary (size, bits per weight, types per tensor class, fallbacks).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConversionError(f"{model_dir}: not a directory; pass a Hugging Face checkpoint directory")
    p = load_params(model_dir)
    try:
        policy = Policy(str(outtype), p.n_layer, tensor_types)
    except ValueError as e:
        raise ConversionError(f"--outtype {outtype}: {e}") from None
    try:
        imat = load_for(imatrix, policy)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    if outfile is None:
        outfile = model_dir / f"{model_dir.name}-{policy.name.upper()}.gguf"
    outfile = Path(outfile)
    if outfile.exists() and not force:
        raise ConversionError(f"{outfile}: already exists; pass --force to overwrite it")
    refs = index_checkpoint(model_dir)
    _refuse_an_input_as_output(outfile, model_dir, refs)
    plan = _plan(p, refs, policy, model_dir, imat)
    total = sum(int(np.prod(t.shape)) for t in plan)
    threads = n_threads or default_threads()

    summary = WriteSummary(path=str(outfile), target=policy.name)
    with atomic_output(outfile, force, ConversionError) as tmp:
        w = GGUFWriter(tmp, ARCH)
        _write_metadata(w, p, policy, name or model_dir.name, model_dir)
        for t in plan:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes,
                              raw_dtype=GGMLQuantizationType(t.qtype.id))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        f = w.fout[0]
        bar = progress_bar(total, progress, "converting")
        for t in plan:
            _pad(f, GGUF_DEFAULT_ALIGNMENT)
            generated = np.asarray(tensor_map.rope_freqs(p), dtype=np.float32) if t.source is None else None
            try:
                _write_tensor(f, t, generated, threads, bar.update)
            except EngineError as e:  # the quantizer's refusals (non-finite values, out of range)
                raise ConversionError(f"tensor {t.name} ({t.source.name if t.source else 'generated'}): "
                                      f"{e}") from None
            summary.add(t.name, t.cls, t.qtype.name, int(np.prod(t.shape)), t.nbytes, t.reason)
        _pad(f, GGUF_DEFAULT_ALIGNMENT)
        w.close()
        bar.close()
        # the engine reads the file before it takes the output's name: a config the checks above let
        # through but the engine refuses leaves no file behind (metadata only: a second, not a re-read)
        try:
            _core.inspect_gguf(str(tmp))
        except EngineError as e:
            raise ConversionError(f"the engine rejects the converted file: {e}; the checkpoint's config has a "
                                  "value DiffusionGemma cannot run") from None
    return summary.finish(outfile, report)
