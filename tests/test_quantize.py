"""Quantization: ggml's quantizer through the engine, the mixes' policy, dgemma-quantize and the converter's
quantized output, measured on the bundled model (accuracy and logits error against f32)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf import quants as gq

from pygguf_diffusion import EngineError, Model, _core
from pygguf_diffusion.bundled import bundled_model_path
from pygguf_diffusion.quant import Policy, lookup
from pygguf_diffusion.quant.imatrix import Imatrix
from pygguf_diffusion.quant.qtypes import NEEDS_IMATRIX, WRITABLE
from pygguf_diffusion.quant.requantize import QuantizeError, requantize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quant_table as QT  # noqa: E402

BUNDLED = bundled_model_path()
needs_bundled = pytest.mark.skipif(BUNDLED is None, reason="the bundled model is not in this checkout")


def rows(n=32, ncol=512, seed=0):
    return np.random.default_rng(seed).standard_normal((n, ncol)).astype(np.float32)


def nmse(a, b):
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


# ---- the quantizer ----------------------------------------------------------------------------------------

def test_every_listed_type_round_trips_with_error_that_falls_with_bits():
    x = rows()
    imp = np.abs(x).mean(0) + 0.1
    err = {}
    for name in WRITABLE:
        q = lookup(name)
        data = _core.quantize(q.id, x, imp if name in NEEDS_IMATRIX else None, 2)
        assert data.size == q.row_bytes(x.shape[1]) * x.shape[0]
        y = _core.dequantize(q.id, data, x.shape[0], x.shape[1], 2)
        err[name] = nmse(y, x)
    assert err["f32"] == 0 and err["f16"] < 1e-6 and err["bf16"] < 1e-4
    assert err["q8_0"] < err["q6_K"] < err["q5_K"] < err["q4_K"] < err["q3_K"] < err["q2_K"] < 0.2
    assert err["q5_0"] < err["q4_0"] and err["q5_1"] < err["q4_1"]
    assert err["iq3_s"] < err["iq2_s"] < err["iq2_xxs"] < err["iq1_s"] < 1.0


def test_bytes_equal_the_reference_quantizer_of_gguf_py():
    x = rows(16, 256, seed=3)
    checked = 0
    for name in WRITABLE:
        q = lookup(name)
        try:
            ref = gq.quantize(x, q.id)
        except NotImplementedError:
            continue
        assert _core.quantize(q.id, x, None, 2).tobytes() == np.ascontiguousarray(ref).tobytes(), name
        checked += 1
    assert checked >= 8  # f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 mxfp4


def test_threads_do_not_change_the_bytes():
    x = rows(37, 768, seed=5)
    q = lookup("q4_K")
    assert _core.quantize(q.id, x, None, 1).tobytes() == _core.quantize(q.id, x, None, 4).tobytes()


def test_quantizer_refuses_what_it_cannot_do():
    with pytest.raises(EngineError, match="a row of 704 values does not fit q4_K, whose blocks hold 256"):
        _core.quantize(lookup("q4_K").id, rows(4, 704), None, 1)
    with pytest.raises(EngineError, match="iq2_xxs needs an importance matrix"):
        _core.quantize(lookup("iq2_xxs").id, rows(4, 256), None, 1)
    with pytest.raises(EngineError, match="unknown ggml type id 9999"):
        _core.quantize(9999, rows(4, 256), None, 1)
    with pytest.raises(EngineError, match="importance matrix row has 3 values"):
        _core.quantize(lookup("q4_K").id, rows(4, 256), np.ones(3, np.float32), 1)
    with pytest.raises(EngineError, match="value nan at row 1, column 7 is not finite"):
        bad = rows(4, 256)
        bad[1, 7] = np.nan
        _core.quantize(lookup("q8_0").id, bad, None, 1)
    with pytest.raises(EngineError, match="bytes do not hold"):
        _core.dequantize(lookup("q8_0").id, np.zeros(10, np.uint8), 1, 32, 1)


# ---- the policy ---------------------------------------------------------------------------------------------

REAL = {  # GGUF name -> (dims, row length) at the released 26B-A4B shape
    "token_embd.weight": (2, 2816), "blk.4.attn_q.weight": (2, 2816), "blk.4.attn_v.weight": (2, 2816),
    "blk.4.attn_output.weight": (2, 4096), "blk.4.ffn_gate.weight": (2, 2816), "blk.4.ffn_down.weight": (2, 2112),
    "blk.4.ffn_gate_up_exps.weight": (3, 2816), "blk.4.ffn_down_exps.weight": (3, 704),
    "blk.0.ffn_down_exps.weight": (3, 704), "blk.4.ffn_gate_inp.weight": (2, 2816),
    "self_cond_gate.weight": (2, 2816), "blk.4.attn_norm.weight": (1, 2816), "rope_freqs.weight": (1, 256),
}


def choose_all(target, overrides=None):
    p = Policy(target, 30, overrides)
    return {n: p.choose(n, d, r) for n, (d, r) in REAL.items()}


def test_q4_k_m_at_the_real_shape_with_its_fallbacks():
    c = choose_all("Q4_K_M")
    got = {n: x.qtype.name for n, x in c.items()}
    assert got == {
        "token_embd.weight": "q6_K", "blk.4.attn_q.weight": "q4_K", "blk.4.attn_v.weight": "q6_K",
        "blk.4.attn_output.weight": "q4_K", "blk.4.ffn_gate.weight": "q4_K",
        "blk.4.ffn_down.weight": "q5_0",          # 2112 rows: q4_K does not fit, its fallback q5_0 does
        "blk.4.ffn_gate_up_exps.weight": "q4_K", "blk.4.ffn_down_exps.weight": "q5_0",
        "blk.0.ffn_down_exps.weight": "q8_0",     # a more-bits layer: q6_K asked, 704 rows: q8_0
        "blk.4.ffn_gate_inp.weight": "f32", "self_cond_gate.weight": "q4_K",
        "blk.4.attn_norm.weight": "f32", "rope_freqs.weight": "f32"}
    assert c["blk.4.ffn_down_exps.weight"].reason == ("rows of 704 are not a multiple of q4_K's block of 256; "
                                                     "q5_0 instead")
    assert c["blk.4.attn_q.weight"].reason is None


def test_overrides_win_first_match_and_still_fall_back():
    c = choose_all("Q4_K_M", [("ffn_down_exps", "q6_K"), ("exps", "q2_K"), ("attn_q", "q8_0")])
    assert c["blk.4.ffn_down_exps.weight"].qtype.name == "q8_0"
    assert c["blk.4.ffn_down_exps.weight"].reason.startswith("--tensor-type ffn_down_exps=q6_K; rows of 704")
    assert c["blk.4.ffn_gate_up_exps.weight"].qtype.name == "q2_K"
    assert c["blk.4.attn_q.weight"].qtype.name == "q8_0"
    assert c["blk.4.attn_norm.weight"].qtype.name == "f32"  # vectors stay f32 whatever the pattern


def test_uniform_types_and_bad_names():
    assert {x.qtype.name for n, x in choose_all("q8_0").items() if x.cls.value not in ("vector", "router")} == {"q8_0"}
    assert Policy("iq4_xs", 30).file_type == 30 and Policy("Q4_K_M", 30).file_type == 15
    assert Policy("IQ2_XXS", 30).needs_imatrix and not Policy("Q2_K", 30).needs_imatrix
    with pytest.raises(ValueError, match="unsupported type or mix 'q4_z'"):
        Policy("q4_z", 30)
    with pytest.raises(ValueError, match="--tensor-type x=q9: unknown weight type 'q9'"):
        Policy("Q4_K_M", 30, [("x", "q9")])


# ---- the bundled model, requantized -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    if BUNDLED is None:
        pytest.skip("the bundled model is not in this checkout")
    d = tmp_path_factory.mktemp("q")
    made = {}

    def get(target):
        if target not in made:
            made[target] = QT.make(Path(BUNDLED), d, target)
        return made[target]

    return get


@pytest.fixture(scope="module")
def logit_states(quantized):
    ref, _ = quantized("f32")
    states = QT.canvases(ref, QT.logit_prompts(QT.N_LOGIT_PROMPTS, QT.TEST_SEED), 2)
    return states, QT.step_logits(ref, states, 2)


MEASURED = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]


@needs_bundled
def test_logits_error_falls_as_precision_rises(quantized, logit_states):
    states, ref = logit_states
    err, top1, bpw = {}, {}, {}
    for t in MEASURED:
        path, sm = quantized(t)
        err[t], top1[t] = QT.logit_error(ref, QT.step_logits(path, states, 2))
        bpw[t] = sm.bits_per_weight
    assert err["Q8_0"] < err["Q6_K"] < err["Q5_K_M"] < err["Q4_K_M"] < err["Q3_K_M"] < err["Q2_K"], err
    assert bpw["Q8_0"] > bpw["Q6_K"] > bpw["Q5_K_M"] > bpw["Q4_K_M"] > bpw["Q3_K_M"] > bpw["Q2_K"], bpw
    assert err["Q8_0"] < 1e-4 and top1["Q8_0"] > 0.999 and top1["Q4_K_M"] > 0.99, (err, top1)


@needs_bundled
@pytest.mark.slow
def test_task_accuracy_within_bounds_of_f32(quantized):
    n = 60
    ref = QT.accuracy(quantized("f32")[0], n, QT.TEST_SEED, 2)
    bounds = {"Q8_0": 0.02, "Q6_K": 0.02, "Q4_K_M": 0.05, "Q3_K_M": 0.10}
    for t, bound in bounds.items():
        acc = QT.accuracy(quantized(t)[0], n, QT.TEST_SEED, 2)
        for task, a in acc.items():
            assert a >= ref[task] - bound, (t, task, a, ref[task])


@needs_bundled
def test_requantized_file_records_types_and_runs(quantized):
    path, sm = quantized("Q4_K_M")
    r = GGUFReader(path)
    assert r.fields["general.file_type"].contents() == 15
    assert r.fields["general.quantization_version"].contents() == 2
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["token_embd.weight"] == "Q6_K" and types["blk.1.attn_q.weight"] == "Q4_K"
    assert types["blk.1.ffn_down_exps.weight"] == "Q5_0"  # rows of 128: q4_K's fallback
    assert types["blk.1.attn_norm.weight"] == "F32" and types["blk.1.ffn_gate_inp.weight"] == "F32"
    # every other key is copied byte for byte: same keys, types and values, in the same order
    src = GGUFReader(BUNDLED)
    changed = {"general.file_type", "general.quantization_version"}
    kept = [k for k in src.fields if k not in changed]
    assert [k for k in r.fields if k not in changed] == kept
    for k in kept:
        assert r.fields[k].types == src.fields[k].types and r.fields[k].contents() == src.fields[k].contents(), k
    assert [t.name for t in r.tensors] == [t.name for t in src.tensors]
    assert "rows of 128 are not a multiple of q4_K's block of 256; q5_0 instead" in sm.text()
    m = Model(str(path), n_ctx=256, seed=0)
    assert m.generate(m.tokenize(m.apply_chat_template([{"role": "user", "content": "4821+377="}]),
                                 add_bos=False)).text.strip() == "5198"
    m.close()


@needs_bundled
def test_requantize_refusals(quantized, tmp_path):
    q8, _ = quantized("Q8_0")
    with pytest.raises(QuantizeError, match=r"is already quantized \(q8_0\).*--allow-requantize"):
        requantize(q8, tmp_path / "a.gguf", "Q4_K_M")
    requantize(q8, tmp_path / "a.gguf", "Q4_K_M", allow_requantize=True)
    with pytest.raises(QuantizeError, match="already exists; pass --force"):
        requantize(BUNDLED, tmp_path / "a.gguf", "Q4_K_M")
    with pytest.raises(QuantizeError, match="IQ2_XXS needs an importance matrix .*dgemma-imatrix"):
        requantize(BUNDLED, tmp_path / "b.gguf", "IQ2_XXS")
    assert not (tmp_path / "b.gguf").exists()


def run_quantize(*args):
    return subprocess.run([sys.executable, "-m", "pygguf_diffusion.quant.cli", *args], capture_output=True,
                          text=True, timeout=300)


@needs_bundled
def test_cli(tmp_path):
    out = tmp_path / "o.gguf"
    ok = run_quantize(BUNDLED, str(out), "q4_k_m")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(out)
    assert ok.stderr.startswith(f"wrote {out}: 2.85 MiB") and "bits per weight" in ok.stderr
    bad = run_quantize(BUNDLED, str(tmp_path / "x.gguf"), "q4_z")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unsupported type or mix 'q4_z'")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    foreign = run_quantize(str(junk), str(tmp_path / "y.gguf"), "Q8_0")
    assert foreign.returncode == 1 and foreign.stderr.startswith("error: cannot quantize:")
    assert "Traceback" not in foreign.stderr
    missing = run_quantize(str(tmp_path / "none.gguf"), str(tmp_path / "z.gguf"), "Q8_0")
    assert missing.returncode == 1 and "no such file" in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.gguf", "o.gguf"]


# ---- the converter writes the same bytes ---------------------------------------------------------------------

def test_converter_quantizes_like_the_requantizer(checkpoint, converted, tmp_path):
    from pygguf_diffusion.convert import convert

    direct = convert(checkpoint("spec9"), tmp_path / "d.gguf", "Q4_K_M")
    again = requantize(converted("spec9", "f32"), tmp_path / "r.gguf", "Q4_K_M")
    a = {t.name: (t.tensor_type, np.array(t.data).tobytes()) for t in GGUFReader(direct).tensors}
    b = {t.name: (t.tensor_type, np.array(t.data).tobytes()) for t in GGUFReader(again).tensors}
    assert a == b
    assert {t for t, _ in a.values()} != {a["token_embd.weight"][0]}  # a mix: several types


# ---- importance matrices ------------------------------------------------------------------------------------

def test_imatrix_file_round_trip_and_lookup(converted, tmp_path):
    im = Imatrix(datasets=["calib.txt"], chunk_count=3, chunk_size=512)
    im.add("blk.0.ffn_gate_up_exps.weight", np.arange(8, dtype=np.float64).reshape(2, 4) + 1, np.array([2, 0]))
    im.add("blk.0.attn_q.weight", np.full((1, 4), 6.0), np.array([3]))
    im.add("blk.0.attn_q.weight", np.full((1, 4), 3.0), np.array([0]))  # accumulates
    path = im.save(tmp_path / "im.gguf")
    back = Imatrix.load(path)
    assert back.datasets == ["calib.txt"] and back.chunk_count == 3 and back.chunk_size == 512
    np.testing.assert_allclose(back.for_tensor("blk.0.attn_q.weight", (8, 4)), [[3.0, 3.0, 3.0, 3.0]])
    exp = back.for_tensor("blk.0.ffn_gate_exps.weight", (2, 5, 4))  # split gate: the fused entry
    np.testing.assert_allclose(exp, [[0.5, 1.0, 1.5, 2.0], [1, 1, 1, 1]])  # no tokens: importance 1
    assert back.for_tensor("blk.1.attn_q.weight", (8, 4)) is None
    with pytest.raises(ValueError, match="rows of 4, the tensor blk.0.attn_q.weight rows of 6"):
        back.for_tensor("blk.0.attn_q.weight", (8, 6))
    with pytest.raises(ValueError, match="general.type is not 'imatrix'"):
        Imatrix.load(converted("spec9", "f32"))


def test_overrides_never_reach_the_router():
    c = choose_all("Q4_K_M", [("ffn_gate", "q4_0"), (".*", "q8_0")])
    assert c["blk.4.ffn_gate_inp.weight"].qtype.name == "f32"
    assert c["blk.4.ffn_gate.weight"].qtype.name == "q4_0"
    assert c["blk.4.ffn_gate_up_exps.weight"].qtype.name == "q4_0"  # ffn_gate matches ffn_gate_up_exps too


@needs_bundled
def test_a_source_with_its_own_alignment(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gguf_edit import rewrite

    a64 = rewrite(Path(BUNDLED), tmp_path / "a64.gguf", alignment=64)
    assert GGUFReader(a64).alignment == 64
    out = requantize(a64, tmp_path / "q8.gguf", "Q8_0")
    r = GGUFReader(out)
    assert r.alignment == 64 and all(t.data_offset % 64 == 0 for t in r.tensors)
    m = Model(str(out), n_ctx=256, seed=0)
    assert m.generate(m.tokenize(m.apply_chat_template([{"role": "user", "content": "4821+377="}]),
                                 add_bos=False)).text.strip() == "5198"
    m.close()
