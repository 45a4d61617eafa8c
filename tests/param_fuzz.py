"""A fuzzer for what a caller passes: the keyword arguments of Model(), generate(), stream_generate(),
create_chat_completion(), tokenize()/detokenize(), and dgemma-cli's command line. Each case sets one to four
parameters (half of the time to a plausible value, half to a hostile one: 0, -1, 2^31, 2^63, NaN, inf, 1e-45,
a string, bytes, None, a list, a numpy scalar...) and leaves the rest small and valid.

    python tests/param_fuzz.py MODEL.gguf [--cases N] [--seed S]      (a longer run than the test's)

Outcomes: `ran`, `rejected` (ValueError, TypeError, EngineError or MemoryError, as documented; for the CLI an
exit status 1 or 2 with an `error:` line and no traceback), and the failures `exception` (any other type, or
a result that breaks its contract), `crash`, `timeout` and `poisoned` (a fixed generation after the case
no longer gives the tokens it gave before the first case: some state was left behind).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import random
import sys
from pathlib import Path

from fuzz_workers import CASE_TIMEOUT_S, cap_memory, main, run_cases, serve

CANARY_EVERY = 10

_HOSTILE_INTS = [0, 1, -1, 2, 255, 1024, 2**31 - 1, 2**31, -2**31, 2**32 + 5, 2**63, -2**63 - 1, 2**64]
_HOSTILE_FLOATS = [0.0, -0.0, 1e-45, 1e-38, 1e-7, 0.5, 1.0, 1e30, 1e308, math.inf, -math.inf, math.nan, -1.0]
_HOSTILE_OTHER = [None, True, False, "", "7", "abc", "\x00", b"\x01", [], [1], {}, ("np", "int64", "3"),
                  ("np", "float32", "nan"), ("np", "uint64", str(2**64 - 1)), ("np", "float64", "0.5"),
                  ("complex", "1+2j")]


def _enc(v):
    """JSON for a value, numpy scalars and bytes included (decoded in the worker)."""
    if isinstance(v, tuple):
        return {"special": list(v)}
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": repr(v)}
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**53:
        return {"bigint": str(v)}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, dict):
        return {"dict": {k: _enc(x) for k, x in v.items()}}
    return v


def _dec(v):
    import numpy as np

    if isinstance(v, list):
        return [_dec(x) for x in v]
    if isinstance(v, dict):
        if "special" in v:
            kind, *rest = v["special"]
            if kind == "np":
                return getattr(np, rest[0])(float(rest[1]) if "float" in rest[0] else int(rest[1]))
            return complex(rest[0])
        if "bytes" in v:
            return bytes.fromhex(v["bytes"])
        if "float" in v:
            return float(v["float"])
        if "bigint" in v:
            return int(v["bigint"])
        return {k: _dec(x) for k, x in v["dict"].items()}
    return v


def _hostile(rnd: random.Random, kind: str):
    pool = {"int": _HOSTILE_INTS + _HOSTILE_FLOATS[:3], "float": _HOSTILE_FLOATS + _HOSTILE_INTS[:6]}.get(kind, [])
    return rnd.choice(pool + _HOSTILE_OTHER)


_PROMPTS = ["the hat", "", " ", "\x00\x01", "é" * 40, "the hat " * 200, [2, 5, 7], [], [-1], [2**31], [2.5],
            ("np", "int64", "5"), b"the hat", None, 7]
_STOPS = [None, "a", ["a", "b"], "", [""], "the", ["x"] * 20, 5, [None], "\x00"]
_MESSAGES = [
    [{"role": "user", "content": "the hat"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the hat"}],
    [{"role": "user", "content": "the hat"}, {"role": "assistant", "content": "on"}, {"role": "user", "content": "x"}],
    [], [{"role": "user"}], [{"role": "user", "content": None}], [{"role": "user", "content": 5}],
    [{"role": "bogus", "content": "x"}], "the hat", [["user", "x"]], [{"role": "user", "content": "x " * 3000}],
    [{"role": "user", "content": [{"type": "text", "text": "the hat"}]}], [None], [{}], {"role": "user"},
]
_GEN = {  # parameter: (kind, plausible value)
    "max_new_tokens": ("int", lambda r: r.randint(1, 40)),
    "max_denoising_steps": ("steps", lambda r: r.randint(1, 6)),
    "entropy_bound": ("float", lambda r: r.uniform(0.01, 5)),
    "t_min": ("float", lambda r: r.uniform(0, 0.5)),
    "t_max": ("float", lambda r: r.uniform(0.5, 2)),
    "stability_threshold": ("int", lambda r: r.randint(0, 5)),
    "confidence_threshold": ("float", lambda r: r.uniform(0.01, 1)),
    "seed": ("int", lambda r: r.randint(0, 2**64 - 1)),
    "temperature": ("float", lambda r: r.uniform(0, 2)),
    "top_k": ("int", lambda r: r.randint(0, 50)),
    "top_p": ("float", lambda r: r.uniform(0, 1)),
    # canvas editing: templates, warm starts, frozen flags (docs/canvas-editing.md)
    "template": ("template", lambda r: r.choice(["a {} b", "{:3}", "x{:1}y {{z}}", "{}" * 5, "é{:2}\x00",
                                                 "the " * 40 + "{}"])),
    "canvas": ("canvas", lambda r: r.choice(["the hat", "", [5, -1, 7], [-1] * 30, list(range(3, 60))])),
    "frozen": ("frozen", lambda r: r.choice([[True, False, True], [False] * 30, [1, 0, 1], [True] * 57])),
    "hole_tokens": ("int", lambda r: r.randint(1, 12)),
}
_MODEL = {
    "n_ctx": ("int", lambda r: r.randint(64, 2048)),
    "n_batch": ("int", lambda r: r.randint(1, 512)),
    "n_threads": ("threads", lambda r: r.randint(1, 4)),
    "seed": ("int", lambda r: r.randint(0, 2**64 - 1)),
    "type_k": ("str", lambda r: r.choice(["f32", "f16", "bf16", "q8_0", "q4_0", "q5_1"])),
    "type_v": ("str", lambda r: r.choice(["f32", "f16", "q8_0", "q4_1", "q5_0", "bogus"])),
    "n_gpu_layers": ("int", lambda r: r.randint(-1, 10)),
    "n_cpu_moe": ("int", lambda r: r.randint(0, 5)),
    "cpu_moe": ("bool", lambda r: r.random() < 0.5),
    "tensor_overrides": ("overrides", lambda r: r.choice([None, [], [["blk\\.0\\..*", "CPU"]], [["(", "CPU"]],
                                                         [["x", "GPU0"]], "blk=CPU", [["x"]], [[5, "CPU"]]])),
}
_CLI_INT = ["0", "-1", "1", "3", "2147483648", "99999999999999999999", "1e3", "abc", "", "nan"]
_CLI_FLOAT = ["nan", "inf", "-inf", "1e-45", "0", "-1", "1e309", "abc", "0.5", "2"]
_CLI = {
    "-c": _CLI_INT + ["256", "128"], "-n": _CLI_INT + ["8"], "--steps": _CLI_INT + ["2"], "-t": _CLI_INT + ["1"],
    "-s": _CLI_INT + ["18446744073709551616", "5"], "--top-k": _CLI_INT, "--stability-threshold": _CLI_INT,
    "-ngl": _CLI_INT, "--n-cpu-moe": _CLI_INT, "--temp": _CLI_FLOAT, "--top-p": _CLI_FLOAT,
    "--entropy-bound": _CLI_FLOAT, "--t-min": _CLI_FLOAT, "--t-max": _CLI_FLOAT, "--confidence-threshold": _CLI_FLOAT,
    "-ctk": ["f16", "q4_0", "bogus", ""], "-ctv": ["q8_0", "F16", "x"],
    "-ot": ["blk\\.0=CPU", "[=CPU", "=", "x=GPU7", "a=CPU,b", ""], "-p": ["the hat", "", "\x01", "é" * 100],
    "-sys": ["", "be brief", "x" * 3000], "--template": ["a {} b", "{", "}", "{:0}", "", "{:99999}", "{{}}"],
    "--edit": ["", "the hat", "\x01" * 300], "--hole-tokens": _CLI_INT, "-m": ["MODEL", "/nonexistent.gguf", "/tmp", "/dev/null", ""],
}


def _value(rnd: random.Random, kind: str, plausible):
    if rnd.random() < 0.5:
        return plausible(rnd)
    v = _hostile(rnd, "int" if kind in ("steps", "threads") else kind)
    if kind == "steps" and isinstance(v, int) and not isinstance(v, bool) and 1000 < v < 2**31:
        v = 1000   # a valid but enormous step count is work asked for, not a hang; 1000 is plenty
    if kind == "threads" and isinstance(v, int) and not isinstance(v, bool) and 64 < v <= 512:
        # valid, but a worker capped at 6 GiB whose OpenMP pool already holds threads from earlier cases
        # runs out of address space for 255 more stacks after the context's start-up check passed
        v = 64
    return v


def cases(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        api = rnd.choices(["generate", "stream", "chat", "model", "tokens", "cli"], [30, 15, 15, 15, 5, 20])[0]
        if api in ("generate", "stream", "chat"):
            names = rnd.sample(sorted(_GEN), rnd.randint(1, 4))
            kw = {k: _value(rnd, *_GEN[k]) for k in names}
            if rnd.random() < 0.3:
                kw["stop"] = rnd.choice(_STOPS)
            spec = {"api": api, "kwargs": kw}
            if api == "chat":
                spec["messages"] = rnd.choice(_MESSAGES[:3] if rnd.random() < 0.5 else _MESSAGES)
                spec["stream"] = rnd.random() < 0.5
                for k, pool in (("n", [1, 2, 0, None, "1"]), ("context_overflow", ["error", "drop_oldest", "x", None]),
                                ("response_format", [None, {"type": "text"}, {"type": "json_object"}, "text"])):
                    if rnd.random() < 0.2:
                        spec["kwargs"][k] = rnd.choice(pool)
                if "max_new_tokens" in kw and rnd.random() < 0.5:
                    kw["max_tokens"] = kw.pop("max_new_tokens")
            else:
                spec["prompt"] = rnd.choice(_PROMPTS) if rnd.random() < 0.4 else "the hat"
                spec["take"] = rnd.randint(0, 6)
        elif api == "model":
            names = rnd.sample(sorted(_MODEL), rnd.randint(1, 4))
            spec = {"api": api, "kwargs": {k: _value(rnd, *_MODEL[k]) for k in names}}
        elif api == "tokens":
            spec = {"api": api, "text": rnd.choice(_PROMPTS), "ids": rnd.choice(_PROMPTS + [[0, 1, 2], list(range(50))]),
                    "add_bos": rnd.choice([True, False, None, 1, "yes"])}
        else:
            argv = ["-m", "MODEL", "-p", "the hat", "-n", "8", "--steps", "2", "-c", "256", "-t", "1", "-s", "1"]
            for opt in rnd.sample(sorted(_CLI), rnd.randint(1, 3)):
                argv += [opt, rnd.choice(_CLI[opt])]
            if rnd.random() < 0.1:
                argv.append(rnd.choice(["--bogus", "-x", "--show-drafts", "--raw", "-v", "--cpu-moe"]))
            spec = {"api": api, "argv": argv}
        out.append(_enc(spec))
    return out


# ---- the worker ------------------------------------------------------------------------------------------

_UNVALIDATED = ("incompatible function arguments", "incompatible constructor arguments", "is not iterable",
                "is not subscriptable", "dictionary update sequence", "unhashable type", "cannot be interpreted as",
                "'NoneType'", "object has no attribute", "unsupported operand", "not supported between")


def _check_result(r, V: int) -> str | None:
    from pygguf_diffusion import GenerationResult

    if not isinstance(r, GenerationResult):
        return f"generate returned {type(r).__name__}"
    if r.finish_reason not in ("stop", "length", "abort"):
        return f"finish_reason {r.finish_reason!r}"
    if not all(isinstance(t, int) and 0 <= t < V for t in r.tokens) or not isinstance(r.text, str):
        return "tokens outside the vocabulary or text not str"
    return None


def _run_cli(argv: list[str], model_path: str) -> tuple[str, str]:
    from pygguf_diffusion import cli

    argv = [model_path if a == "MODEL" else a for a in argv]
    out, err = io.StringIO(), io.StringIO()
    stdin, sys.stdin = sys.stdin, io.StringIO("")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(argv)
            except SystemExit as e:   # argparse
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = stdin
    text = err.getvalue()
    if "Traceback" in text:
        return "exception", text[-300:]
    if rc == 0:
        return "ran", ""
    errors = [line for line in text.splitlines() if line.startswith("error:") or ": error:" in line]
    if rc in (1, 2) and errors:
        return "rejected", errors[0][:200]
    return "exception", f"exit {rc}: {text[-300:]}"


def run_case(model, model_path: str, spec: dict) -> tuple[str, str]:
    from pygguf_diffusion import EngineError, GenerationResult, Model

    V = int(model.info["hparams"]["n_vocab"])
    api = spec["api"]
    if api == "cli":
        return _run_cli(spec["argv"], model_path)
    kw = dict(spec.get("kwargs") or {})
    try:
        if api == "generate":
            bad = _check_result(model.generate(spec["prompt"], **{"max_new_tokens": 8, "max_denoising_steps": 2,
                                                                       **kw}), V)
        elif api == "stream":
            it = model.stream_generate(spec["prompt"], **{"max_new_tokens": 8, "max_denoising_steps": 2, **kw})
            for _, ev in zip(range(spec["take"]), it):
                pass
            it.close()
            bad = None
        elif api == "chat":
            kw = {"max_tokens": 8, "max_denoising_steps": 2, **kw} if "max_new_tokens" not in kw else kw
            r = model.create_chat_completion(spec["messages"], stream=spec["stream"], **kw)
            chunks = list(r) if spec["stream"] else [r]
            bad = None if all(isinstance(c, dict) and "choices" in c for c in chunks) else "not completion dicts"
        elif api == "model":
            with Model(model_path, **kw) as m:
                r = m.generate("the hat", max_new_tokens=4, max_denoising_steps=2)
                bad = None if isinstance(r, GenerationResult) else "no result"
        else:
            ids = model.tokenize(spec["text"], add_bos=spec["add_bos"])
            text = model.detokenize(spec["ids"])
            bad = None if isinstance(text, str) and all(0 <= t < V for t in ids) else "bad tokens or text"
    except (ValueError, TypeError, EngineError, MemoryError) as e:
        if any(p in str(e) for p in _UNVALIDATED):  # Python's or pybind11's words: nothing checked the value
            return "exception", f"unvalidated: {type(e).__name__}: {str(e)[:200]}"
        return "rejected", f"{type(e).__name__}: {str(e)[:200]}"
    except Exception as e:  # noqa: BLE001 - the point is to find these
        return "exception", f"{type(e).__name__}: {str(e)[:200]}"
    return ("exception", bad) if bad else ("ran", "")


def worker(model_path: str, cases_path: str, start: int, _tmpdir: str) -> None:
    import logging

    cap_memory()
    from pygguf_diffusion import Model

    logging.disable(logging.WARNING)   # overflow and placement warnings: expected, and noisy
    model = Model(model_path, n_ctx=512, n_threads=1, seed=5)
    canary = lambda: model.generate("the hat", max_new_tokens=8, max_denoising_steps=2, seed=11).tokens  # noqa: E731
    expected = canary()
    n = len(json.loads(Path(cases_path).read_text()))

    def run_one(i: int, spec: dict) -> tuple[str, str]:
        cls, detail = run_case(model, model_path, _dec(spec))
        if cls != "exception" and (i % CANARY_EVERY == 0 or i == n - 1):
            try:
                got = canary()
            except Exception as e:  # noqa: BLE001
                got = f"{type(e).__name__}: {e}"
            if got != expected:
                cls, detail = "poisoned", f"the canary gave {str(got)[:120]} after this case (cases since the last check)"
        return cls, detail

    serve(cases_path, start, run_one)


def fuzz(model_path: Path, n: int, seed: int, case_timeout_s: float = CASE_TIMEOUT_S) -> dict:
    return run_specs(model_path, cases(n, seed), case_timeout_s)


def run_specs(model_path: Path, specs: list, case_timeout_s: float = CASE_TIMEOUT_S) -> dict:
    return run_cases([sys.executable, __file__, "--worker", str(model_path)], specs, case_timeout_s)


if __name__ == "__main__":
    sys.exit(main(__doc__, "model", 3000, fuzz, worker))
