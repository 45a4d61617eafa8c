"""Converter: tiny HF checkpoints -> GGUF, read back with gguf-py and checked against the source weights,
transformers' own config resolution and the HF tokenizer."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tiny_checkpoint
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, TokenType
from gguf.quants import dequantize

A = "diffusion-gemma"
NAMES = list(tiny_checkpoint.SPECS)

# HF suffix (after model.decoder.) -> GGUF name: the schema table of GGUF_SCHEMA.md, stated independently
# of the converter's own table.
GLOBAL = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
          "self_conditioning.pre_norm.weight": "self_cond_pre_norm.weight",
          "self_conditioning.gate_proj.weight": "self_cond_gate.weight",
          "self_conditioning.up_proj.weight": "self_cond_up.weight",
          "self_conditioning.down_proj.weight": "self_cond_down.weight"}
LAYER = {"input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "attn_q",
         "self_attn.k_proj.weight": "attn_k", "self_attn.v_proj.weight": "attn_v",
         "self_attn.o_proj.weight": "attn_output", "self_attn.q_norm.weight": "attn_q_norm",
         "self_attn.k_norm.weight": "attn_k_norm", "post_attention_layernorm.weight": "post_attention_norm",
         "pre_feedforward_layernorm.weight": "ffn_norm", "mlp.gate_proj.weight": "ffn_gate",
         "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
         "post_feedforward_layernorm_1.weight": "post_ffw_norm_1", "router.proj.weight": "ffn_gate_inp",
         "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2", "experts.gate_up_proj": "ffn_gate_up_exps",
         "experts.down_proj": "ffn_down_exps", "post_feedforward_layernorm_2.weight": "post_ffw_norm_2",
         "post_feedforward_layernorm.weight": "post_ffw_norm", "layer_scalar": "layer_output_scale"}
LAYER_NON_WEIGHT = {"router.scale": "ffn_gate_inp.scale", "router.per_expert_scale": "ffn_down_exps.scale"}


def schema_name(hf: str) -> str | None:
    m = re.match(r"model\.encoder\.language_model\.layers\.(\d+)\.layer_scalar$", hf)
    if m:
        return f"blk.{m.group(1)}.enc_layer_output_scale.weight"
    if not hf.startswith("model.decoder."):
        return None  # vision tower
    rest = hf[len("model.decoder."):]
    if rest in GLOBAL:
        return GLOBAL[rest]
    il, sub = re.match(r"layers\.(\d+)\.(.+)$", rest).groups()
    if sub in LAYER_NON_WEIGHT:
        return f"blk.{il}.{LAYER_NON_WEIGHT[sub]}"
    return f"blk.{il}.{LAYER[sub]}.weight"


def hf_config(ckpt: Path):
    from transformers import DiffusionGemmaConfig

    return DiffusionGemmaConfig.from_pretrained(ckpt)


def fields(path: Path) -> tuple[GGUFReader, dict]:
    r = GGUFReader(path)
    return r, {k: f.contents() for k, f in r.fields.items()}


def tensor_f32(t) -> np.ndarray:
    shape = tuple(int(x) for x in reversed(t.shape))
    if t.tensor_type in (Q.F32, Q.F16):
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    return dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_matches_transformers_resolution(name, checkpoint, converted):
    ckpt = checkpoint(name)
    cfg = hf_config(ckpt)
    tc = cfg.text_config
    _, kv = fields(converted(name, "f32"))
    L = tc.num_hidden_layers
    full = [i for i, t in enumerate(tc.layer_types) if t == "full_attention"]
    per_layer = [tc.per_layer_config[i] for i in range(L)]  # transformers' own per-layer resolution
    hd_full = per_layer[full[0]].head_dim
    assert kv["general.architecture"] == A
    assert kv[f"{A}.block_count"] == L
    assert kv[f"{A}.context_length"] == tc.max_position_embeddings
    assert kv[f"{A}.embedding_length"] == tc.hidden_size
    assert kv[f"{A}.feed_forward_length"] == tc.intermediate_size
    assert kv[f"{A}.attention.head_count"] == tc.num_attention_heads
    assert list(kv[f"{A}.attention.head_count_kv"]) == [c.num_key_value_heads for c in per_layer]
    hd_swa = {c.head_dim for c, t in zip(per_layer, tc.layer_types) if t == "sliding_attention"}
    assert kv[f"{A}.attention.key_length"] == kv[f"{A}.attention.value_length"] == hd_full
    assert kv[f"{A}.attention.key_length_swa"] == kv[f"{A}.attention.value_length_swa"]
    assert hd_swa == {kv[f"{A}.attention.key_length_swa"]}
    assert kv[f"{A}.attention.sliding_window"] == json.loads((ckpt / "config.json").read_text())[
        "text_config"]["sliding_window"]
    assert kv[f"{A}.attention.sliding_window_pattern"] == [t == "sliding_attention" for t in tc.layer_types]
    assert kv[f"{A}.attention.sliding_window_pattern"][-1] is False  # last layer forced to full
    assert kv[f"{A}.attention.layer_norm_rms_epsilon"] == pytest.approx(tc.rms_norm_eps)
    assert kv[f"{A}.attention.causal"] is False
    assert kv[f"{A}.attention.shared_kv_layers"] == 0
    assert kv[f"{A}.embedding_length_per_layer_input"] == 0
    assert kv[f"{A}.rope.freq_base"] == pytest.approx(tc.rope_parameters["full_attention"]["rope_theta"])
    assert kv[f"{A}.rope.freq_base_swa"] == pytest.approx(tc.rope_parameters["sliding_attention"]["rope_theta"])
    assert kv[f"{A}.rope.dimension_count"] == hd_full
    assert kv[f"{A}.rope.dimension_count_swa"] == kv[f"{A}.attention.key_length_swa"]
    assert kv[f"{A}.final_logit_softcapping"] == pytest.approx(tc.final_logit_softcapping)
    assert kv[f"{A}.expert_count"] == tc.num_experts
    assert kv[f"{A}.expert_used_count"] == tc.top_k_experts
    assert kv[f"{A}.expert_feed_forward_length"] == tc.moe_intermediate_size
    assert kv["diffusion.canvas_length"] == cfg.canvas_length
    assert kv["general.file_type"] == 0  # ALL_F32
    assert kv["general.quantization_version"] == 2


@pytest.mark.parametrize("name", NAMES)
def test_sampler_defaults_come_from_generation_config(name, checkpoint, converted):
    gen_path = checkpoint(name) / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    _, kv = fields(converted(name, "f32"))
    want = {"eb_max_steps": gen.get("max_denoising_steps", 48), "eb_t_min": gen.get("t_min", 0.4),
            "eb_t_max": gen.get("t_max", 0.8),
            "eb_entropy_bound": gen.get("sampler_config", {}).get("entropy_bound", 0.1),
            "eb_stability_threshold": gen.get("stability_threshold", 1),
            "eb_confidence_threshold": gen.get("confidence_threshold", 0.005)}
    for k, v in want.items():
        assert kv[f"diffusion.{k}"] == pytest.approx(v), k


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_tensors_match_source_weights(name, outtype, checkpoint, converted):
    ckpt = checkpoint(name)
    tc = hf_config(ckpt).text_config
    src = tiny_checkpoint.source_tensors(ckpt)
    r, kv = fields(converted(name, outtype))
    got = {t.name: t for t in r.tensors}

    expected = {schema_name(k): k for k in src if schema_name(k)}
    expected["rope_freqs.weight"] = None
    assert set(got) == set(expected)
    n_layer = tc.num_hidden_layers
    n_full = sum(t == "full_attention" for t in tc.layer_types)
    assert len(got) == 7 + 23 * (n_layer - n_full) + 22 * n_full
    for i, t in enumerate(tc.layer_types):
        assert (f"blk.{i}.attn_v.weight" in got) == (t == "sliding_attention")

    for gname, hf in expected.items():
        t = got[gname]
        if hf is None:
            continue
        ref = src[hf]
        # ggml order is the reverse of the PyTorch shape
        assert tuple(int(x) for x in t.shape) == tuple(reversed(ref.shape)), gname
        vector = ref.ndim == 1 or gname.endswith("ffn_gate_inp.weight")
        if vector:
            assert t.tensor_type == Q.F32, f"{gname} must stay f32"
        val = tensor_f32(t)
        assert val.shape == ref.shape
        amax = float(np.abs(ref).max())
        if t.tensor_type == Q.F32:
            np.testing.assert_array_equal(val, ref, err_msg=gname)
        elif t.tensor_type == Q.F16:
            np.testing.assert_array_equal(val, ref.astype(np.float16).astype(np.float32), err_msg=gname)
        elif t.tensor_type == Q.BF16:
            np.testing.assert_allclose(val, ref, rtol=2**-8, atol=0, err_msg=gname)
        elif t.tensor_type == Q.Q8_0:
            assert ref.shape[-1] % 32 == 0
            assert np.abs(val - ref).max() <= amax / 127 + 1e-6, gname
        else:
            pytest.fail(f"{gname}: unexpected type {t.tensor_type.name}")
        if not vector:
            want = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]
            if outtype == "q8_0" and ref.shape[-1] % 32:
                want = Q.F16  # rows that do not fit the block size fall back to f16
            assert t.tensor_type == want, gname

    # proportional RoPE on the full layers: int(0.25 * hd / 2) rotating pairs, the rest frozen
    rope = tensor_f32(got["rope_freqs.weight"])
    hd_full = kv[f"{A}.attention.key_length"]
    n_rot = int(tc.rope_parameters["full_attention"]["partial_rotary_factor"] * hd_full / 2)
    assert rope.shape == (hd_full // 2,)
    np.testing.assert_array_equal(rope[:n_rot], 1.0)
    np.testing.assert_array_equal(rope[n_rot:], np.float32(1e30))


def test_encoder_and_decoder_layer_scalars_stay_separate(checkpoint, converted):
    src = tiny_checkpoint.source_tensors(checkpoint("spec9"))
    r, _ = fields(converted("spec9", "f32"))
    got = {t.name: tensor_f32(t) for t in r.tensors}
    for il in range(6):
        enc = src[f"model.encoder.language_model.layers.{il}.layer_scalar"]
        dec = src[f"model.decoder.layers.{il}.layer_scalar"]
        assert enc[0] != dec[0]
        assert got[f"blk.{il}.enc_layer_output_scale.weight"][0] == enc[0]
        assert got[f"blk.{il}.layer_output_scale.weight"][0] == dec[0]


def test_tokenizer_matches_hf_tokenizer(checkpoint, converted):
    from transformers import AutoTokenizer

    ckpt = checkpoint("spec9")
    hf = AutoTokenizer.from_pretrained(ckpt)
    _, kv = fields(converted("spec9", "f32"))
    tokens = kv["tokenizer.ggml.tokens"]
    types = kv["tokenizer.ggml.token_type"]
    assert kv["tokenizer.ggml.model"] == "gemma4"
    assert tokens == hf.convert_ids_to_tokens(list(range(tiny_checkpoint.VOCAB)))
    assert len(kv["tokenizer.ggml.scores"]) == len(tokens)
    visible = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
               "<tool_response|>", '<|"|>'}
    control = {i for i, t in enumerate(types) if t == TokenType.CONTROL}
    assert control == {i for i in hf.all_special_ids if tokens[i] not in visible}
    assert {tokens[i] for i, t in enumerate(types) if t == TokenType.USER_DEFINED} == visible
    byte_ids = [i for i, t in enumerate(types) if t == TokenType.BYTE]
    assert byte_ids == list(range(238, 238 + 256))
    assert tokens[238 + 0x41] == "<0x41>"
    merges = json.loads((ckpt / "tokenizer.json").read_text())["model"]["merges"]
    assert kv["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert kv["tokenizer.ggml.bos_token_id"] == hf.bos_token_id == 2
    assert kv["tokenizer.ggml.eos_token_id"] == 1
    assert kv["tokenizer.ggml.padding_token_id"] == hf.pad_token_id == 0
    # as published Gemma-4 GGUFs (llama.cpp's models/ggml-vocab-gemma-4.gguf: 3 and 4); #24423's CLI needs the mask id
    assert kv["tokenizer.ggml.unknown_token_id"] == hf.unk_token_id == 3
    assert kv["tokenizer.ggml.mask_token_id"] == hf.mask_token_id == 4
    assert kv["tokenizer.ggml.add_bos_token"] is True
    assert kv["tokenizer.ggml.add_space_prefix"] is False
    assert kv["tokenizer.chat_template"] == (ckpt / "chat_template.jinja").read_text()


def test_sharded_bf16_checkpoint_reads_every_shard(checkpoint, converted):
    ckpt = checkpoint("released")
    shards = list(ckpt.glob("model-*.safetensors"))
    assert len(shards) > 1 and (ckpt / "model.safetensors.index.json").exists()
    r, kv = fields(converted("released", "bf16"))
    assert kv["general.file_type"] == 32  # MOSTLY_BF16
    # bf16 source -> bf16 output is lossless
    src = tiny_checkpoint.source_tensors(ckpt)
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    np.testing.assert_array_equal(tensor_f32(emb), src["model.decoder.embed_tokens.weight"])
