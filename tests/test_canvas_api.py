"""Canvas editing from Python and the command line: templates, infilling, warm starts (edit), the
tokenization rules at the seams (docs/canvas-editing.md), and bad input refused with a clear message."""
from __future__ import annotations

import subprocess
import sys

import pytest
import real_vocab

from pygguf_diffusion import Model, bundled
from pygguf_diffusion.canvas import parse_template, template_spec
from pygguf_diffusion.tokenizer import GemmaTokenizer

needs_bundled = pytest.mark.skipif(bundled.bundled_model_path() is None, reason="needs the bundled model")
SUDOKU = "sudoku: 3.12 .2.. .321 .1.4"
SUDOKU_TEMPLATE = "3{:1}12 {:1}2{:1}{:1} {:1}321 {:1}1{:1}4"


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory) -> GemmaTokenizer:
    d = real_vocab.extract(tmp_path_factory.mktemp("vocab"))
    if d is None:
        pytest.skip("the llama-cpp-python source archive is not cached")
    return GemmaTokenizer.from_gguf(d / "ggml-vocab-gemma-4.gguf")


@pytest.fixture(scope="module")
def tiny() -> Model:
    if bundled.bundled_model_path() is None:
        pytest.skip("needs the bundled model")
    return Model(n_ctx=256, seed=0, n_threads=2)


def chat(m: Model, q: str) -> list[int]:
    return m.tokenize(m.apply_chat_template([{"role": "user", "content": q}]), add_bos=False)


def test_template_syntax():
    assert parse_template("a {} b {:3} {{c}}", 5) == ["a ", 5, " b ", 3, " {c}"]
    assert parse_template("{:1}{:2}", 8) == [1, 2]
    for bad, msg in [("no hole", "no hole"), ("a { b {}", "lone '{'"), ("{}}", "lone '}'"),
                     ("{:0}", "at least 1"), ("{:x}", "lone '{'"), ("{{}}", "no hole")]:
        with pytest.raises(ValueError, match=msg):
            parse_template(bad, 4)


def test_seams_with_the_real_gemma4_tokenizer(gemma4):
    enc = gemma4.encode
    spec = template_spec("The capital of {} is {}.", enc, hole_tokens=2, end_id=106, pad_id=0, canvas_length=16)
    # Gemma attaches a space to the next word: the spaces before each hole move into it, so the fixed
    # pieces are exactly the tokens of "The capital of", " is" and "."
    pieces = [enc("The capital of"), enc(" is"), enc(".")]
    a, b = spec.holes[0]
    c, d = spec.holes[1]
    assert spec.init[:a] == pieces[0] and spec.init[b:c] == pieces[1] and spec.init[d:d + len(pieces[2])] == pieces[2]
    assert (b - a, d - c) == (2, 2) and not any(spec.frozen[a:b]) and not any(spec.frozen[c:d])
    # after the template: the end of turn, then padding to the canvas end, all fixed
    end = d + len(pieces[2])
    assert spec.init[end] == 106 and set(spec.init[end + 1:]) <= {0} and len(spec.init) % 16 == 0
    assert all(spec.frozen[end:])
    # what the model is left to write tokenizes naturally: " Paris" is one token
    assert len(enc(" Paris")) == 1 and len(enc(" France")) == 1
    # a hole inside a word splits it at the hole; the fixed pieces still decode to the template's text
    spec = template_spec("un{:2}able", enc, hole_tokens=1, end_id=106, pad_id=0, canvas_length=8)
    a, b = spec.holes[0]
    assert gemma4.decode(spec.init[:a]) == "un" and gemma4.decode(spec.init[b:b + len(enc("able"))]) == "able"


@needs_bundled
def test_seams_with_a_character_tokenizer_keep_spaces_fixed(tiny):
    # one token per character: a space is a token of its own and stays where the template has it
    spec = template_spec("12 {:1}4", tiny.tokenizer.encode, hole_tokens=1, end_id=106, pad_id=0, canvas_length=24)
    assert spec.holes == [(3, 4)] and tiny.tokenizer.decode(spec.init[:3]) == "12 "


@needs_bundled
def test_template_infill_and_edit_on_the_bundled_model(tiny):
    r = tiny.generate(chat(tiny, SUDOKU), template=SUDOKU_TEMPLATE)
    assert r.text == "3412 1243 4321 2134" and r.holes == list("4143423") and r.finish_reason == "stop"
    # the field is right-aligned in 5 characters: " 5" + two digits + "8"
    r = tiny.infill(" 5", "8", prompt=chat(tiny, "4821+377="), hole_tokens=2)
    assert r.text == "19" and len(r.tokens) == 2
    # a warm start from a wrong sum: the model keeps what it agrees with and corrects the rest
    r = tiny.edit(" 5199", chat(tiny, "4821+377="))
    assert r.text.strip() == "5198"
    # the explicit form: ids with -1 for noise, a flag per position
    ids = tiny.tokenizer.encode("7 19 42")
    r = tiny.generate(chat(tiny, "sort: 42 7 19"), canvas=ids[:2] + [-1] * 5, frozen=[True, True] + [False] * 5)
    assert r.text.startswith("7 ") and r.tokens[:2] == ids[:2]


@needs_bundled
def test_bad_canvas_arguments_are_clear_errors(tiny):
    p = chat(tiny, SUDOKU)
    cases = [(dict(template="{}", canvas="x"), ValueError, "either template"),
             (dict(frozen=[True]), ValueError, "needs canvas"),
             (dict(canvas="x", frozen=[True]), ValueError, "token ids"),
             (dict(canvas=[1, 2], frozen=[True]), ValueError, "one per position"),
             (dict(canvas=[-1], frozen=[True]), ValueError, "needs a token"),
             (dict(canvas=[10**6]), ValueError, "must be in"),
             (dict(canvas=[1.5]), TypeError, "integers"),
             (dict(canvas=7), TypeError, "canvas"),
             (dict(template="{}", hole_tokens=0), ValueError, "hole_tokens"),
             (dict(template=3), TypeError, "template")]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            tiny.generate(p, **kw)
        with pytest.raises(exc, match=msg):
            tiny.check_generation(p, **kw)
    assert tiny.generate(p, template=SUDOKU_TEMPLATE).text == "3412 1243 4321 2134"   # still usable


@needs_bundled
def test_cli_template_infill_and_edit():
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pygguf_diffusion.cli", "-s", "0", "-t", "1", *args],
                              capture_output=True, text=True, timeout=120)

    r = cli("-p", SUDOKU, "--template", SUDOKU_TEMPLATE)
    assert r.returncode == 0 and r.stdout.strip() == "3412 1243 4321 2134", r.stderr
    r = cli("-p", "4821+377=", "--infill", " 5", "8", "--hole-tokens", "2")
    assert r.returncode == 0 and r.stdout == "19\n", r.stderr
    r = cli("-p", "4821+377=", "--edit", " 5199")
    assert r.returncode == 0 and r.stdout.strip() == "5198", r.stderr
    r = cli("-p", "x", "--template", "a { b")
    assert r.returncode == 1 and "error: invalid option: --template" in r.stderr and "'{{'" in r.stderr
    r = cli("-p", "x", "--template", "a {}", "--hole-tokens", "0")
    assert r.returncode == 1 and "--hole-tokens 0: must be >= 1" in r.stderr
