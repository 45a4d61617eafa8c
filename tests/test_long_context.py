"""States that short fresh-context tests never reach, each against a from-scratch transformers run:
the sliding ring wrapped many times (prompts several windows long, small n_batch, several canvases),
truncation after a decode, a second turn that diverges inside the stored prefix, positions up to 128k,
and reproducibility of a stored prompt."""
from __future__ import annotations

import numpy as np
import pytest
import tiny_checkpoint
from hf_trace import record_generate
from reference import Reference, max_abs, nmse

from pygguf_diffusion import EngineError, Model, _core

F32_BOUND = 1e-8
EOS = [1, 106, 50]
NAMES = list(tiny_checkpoint.SPECS)


def tokens(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, tiny_checkpoint.VOCAB, n).astype(np.int32)


def sliding_window(name: str) -> int:
    return tiny_checkpoint.spec(name).text["sliding_window"]


def check(record_property, label: str, got: np.ndarray, want: np.ndarray) -> None:
    e = nmse(got, want)
    record_property(label, f"nmse={e:.3g} max_abs={max_abs(got, want):.3g}")
    assert e <= F32_BOUND, f"{label}: nmse {e:.3g}"


@pytest.fixture(scope="module")
def models(converted):
    cache: dict[str, _core.Model] = {}

    def get(name: str) -> _core.Model:
        if name not in cache:
            cache[name] = _core.Model(str(converted(name, "f32")))
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_batch", [3, 512])
def test_wrapped_ring_several_canvases_match_transformers(name, n_batch, models, checkpoint, record_property):
    """A prompt five windows long (the ring wraps many times at n_batch 3), then four canvases, each
    committed and re-encoded: every decoder step equals transformers with its DynamicCache."""
    ctx = _core.Context(models(name), n_ctx=256, n_batch=n_batch, n_threads=2)
    ref = Reference(checkpoint(name))
    C = ctx.canvas_length
    todo = tokens(1, 5 * sliding_window(name) + 3)
    for k in range(4):
        canvas = tokens(100 + k, C)
        want = ref.step(canvas, encode=todo)
        ctx.encode(todo)
        check(record_property, f"{name} nb{n_batch} canvas{k} no-SC", ctx.decode_step(canvas, temperature=0.8), want)
        # self-conditioning on the reference's own processed logits: fed the engine's (equal to NMSE 1e-11),
        # these random models amplify the difference up to ~2e-8 in one step (explicit, canvas 1)
        canvas2, sc = tokens(200 + k, C), want / np.float32(0.8)
        want2 = ref.step(canvas2, sc_logits=sc)
        check(record_property, f"{name} nb{n_batch} canvas{k} SC", ctx.decode_step(canvas2, sc=sc), want2)
        todo = want2.argmax(-1).astype(np.int32)


def _ring_slack(ctx: _core.Context, n_batch: int) -> int:
    """How many stored positions truncate() can drop: the ring's slots beyond the window."""
    return max(n_batch, ctx.canvas_length)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("depth", ["one", "slack"])
def test_truncation_after_decoding_equals_a_fresh_run(name, depth, models, checkpoint, record_property):
    """Decode (canvas K/V written), commit, decode again, then drop stored positions and continue with
    other tokens: the result equals transformers run from scratch on the surviving sequence."""
    n_batch = 4
    ctx = _core.Context(models(name), n_ctx=256, n_batch=n_batch, n_threads=2)
    C = ctx.canvas_length
    stored = tokens(3, 4 * sliding_window(name) + 1)
    ctx.encode(stored)
    first = ctx.decode_step(tokens(4, C))
    ctx.decode_step(tokens(5, C), sc="previous")
    committed = first.argmax(-1).astype(np.int32)
    ctx.encode(committed)
    stored = np.concatenate([stored, committed])
    ctx.decode_step(tokens(6, C))
    d = 1 if depth == "one" else _ring_slack(ctx, n_batch)
    n = ctx.n_past - d
    ctx.truncate(n)
    assert ctx.n_past == n
    new = tokens(7, 2 * sliding_window(name) + 1)
    ctx.encode(new)
    canvas = tokens(8, C)
    got = ctx.decode_step(canvas)
    want = Reference(checkpoint(name)).step(canvas, encode=np.concatenate([stored[:n], new]))
    check(record_property, f"{name} truncate {d} after decode", got, want)


def test_a_ring_clamped_by_a_small_n_ctx_decodes_and_truncates(models, checkpoint, record_property):
    """n_ctx below sliding_window - 1 + max(n_batch, canvas): the ring holds n_ctx slots and never wraps."""
    ctx = _core.Context(models("spec9"), n_ctx=20, n_batch=16, n_threads=2)
    C = ctx.canvas_length
    stored = tokens(20, 10)
    ctx.encode(stored)
    ctx.decode_step(tokens(21, C))
    ctx.truncate(8)
    new = tokens(22, 3)
    ctx.encode(new)
    canvas = tokens(23, C)
    want = Reference(checkpoint("spec9")).step(canvas, encode=np.concatenate([stored[:8], new]))
    check(record_property, "spec9 n_ctx 20", ctx.decode_step(canvas), want)


def test_truncation_deeper_than_the_ring_is_refused(models):
    ctx = _core.Context(models("spec9"), n_ctx=256, n_batch=4, n_threads=2)
    ctx.encode(tokens(9, 60))
    ctx.decode_step(tokens(10, ctx.canvas_length))
    with pytest.raises(EngineError, match="no longer hold position .* encode the sequence again"):
        ctx.truncate(60 - _ring_slack(ctx, 4) - 1)
    assert ctx.n_past == 60  # a refused truncation changes nothing
    ctx.truncate(0)
    assert ctx.n_past == 0


@pytest.mark.parametrize(("name", "steps"), [("spec9", 10), ("explicit", 6)])
@pytest.mark.parametrize("divergence", ["shallow", "deep"])
def test_second_turn_diverging_inside_the_stored_prefix_replays_transformers(
        name, steps, divergence, models, checkpoint):
    """Turn 1 leaves prompt + re-encoded canvases in the store; turn 2 shares only part of it. Continued
    on that context (shallow: truncation inside the ring's slack; deep: beyond it, so the whole prompt
    is encoded afresh), the loop replays transformers' generate() on turn 2's prompt token for token."""
    ctx = _core.Context(models(name), n_ctx=512, n_batch=4, n_threads=2)
    C = ctx.canvas_length
    turn1 = tokens(11, 4 * sliding_window(name) + 2)
    r1 = _core.generate(ctx, turn1, max_new_tokens=3 * C, max_denoising_steps=3, seed=1)
    n_canvas = len(r1["stats"]["steps_per_canvas"])
    assert n_canvas >= 2 and ctx.n_past == len(turn1) + (n_canvas - 1) * C  # the last canvas is not re-encoded
    stored = np.concatenate([turn1, np.array(r1["tokens"][:(n_canvas - 1) * C], np.int32)])
    keep = len(stored) - 3 if divergence == "shallow" else len(turn1) - 2 * sliding_window(name)
    turn2 = np.concatenate([stored[:keep], tokens(12, 2 * sliding_window(name) + 3)])
    try:
        ctx.truncate(keep)
    except EngineError:
        assert divergence == "deep"
        ctx.truncate(0)
        keep = 0
    else:
        assert divergence == "shallow"
    tr = record_generate(checkpoint(name), turn2, seed=2, steps=steps, eos=EOS, max_new_tokens=3 * C)
    r = _core.generate(ctx, turn2[keep:], max_new_tokens=3 * C, max_denoising_steps=steps, eos_ids=EOS,
                       forced={"init": tr.init, "sampled": tr.sampled, "noise": tr.noise})
    np.testing.assert_array_equal(np.array(r["tokens"], np.int64), tr.new_tokens[:3 * C])
    assert r["stats"]["steps_per_canvas"] == tr.steps and len(tr.steps) >= 2


# Measured (f32, 2026-11-27): ggml's rope op gave logit NMSE 3.1e-6 at 8k and 8.0e-6 at 32k with the real
# head dims; with the reference-exact angle tables 2.0e-10 and 3.2e-9; long16 at 128k 4.4e-7 -> 2.2e-10.
@pytest.mark.parametrize(("name", "offset"), [
    ("long256", 8192), ("long256", 32768),
    pytest.param("long16", 131072, marks=pytest.mark.slow),
])
def test_decoder_logits_at_long_positions(name, offset, models, checkpoint, record_property):
    ctx = _core.Context(models(name), n_ctx=offset + 16, n_batch=512, n_threads=2)
    prompt = tokens(offset, offset)
    canvas = tokens(offset + 1, ctx.canvas_length)
    ctx.encode(prompt)
    got = ctx.decode_step(canvas)
    ref = Reference(checkpoint(name))
    ref.encode(prompt)
    check(record_property, f"{name} position {offset}", got, ref.step(canvas))


@pytest.mark.parametrize(("n_batch", "encoded_again"), [(16, 0), (4, 30)])
def test_a_stored_prompt_repeats_its_answer(converted, n_batch, encoded_again):
    """Same prompt, seed and settings: the same tokens whether or not the prompt was already stored,
    also after an answer whose re-encoded canvases must be dropped first (16 positions: within the
    ring's slack at n_batch 16, so the stored K/V are reused; beyond it at n_batch 4, so the prompt is
    encoded afresh, in the same chunks as the first time)."""
    path = converted("spec9", "f32")
    m = Model(path, n_ctx=512, n_batch=n_batch, n_threads=2, seed=3)
    prompt = list(tokens(13, 30))
    first = m.generate(prompt, max_new_tokens=24, max_denoising_steps=4)
    assert first.stats.steps_per_canvas == [4, 4, 4]
    again = m.generate(prompt, max_new_tokens=24, max_denoising_steps=4)
    assert again.tokens == first.tokens and again.stats.prompt_tokens == encoded_again
    fresh = Model(path, n_ctx=512, n_batch=n_batch, n_threads=2, seed=3)
    assert fresh.generate(prompt, max_new_tokens=24, max_denoising_steps=4).tokens == first.tokens
