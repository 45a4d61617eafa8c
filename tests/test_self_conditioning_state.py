"""The self-conditioning state between decoder steps on the CPU path: the previous step's softmax, left by
the fused row reductions in the transposed embedding's type and in slices of the vocabulary
(dgemma-decoder.h, sc_layout), against the generic path (the softmax in f32, one product over the whole
vocabulary: what a GPU runs)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pygguf_diffusion.bundled import bundled_model_path
from pygguf_diffusion.quant.requantize import requantize
from reduction_paths import run_both_reduction_paths

BUNDLED = bundled_model_path()

F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30   # ggml type ids

# the embedding's stored type -> the transposed copy and state type on the CPU path, for a CPU that
# multiplies bf16 and int8 natively (AVX512_BF16, VNNI) and one that does neither (DGEMMA_NATIVE_BF16 and
# DGEMMA_NATIVE_INT8 decide either way), and the bound on the NMSE between the two paths' self-conditioned
# logits. The generic path rounds the f32 softmax to the copy's type inside its matmul, as the fused kernel
# does when it stores it; the paths differ by the slicing, the exp implementations (an ulp in a probability
# can flip its 16-bit rounding), the fused gelu / softcap, for q4_0 the copy's type (BF16 / F16), for bf16
# without native bf16 the F16 copies (the output layer's activations round to f16 instead of bf16), and for
# q8_0 without native int8 the F16 output layer (weights and activations round to f16; the generic path
# rounds the activations to q8_0). Measured 2026-11-28: f32 1.1e-14, bf16 1.2e-12 (F16 copies: 6.3e-8),
# q8_0 3.2e-15 (4.2e-7 in the ASan build, whose exp differs; F16 output layer: 1.1e-6, where against the f32
# file the fused path gives 2.0e-6 and the generic 2.5e-6), q4_0 8.2e-7 (F16 on both paths: 3.2e-15); a
# wrong layout or type gives ~1e-1.
CASES = [("f32", "1", F32, 1e-12), ("bf16", "1", BF16, 5e-6), ("q8_0", "1", F16, 5e-6), ("q4_0", "1", BF16, 2e-5),
         ("f32", "0", F32, 1e-12), ("bf16", "0", F16, 5e-6), ("q8_0", "0", F16, 5e-6), ("q4_0", "0", F16, 5e-6)]


@pytest.mark.skipif(BUNDLED is None, reason="the bundled model is not in this checkout")
@pytest.mark.parametrize("outtype,native,state_type,bound", CASES,
                         ids=[f"{c[0]}-native={c[1]}" for c in CASES])
def test_state_type_slices_and_agreement_with_the_generic_path(tmp_path, monkeypatch, outtype, native,
                                                               state_type, bound):
    monkeypatch.setenv("DGEMMA_NATIVE_BF16", native)
    monkeypatch.setenv("DGEMMA_NATIVE_INT8", native)
    # the trained bundled model: a random one amplifies any rounding difference chaotically
    path = tmp_path / f"m-{outtype}.gguf"
    requantize(BUNDLED, path, outtype)
    code = f"""
import json, numpy as np
from pygguf_diffusion import _core
m = _core.Model({str(path)!r}, 0, False)
ctx = _core.Context(m, 128, 64, 2)
C, V = ctx.canvas_length, m.info()["hparams"]["n_vocab"]
ctx.encode(np.arange(2, 30, dtype=np.int32))
canvas = (np.arange(C, dtype=np.int32) * 37 + 5) % V
ctx.decode_step(canvas, None, 0.7, False)
logits = np.array(ctx.decode_step(canvas, "previous", 0.7, True))
graph = ctx.last_graph()
sc = [n for n in graph if n["op"] == "MUL_MAT" and n["src"][0]["name"] == "token_embd_t"][0]
head = [n for n in graph if n["op"] == "MUL_MAT" and n["src"][0]["name"] == "token_embd.weight"][0]
np.save({str(path) + "."!r} + __import__("os").environ.get("DGEMMA_GENERIC_REDUCTIONS", "fused") + ".npy", logits)
print(json.dumps({{"w": sc["src"][0]["type"], "s": sc["src"][1]["type"], "s_ne": sc["src"][1]["ne"],
                  "head": head["src"][0]["type"], "sc_bytes": ctx.memory()["sc_bytes"], "C": C, "V": V}}))
"""
    fused, generic = (json.loads(out[-1]) for out in run_both_reduction_paths(code))
    C, V = fused["C"], fused["V"]
    # fused: the softmax in the copy's type, 4 slices of V / 4 (a multiple of 64), [chunk, C, slices]
    assert (fused["w"], fused["s"]) == (state_type, state_type)
    assert fused["s_ne"] == [V // 4, C, 4, 1] and V // 4 % 64 == 0
    assert fused["sc_bytes"] == V * C * (4 if state_type == F32 else 2)
    # generic: the softmax in f32, one product over the whole vocabulary; a quantized embedding
    # copied as F16 there
    assert generic["s"] == F32 and generic["s_ne"] == [V, C, 1, 1]
    file_type = {"f32": F32, "bf16": BF16, "q8_0": Q8_0, "q4_0": Q4_0}[outtype]
    assert generic["w"] == (F16 if outtype in ("q8_0", "q4_0") else file_type)
    # the output layer reads the file's tensor, but on the CPU path for bf16 without native bf16 and q8_0
    # without native int8 products: an F16 copy
    assert generic["head"] == file_type
    assert fused["head"] == (F16 if outtype in ("bf16", "q8_0") and native == "0" else file_type)
    assert generic["sc_bytes"] == 4 * V * C
    a = np.load(f"{path}.fused.npy").astype(np.float64)
    b = np.load(f"{path}.1.npy").astype(np.float64)
    nmse = ((a - b) ** 2).sum() / (b ** 2).sum()
    assert nmse < bound, nmse
    assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.99


@pytest.mark.skipif(BUNDLED is None, reason="the bundled model is not in this checkout")
def test_a_step_whose_logits_are_not_read_leaves_the_same_reductions_and_state():
    # On the CPU path the row reductions write the softcapped logits back only when the caller reads them;
    # otherwise they stay in the kernel's row buffer. Both ways must give the same argmax, entropy and
    # sample, and the same state: the next step's logits bit for bit.
    from pygguf_diffusion import _core

    m = _core.Model(str(BUNDLED), 0, False)
    assert m.info()["hparams"]["logit_softcap"] > 0
    T = 0.7

    def first_step(read_logits: bool):
        ctx = _core.Context(m, 128, 64, 2)
        C, V = ctx.canvas_length, m.info()["hparams"]["n_vocab"]
        ctx.encode(np.arange(2, 30, dtype=np.int32))
        canvas = (np.arange(C, dtype=np.int32) * 37 + 5) % V
        u = np.random.default_rng(0).random(C).astype(np.float32)
        first = ctx.decode_step(canvas, None, T, True) if read_logits else ctx.decode_step_reduced(canvas, u, temperature=T)
        return first, np.array(ctx.decode_step(canvas, "previous", T, True))

    logits, after_read = first_step(True)
    (am, ent, _), after_unread = first_step(False)
    np.testing.assert_array_equal(after_read, after_unread)
    # the logits the caller read are the capped ones the reductions worked on (uncapped ones give another
    # entropy: checked by running this with the write-back disabled)
    lp32 = np.asarray(logits, np.float32) * (np.float32(1) / np.float32(T))   # as the kernel forms it
    np.testing.assert_array_equal(am, lp32.argmax(-1))
    lp = lp32.astype(np.float64)
    p = np.exp(lp - lp.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(ent, -(p * np.log(np.maximum(p, 1e-300))).sum(-1), rtol=1e-4, atol=1e-5)
