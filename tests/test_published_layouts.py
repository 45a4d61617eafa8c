"""Files laid out like the published GGUFs (Unsloth's BF16, Q8_0, Q6_K, Q5_K_M, Q4_K_M and the "UD" dynamic
mixes with a different type per tensor; fused or split expert gate/up; #24427's alias name), built from the
bundled model, load and give decoder logits within bounds of the f32 file; a type this build cannot run
is refused at load, naming the tensor and type (tested in test_loader.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gguf import GGUFReader

from pygguf_diffusion.bundled import bundled_model_path
from pygguf_diffusion.quant.requantize import requantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quant_table as QT  # noqa: E402
from gguf_edit import rewrite  # noqa: E402

BUNDLED = bundled_model_path()
pytestmark = pytest.mark.skipif(BUNDLED is None, reason="the bundled model is not in this checkout")

# per-tensor choices in the manner of the "UD" (dynamic) files: attention and the embedding kept high,
# the experts low, the down projections between
UD = [("attn_", "q8_0"), ("token_embd", "q8_0"), ("ffn_down_exps", "q6_K"), ("_exps", "q4_K"),
      ("self_cond", "bf16"), ("ffn_(gate|up|down)\\.", "q5_K")]

LAYOUTS = {  # name -> (mix, overrides, split gate/up, rename, NMSE bound against f32)
    "BF16": ("bf16", None, False, None, 1e-5),
    "Q8_0": ("Q8_0", None, False, None, 1e-4),
    "Q6_K": ("Q6_K", None, False, None, 3e-4),
    "Q5_K_M": ("Q5_K_M", None, False, None, 5e-4),
    "Q4_K_M": ("Q4_K_M", None, False, None, 1e-3),
    "Q4_K_M split gate/up": ("Q4_K_M", None, True, None, 1e-3),
    "UD-Q4_K_XL-like": ("Q4_K_M", UD, False, None, 1e-3),
    "UD, split, #24427 name": ("Q4_K_M", UD, True, {"self_cond_pre_norm.weight": "self_cond_norm.weight"}, 1e-3),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("layouts")
    f32, _ = QT.make(Path(BUNDLED), d, "f32")
    split = rewrite(f32, d / "split-f32.gguf", split_gate_up=True)
    states = QT.canvases(f32, QT.logit_prompts(QT.N_LOGIT_PROMPTS, QT.TEST_SEED), 2)
    return d, f32, split, states, QT.step_logits(f32, states, 2)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_loads_and_matches_f32(reference, layout):
    d, f32, split, states, ref_logits = reference
    mix, overrides, is_split, rename, bound = LAYOUTS[layout]
    out = d / (layout.replace(" ", "_").replace("/", "-").replace(",", "").replace("#", "") + ".gguf")
    requantize(split if is_split else f32, out, mix, tensor_types=overrides, force=True)
    if rename:
        out = rewrite(out, out.with_name("renamed-" + out.name), rename=rename)
    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    if is_split:
        assert "blk.0.ffn_gate_exps.weight" in types and "blk.0.ffn_gate_up_exps.weight" not in types
    if overrides:
        assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.ffn_down_exps.weight"] == "Q8_0"
        assert types["self_cond_up.weight"] == "BF16" and types["blk.0.ffn_up.weight"] == "Q5_K"
        assert len(set(types.values())) >= 5
    nmse, top1 = QT.logit_error(ref_logits, QT.step_logits(out, states, 2))
    assert nmse < bound and top1 > 0.99, (nmse, top1)

# A type this build cannot run is refused at load with the tensor and type named: test_loader.py
# (test_rejects_matrix_types_without_a_dot_product).
