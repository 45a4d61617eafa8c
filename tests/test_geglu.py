"""gelu(gate) * up as ggml's one GEGLU op, which the graphs use where the MLP's weights live on CUDA/ROCm/MUSA
or Metal (their GELU is the exact tanh formula; dgemma-graph.cpp, exact_geglu_on). No GPU here:
DGEMMA_FORCE_GEGLU makes the CPU run the same wiring (at its f16 GELU table's precision), next to the
composed ops of the generic path, for the fused [gate | up] expert projection and for split ones. Swapping
gate and up gives an NMSE of 7e-2; the table's error 3e-9."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gguf_edit import rewrite
from pygguf_diffusion.bundled import bundled_model_path
from reduction_paths import GENERIC, run_with_envs

BUNDLED = bundled_model_path()
pytestmark = pytest.mark.skipif(BUNDLED is None, reason="the bundled model is not in this checkout")

PROBE = """
import json, os, sys, numpy as np
from pygguf_diffusion import _core
m = _core.Model(sys.argv[1], 0, False)
ctx = _core.Context(m, 128, 64, 2)
C, V = ctx.canvas_length, m.info()["hparams"]["n_vocab"]
ctx.encode(np.arange(2, 30, dtype=np.int32))
canvas = (np.arange(C, dtype=np.int32) * 37 + 5) % V
ctx.decode_step(canvas, None, 0.7, False)
np.save(os.environ["PROBE_OUT"], np.array(ctx.decode_step(canvas, "previous", 0.7, True)))
ops = [n["op"] for n in ctx.last_graph()]
print(json.dumps({"geglu": ops.count("GEGLU"), "tanh": ops.count("TANH"), "n_layer": m.info()["hparams"]["n_layer"]}))
"""


def _run(model: Path, out_dir: Path) -> tuple[dict, dict]:
    """(composed, forced) runs on the generic path, logits saved as composed.npy / forced.npy."""
    composed, forced = (json.loads(lines[-1]) for lines in run_with_envs(
        PROBE, [{**GENERIC, "PROBE_OUT": str(out_dir / "composed.npy")},
                {**GENERIC, "PROBE_OUT": str(out_dir / "forced.npy"), "DGEMMA_FORCE_GEGLU": "1"}], (str(model),)))
    return composed, forced


@pytest.mark.parametrize("split", [False, True], ids=["fused gate_up", "split gate and up"])
def test_geglu_wiring_matches_the_composed_ops(tmp_path, split):
    model = Path(BUNDLED)
    if split:
        model = rewrite(model, tmp_path / "split.gguf", split_gate_up=True)
    composed, forced = _run(model, tmp_path)
    # one GEGLU per dense MLP and per expert block in every layer, and the self-conditioning MLP; their
    # composed tanh gone (the softcap's stays)
    n = 2 * composed["n_layer"] + 1
    assert (composed["geglu"], forced["geglu"]) == (0, n)
    assert composed["tanh"] - forced["tanh"] == n
    a = np.load(tmp_path / "forced.npy").astype(np.float64)
    b = np.load(tmp_path / "composed.npy").astype(np.float64)
    nmse = ((a - b) ** 2).sum() / (b ** 2).sum()
    assert nmse < 1e-6, nmse
    assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.99
