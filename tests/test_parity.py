"""The engine against transformers 5.24.0 in f32, step for step: encoder K/V, decoder logits without and
with self-conditioning, and later canvases after re-encoding the committed one."""
from __future__ import annotations

import numpy as np
import pytest
import tiny_checkpoint
from gguf_edit import rewrite
from reference import Reference, max_abs, nmse

from pygguf_diffusion import _core

NAMES = list(tiny_checkpoint.SPECS)
PROMPT_LEN = 21  # longer than every fixture's sliding window: exercises the decoder's sliding truncation

# Bounds on logits NMSE against the f32 reference, per GGUF weight type.
# f32: every step of every scenario (measured <= 7.7e-10 on these fixtures).
# Low precision: the random tiny models are chaotic there (a rounding flips a router's top-k now and then
# and moves that seed's logits by 1e-2..1e-1), so the bound applies to the median over 8 seeds. Measured
# medians: f16 3.4e-4 / 3.8e-5 / 1.2e-4 (spec9 / released / explicit), bf16 1.6e-2 / 3.7e-2 (spec9 /
# released), q8_0 2.9e-2 (spec9). The mutation test shows what each bound catches.
F32_BOUND = 1e-8
LOW_PRECISION = {("spec9", "f16"): 1e-3, ("released", "f16"): 1e-3, ("explicit", "f16"): 1e-3,
                 ("spec9", "bf16"): 5e-2, ("released", "bf16"): 5e-2, ("spec9", "q8_0"): 1e-1}
F16_BOUND = 1e-3

def tokens(seed: int, n: int, vocab: int = tiny_checkpoint.VOCAB) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


def report(record_property, label: str, got: np.ndarray, ref: np.ndarray) -> float:
    e = nmse(got, ref)
    record_property(label, f"nmse={e:.3g} max_abs={max_abs(got, ref):.3g}")
    print(f"{label}: nmse {e:.3g}, max abs {max_abs(got, ref):.3g}")
    return e


@pytest.fixture(scope="module")
def refs(checkpoint):
    def get(name: str) -> Reference:
        return Reference(checkpoint(name))   # a fresh DynamicCache each time

    return get


@pytest.fixture(scope="module")
def engine(converted):
    models: dict[tuple[str, str], _core.Model] = {}

    def get(name: str, outtype: str = "f32", n_batch: int = 512) -> _core.Context:
        key = (name, outtype)
        if key not in models:
            models[key] = _core.Model(str(converted(name, outtype)))
        return _core.Context(models[key], n_ctx=256, n_batch=n_batch, n_threads=2)

    return get


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_batch", [512, 5])
def test_encoder_kv_every_layer_and_position(name, n_batch, refs, engine, record_property):
    ref, ctx = refs(name), engine(name, n_batch=n_batch)
    prompt = tokens(1, PROMPT_LEN)
    C = ctx.canvas_length
    ref.step(tokens(2, C), encode=prompt)
    ctx.encode(prompt)
    assert ctx.n_past == PROMPT_LEN
    sw = tiny_checkpoint.SPECS[name].text["sliding_window"]
    for il in range(tiny_checkpoint.SPECS[name].text["num_hidden_layers"]):
        pos, k, v = ctx.read_kv(il)
        rk, rv = ref.kv(il)
        # the decoder sees every position of a full layer and the last sw-1 of a sliding layer
        assert len(pos) in (PROMPT_LEN, sw - 1)
        assert list(pos) == list(range(PROMPT_LEN - len(pos), PROMPT_LEN))
        assert k.shape == rk.shape and v.shape == rv.shape
        assert report(record_property, f"{name} L{il} K", k, rk) <= F32_BOUND
        assert report(record_property, f"{name} L{il} V", v, rv) <= F32_BOUND


@pytest.mark.parametrize("name", NAMES)
def test_decoder_logits_three_canvases_with_and_without_self_conditioning(name, refs, engine, record_property):
    ref, ctx = refs(name), engine(name)
    C = ctx.canvas_length
    todo = tokens(3, PROMPT_LEN)
    for canvas_no in range(3):
        canvas = tokens(10 + canvas_no, C)
        # step 1: no self-conditioning
        want = ref.step(canvas, encode=todo)
        ctx.encode(todo)
        got = ctx.decode_step(canvas, temperature=0.8)
        assert report(record_property, f"{name} canvas{canvas_no} no-SC", got, want) <= F32_BOUND
        # step 2: SC from the processed logits of step 1, kept on the device
        sc = want / np.float32(0.8)
        canvas2 = tokens(20 + canvas_no, C)
        want2 = ref.step(canvas2, sc_logits=sc)
        got2 = ctx.decode_step(canvas2, sc="previous", temperature=0.6)
        assert report(record_property, f"{name} canvas{canvas_no} SC(previous)", got2, want2) <= F32_BOUND
        # step 3: SC logits supplied by the caller
        sc3 = want2 / np.float32(0.6)
        want3 = ref.step(canvas, sc_logits=sc3)
        got3 = ctx.decode_step(canvas, sc=sc3)
        assert report(record_property, f"{name} canvas{canvas_no} SC(given)", got3, want3) <= F32_BOUND
        # commit the argmax and re-encode it at the canvas's own positions before the next canvas
        todo = want3.argmax(axis=-1).astype(np.int32)
    assert ctx.decoder_graph_builds == 3  # one decoder graph per canvas, reused by its steps


@pytest.mark.parametrize(("name", "outtype"), sorted(LOW_PRECISION))
def test_low_precision_weights_stay_within_measured_bounds(name, outtype, refs, engine, record_property):
    errors = []
    for seed in range(8):
        ref, ctx = refs(name), engine(name, outtype)
        prompt, canvas = tokens(seed, PROMPT_LEN), tokens(seed + 100, ctx.canvas_length)
        want = ref.step(canvas, encode=prompt)
        ctx.encode(prompt)
        errors.append(report(record_property, f"{name} {outtype} seed{seed}", ctx.decode_step(canvas), want))
    median = float(np.median(errors))
    record_property(f"{name} {outtype} median", f"{median:.3g}")
    assert median <= LOW_PRECISION[(name, outtype)]


MUTATIONS = {
    # encoder and decoder layer scalars exchanged (a parity bug of one published draft)
    "swap_layer_scalars": None,
    # Gemma-2/3 style (1 + w) on one norm
    "norm_plus_one": lambda t, d: d + 1.0 if t == "blk.2.post_ffw_norm.weight" else None,
    # one router scale off by 50%
    "router_scale": lambda t, d: d * 1.5 if t == "blk.1.ffn_gate_inp.scale" else None,
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_perturbed_tensor_fails_the_parity_check(mutation, converted, refs, tmp_path, record_property):
    """Proof the comparison has teeth: every perturbed model fails the f32 check; the norm and scalar
    mutations fail the f16 bound too."""
    from gguf import GGUFReader

    src = converted("spec9", "f32")
    edit = MUTATIONS[mutation]
    if edit is None:
        scal = {t.name: np.array(t.data) for t in GGUFReader(src).tensors if "layer_output_scale" in t.name}
        other = {n: n.replace("enc_layer", "layer") if "enc_layer" in n else n.replace("layer_output", "enc_layer_output")
                 for n in scal}

        def edit(tname, data):
            return scal[other[tname]].reshape(data.shape) if tname in other else None

    bad = rewrite(src, tmp_path / f"{mutation}.gguf", edit_tensor=edit)
    ctx = _core.Context(_core.Model(str(bad)), n_ctx=256, n_threads=2)
    ref = refs("spec9")
    prompt, canvas = tokens(0, PROMPT_LEN), tokens(100, ctx.canvas_length)
    want = ref.step(canvas, encode=prompt)
    ctx.encode(prompt)
    e = report(record_property, f"mutation {mutation}", ctx.decode_step(canvas), want)
    assert e > 1000 * F32_BOUND, f"{mutation} went unnoticed (nmse {e:.3g})"
    if mutation != "router_scale":
        assert e > 10 * F16_BOUND
