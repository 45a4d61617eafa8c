"""Tokenizer and chat template against the references: llama.cpp's 46 tokenizations on the real Gemma-4
vocabulary, the HF tokenizer on the tiny fixtures, transformers' apply_chat_template on the real template."""
from __future__ import annotations

import pytest
import real_vocab

from pygguf_diffusion.chat import ChatTemplateError, render_chat
from pygguf_diffusion.tokenizer import GemmaTokenizer


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    d = real_vocab.extract(tmp_path_factory.mktemp("vocab"))
    if d is None:
        pytest.skip("the pinned llama-cpp-python archive is not in the build cache")
    return d


def test_real_gemma4_vocabulary_reproduces_llamacpp_reference_tokenizations(vocab_dir):
    tok = GemmaTokenizer.from_gguf(vocab_dir / "ggml-vocab-gemma-4.gguf")
    assert tok.n_vocab == 262144 and tok.eog_ids == [1, 106, 50] and tok.bos_id == 2
    texts = (vocab_dir / "ggml-vocab-gemma-4.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outs = (vocab_dir / "ggml-vocab-gemma-4.gguf.out").read_text(encoding="utf-8").split("\n")
    pairs = [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]
    assert len(pairs) == 46
    bad = [(t, tok.encode(t), want) for t, want in pairs if tok.encode(t) != want]
    assert not bad, bad[:3]
    # round trip (byte fallback included)
    for t, want in pairs:
        assert tok.decode(want, skip_special_tokens=False) == t


def test_special_tokens_are_matched_whole(vocab_dir):
    tok = GemmaTokenizer.from_gguf(vocab_dir / "ggml-vocab-gemma-4.gguf")
    ids = tok.encode("<|turn>user\nhi<turn|>\n<|channel>x")
    assert ids[0] == 105 and 106 in ids and 100 in ids
    assert tok.decode(ids) == "user\nhi\n<|channel>x"  # control tokens skipped, user-defined ones rendered


@pytest.mark.parametrize("text", ["the hat", "  the   hat\n\nanother ", "Äpfel 🙂 ünïcode", "<|turn>user\nthe<turn|>"])
def test_tiny_tokenizer_matches_hf(text, checkpoint, converted):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(checkpoint("spec9"))
    tok = GemmaTokenizer.from_gguf(converted("spec9", "f32"))
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False)
    assert tok.encode(text, add_bos=True)[0] == 2


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Why is the sky blue? "},
     {"role": "assistant", "content": "Rayleigh scattering."}, {"role": "user", "content": "And sunsets?"}],
    [{"role": "user", "content": "ünïcode 🙂 \"quotes\""}, {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "multi\nline"}],
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_real_gemma4_template_renders_like_transformers(vocab_dir, checkpoint, conv, add_generation_prompt):
    from transformers import AutoTokenizer

    from pygguf_diffusion import _core

    hf = AutoTokenizer.from_pretrained(checkpoint("spec9"))
    for template in (_core.read_vocab(str(vocab_dir / "ggml-vocab-gemma-4.gguf"))["chat_template"],
                     (vocab_dir / "gemma4.jinja").read_text(encoding="utf-8")):
        want = hf.apply_chat_template(conv, chat_template=template, tokenize=False,
                                      add_generation_prompt=add_generation_prompt)
        assert render_chat(template, conv, add_generation_prompt=add_generation_prompt) == want
    assert want.startswith("<bos><|turn>")


def test_template_errors_are_clear():
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat("{% for %}", [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="boom"):
        render_chat("{{ raise_exception('boom') }}", [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="must be a dict with a 'role'"):
        render_chat("{{ messages }}", ["hello"])


@pytest.mark.parametrize("template,limit", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x", "range() items"),
    ("{{ 'x' * 1000000000 }}", "`*` would build 1,000,000,000 items"),
    ("{{ 10 ** 100000000 }}", "an exponent of 100000000"),
    ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "its output passes"),
])
def test_a_hostile_chat_template_fails_fast_instead_of_hanging(template, limit):
    # each of these ran for hours or allocated gigabytes before the renderer had limits
    with pytest.raises(ChatTemplateError, match="exceeds the renderer's limits") as ei:
        render_chat(template, [{"role": "user", "content": "hi"}])
    assert limit in str(ei.value)
