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
    assert "prompt 0 tok (stored)" in r.stderr  # /regen: the stored prompt is not encoded again
    assert r.stdout.strip()


@pytest.mark.parametrize(("args", "msg"), [
    (["-m", "a.gguf", "-hf", "org/repo", "-p", "x"],
     "error: invalid option: -m and -hf both given: pick one model"),
    (["-m", "/nonexistent.gguf", "-p", "x"], "error: cannot load model: /nonexistent.gguf: no such file"),
    (["-p", "x", "-c", "0"], "error: invalid option: --ctx-size 0: must be >= 1"),
    (["-p", "x", "--t-min", "0.9", "--t-max", "0.1"],
     "error: invalid generation setting: need 0 <= t_min < t_max"),
    # values beyond int32 never reach the engine; absurd ones are refused before loading
    (["-p", "x", "-c", "3000000000"], "error: invalid option: --ctx-size 3000000000: must be <= 2147483647"),
    (["-p", "x", "-n", "99999999999"],
     "error: invalid option: --n-predict 99999999999: must be <= 2147483647"),
    (["-p", "x", "-n", "0"], "error: invalid option: --n-predict 0: must be >= 1 (or -1: until EOS)"),
    (["-p", "x", "-t", "100000"], "error: invalid option: --threads 100000: must be <= 512"),
    (["-p", "x", "--temp", "-1"], "error: invalid option: --temp -1.0: must be a finite number >= 0"),
    (["-p", "x", "--top-p", "0"], "error: invalid option: --top-p 0.0: must be in (0, 1]"),
    (["-p", "x", "--top-k", "-2"], "error: invalid option: --top-k -2: must be >= 0"),
    (["-p", "x", "--steps", str(10**12)],
     "error: invalid option: --steps 1000000000000: must be <= 2147483647"),
    (["-p", "x", "-ngl", "-2"], "error: invalid option: --n-gpu-layers -2: must be >= -1"),
    (["-p", "x", "--confidence-threshold", "0"],
     "error: invalid option: --confidence-threshold 0.0: must be a finite number > 0"),
    (["-p", "x", "--confidence-threshold", "nan"], "error: invalid option: --confidence-threshold nan"),
    (["-p", "x", "--entropy-bound", "-1"],
     "error: invalid option: --entropy-bound -1.0: must be a finite number > 0"),
    (["-p", "x", "--t-max", "inf"], "error: invalid option: --t-max inf: must be a finite number"),
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
@pytest.mark.skipif(os.name == "posix" and signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                    reason="SIGINT is ignored here (a background job of a non-interactive shell), and children "
                           "inherit that")
def test_ctrl_c_stops_the_answer_not_the_session(gguf):
    # slow canvases (2000 steps, ~2 s each on one thread) so that the signal lands while one is denoising;
    # seed 3 answers this prompt with more than 5 canvases and no EOS (seed 2's has two)
    p = subprocess.Popen([*CLI, "-m", gguf, "-c", "4096", "-t", "1", "-s", "3", "--steps", "2000",
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


def test_help_states_each_default_once():
    r = run("--help")
    assert r.returncode == 0
    assert "(default: None)" not in r.stdout and "default: False" not in r.stdout
    assert r.stdout.count("default: 8192") == 1 and r.stdout.count("(default: random)") == 1


def test_a_hub_failure_does_not_point_at_dgemma_inspect(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}  # no network, an empty cache
    r = subprocess.run([*CLI, "-hf", "nobody/nothing-GGUF:Q4_K_M", "-p", "x"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: cannot get the model from the Hugging Face Hub: nobody/nothing-GGUF" in r.stderr
    assert "dgemma-inspect" not in r.stderr and "connection" in r.stderr


def test_a_bad_gguf_points_at_dgemma_inspect(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))
    r = run("-m", str(bad), "-p", "x")
    assert r.returncode == 1 and f"dgemma-inspect {bad} checks it" in r.stderr and "Traceback" not in r.stderr


def test_gpu_layers_on_a_cpu_only_build_warn_once(gguf):
    from pygguf_diffusion.cli import gpu_backends

    if gpu_backends():
        pytest.skip("this build has a GPU backend")
    r = run("-m", gguf, "-c", "256", "-p", "the hat", "-n", "4", "--steps", "2", "-t", "1", "-ngl", "99")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: -ngl 99: this build has no GPU backend") == 1
    quiet = run("-m", gguf, "-c", "256", "-p", "the hat", "-n", "4", "--steps", "2", "-t", "1", "-ngl", "0")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr


@pytest.mark.skipif(os.name != "posix", reason="SIGPIPE semantics")
def test_a_closed_pipe_ends_quietly(gguf):
    # a long answer (many slow canvases) whose reader goes away after the first byte, as `| head -c 1` does
    p = subprocess.Popen([*CLI, "-m", gguf, "-c", "1024", "-p", "the hat", "-n", "400", "--steps", "300",
                          "--confidence-threshold", "1e-9", "-t", "1", "-s", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.read(1)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert p.returncode == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err


def test_a_chat_ten_times_longer_than_the_context_runs_to_the_end(gguf):
    """No -n: answers run until EOS or the context is full ("length"); the conversation, many times n_ctx,
    keeps going by dropping its oldest turns, and says so once."""
    from pygguf_diffusion.tokenizer import GemmaTokenizer

    n_ctx = 128
    messages = [f"the hat {i} on the hat and a hat on the note, the hat {i}" for i in range(40)]
    r = run("-m", gguf, "-c", str(n_ctx), "--steps", "2", "-t", "1", "-s", "5", "-sys", "the hat",
            stdin="\n".join(messages) + "\n", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    results = re.findall(r"^\[(stop|length)\] (\d+) tokens", r.stderr, flags=re.MULTILINE)
    assert len(results) == len(messages)
    assert any(reason == "length" for reason, _ in results)  # answers that filled the context
    assert r.stderr.count("(context full: dropping the oldest turns to stay within n_ctx 128)") == 1
    assert "error" not in r.stderr and "Traceback" not in r.stderr
    tok = GemmaTokenizer.from_gguf(gguf)
    total = sum(len(tok.encode(m, add_bos=False)) for m in messages) + sum(int(n) for _, n in results)
    assert total > 10 * n_ctx


def test_sampling_flags_reach_the_draw(gguf):
    base = ["-m", gguf, "-c", "256", "-p", "the hat", "-n", "16", "--steps", "3", "-s", "5", "-t", "1"]
    greedy, top1, default = run(*base, "--temp", "0"), run(*base, "--top-k", "1"), run(*base)
    assert greedy.returncode == top1.returncode == default.returncode == 0
    assert greedy.stdout == top1.stdout != default.stdout


def test_verbose_adds_a_runtime_line(gguf):
    r = run("-m", gguf, "-c", "256", "-p", "the hat", "-n", "4", "--steps", "2", "-t", "1", "-s", "1", "-v")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    i = next(i for i, line in enumerate(lines) if re.match(r"\[(stop|length)\] \d+ tokens", line))
    assert "peak RSS" in lines[i + 1] and "peak RSS" not in lines[i]
