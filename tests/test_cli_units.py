"""dgemma-cli pieces that depend on what the engine offers, checked with stand-ins for both cases: the
default n_ctx, the load progress line, the -v runtime line, GPU detection."""
from __future__ import annotations

import io

import pytest

import pygguf_diffusion
from pygguf_diffusion import GenerationStats, _core, cli


class TtyErr(io.StringIO):
    def isatty(self) -> bool:
        return True


def args(*argv: str):
    return cli.build_parser().parse_args(["-m", "x.gguf", *argv])


def fake_model():
    calls: list[dict] = []

    class M:
        def __init__(self, path, *, n_ctx=None, n_gpu_layers=-1, n_threads=None, seed=None, verbose=False,
                     progress=None, **placement):
            calls.append(dict(n_ctx=n_ctx, progress=progress, **placement))
            if progress:
                for f in (0.0, 0.5, 1.0):
                    progress(f)

    return M, calls


@pytest.mark.parametrize(("argv", "expected"), [
    ([], None),  # the API's own default (8192 capped at the model's length) applies
    (["-c", "100"], 100),
])
def test_one_default_n_ctx(monkeypatch, argv, expected):
    M, calls = fake_model()
    monkeypatch.setattr(pygguf_diffusion, "Model", M)
    cli.load(args(*argv))
    assert [c["n_ctx"] for c in calls] == [expected]


def test_progress_line_on_a_terminal_only(monkeypatch):
    err = TtyErr()
    monkeypatch.setattr("sys.stderr", err)
    M, calls = fake_model()
    monkeypatch.setattr(pygguf_diffusion, "Model", M)
    cli.load(args())
    assert callable(calls[0]["progress"])
    out = err.getvalue()
    assert "\rloading model:  50%" in out and out.endswith("\r\x1b[2K")  # shown, then cleared
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: no progress line
    cli.load(args())
    assert calls[1]["progress"] is None


def test_progress_line_is_cleared_before_a_log_record(monkeypatch):
    import logging

    err = TtyErr()
    handler = logging.StreamHandler(err)
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    from pygguf_diffusion._live import LoadProgress

    with LoadProgress(err) as progress:
        progress(0.3)
        logging.getLogger("x").warning("something")
        progress(0.6)
    assert err.getvalue() == "\rloading model:  30%\r\x1b[2Ksomething\n\rloading model:  60%\r\x1b[2K"
    assert not handler.filters


STATS = GenerationStats(prompt_tokens=1, prompt_ms=1.0, steps_per_canvas=[1], decoder_forwards=1,
                        decode_ms=1.0, ttft_ms=1.0, total_ms=1.0, committed_tokens=1, tokens_per_forward=1.0,
                        peak_rss_bytes=300 * 2**20)


def test_runtime_line():
    class WithInfo:
        def runtime_info(self):
            return {"device": "CPU", "n_threads": 8, "weight_type": "q8_0", "kv_bytes": 3 * 2**20,
                    "sc_bytes": 2**20, "compute_bytes": 2**19}

    assert cli.runtime_line(WithInfo(), STATS) == ("device CPU | 8 threads | weights q8_0 | KV 3.0 MiB | "
                                                   "self-conditioning 1.0 MiB | compute 0.5 MiB | "
                                                   "peak RSS 300 MiB | steps per canvas 1")


def test_gpu_backends_detection(monkeypatch):
    assert cli.gpu_backends() == list(_core.gpu_backends())
    monkeypatch.setattr(_core, "gpu_backends", lambda: ["CUDA0"])
    assert cli.gpu_backends() == ["CUDA0"]


@pytest.mark.parametrize(("argv", "expected"), [([], True), (["--no-repack"], False)])
def test_no_repack_reaches_the_model(monkeypatch, argv, expected):
    M, calls = fake_model()
    monkeypatch.setattr(pygguf_diffusion, "Model", M)
    cli.load(args(*argv))
    assert [c["cpu_repack"] for c in calls] == [expected]
