"""Fuzzing what callers pass (tests/param_fuzz.py): thousands of keyword-argument sets for Model(),
generate(), stream_generate(), create_chat_completion(), tokenize()/detokenize() and dgemma-cli command
lines, plausible and hostile, each run in a worker subprocess with a memory cap, with a fixed generation
checked every 10 cases for state left behind. A longer run: `python tests/param_fuzz.py FILE.gguf --cases
50000 --seed 1`."""
from __future__ import annotations

import pytest

import param_fuzz


@pytest.mark.slow
def test_parameters_are_rejected_by_name_or_run_never_crash(converted):
    res = param_fuzz.fuzz(converted("spec9", "f32"), 4000, 0)
    assert res["n"] == 4000
    assert not res["failures"], res["failures"][:5]
    counts = res["counts"]
    assert sum(counts.values()) == res["n"]
    assert counts["ran"] > 400 and counts["rejected"] > 1500, counts  # both sides of every check are reached


def test_a_python_error_nothing_checked_for_is_a_failure(converted, monkeypatch):
    from pygguf_diffusion import Model

    with Model(converted("spec9", "f32"), n_ctx=256, n_threads=1) as m:
        spec = {"api": "generate", "kwargs": {}, "prompt": "the hat"}
        assert param_fuzz.run_case(m, "", spec)[0] == "ran"
        monkeypatch.setattr(m, "generate", lambda *a, **k: (_ for _ in ()).throw(TypeError("'int' object is not iterable")))
        assert param_fuzz.run_case(m, "", spec) == ("exception", "unvalidated: TypeError: 'int' object is not iterable")
        monkeypatch.setattr(m, "generate", lambda *a, **k: (_ for _ in ()).throw(ValueError("top_k must be >= 0")))
        assert param_fuzz.run_case(m, "", spec) == ("rejected", "ValueError: top_k must be >= 0")
        monkeypatch.setattr(m, "generate", lambda *a, **k: (_ for _ in ()).throw(KeyError("role")))
        assert param_fuzz.run_case(m, "", spec)[0] == "exception"
