"""The engine's Python access: argument checking, the store invariant, graph reuse, truncate."""
from __future__ import annotations

import numpy as np
import pytest

from pygguf_diffusion import EngineError, _core
from reduction_paths import run_both_reduction_paths


@pytest.fixture(scope="module")
def model(converted):
    return _core.Model(str(converted("spec9", "f32")))


def ctx_for(model, **kw) -> _core.Context:
    kw.setdefault("n_ctx", 64)
    kw.setdefault("n_threads", 2)
    return _core.Context(model, **kw)


def ids(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 512, n).astype(np.int32)


def test_bad_arguments_raise_instead_of_crashing(model):
    ctx = ctx_for(model)
    C = ctx.canvas_length
    with pytest.raises(EngineError, match=r"token id 512 at index 2 is outside the vocabulary \[0, 512\)"):
        ctx.encode(np.array([1, 2, 512], np.int32))
    with pytest.raises(EngineError, match="token id -1"):
        ctx.encode(np.array([-1], np.int32))
    assert ctx.n_past == 0  # nothing was stored by the failed calls
    with pytest.raises(ValueError, match=f"canvas must be a 1-D array of {C} token ids"):
        ctx.decode_step(ids(0, C + 1))
    with pytest.raises(ValueError, match="1-D array"):
        ctx.encode(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match=r"must have shape \(8, 512\)"):
        ctx.decode_step(ids(0, C), sc=np.zeros((C, 7), np.float32))
    with pytest.raises(ValueError, match="sc must be None"):
        ctx.decode_step(ids(0, C), sc="yesterday")
    with pytest.raises(EngineError, match="no previous step"):
        ctx.decode_step(ids(0, C), sc="previous")
    with pytest.raises(EngineError, match="temperature must be a finite number > 0"):
        ctx.decode_step(ids(0, C), temperature=0.0)
    with pytest.raises(EngineError, match="exceed n_ctx 64"):
        ctx.encode(ids(1, 65))
    ctx.encode(ids(1, 60))
    with pytest.raises(EngineError, match="exceeds n_ctx 64"):
        ctx.decode_step(ids(0, C))
    with pytest.raises(EngineError, match="layer 9 out of range"):
        ctx.read_kv(9)
    with pytest.raises(EngineError, match="n_ctx must be >= 1"):
        ctx_for(model, n_ctx=0)
    with pytest.raises(EngineError, match="n_batch must be >= 1"):
        ctx_for(model, n_batch=0)


def test_decoder_never_changes_the_stored_prefix(model):
    ctx = ctx_for(model)
    ctx.encode(ids(3, 21))
    before = [ctx.read_kv(il) for il in range(6)]
    ctx.decode_step(ids(4, ctx.canvas_length), temperature=0.8)
    ctx.decode_step(ids(5, ctx.canvas_length), sc="previous")
    for il in range(6):
        after = ctx.read_kv(il)
        for a, b in zip(before[il], after):
            np.testing.assert_array_equal(a, b)
    assert ctx.n_past == 21


def test_steps_reuse_one_graph_per_canvas_and_are_deterministic(model):
    ctx = ctx_for(model)
    ctx.encode(ids(3, 21))
    canvas = ids(4, ctx.canvas_length)
    first = ctx.decode_step(canvas, temperature=0.8)
    again = ctx.decode_step(canvas)
    np.testing.assert_array_equal(first, again)  # same inputs, same graph: bit-identical
    assert ctx.decoder_graph_builds == 1
    ctx.encode(first.argmax(-1).astype(np.int32))
    ctx.decode_step(canvas)
    assert ctx.decoder_graph_builds == 2
    assert ctx.decode_step(canvas, return_logits=False) is None


def test_truncate_restores_the_earlier_state(model):
    ctx = ctx_for(model, n_batch=8)
    prompt = ids(6, 21)
    ctx.encode(prompt)
    canvas = ids(7, ctx.canvas_length)
    want = ctx.decode_step(canvas)
    ctx.encode(ids(8, ctx.canvas_length))          # commit a canvas...
    ctx.truncate(21)                               # ...and take it back (regenerate)
    assert ctx.n_past == 21
    np.testing.assert_allclose(ctx.decode_step(canvas), want, rtol=0, atol=1e-5)
    with pytest.raises(EngineError, match="no longer hold position"):
        ctx.truncate(2)


def test_fused_cpu_reductions_agree_with_the_generic_ggml_ops(converted):
    """The CPU kernel and the backend-independent ops (what GPUs run) give the same decisions."""
    code = (
        "import sys, numpy as np; from pygguf_diffusion import _core\n"
        f"m = _core.Model({str(converted('spec9', 'f32'))!r}); c = _core.Context(m, n_ctx=128, n_threads=2)\n"
        "r = _core.generate(c, np.arange(2, 30, dtype=np.int32), max_new_tokens=24, seed=3,"
        " max_denoising_steps=6, on_draft=lambda d: print('H', *np.round(d['entropy'], 4)))\n"
        "print('T', *r['tokens'])\n")
    fused, generic = run_both_reduction_paths(code)
    assert fused[-1] == generic[-1]  # same tokens: same argmax, samples and acceptance
    for a, b in zip(fused[:-1], generic[:-1]):
        np.testing.assert_allclose(np.array(a.split()[1:], float), np.array(b.split()[1:], float), atol=2e-3)


def test_load_progress_memory_and_devices(converted):
    seen: list[float] = []
    m = _core.Model(str(converted("spec9", "f32")), 0, progress=seen.append)
    assert seen and seen[-1] == 1.0 and all(0.0 <= a <= b <= 1.0 for a, b in zip(seen, seen[1:]))
    ctx = _core.Context(m, n_ctx=64, n_threads=2)
    before = ctx.memory()
    # the worst-case compute buffers are allocated with the context, not at the first step
    assert before["device"] == "CPU" and before["kv_bytes"] > 0 and before["compute_bytes"] > 0
    assert before["sc_bytes"] == 4 * 512 * ctx.canvas_length  # the previous step's softmax, f32 [V, C]
    ctx.encode(np.arange(2, 12, dtype=np.int32))
    ctx.decode_step(np.arange(ctx.canvas_length, dtype=np.int32))
    assert ctx.memory()["compute_bytes"] == before["compute_bytes"] and ctx.n_threads == 2
    assert isinstance(_core.gpu_backends(), list)


def test_an_interrupted_load_raises_the_callers_error_and_leaves_nothing_behind(converted):
    path = str(converted("spec9", "f32"))

    def stop(fraction: float) -> None:
        raise KeyboardInterrupt

    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            _core.Model(path, 0, progress=stop)
    assert _core.Model(path, 0, progress=lambda f: None).info()["hparams"]["n_layer"] == 6


def test_generic_reductions_break_ties_low_and_never_draw_past_the_mass(converted, tmp_path):
    """Every token's logit equal except the last (far below): the lowest index is the argmax on both
    paths, and a uniform just under 1 draws the last *likely* token, not the improbable last id (a float
    cumsum that ends short of 1 used to leave every entry below u and fall to V - 1)."""
    from gguf_edit import rewrite

    def tie(name, data):
        if name != "token_embd.weight":
            return None
        out = np.repeat(data[:1], data.shape[0], axis=0)
        out[-1] = -5.0 * data[0]
        return out

    path = rewrite(converted("spec9", "f32"), tmp_path / "ties.gguf", edit_tensor=tie)
    code = (
        "import numpy as np; from pygguf_diffusion import _core\n"
        f"m = _core.Model({str(path)!r}); c = _core.Context(m, n_ctx=64, n_threads=2)\n"
        "c.encode(np.arange(2, 12, dtype=np.int32)); C = c.canvas_length\n"
        "u = np.array([0.99999994, 0.0, 0.5, 0.25, 0.999, 0.75, 0.1, 0.9], dtype=np.float32)[:C]\n"
        "am, ent, smp = c.decode_step_reduced(np.arange(3, 3 + C, dtype=np.int32), u)\n"
        "print(*am); print(*smp); print(*np.round(ent, 4))\n")
    fused, generic = run_both_reduction_paths(code)
    assert fused[0].split() == generic[0].split() == ["0"] * 8
    assert fused[1] == generic[1]
    samples = [int(s) for s in fused[1].split()]
    assert samples[0] == 510 and samples[1] == 0 and max(samples) < 511


def test_two_contexts_of_one_model_compute_at_the_same_time(converted):
    """Each context has backend instances of its own: the CPU backend's thread count and work buffer used
    to be the model's, shared, so two contexts computing at once raced."""
    import threading

    m = _core.Model(str(converted("spec9", "f32")), 0, False)
    prompts = [np.arange(2, 40, dtype=np.int32), np.arange(100, 131, dtype=np.int32)]

    def run(ctx, prompt):
        ctx.truncate(0)
        r = _core.generate(ctx, prompt, max_new_tokens=16, seed=5, max_denoising_steps=6)
        return list(r["tokens"])

    alone = [run(_core.Context(m, n_ctx=128, n_threads=t), p) for t, p in zip((1, 2), prompts)]
    for _ in range(3):
        ctxs = [_core.Context(m, n_ctx=128, n_threads=t) for t in (1, 2)]
        got: list = [None, None]
        threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, [run(ctxs[i], prompts[i])
                                                                          for _ in range(3)]))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got[0] == [alone[0]] * 3 and got[1] == [alone[1]] * 3


def test_compute_buffers_never_grow_after_creation(converted):
    m = _core.Model(str(converted("spec9", "f32")), 0, False)
    ctx = _core.Context(m, n_ctx=300, n_batch=64, n_threads=2)
    reserved = ctx.memory()["compute_bytes"]
    C = ctx.canvas_length
    canvas = np.arange(3, 3 + C, dtype=np.int32)
    for n in (5, 64, 300 - C):  # a short prompt, one full batch, the store filled up to the last canvas
        ctx.truncate(0)
        ctx.encode(np.arange(2, 2 + n, dtype=np.int32) % 500)
        ctx.decode_step(canvas, None, 1.0, False)
        assert ctx.memory()["compute_bytes"] == reserved, n
