"""dgemma-bench and the engine pieces it rests on: the per-op profiler, the plain matrix-product timer,
and the FLOP count of a decoder step."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pygguf_diffusion import EngineError, _core, bench
from pygguf_diffusion.bundled import bundled_model_path

BUNDLED = bundled_model_path()


def test_the_profiler_times_every_node_once_per_graph(converted):
    m = _core.Model(str(converted("long256", "f32")), 0, False)
    ctx = _core.Context(m, 512, 512, 2)
    ctx.encode(np.arange(3, 40, dtype=np.int32))
    canvas = np.arange(3, 3 + ctx.canvas_length, dtype=np.int32)
    ctx.decode_step(canvas, None, 1.0, False)
    n_nodes = len(ctx.last_graph())
    ctx.profile_ops(True)
    for _ in range(3):
        ctx.decode_step(canvas, "previous", 1.0, False)
    ctx.profile_ops(False)
    prof = ctx.op_profile()
    assert sum(e["count"] for e in prof) == 3 * n_nodes
    assert [e["seconds"] for e in prof] == sorted((e["seconds"] for e in prof), reverse=True)
    mats = {e["what"] for e in prof if e["op"] == "MUL_MAT"}
    assert {"attn_q.weight", "token_embd.weight", "token_embd_t"} <= mats   # layer prefixes stripped
    assert any(e["op"] == "MUL_MAT_ID" and e["what"] == "ffn_down_exps.weight" for e in prof)
    ctx.decode_step(canvas, "previous", 1.0, False)   # off: nothing added
    assert sum(e["count"] for e in ctx.op_profile()) == 3 * n_nodes
    ctx.clear_op_profile()
    assert ctx.op_profile() == []


def test_the_matmul_timer_and_its_errors():
    secs = _core.time_matmul("q8_0", 256, 512, 8, 1, 3)
    assert len(secs) == 3 and all(s > 0 for s in secs)
    with pytest.raises(EngineError, match="unknown type 'q9_9'"):
        _core.time_matmul("q9_9", 256, 512, 8)
    with pytest.raises(EngineError, match="K 100 is not a multiple of q4_K's block"):
        _core.time_matmul("q4_K", 100, 512, 8)
    if not _core.gpu_backends():
        with pytest.raises(EngineError, match="no GPU"):
            _core.time_matmul("f16", 256, 512, 8, on_gpu=True)


def test_flops_are_counted_from_the_graph_shapes(converted):
    mat = {"op": "MUL_MAT", "ne": (300, 7, 1, 1), "src": [{"ne": (64, 300, 1, 1)}, {"ne": (64, 7, 1, 1)}]}
    assert bench.node_flops(mat) == 2 * 64 * 300 * 7
    moe = {"op": "MUL_MAT_ID", "ne": (32, 2, 7, 1), "src": [{"ne": (64, 32, 4, 1)}, None, None]}
    assert bench.node_flops(moe) == 2 * 64 * 32 * 2 * 7   # only the rows each chosen expert receives
    fa = {"op": "FLASH_ATTN_EXT", "ne": (0, 0, 0, 0),
          "src": [{"ne": (128, 7, 4, 1)}, {"ne": (128, 512, 2, 1)}]}
    assert bench.node_flops(fa) == 4 * 128 * 7 * 512 * 4
    assert bench.node_flops({"op": "ADD", "ne": (5, 5, 1, 1), "src": []}) == 0

    m = _core.Model(str(converted("long256", "f16")), 0, False)
    ctx = _core.Context(m, 512, 512, 2)
    ctx.encode(np.arange(3, 40, dtype=np.int32))
    ctx.decode_step(np.arange(3, 3 + ctx.canvas_length, dtype=np.int32), None, 1.0, False)
    hp = m.info()["hparams"]
    top = bench.dominant_products(ctx.last_graph(), n=20)
    shapes = {(p["K"], p["M"], p["N"]): p for p in top}   # products of one shape are timed as one
    H, V, C = hp["n_embd"], hp["n_vocab"], ctx.canvas_length
    assert (H, V, C) in shapes and (V, H, C) in shapes   # the output layer and the self-conditioning product
    assert [p["flops"] for p in top] == sorted((p["flops"] for p in top), reverse=True)
    assert sum(p["flops"] for p in top) == sum(bench.node_flops(n) for n in ctx.last_graph() if n["op"] == "MUL_MAT")


@pytest.mark.skipif(BUNDLED is None, reason="the bundled model is not in this checkout")
def test_dgemma_bench_reports_and_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["-r", "1", "--steps", "2", "-p", "8", "--profile", "--adaptive", "-ctk", "f16",
                       "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for what in ("ms/step", "TTFT", "GFLOP/s", "plain ggml product", "peak RSS", "| MUL_MAT |", "KV f16/f32"):
        assert what in text, what
    res = json.loads(out.read_text())
    assert res["fixed"]["steps_per_canvas"] == 2
    assert res["step"]["gflop"] > 0 and res["step"]["matched_products"]
    assert abs(sum(e["share"] for e in res["profile"]) - 1) < 1e-6


def test_dgemma_bench_rejects_bad_options(capsys, tmp_path):
    assert bench.main(["--steps", "0"]) == 2
    assert "error: invalid option: --steps 0" in capsys.readouterr().err
    assert bench.main(["-ctk", "q3_k"]) == 2
    assert "--cache-type-k q3_k: must be one of" in capsys.readouterr().err
    assert bench.main(["-m", str(tmp_path / "none.gguf")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot benchmark:")
