"""The Python API on a tiny converted model: generate, streaming, chat completion, multi-turn prefix
reuse, argument checking, Hub resolution (mocked: no network at test time)."""
from __future__ import annotations

import numpy as np
import pytest

from pygguf_diffusion import CommitEvent, DraftEvent, EngineError, GenerationResult, Model
from pygguf_diffusion import hub as hub_mod

FAST = {"max_denoising_steps": 3}


@pytest.fixture(scope="module")
def model(converted):
    return Model(converted("spec9", "f32"), n_ctx=512, n_threads=2, seed=11)


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        Model(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(EngineError, match="bad.gguf"):
        Model(bad)
    with pytest.raises(ValueError, match=r"n_ctx must be an integer in \[1, 2147483647\]"):
        Model(bad, n_ctx=0)


def test_generate_result_and_real_token_limit(model):
    r = model.generate("the hat", max_new_tokens=5, **FAST)
    assert isinstance(r, GenerationResult)
    assert len(r.tokens) == 5 and r.finish_reason == "length"  # canvas is 8: the limit is on tokens
    assert r.text == model.detokenize([t for t in r.tokens if t not in model.tokenizer.eog_ids])
    assert r.stats.committed_tokens == 5 and r.stats.steps_per_canvas == [3]
    assert r.prompt_tokens[0] == 2  # <bos> added to plain-text prompts


def test_unknown_and_invalid_arguments(model):
    before = model._ctx.n_past
    with pytest.raises(TypeError, match="presence_penalty"):
        model.generate("x", presence_penalty=0.7)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer"):
        model.generate("x", max_new_tokens=2.5)
    with pytest.raises(ValueError, match="need 0 <= t_min < t_max"):
        model.generate("x", t_min=0.9, t_max=0.1)
    with pytest.raises(ValueError, match="max_denoising_steps must be >= 1"):
        model.generate("x", max_denoising_steps=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate([])
    assert model._ctx.n_past == before  # nothing was encoded


def test_stream_generate_events(model):
    events = list(model.stream_generate("the hat", max_new_tokens=12, **FAST))
    drafts = [e for e in events if isinstance(e, DraftEvent)]
    commits = [e for e in events if isinstance(e, CommitEvent)]
    result = events[-1]
    assert isinstance(result, GenerationResult)
    assert len(drafts) == 6 and [d.steps_remaining for d in drafts[:3]] == [3, 2, 1]
    assert [len(c.tokens) for c in commits] == [8, 4] and commits[-1].last
    assert "".join(c.text for c in commits) == result.text
    assert drafts[2].tokens == commits[0].tokens  # the committed canvas is the last draft's argmax
    no_drafts = list(model.stream_generate("the hat", max_new_tokens=12, drafts=False, **FAST))
    assert not any(isinstance(e, DraftEvent) for e in no_drafts)


def test_seeds(converted):
    a = Model(converted("spec9", "f32"), n_ctx=256, n_threads=2, seed=5)
    b = Model(converted("spec9", "f32"), n_ctx=256, n_threads=2, seed=5)
    ra, rb = a.generate("the", max_new_tokens=16, **FAST), b.generate("the", max_new_tokens=16, **FAST)
    assert ra.tokens == rb.tokens
    assert a.generate("the", max_new_tokens=16, seed=6, **FAST).tokens != ra.tokens


def test_multi_turn_appends_to_the_stored_prefix(model):
    model.reset()
    conv = [{"role": "user", "content": "the hat"}]
    first = model.create_chat_completion(conv, max_tokens=8, **FAST)
    full1 = model.tokenizer.encode(model.apply_chat_template(conv))
    assert first["usage"]["prompt_tokens"] == len(full1)
    conv += [first["choices"][0]["message"], {"role": "user", "content": "and the rest"}]
    full2 = model.tokenizer.encode(model.apply_chat_template(conv))
    r = model.generate(full2, max_new_tokens=8, **FAST)
    # only the tokens after the common prefix with the stored conversation were encoded
    assert r.stats.prompt_tokens < len(full2)
    assert full2[: len(full2) - r.stats.prompt_tokens] == full1[: len(full2) - r.stats.prompt_tokens]
    # and the answer equals a from-scratch run with the same seed
    fresh = Model(model.path, n_ctx=512, n_threads=2, seed=11)
    assert fresh.generate(full2, max_new_tokens=8, **FAST).tokens == r.tokens


def test_stopping_a_stream_early_leaves_the_model_usable(model):
    stream = model.stream_generate("the hat", max_new_tokens=64, **FAST)
    for ev in stream:
        if isinstance(ev, DraftEvent) and ev.step == 2:
            break
    stream.close()
    assert model._ctx.n_past == len(model._stored)
    assert len(model.generate("again", max_new_tokens=8, **FAST).tokens) == 8


def test_interrupt_in_the_consumer_leaves_the_model_usable(model):
    with pytest.raises(KeyboardInterrupt):
        for ev in model.stream_generate("the hat", max_new_tokens=64, **FAST):
            if isinstance(ev, CommitEvent):
                raise KeyboardInterrupt
    assert model._ctx.n_past == len(model._stored)
    r = model.generate("x", max_new_tokens=3, **FAST)
    assert 1 <= len(r.tokens) <= 3 and r.finish_reason in ("stop", "length")


def test_chat_completion_shapes(model):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    r = model.create_chat_completion(msgs, max_tokens=6, **FAST)
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["role"] == "assistant"
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 6
    chunks = list(model.create_chat_completion(msgs, max_tokens=10, stream=True, **FAST))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 10
    with pytest.raises(ValueError, match="not both"):
        model.create_chat_completion(msgs, max_tokens=3, max_new_tokens=3)


def test_from_pretrained_resolves_quant_and_lists_files_on_mismatch(converted, monkeypatch):
    import huggingface_hub

    files = ["README.md", "dg-BF16.gguf", "dg-Q4_K_M.gguf", "dg-Q8_0.gguf", "mmproj-F16.gguf"]
    fetched = []
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id: files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename: fetched.append(filename) or str(converted("spec9", "q8_0")))
    m = Model.from_pretrained("org/dg-GGUF", quant="Q8_0", n_ctx=256, n_threads=2)
    assert fetched == ["dg-Q8_0.gguf"] and m.canvas_length == 8
    with pytest.raises(hub_mod.HubError, match=r"no GGUF file matches quant 'Q3_K_S'; available: dg-BF16.gguf, "
                                               r"dg-Q4_K_M.gguf, dg-Q8_0.gguf"):
        Model.from_pretrained("org/dg-GGUF", quant="Q3_K_S")


def test_hub_offline_uses_the_cache_listing(monkeypatch):
    import huggingface_hub

    def offline(repo_id):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    monkeypatch.setattr(hub_mod, "_cached_files", lambda repo_id: ["x-Q4_K_M.gguf"])
    assert hub_mod.list_gguf_files("org/x") == ["x-Q4_K_M.gguf"]
    monkeypatch.setattr(hub_mod, "_cached_files", lambda repo_id: [])
    with pytest.raises(hub_mod.HubError, match="nothing of it is in the local Hugging Face cache"):
        hub_mod.list_gguf_files("org/x")
    with pytest.raises(hub_mod.HubError, match="split into shards"):
        hub_mod.pick_file(["a-Q4_K_M-00001-of-00002.gguf", "a-Q4_K_M-00002-of-00002.gguf"], "Q4_K_M", "org/a")


def test_model_outputs_match_engine_generate(model):
    """The Python layer adds nothing to the tokens: same seed, same settings, same ids as the engine."""
    from pygguf_diffusion import _core

    toks = model.tokenize("the hat")
    model.reset()
    r = model.generate(toks, max_new_tokens=16, seed=99, **FAST)
    ctx = _core.Context(model._model, n_ctx=512, n_threads=2)
    e = _core.generate(ctx, np.asarray(toks, np.int32), max_new_tokens=16, seed=99,
                       eos_ids=sorted(model.tokenizer.eog_ids), **FAST)
    assert r.tokens == e["tokens"]


def test_cache_listing_reads_a_real_cache_layout(tmp_path):
    repo = tmp_path / "models--org--x"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snap = repo / "snapshots" / ("a" * 40)
    (snap / "sub").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    for name, blob in (("x-Q4_K_M.gguf", "b1"), ("sub/y-Q8_0.gguf", "b2")):
        (repo / "blobs" / blob).write_bytes(b"GGUF")
        (snap / name).symlink_to(repo / "blobs" / blob)
    assert hub_mod._cached_files("org/x", str(tmp_path)) == ["sub/y-Q8_0.gguf", "x-Q4_K_M.gguf"]
    assert hub_mod._cached_files("org/other", str(tmp_path)) == []


def test_chat_completion_drops_the_oldest_turns_when_the_context_is_full(converted, caplog):
    m = Model(converted("spec9", "f32"), n_ctx=64, n_threads=2, seed=2)
    conv = [{"role": "system", "content": "be brief"}]
    for i in range(12):
        conv += [{"role": "user", "content": f"the hat {i}"}, {"role": "assistant", "content": "a hat"}]
    conv.append({"role": "user", "content": "and the rest"})
    full = len(m.tokenizer.encode(m.apply_chat_template(conv)))
    assert full > m.n_ctx  # the whole conversation cannot fit
    with caplog.at_level("WARNING", logger="pygguf_diffusion"):
        for _ in range(2):
            r = m.create_chat_completion(conv, max_tokens=4, **FAST)
            assert r["usage"]["prompt_tokens"] <= m.n_ctx - m.canvas_length
    assert sum("outgrew n_ctx 64" in rec.message for rec in caplog.records) == 1  # said once
    with pytest.raises(ValueError, match="context_overflow='drop_oldest'"):
        m.create_chat_completion(conv, max_tokens=4, context_overflow="error", **FAST)
    with pytest.raises(ValueError, match="newest message does not fit"):
        m.create_chat_completion([{"role": "user", "content": "the hat " * 40}], max_tokens=4)


def test_an_n_ctx_with_no_room_beside_one_canvas_is_refused_at_load(converted):
    m = Model(converted("spec9", "f32"), n_ctx=64, n_threads=2)
    canvas = m.canvas_length
    assert 1 < canvas < 64
    for n_ctx in (1, canvas):
        with pytest.raises(ValueError, match=f"n_ctx {n_ctx} leaves no room for a prompt: one canvas takes {canvas}"):
            Model(converted("spec9", "f32"), n_ctx=n_ctx, n_threads=2)
    assert Model(converted("spec9", "f32"), n_ctx=canvas + 1, n_threads=2).n_ctx == canvas + 1
