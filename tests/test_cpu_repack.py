"""CPU weights in the CPU backend's repacked layouts (dgemma-cpu-repack.cpp): which tensors move, that the
mapping keeps the rest, and that the repacked products compute the same model. cpu_repack=False (the CLI's
--no-repack) keeps every weight in the mapping."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

from pygguf_diffusion import _core
from pygguf_diffusion.bundled import bundled_model_path
from pygguf_diffusion.quant.requantize import requantize

BUNDLED = bundled_model_path()

# the names dgemma-cpu-repack.cpp may move: the experts (the dense products measured slower repacked)
EXPERTS = ("ffn_gate_up_exps.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")


def _x86_avx2() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _logits(path: Path, cpu_repack: bool = True) -> np.ndarray:
    m = _core.Model(str(path), 0, False, cpu_repack=cpu_repack)
    ctx = _core.Context(m, 128, 64, 2)
    C, V = ctx.canvas_length, m.info()["hparams"]["n_vocab"]
    ctx.encode(np.arange(2, 40, dtype=np.int32))   # 38 prompt tokens: the products' multi-row kernels
    canvas = (np.arange(C, dtype=np.int32) * 37 + 5) % V
    first = np.array(ctx.decode_step(canvas, None, 1.0, True), np.float64)
    return np.stack([first, np.array(ctx.decode_step(canvas, "previous", 1.0, True), np.float64)])


@pytest.fixture(scope="module")
def q4_0(tmp_path_factory) -> Path:
    if BUNDLED is None:
        pytest.skip("the bundled model is not in this checkout")
    path = tmp_path_factory.mktemp("repack") / "m-q4_0.gguf"
    requantize(BUNDLED, path, "q4_0")
    return path


@pytest.mark.skipif(not _x86_avx2(), reason="the repacked q4_0 layout this checks is ggml's AVX2 one")
def test_q4_0_expert_weights_move_to_the_repacked_layout_and_nothing_else(q4_0):
    m = _core.Model(str(q4_0), 0, False)
    where = m.placement()
    tensors = {t["name"]: t for t in m.info()["tensors"]}
    moved = {n for n, b in where.items() if b == "CPU_REPACK"}
    # ggml's AVX2 rule: q4_0 rows in groups of 8 (shape is ggml's ne: ne[1] is the row count)
    expected = {n for n, t in tensors.items()
                if n.endswith(EXPERTS) and t["type"] == "q4_0" and t["shape"][1] % 8 == 0}
    assert expected   # q4_0 expert rows in groups of 8: the bundled model has them
    assert moved == expected
    assert where["token_embd.weight"] == "CPU_Mapped"           # GET_ROWS reads its plain rows
    assert set(where.values()) == {"CPU_Mapped", "CPU_REPACK"}
    assert set(_core.Model(str(q4_0), 0, False, cpu_repack=False).placement().values()) == {"CPU_Mapped"}
    from pygguf_diffusion import Model   # the Python API passes it on
    assert set(Model(q4_0, cpu_repack=False, n_ctx=64)._model.placement().values()) == {"CPU_Mapped"}
    assert "CPU_REPACK" in Model(q4_0, n_ctx=64)._model.placement().values()
    with pytest.raises(ValueError, match="cpu_repack must be True or False"):
        Model(q4_0, cpu_repack="no")


@pytest.mark.skipif(not _x86_avx2(), reason="the repacked q4_0 layout this checks is ggml's AVX2 one")
def test_repacked_products_compute_the_same_model(q4_0):
    """Against the plain layout: the same quantized weights and activations (the integer block products are
    exact); the bound leaves room for another summation order. Measured 2026-11-28 (AVX2, experts repacked):
    bit-identical logits with and without self-conditioning, NMSE against the f32 file 1.50e-4 / 2.22e-4 as
    for the plain layout (with the dense products repacked as well, 1.9e-9 / 5.4e-7 apart)."""
    assert "CPU_REPACK" in _core.Model(str(q4_0), 0, False).placement().values()
    repacked = _logits(q4_0)
    plain = _logits(q4_0, cpu_repack=False)
    for a, b in zip(repacked, plain):
        nmse = ((a - b) ** 2).sum() / (b ** 2).sum()
        assert nmse < 1e-5, nmse
        assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.99


@pytest.mark.skipif(not _x86_avx2(), reason="the repacked q4_0 layout this checks is ggml's AVX2 one")
def test_load_progress_stays_monotonic_through_the_repacking(q4_0):
    seen: list[float] = []
    m = _core.Model(str(q4_0), 0, False, progress=seen.append)
    assert "CPU_REPACK" in m.placement().values()
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    assert all(a <= b for a, b in zip(seen, seen[1:])), seen
    assert any(0.0 < f < 0.5 for f in seen)   # the repacking itself reports, before the vocabulary copies


@pytest.mark.skipif(not _x86_avx2(), reason="the repacked q4_0 layout this checks is ggml's AVX2 one")
def test_a_load_aborted_during_the_repacking_raises_and_frees_everything(q4_0):
    class Stop(Exception):
        pass

    def stop(f: float) -> None:
        if 0.0 < f < 0.5:
            raise Stop("stop")

    for _ in range(3):   # nothing left behind: the next loads work
        with pytest.raises(Exception, match="stop"):
            _core.Model(str(q4_0), 0, False, progress=stop)
    assert "CPU_REPACK" in _core.Model(str(q4_0), 0, False).placement().values()


@pytest.mark.skipif(not _x86_avx2(), reason="the repacked q4_0 layout this checks is ggml's AVX2 one")
def test_mlps_over_repacked_weights_keep_the_cpu_gelu_kernel(q4_0):
    # a repacked buffer is not a host buffer; the graphs must still know the CPU computes its products (the
    # composed GELU's scalar TANH cost 1.06 s of a 19.9 s released-shape step when they did not)
    m = _core.Model(str(q4_0), 0, False)
    assert "CPU_REPACK" in m.placement().values()
    ctx = _core.Context(m, 128, 64, 2)
    ctx.encode(np.arange(2, 30, dtype=np.int32))
    ctx.decode_step(np.arange(3, 3 + ctx.canvas_length, dtype=np.int32), None, 1.0, False)
    ops = [n["op"] for n in ctx.last_graph()]
    assert "TANH" not in ops and "GELU" not in ops
    assert ops.count("MAP_CUSTOM1") >= 2 * m.info()["hparams"]["n_layer"]   # dense MLP + experts per layer
