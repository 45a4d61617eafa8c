"""Canvas editing in the engine loop: a warm start replays transformers' generate(decoder_input_ids=...)
token for token, and frozen positions follow docs/generation-contract.md (fixed, always accepted, outside
the entropy budget and the stop criterion's mean entropy, committed as given, over several canvases)."""
from __future__ import annotations

import numpy as np
import pytest
from hf_trace import record_generate

from pygguf_diffusion import EngineError, _core

EOS = [1, 106, 50]
V = 512  # the fixtures' vocabulary


@pytest.fixture(scope="module")
def spec9(converted):
    model = _core.Model(str(converted("spec9", "f32")))

    def ctx():
        return _core.Context(model, n_ctx=512, n_threads=2)

    return ctx


# name, seed, steps, max_new_tokens, extra settings (short chains: see test_generate.SCENARIOS)
WARM = [("spec9", 11, 10, 24, {}), ("spec9", 12, 12, 24, {}), ("released", 13, 4, 32, {"entropy_bound": 0.5}),
        ("spec9", 14, 8, 24, {"confidence_threshold": 50.0, "stability_threshold": 1})]


@pytest.mark.parametrize(("name", "seed", "steps", "max_new", "extra"), WARM)
def test_a_warm_start_replays_transformers_decoder_input_ids(name, seed, steps, max_new, extra, checkpoint,
                                                             converted):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, V, 17).astype(np.int32)
    C = 16 if name == "released" else 8
    start = rng.integers(3, V, C).astype(np.int32)
    tr = record_generate(checkpoint(name), prompt, seed=seed, steps=steps, eos=EOS, max_new_tokens=max_new,
                         decoder_input_ids=start, **extra)
    cold = record_generate(checkpoint(name), prompt, seed=seed, steps=steps, eos=EOS, max_new_tokens=max_new,
                           **extra)
    ctx = _core.Context(_core.Model(str(converted(name, "f32"))), n_ctx=512, n_threads=2)
    r = _core.generate(ctx, prompt, max_new_tokens=-1 if len(tr.new_tokens) < max_new else max_new,
                       max_denoising_steps=steps, eos_ids=EOS, canvas_init=start.tolist(),
                       forced={"init": tr.init, "sampled": tr.sampled, "noise": tr.noise}, **extra)
    want = tr.new_tokens[:max_new]
    np.testing.assert_array_equal(np.array(r["tokens"]), want)
    assert r["stats"]["steps_per_canvas"] == tr.steps
    # the starting canvas mattered: the reference's own cold start differs
    assert not np.array_equal(cold.new_tokens[:len(want)], want) or cold.steps != tr.steps


def frozen_run(ctx, prompt, init, frozen, **kw):
    drafts, commits = [], []
    kw.setdefault("eos_ids", EOS)
    r = _core.generate(ctx, prompt, canvas_init=init, canvas_frozen=frozen,
                       on_draft=lambda d: drafts.append(d), on_commit=lambda d: commits.append(d), **kw)
    return r, drafts, commits


def expected_accept(entropy: np.ndarray, bound: float) -> np.ndarray:
    order = np.argsort(entropy, kind="stable")
    csum = np.cumsum(entropy[order].astype(np.float64))
    acc = np.zeros(len(entropy), bool)
    acc[order[(csum - entropy[order]) <= bound]] = True
    return acc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frozen_positions_are_fixed_accepted_and_outside_the_budget(spec9, seed):
    rng = np.random.default_rng(100 + seed)
    prompt = rng.integers(0, V, 12).astype(np.int32)
    n = 8 * 3 - 3                                          # a template over three canvases of 8
    init = [-1] * n
    frozen = [0] * n
    for i in rng.choice(n, 11, replace=False):
        init[i], frozen[i] = int(rng.integers(3, V)), 1
    bound = 0.9
    r, drafts, commits = frozen_run(spec9(), prompt, init, frozen, max_denoising_steps=6, seed=seed,
                                    entropy_bound=bound, eos_ids=[], max_new_tokens=24)
    got = np.array(r["tokens"])
    assert len(got) == 24 and len(commits) == 3
    fz = np.array(frozen, bool)
    np.testing.assert_array_equal(got[:n][fz], np.array(init)[fz])
    for d in drafts:
        c = d["canvas_index"]
        pos = np.arange(c * 8, c * 8 + 8)
        f = np.array([p < n and bool(frozen[p]) for p in pos], bool)
        tok = np.array([init[p] if p < n else -1 for p in pos])
        np.testing.assert_array_equal(d["argmax"][f], tok[f])       # the draft shows the fixed tokens
        assert d["accepted"][f].all()
        ent = d["entropy"]
        # the budget is spent on the free rows alone, and the mean entropy is theirs
        np.testing.assert_array_equal(d["accepted"][~f], expected_accept(ent[~f], bound))
        assert d["mean_entropy"] == pytest.approx(ent[~f].mean(), rel=1e-6)
        assert d["n_accepted"] == int(d["accepted"].sum())


def test_a_canvas_fixed_whole_is_committed_without_a_step(spec9):
    prompt = np.arange(5, 15, dtype=np.int32)
    first = list(range(20, 28))
    r, drafts, commits = frozen_run(spec9(), prompt, first + [-1] * 8, [1] * 8 + [0] * 8,
                                    max_denoising_steps=4, max_new_tokens=16, eos_ids=[], seed=3)
    assert r["tokens"][:8] == first
    assert r["stats"]["steps_per_canvas"][0] == 0 and commits[0]["steps"] == 0
    assert all(d["canvas_index"] == 1 for d in drafts)
    assert r["stats"]["decoder_forwards"] == r["stats"]["steps_per_canvas"][1]


def test_a_fixed_end_of_turn_ends_the_answer_there(spec9):
    prompt = np.arange(30, 40, dtype=np.int32)
    init, frozen = [-1] * 8, [0] * 8
    init[3], frozen[3] = 106, 1
    r, _, _ = frozen_run(spec9(), prompt, init, frozen, max_denoising_steps=4, seed=5)
    assert r["finish_reason"] == "stop" and len(r["tokens"]) <= 4 and r["tokens"][-1] in EOS


def test_tokens_per_forward_counts_generated_positions_only(spec9):
    prompt = np.arange(40, 50, dtype=np.int32)
    kw = dict(max_denoising_steps=3, max_new_tokens=8, eos_ids=[], seed=1, stability_threshold=0,
              confidence_threshold=1e9)   # stop after the first step: one forward
    init = [7, 8, 9, 10, 11, 12, -1, -1]
    r, _, _ = frozen_run(spec9(), prompt, init, [1] * 6 + [0, 0], **kw)
    assert r["stats"]["decoder_forwards"] == 1
    assert r["stats"]["tokens_per_forward"] == pytest.approx(sum(t != 0 for t in r["tokens"][6:]))


def test_no_canvas_arguments_and_all_noise_are_the_cold_start(spec9):
    prompt = np.arange(60, 72, dtype=np.int32)
    kw = dict(max_denoising_steps=5, max_new_tokens=16, seed=9)
    cold = _core.generate(spec9(), prompt, **kw)["tokens"]
    assert _core.generate(spec9(), prompt, canvas_init=[-1] * 16, canvas_frozen=[0] * 16, **kw)["tokens"] == cold
    assert _core.generate(spec9(), prompt, canvas_init=[], **kw)["tokens"] == cold


@pytest.mark.parametrize(("init", "frozen", "msg"), [
    ([5, -1], [1, 1], "cannot be frozen"),
    ([5, 6], [1], "one per position"),
    ([V], None, "outside the vocabulary"),
    ([-2], None, "outside the vocabulary"),
])
def test_bad_canvases_are_refused_before_any_compute(spec9, init, frozen, msg):
    ctx = spec9()
    with pytest.raises(EngineError, match=msg):
        _core.generate(ctx, np.arange(3, 9, dtype=np.int32), canvas_init=init, canvas_frozen=frozen)
    assert ctx.n_past == 0
