"""The OpenAI / llama-cpp-python sampling keywords: temperature (0 = greedy), top_k and top_p act on the
token drawn for accepted positions; stop strings end generation; n and response_format are refused
clearly. The CPU kernel's draw is checked against a NumPy formulation of the same definition."""
from __future__ import annotations

import numpy as np
import pytest

from pygguf_diffusion import CommitEvent, EngineError, Model, _core
from pygguf_diffusion._stops import StopScanner
from reduction_paths import run_both_reduction_paths

FAST = {"max_denoising_steps": 3}


@pytest.fixture(scope="module")
def ctx(converted):
    # n_gpu_layers=0: top_k / top_p are computed by the CPU sampling kernel (a GPU build refuses them)
    return _core.Context(_core.Model(str(converted("spec9", "f32")), 0), n_ctx=128, n_threads=2)


@pytest.fixture(scope="module")
def model(converted):
    return Model(converted("spec9", "f32"), n_ctx=512, n_threads=2, seed=21, n_gpu_layers=0)


def reference_draw(lp: np.ndarray, u: float, tau: float, top_k: int, top_p: float) -> int:
    """draw_params' definition (dgemma.h) in float64."""
    if tau == 0:
        return int(np.argmax(lp))
    w = np.exp((lp.astype(np.float64) - lp.max()) / tau)
    order = np.lexsort((np.arange(len(w)), -w))  # heaviest first, lower index first on ties
    k = top_k if 0 < top_k < len(w) else len(w)
    cand = order[:k]
    if top_p < 1:
        cum = np.cumsum(w[cand])
        cand = cand[: max(1, int(np.searchsorted(cum, top_p * cum[-1])) + 1)]
    kept = np.sort(cand)
    cdf = np.cumsum(w[kept])
    return int(kept[min(int(np.searchsorted(cdf, u * cdf[-1])), len(kept) - 1)])


@pytest.mark.parametrize(("tau", "top_k", "top_p"), [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.3), (0.7, 40, 0.9), (0.0, 0, 1.0),
    (1.0, 1, 1.0),
])
def test_cpu_draw_matches_its_definition(ctx, tau, top_k, top_p):
    C = ctx.canvas_length
    rng = np.random.default_rng(int(tau * 10) + top_k)
    ctx.truncate(0)
    ctx.encode(rng.integers(0, 512, 12).astype(np.int32))
    canvas = rng.integers(0, 512, C).astype(np.int32)
    uniforms = rng.random(C).astype(np.float32)
    T = 0.8
    logits = ctx.decode_step(canvas, temperature=T)
    am, ent, sample = ctx.decode_step_reduced(canvas, uniforms, temperature=T, draw_temperature=tau, top_k=top_k,
                                              top_p=top_p)
    lp = logits / np.float32(T)
    np.testing.assert_array_equal(am, lp.argmax(-1))
    want = [reference_draw(lp[i], float(uniforms[i]), tau, top_k, top_p) for i in range(C)]
    np.testing.assert_array_equal(sample, want)
    if tau == 0 or top_k == 1:
        np.testing.assert_array_equal(sample, am)
    # entropy and argmax belong to the schedule's distribution, whatever the draw settings
    _, ent_default, _ = ctx.decode_step_reduced(canvas, uniforms, temperature=T)
    np.testing.assert_array_equal(ent, ent_default)


def test_unrestricted_settings_draw_exactly_the_reference_sample(ctx):
    C = ctx.canvas_length
    canvas, u = np.arange(C, dtype=np.int32), np.linspace(0.05, 0.95, C).astype(np.float32)
    base = ctx.decode_step_reduced(canvas, u)[2]
    np.testing.assert_array_equal(ctx.decode_step_reduced(canvas, u, top_k=512, top_p=1.0)[2], base)
    np.testing.assert_array_equal(ctx.decode_step_reduced(canvas, u, top_k=10**6)[2], base)


def test_greedy_and_top_k_1_generate_the_same_tokens(model):
    greedy = model.generate("the hat", max_new_tokens=16, temperature=0, seed=4, **FAST)
    top1 = model.generate("the hat", max_new_tokens=16, top_k=1, seed=4, **FAST)
    sampled = model.generate("the hat", max_new_tokens=16, seed=4, **FAST)
    assert greedy.tokens == top1.tokens
    assert greedy.tokens != sampled.tokens  # the setting reaches the loop


@pytest.mark.parametrize(("kw", "msg"), [
    ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"top_k": 2**40}, "top_k must fit in 32 bits"),
    ({"stop": ""}, "stop must be a non-empty string"),
    ({"stop": ["ok", 3]}, "stop must be a non-empty string"),
])
def test_invalid_sampling_options_are_value_errors(model, kw, msg):
    before = model._ctx.n_past
    with pytest.raises(ValueError, match=msg):
        model.generate("x", **kw)
    assert model._ctx.n_past == before


def test_stop_string_ends_generation_and_is_not_returned(model):
    full = model.generate("the hat", max_new_tokens=24, seed=8, **FAST)
    text = full.text
    assert len(text) > 12
    stop = text[len(text) // 2: len(text) // 2 + 3]
    want = text[: text.find(stop)]
    r = model.generate("the hat", max_new_tokens=24, seed=8, stop=[stop, "\x00never"], **FAST)
    assert r.finish_reason == "stop" and r.text == want
    assert model.detokenize(r.tokens) == want[: len(model.detokenize(r.tokens))]
    events = list(model.stream_generate("the hat", max_new_tokens=24, seed=8, stop=stop, **FAST))
    assert "".join(e.text for e in events[:-1] if hasattr(e, "last")) == want
    assert model.generate("again", max_new_tokens=4, **FAST).finish_reason in ("stop", "length")  # still usable


@pytest.mark.parametrize(("pieces", "stops", "want_deltas", "want_cut"), [
    (["Hello, worl", "d! Bye"], ["world!"], ["Hello, ", ""], 7),       # spans two canvases
    (["ab", "cd", "ef"], ["zz"], ["ab", "cd", "ef"], None),             # never found
    (["abz", "zc"], ["zzz", "zc"], ["ab", "z"], 3),                      # earliest of several wins
    (["a\ufffd", "\u00e9b"], [], ["a", "\u00e9b"], None),             # split character held back
    (["abc", "d"], ["cx"], ["ab", "cd"], None),                         # held tail released when disproved
])
def test_stop_scanner_streams_only_text_before_the_stop(pieces, stops, want_deltas, want_cut):
    sc, text, deltas, cut = StopScanner(stops), "", [], None
    for i, p in enumerate(pieces):
        text = (text.replace("\ufffd", "") if "\ufffd" in text else text) + p
        d, cut = sc.feed(text, final=i == len(pieces) - 1)
        deltas.append(d)
        if cut is not None:
            break
    assert deltas == want_deltas and cut == want_cut


def test_stop_string_across_a_canvas_boundary_streams_the_same_text(model):
    events = list(model.stream_generate("the hat", max_new_tokens=24, seed=9, **FAST))
    canvases = [e.text for e in events if isinstance(e, CommitEvent)]
    assert len(canvases) >= 2 and len(canvases[0]) >= 2 and len(canvases[1]) >= 2
    full = "".join(canvases)
    stop = canvases[0][-2:] + canvases[1][:2]
    streamed = list(model.stream_generate("the hat", max_new_tokens=24, seed=9, stop=stop, **FAST))
    result = streamed[-1]
    assert result.finish_reason == "stop" and result.text == full[: full.find(stop)]
    assert "".join(e.text for e in streamed if isinstance(e, CommitEvent)) == result.text


def test_chat_completion_accepts_the_openai_keywords(model):
    msgs = [{"role": "user", "content": "the hat"}]
    r = model.create_chat_completion(msgs, max_tokens=8, temperature=0.5, top_p=0.9, top_k=20, seed=3, stop=["zz"],
                                     n=1, response_format={"type": "text"}, **FAST)
    assert r["choices"][0]["finish_reason"] in ("stop", "length")
    again = model.create_chat_completion(msgs, max_tokens=8, temperature=0.5, top_p=0.9, top_k=20, seed=3, **FAST)
    assert again["choices"][0]["message"] == r["choices"][0]["message"]  # seeded
    with pytest.raises(ValueError, match="only one choice per request"):
        model.create_chat_completion(msgs, n=2)
    with pytest.raises(ValueError, match="response_format .* is not supported"):
        model.create_chat_completion(msgs, response_format={"type": "json_object"})
    with pytest.raises(TypeError, match="logit_bias"):
        model.create_chat_completion(msgs, logit_bias={1: 5})


def test_generic_reductions_take_temperature_and_refuse_top_k(converted):
    """The backend-independent path (what GPUs run): the draw temperature (greedy included) gives the CPU
    kernel's tokens; top_k / top_p are refused before anything is encoded, not ignored."""
    code = (
        "import sys, numpy as np; from pygguf_diffusion import _core\n"
        f"m = _core.Model({str(converted('spec9', 'f32'))!r}, 0); c = _core.Context(m, n_ctx=128, n_threads=2)\n"
        "for t in (0.6, 0.0, 1e-6):\n"
        "    c.truncate(0)\n"
        "    r = _core.generate(c, np.arange(2, 30, dtype=np.int32), max_new_tokens=16, seed=3,"
        " max_denoising_steps=4, temperature=t)\n"
        "    print(*r['tokens'])\n"
        "try:\n"
        "    _core.generate(c, np.arange(2, 9, dtype=np.int32), max_new_tokens=8, top_k=3)\n"
        "except _core.EngineError as e:\n"
        "    print('ERR', e)\n")
    outs = run_both_reduction_paths(code)
    assert outs[0][:3] == outs[1][:3]  # temperature 0.6, greedy, and a temperature small enough to be greedy
    assert outs[0][1] == outs[0][2] != outs[0][0]
    assert len(outs[0]) == 3  # the CPU kernel takes top_k
    assert outs[1][3].startswith("ERR invalid generation setting: top_k / top_p need the CPU sampling kernel")


def test_engine_error_type_for_bad_draw_at_the_engine_level(ctx):
    with pytest.raises(EngineError, match="top_p must be in"):
        _core.generate(ctx, np.arange(2, 6, dtype=np.int32), top_p=0.0)


def test_generic_graph_drops_the_draw_passes_it_does_not_need(converted):
    """On the generic path the draw reuses the step's softmax at draw temperature 1 (the default) and is left
    out when greedy; the self-conditioning state is that softmax, so the next step takes none. Counted as
    vocabulary-wide SOFT_MAX / CUMSUM nodes of the last decoder graph. Within one canvas a sample of another
    kind rebuilds the graph and self-conditioning on the previous step still works; a step that asks for no
    sample keeps the graph it has."""
    code = (
        "import numpy as np; from pygguf_diffusion import _core\n"
        f"m = _core.Model({str(converted('spec9', 'f32'))!r}, 0); c = _core.Context(m, n_ctx=128, n_threads=2)\n"
        "V, C = m.info()['hparams']['n_vocab'], c.canvas_length\n"
        "c.encode(np.arange(2, 30, dtype=np.int32)); canvas = np.arange(3, 3 + C, dtype=np.int32)\n"
        "u = np.linspace(0.05, 0.95, C).astype(np.float32)\n"
        "def passes():\n"
        "    g = [n for n in c.last_graph() if n['ne'][0] == V and n['ne'][1] == C]\n"
        "    return sum(n['op'] == 'SOFT_MAX' for n in g), sum(n['op'] == 'CUMSUM' for n in g)\n"
        "for i, t in enumerate((1.0, 0.6, 0.0, 1.0)):\n"
        "    b = c.decoder_graph_builds\n"
        "    am, ent, smp = c.decode_step_reduced(canvas, u, sc_previous=i > 0, draw_temperature=t)\n"
        "    print(*passes(), c.decoder_graph_builds - b, int((smp == am).all()))\n"
        "b = c.decoder_graph_builds\n"
        "c.decode_step(canvas, 'previous')\n"
        "print(c.decoder_graph_builds - b)\n")
    fused, generic = run_both_reduction_paths(code)
    # (softmaxes, cumsums, graphs built, sample == argmax) for draw temperatures 1, 0.6, greedy, 1; then a
    # step without a sample
    assert generic[:4] == ["1 2 1 0", "2 2 1 0", "1 1 1 1", "1 2 1 0"] and generic[4] == "0"
    assert [line.split()[:2] for line in fused[:4]] == [["0", "0"]] * 4   # the CPU kernel: one fused node
    assert [line.split()[3] for line in fused[:4]] == [line.split()[3] for line in generic[:4]]
