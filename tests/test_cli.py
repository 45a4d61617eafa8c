"""dgemma-cli end to end on a tiny converted model: one-shot, interactive commands, errors, Ctrl-C."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-c", "import sys; from pygguf_diffusion.cli import main; sys.exit(main())"]


def run(*args: str, stdin: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def gguf(converted):
    return str(converted("spec9", "f32"))


def test_one_shot_prints_the_answer_on_stdout_and_stats_on_stderr(gguf):
    r = run("-m", gguf, "-c", "512", "-p", "the hat", "-n", "12", "--steps", "3", "-s", "1", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and len(r.stdout) > 1
    assert "[length] 12 tokens" in r.stderr and "steps/canvas" in r.stderr and "ms/step" in r.stderr
    again = run("-m", gguf, "-c", "512", "-p", "the hat", "-n", "12", "--steps", "3", "-s", "1", "-t", "2")
    assert again.stdout == r.stdout  # seeded
    from pygguf_diffusion.tokenizer import GemmaTokenizer

    raw = run("-m", gguf, "-c", "512", "-p", "the hat", "-n", "4", "--steps", "2", "--raw")
    n = len(GemmaTokenizer.from_gguf(gguf).encode("the hat", add_bos=True))  # no chat template around it
    assert raw.returncode == 0 and f"prompt {n} tok" in raw.stderr


def test_interactive_session_commands(gguf):
    script = "the hat\n/regen\nfirst \\\nsecond\n\"\"\"\na\nb\n\"\"\"\n/clear\n/bogus\n/help\n/exit\n"
    r = run("-m", gguf, "-c", "512", "-n", "8", "--steps", "2", "-t", "2", "-s", "4", stdin=script)
    assert r.returncode == 0, r.stderr
    # four answers: the hat, /regen, the continued line, the block
    assert len(re.findall(r"^\[(stop|length)\] \d+ tokens", r.stderr, flags=re.MULTILINE)) == 4
    assert "(conversation cleared)" in r.stderr and "unknown command /bogus" in r.stderr
    assert "/regen      answer the last message again" in r.stderr
    assert "prompt 1 tok" in r.stderr  # /regen re-encodes only what differs from the stored prefix
    assert r.stdout.strip()


@pytest.mark.parametrize(("args", "msg"), [
    ([], "error: no model: pass -m model.gguf or -hf repo[:quant]"),
    (["-m", "/nonexistent.gguf", "-p", "x"], "error: cannot load model: /nonexistent.gguf: no such file"),
    (["-p", "x", "-c", "0"], "error: invalid option: --ctx-size 0: must be >= 1"),
    (["-p", "x", "--t-min", "0.9", "--t-max", "0.1"], "error: invalid generation setting: need 0 <= t_min < t_max"),
])
def test_errors_have_clear_text_and_nonzero_exit(gguf, args, msg):
    if args and args[0] == "-p":
        args = ["-m", gguf, "-c", "512", *args]
    r = run(*args)
    assert r.returncode == 1
    assert msg in r.stderr and "Traceback" not in r.stderr


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    r = run("-m", str(bad), "-p", "x")
    assert r.returncode == 1 and "error: cannot load model:" in r.stderr and "not a GGUF file" in r.stderr


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery")
def test_ctrl_c_stops_the_answer_not_the_session(gguf):
    # slow canvases (2000 steps, ~1 s each) so that the signal lands while one is denoising
    p = subprocess.Popen([*CLI, "-m", gguf, "-c", "4096", "-t", "2", "-s", "2", "--steps", "2000",
                          "--confidence-threshold", "1e-9"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write("write a very long answer\n")
        p.stdin.flush()
        p.stdout.read(1)          # the answer is streaming (canvases are committing)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        time.sleep(1.0)
        p.stdin.write("/exit\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "[interrupted]" in err
