"""KV store element types (type_k / type_v, the CLI's -ctk / -ctv) and the weight-placement options
(n_cpu_moe, tensor_overrides, the CLI's --n-cpu-moe / -ot): memory, logits error against the f32 store,
end-to-end accuracy on the bundled model, and clear errors for what cannot work."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pygguf_diffusion import EngineError, Model, _core
from pygguf_diffusion.bundled import bundled_model_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import tiny_tasks as T  # noqa: E402

BUNDLED = bundled_model_path()
needs_bundled = pytest.mark.skipif(BUNDLED is None, reason="the bundled model is not in this checkout")


def step(model, type_k, type_v, n_prompt=100):
    ctx = _core.Context(model, 512, 512, 2, type_k=type_k, type_v=type_v)
    ctx.encode(np.arange(3, 3 + n_prompt, dtype=np.int32))
    V = model.info()["hparams"]["n_vocab"]
    canvas = np.random.default_rng(1).integers(3, V, ctx.canvas_length).astype(np.int32)
    logits = np.array(ctx.decode_step(canvas, None, 1.0, True), dtype=np.float64)
    return ctx, logits


@needs_bundled
def test_store_types_shrink_the_store_and_keep_logits_close():
    m = _core.Model(str(BUNDLED), 0, False)
    ref_ctx, ref = step(m, "f32", "f32")
    f32_bytes = ref_ctx.memory()["kv_bytes"]
    err = {}
    # bytes per element against f32's 4: f16/bf16 2, q8_0 34/32, q4_0 18/32
    for t, ratio, bound in [("f16", 0.5, 1e-6), ("bf16", 0.5, 1e-6), ("q8_0", 34 / 128, 1e-6),
                            ("q4_0", 18 / 128, 1e-4)]:
        ctx, got = step(m, t, t)
        assert ctx.memory()["kv_bytes"] == pytest.approx(ratio * f32_bytes, rel=0.02), t
        err[t] = float(((got - ref) ** 2).sum() / (ref ** 2).sum())
        assert 0 < err[t] < bound, (t, err[t])
        assert (got.argmax(-1) == ref.argmax(-1)).all(), t
    assert err["q4_0"] > err["q8_0"]
    # K and V independently
    ctx, got = step(m, "q8_0", "f32")
    assert 0 < float(((got - ref) ** 2).sum() / (ref ** 2).sum()) < 1e-6


@needs_bundled
def test_read_kv_dequantizes_the_store():
    m = _core.Model(str(BUNDLED), 0, False)
    ref_ctx, _ = step(m, "f32", "f32")
    for t, tol in [("f16", 2e-3), ("q8_0", 2e-2)]:
        ctx, _ = step(m, t, t)
        for il in (0, m.info()["hparams"]["n_layer"] - 1):
            pr, kr, vr = ref_ctx.read_kv(il)
            p, k, v = ctx.read_kv(il)
            assert list(p) == list(pr)
            for a, b in ((np.asarray(k), np.asarray(kr)), (np.asarray(v), np.asarray(vr))):
                assert np.abs(a - b).max() <= tol * np.abs(b).max(), (t, il)


@needs_bundled
def test_quantized_store_keeps_task_accuracy():
    # the end-to-end check of a change that moves numbers: the same problems and seed through the runtime
    problems = [p for task in T.TASKS for p in T.held_out(task, 20, 2027)]

    def correct(**kw):
        m = Model(str(BUNDLED), n_ctx=256, seed=0, **kw)
        try:
            return T.runtime_eval(m, problems)["acc"]
        finally:
            m.close()

    base = correct()
    assert base > 0.9
    for t in ("f16", "q8_0"):
        assert correct(type_k=t, type_v=t) >= base - 2 / len(problems), t


@needs_bundled
def test_a_wrapped_ring_truncated_and_refilled_stays_close_on_an_f16_store():
    # the states multi-turn chat reaches: several chunks past the sliding window (the ring wraps), a
    # truncation (/regen) and new turns on top, then a canvas
    m = _core.Model(str(BUNDLED), 0, False)
    V = m.info()["hparams"]["n_vocab"]
    rng = np.random.default_rng(5)
    chunks = [rng.integers(3, V, n).astype(np.int32) for n in (300, 200, 150)]
    out = {}
    for t in ("f32", "f16", "q8_0"):
        ctx = _core.Context(m, 1024, 128, 2, type_k=t, type_v=t)
        for c in chunks:
            ctx.encode(c)
        ctx.truncate(600)
        ctx.encode(chunks[2][:90])
        canvas = np.random.default_rng(1).integers(3, V, ctx.canvas_length).astype(np.int32)
        out[t] = np.array(ctx.decode_step(canvas, None, 1.0, True), dtype=np.float64)
    for t in ("f16", "q8_0"):
        err = float(((out[t] - out["f32"]) ** 2).sum() / (out["f32"] ** 2).sum())
        assert 0 < err < 1e-5, (t, err)
        assert (out[t].argmax(-1) == out["f32"].argmax(-1)).mean() >= 0.99, t


def test_errors_name_the_type_and_the_choices(converted):
    m = _core.Model(str(converted("spec9", "f32")), 0, False)
    with pytest.raises(EngineError, match=r"type_k: unknown KV store type 'q3_k'; use one of f32, f16"):
        _core.Context(m, 256, 256, 1, type_k="q3_k")
    hd = m.info()["hparams"]["head_dim_swa"]
    if hd % 32:
        with pytest.raises(EngineError, match=rf"type_v q8_0: layer 0's head dim {hd} is not a multiple of its "
                                              r"block of 32; use f16 or bf16"):
            _core.Context(m, 256, 256, 1, type_v="q8_0")
    _core.Context(m, 256, 256, 1, type_k="f16", type_v="bf16")   # any head dim
    with pytest.raises(ValueError, match="type_k must be one of f32, f16"):
        Model(str(converted("spec9", "f32")), type_k="F16")


# ---- placement --------------------------------------------------------------------------------------------

def test_placement_options_are_checked_before_loading(converted):
    path = str(converted("spec9", "f32"))
    for bad, msg in [("exps=CPU", "sequence of"), ([("(", "CPU")], "bad regular expression"),
                     ([("exps",)], "not a \\(pattern, device\\) pair"), ([("exps", " ")], "empty")]:
        with pytest.raises(ValueError, match=msg):
            Model(path, tensor_overrides=bad)
    with pytest.raises(ValueError, match="n_cpu_moe must be an integer in \\[0,"):
        Model(path, n_cpu_moe=-1)


@pytest.mark.skipif(bool(_core.gpu_backends()), reason="CPU-only behaviour")
def test_without_a_gpu_overrides_may_name_only_the_cpu(converted):
    path = str(converted("spec9", "f32"))
    with pytest.raises(EngineError, match="tensor override 'exps=CUDA0': no device 'CUDA0' in use; use CPU"):
        Model(path, tensor_overrides=[("exps", "CUDA0")])
    m = Model(path, n_cpu_moe=2, tensor_overrides=[("exps", "cpu"), ("attn", "CPU")])
    assert set(m._model.placement().values()) == {"CPU_Mapped"}
    m.close()


@pytest.mark.skipif(not _core.gpu_backends(), reason="needs a GPU build and device")
def test_placement_follows_ngl_moe_and_overrides(converted):
    path = str(converted("spec9", "f32"))
    n_layer = _core.Model(path, 0, False).info()["hparams"]["n_layer"]

    def where(**kw):
        return _core.Model(path, progress=None, **kw).placement()

    every = where(n_gpu_layers=-1, cpu_moe=False)
    assert all(b != "CPU_Mapped" for b in every.values())
    moe = where(n_gpu_layers=-1, cpu_moe=False, n_cpu_moe=2)
    for name, b in moe.items():
        expert_early = "_exps." in name and int(name.split(".")[1]) < 2
        assert (b == "CPU_Mapped") == expert_early, name
    ot = where(n_gpu_layers=-1, cpu_moe=False, tensor_overrides=[("attn_q", "CPU"), ("blk\\.0\\.", "GPU")])
    for name, b in ot.items():
        assert (b == "CPU_Mapped") == ("attn_q" in name), name
    half = where(n_gpu_layers=n_layer // 2, cpu_moe=False)
    for name, b in half.items():
        on_gpu = name.startswith("blk.") and int(name.split(".")[1]) >= n_layer - n_layer // 2
        assert (b != "CPU_Mapped") == on_gpu, name
