"""Engine side of loading: the C++ loader accepts converted (and published-style) files and rejects
malformed ones with an exception naming the file and the problem."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_checkpoint
from gguf import GGUFReader, GGUFValueType
from gguf_edit import rewrite

from pygguf_diffusion import EngineError, Model, inspect_gguf

A = "diffusion-gemma"
# the dgemma-inspect console script's entry point
INSPECT = [sys.executable, "-c", "import sys; from pygguf_diffusion.gguf_info import main; sys.exit(main())"]


@pytest.mark.parametrize("name", list(tiny_checkpoint.SPECS))
@pytest.mark.parametrize("outtype", ["f32", "bf16", "q8_0"])
def test_engine_accepts_converted_files(name, outtype, converted):
    path = converted(name, outtype)
    info = inspect_gguf(path)
    r = GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items()}
    text = tiny_checkpoint.SPECS[name].text
    assert info.architecture == A
    assert info.file_size == path.stat().st_size
    assert info.hparams["n_layer"] == text["num_hidden_layers"]
    assert info.hparams["n_embd"] == text["hidden_size"]
    assert info.hparams["n_vocab"] == tiny_checkpoint.VOCAB
    assert info.hparams["head_dim_swa"] == text["head_dim"]
    assert info.hparams["head_dim_full"] == text["global_head_dim"]
    assert info.layer_layout == "".join("S" if s else "F" for s in kv[f"{A}.attention.sliding_window_pattern"])
    assert info.layer_layout[-1] == "F"
    for layer in info.layers:
        assert layer.n_head_kv == (text["num_key_value_heads"] if layer.sliding
                                   else text["num_global_key_value_heads"])
        assert layer.has_v == layer.sliding
        assert layer.fused_gate_up
    assert [t.name for t in info.tensors] == [t.name for t in r.tensors]
    for mine, theirs in zip(info.tensors, r.tensors):
        assert mine.shape == tuple(int(x) for x in theirs.shape)
        assert mine.type == theirs.tensor_type.name.lower()
        assert mine.nbytes == theirs.n_bytes
        assert mine.offset == theirs.data_offset
    assert info.tokenizer["eog_ids"] == [1, 106, 50]
    assert info.tokenizer["n_tokens"] == tiny_checkpoint.VOCAB
    assert info.tokenizer["has_chat_template"]
    assert info.defaulted_keys == []  # our converter writes every optional key
    assert info.diffusion["canvas_length"] == tiny_checkpoint.SPECS[name].canvas_length


def test_published_files_without_optional_keys_load_with_reference_defaults(converted, tmp_path):
    optional = (f"{A}.final_logit_softcapping", "diffusion.eb_max_steps", "diffusion.eb_t_min",
                "diffusion.eb_t_max", "diffusion.eb_entropy_bound", "diffusion.eb_stability_threshold",
                "diffusion.eb_confidence_threshold")
    # 'released' carries non-default sampler values, so defaults are visible
    src = converted("released", "f32")
    dst = rewrite(src, tmp_path / "published.gguf", drop_keys=optional,
                  set_keys={f"{A}.final_logit_softcapping": (5.0, GGUFValueType.FLOAT32)})
    info = inspect_gguf(rewrite(src, tmp_path / "p2.gguf", drop_keys=optional))
    assert sorted(info.defaulted_keys) == sorted(optional)
    assert info.hparams["logit_softcap"] == 30.0
    assert info.diffusion == {"canvas_length": 16, "max_denoising_steps": 48, "t_min": pytest.approx(0.4),
                              "t_max": pytest.approx(0.8), "entropy_bound": pytest.approx(0.1),
                              "stability_threshold": 1, "confidence_threshold": pytest.approx(0.005)}
    assert inspect_gguf(dst).hparams["logit_softcap"] == 5.0


def test_alias_and_split_expert_forms_load(converted, tmp_path):
    dst = rewrite(converted("spec9", "f32"), tmp_path / "alias.gguf",
                  rename={"self_cond_pre_norm.weight": "self_cond_norm.weight"}, split_gate_up=True)
    info = inspect_gguf(dst)
    names = {t.name for t in info.tensors}
    assert "self_cond_norm.weight" in names and "self_cond_pre_norm.weight" not in names
    assert "blk.0.ffn_gate_exps.weight" in names and "blk.0.ffn_gate_up_exps.weight" not in names
    assert not any(layer.fused_gate_up for layer in info.layers)


def expect_error(path: Path, pattern: str) -> str:
    with pytest.raises(EngineError) as ei:
        inspect_gguf(path)
    msg = str(ei.value)
    assert msg.startswith(str(path)), msg
    assert pattern in msg, msg
    return msg


def test_rejects_a_file_that_is_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    expect_error(p, "not a GGUF file")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    expect_error(empty, "not a GGUF file")


def test_rejects_missing_path_and_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        inspect_gguf(tmp_path / "missing.gguf")
    expect_error(tmp_path, "is a directory")


def test_rejects_truncated_files_at_any_point(converted, tmp_path):
    data = converted("spec9", "f32").read_bytes()
    r = GGUFReader(converted("spec9", "f32"))
    last_end = max(t.data_offset + t.n_bytes for t in r.tensors)  # the file may end in alignment padding
    cuts = [5, 24, 100, 1000, 10_000, r.data_offset - 3, r.data_offset + 10, len(data) // 2, last_end - 1]
    for cut in cuts:
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(EngineError) as ei:
            inspect_gguf(p)
        msg = str(ei.value)
        assert msg.startswith(str(p))
        assert ("truncated" in msg) or ("cannot parse" in msg), (cut, msg)
    expect_error(tmp_path / f"cut{last_end - 1}.gguf", "file is truncated: tensor")


def test_rejects_wrong_architecture(converted, tmp_path):
    dst = rewrite(converted("spec9", "f32"), tmp_path / "arch.gguf", set_keys={"general.architecture": "gemma4"})
    expect_error(dst, "general.architecture is 'gemma4', expected 'diffusion-gemma'")


@pytest.mark.parametrize("tensor", ["blk.2.attn_k.weight", "rope_freqs.weight", "blk.5.enc_layer_output_scale.weight",
                                    "self_cond_pre_norm.weight", "blk.4.ffn_gate_up_exps.weight"])
def test_rejects_missing_tensor(converted, tmp_path, tensor):
    dst = rewrite(converted("spec9", "f32"), tmp_path / "missing.gguf", drop_tensors=(tensor,))
    expect_error(dst, f"missing tensor '{tensor}'")


def test_rejects_wrong_shape(converted, tmp_path):
    def edit(name, data):
        return np.ascontiguousarray(data[:, :-16]) if name == "blk.1.ffn_up.weight" else None

    dst = rewrite(converted("spec9", "f32"), tmp_path / "shape.gguf", edit_tensor=edit)
    expect_error(dst, "tensor 'blk.1.ffn_up.weight' has shape {64, 96}, expected {80, 96}")


def test_rejects_wrong_type_for_a_norm(converted, tmp_path):
    def edit(name, data):
        return data.astype(np.int32) if name == "blk.0.attn_norm.weight" else None

    dst = rewrite(converted("spec9", "f32"), tmp_path / "type.gguf", edit_tensor=edit)
    expect_error(dst, "tensor 'blk.0.attn_norm.weight' has type i32")


def test_rejects_norms_the_graph_cannot_compute(converted, tmp_path):
    # element-wise ops take f32 norms only: an f16 one passed the loader and aborted in ggml at step 1
    def edit(name, data):
        return data.astype(np.float16) if name == "blk.0.attn_norm.weight" else None

    dst = rewrite(converted("spec9", "f32"), tmp_path / "f16norm.gguf", edit_tensor=edit)
    expect_error(dst, "tensor 'blk.0.attn_norm.weight' has type f16, which is not allowed for norms, scales and "
                      "rope_freqs (they must be f32")


def test_rejects_matrix_types_without_a_dot_product(converted, tmp_path):
    # q8_1 is the activations' side of q4_1/q5_1 dot products; as a weight it segfaulted at the first step
    from gguf import GGMLQuantizationType

    src = converted("spec9", "f32")
    from gguf.constants import GGML_QUANT_SIZES

    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_1]
    rows, cols = 80, 64  # blk.1.attn_output.weight: 80 rows of 64 -> two q8_1 blocks per row
    raw = np.zeros((rows, cols // block * nbytes), np.uint8)
    dst = rewrite(src, tmp_path / "q8_1.gguf",
                  raw_tensors={"blk.1.attn_output.weight": (raw, GGMLQuantizationType.Q8_1)})
    expect_error(dst, "tensor 'blk.1.attn_output.weight' has type q8_1, which is not a weight type with a CPU "
                      "dot product")


@pytest.mark.parametrize("key,value,bound", [
    ("diffusion.canvas_length", 2**20, "[1, 4096]"),  # the self-conditioning state alone: n_vocab x 2^20 floats
    ("diffusion.eb_max_steps", 2**20 - 1, "[1, 1024]"),  # a generation that never ends
    (f"{A}.attention.sliding_window", 2**31 - 1, "[1, 1048576]"),  # leaked a C++ length_error
])
def test_rejects_counts_that_would_make_work_unbounded(converted, tmp_path, key, value, bound):
    dst = rewrite(converted("spec9", "f32"), tmp_path / "big.gguf", set_keys={key: value})
    expect_error(dst, f"metadata key '{key}' = {value} is out of range {bound}")


@pytest.mark.parametrize("edit,message", [
    # a prompt would silently lack <bos>, and the chat template's bos_token raised OverflowError
    ({"drop_keys": ("tokenizer.ggml.bos_token_id",)}, "'tokenizer.ggml.bos_token_id' is missing but every prompt"),
    # the tokenizer library's ValueError escaped Model()
    ({"set_keys": {"tokenizer.ggml.merges": (["a"], GGUFValueType.ARRAY, GGUFValueType.STRING)}},
     "the tokenizer in the file is broken: cannot split merge 'a'"),
])
def test_a_broken_tokenizer_is_an_engine_error_naming_the_file(converted, tmp_path, edit, message):
    dst = rewrite(converted("spec9", "f32"), tmp_path / "tok.gguf", **edit)
    with pytest.raises(EngineError) as ei:
        Model(dst, n_ctx=64, n_threads=1)
    assert str(ei.value).startswith(str(dst)) and message in str(ei.value), str(ei.value)


def _bad_tokens(src: Path) -> list[bytes]:
    toks = [t.encode() for t in GGUFReader(src).fields["tokenizer.ggml.tokens"].contents()]
    toks[300] = b"\xff\xfeab"
    return toks


@pytest.mark.parametrize("key,value,what", [
    ("general.name", b"\xff\xfe", "metadata key 'general.name' is not valid UTF-8 (byte 0 of 2)"),
    ("tokenizer.chat_template", b"{{ x }}\xed\xa0\x80", "metadata key 'tokenizer.chat_template' is not valid "
                                                         "UTF-8 (byte 7 of 10)"),  # an encoded surrogate
    ("tokenizer.ggml.tokens", None, "tokenizer.ggml.tokens[300] is not valid UTF-8 (byte 0 of 4)"),
])
def test_strings_that_are_not_utf8_are_an_engine_error(converted, tmp_path, key, value, what):
    # they reached Python as UnicodeDecodeError (or the tokenizers library's TypeError)
    src = converted("spec9", "f32")
    v = (value, GGUFValueType.STRING) if value is not None else (_bad_tokens(src), GGUFValueType.ARRAY,
                                                                  GGUFValueType.STRING)
    dst = rewrite(src, tmp_path / "utf8.gguf", set_keys={key: v})
    with pytest.raises(EngineError) as ei:
        Model(dst, n_ctx=64, n_threads=1)
    assert str(ei.value).startswith(str(dst)) and what in str(ei.value), str(ei.value)


def test_rejects_unexpected_tensors(converted, tmp_path):
    # a V projection on the full-attention layer (5) does not exist in DiffusionGemma
    dst = rewrite(converted("spec9", "f32"), tmp_path / "extra.gguf",
                  extra_tensors={"blk.5.attn_v.weight": np.zeros((32, 80), np.float32)})
    expect_error(dst, "unexpected tensor(s) 'blk.5.attn_v.weight'")


@pytest.mark.parametrize("key", [f"{A}.block_count", f"{A}.attention.head_count_kv", f"{A}.expert_count",
                                 "diffusion.canvas_length", f"{A}.attention.sliding_window_pattern"])
def test_rejects_missing_required_key(converted, tmp_path, key):
    dst = rewrite(converted("spec9", "f32"), tmp_path / "key.gguf", drop_keys=(key,))
    expect_error(dst, f"missing required metadata key '{key}'")


def test_rejects_inconsistent_metadata(converted, tmp_path):
    src = converted("spec9", "f32")
    short = rewrite(src, tmp_path / "kv.gguf", set_keys={
        f"{A}.attention.head_count_kv": ([2, 2, 2], GGUFValueType.ARRAY, GGUFValueType.INT32)})
    expect_error(short, "has 3 entries, expected 6 (one per layer)")
    odd = rewrite(src, tmp_path / "gqa.gguf", set_keys={
        f"{A}.attention.head_count_kv": ([3, 2, 2, 2, 2, 1], GGUFValueType.ARRAY, GGUFValueType.INT32)})
    expect_error(odd, "is not a multiple of its head_count_kv 3")
    topk = rewrite(src, tmp_path / "topk.gguf", set_keys={f"{A}.expert_used_count": 9})
    expect_error(topk, "expert_used_count (9) exceeds expert_count (6)")
    vocab = rewrite(src, tmp_path / "vocab.gguf", set_keys={
        "tokenizer.ggml.tokens": (["a"] * 10, GGUFValueType.ARRAY, GGUFValueType.STRING)})
    expect_error(vocab, "the vocabulary has 10 tokens but token_embd.weight has 512 rows")
    sampler = rewrite(src, tmp_path / "t.gguf", set_keys={"diffusion.eb_t_max": 0.1})
    expect_error(sampler, "t_min < t_max")


def test_inspect_cli(converted, tmp_path):
    ok = subprocess.run([*INSPECT, str(converted("spec9", "q8_0")), "--tensors"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "layers     6  [SSSSSF]" in ok.stdout and "blk.5.attn_q.weight" in ok.stdout
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nonsense")
    err = subprocess.run([*INSPECT, str(bad)], capture_output=True, text=True, timeout=120)
    assert err.returncode == 1
    assert err.stderr.startswith("error: cannot load model:") and "not a GGUF file" in err.stderr
