"""The Model's lifecycle under careless callers (issue 11): concurrent iterators, close and reset during a
stream, Ctrl-C twice, interpreter exit with a live stream, token ids that are not ids, temperatures that
would overflow the tempered logits."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from pygguf_diffusion import GenerationResult, Model, _core

FAST = {"max_denoising_steps": 3}


@pytest.fixture()
def model(converted):
    m = Model(converted("spec9", "f32"), n_ctx=512, n_threads=2, seed=11)
    yield m
    m.close()


def test_a_second_stream_is_refused_at_the_call_and_dropping_the_first_releases(model):
    first = model.stream_generate("the hat", max_new_tokens=8, **FAST)  # not started yet
    with pytest.raises(RuntimeError, match="already running"):
        model.stream_generate("the hat", max_new_tokens=8, **FAST)
    del first  # never iterated: dropping it frees the Model
    second = model.stream_generate("the hat", max_new_tokens=8, **FAST)
    next(second)
    second.close()
    assert isinstance(model.generate("the hat", max_new_tokens=8, **FAST), GenerationResult)


def test_reset_during_a_stream_is_refused(model):
    it = model.stream_generate("the hat", max_new_tokens=24, **FAST)
    next(it)
    with pytest.raises(RuntimeError, match="generation is running"):
        model.reset()
    it.close()
    model.reset()
    assert model._ctx.n_past == 0


def test_close_during_a_stream_ends_it_and_later_calls_say_closed(model):
    it = model.stream_generate("the hat", max_new_tokens=64, **FAST)
    next(it)
    model.close()
    assert list(it) == []  # the stream was closed with the model
    for call in (lambda: model.n_ctx, lambda: model.canvas_length, model.runtime_info, model.reset,
                 lambda: model.generate("x")):
        with pytest.raises(RuntimeError, match="the model is closed"):
            call()
    model.close()  # idempotent


def test_close_from_another_thread_while_the_consumer_waits(model):
    events = []
    it = model.stream_generate("the hat", max_new_tokens=400, max_denoising_steps=48)
    events.append(next(it))
    t = threading.Thread(target=model.close)
    t.start()
    events.extend(it)  # the engine stops after its current step; the consumer ends normally
    t.join()
    assert isinstance(events[-1], GenerationResult)
    assert events[-1].finish_reason == "abort"
    with pytest.raises(RuntimeError, match="the model is closed"):
        model.generate("x")


@pytest.mark.parametrize("cut", ["release", "stream cleanup and release"])
@pytest.mark.parametrize("drop", [False, True])
def test_a_cleanup_cut_short_by_a_second_ctrl_c_is_finished_before_the_next_call(model, monkeypatch, drop, cut):
    """The second Ctrl-C of a double interrupt can land just before a cleanup holds Ctrl-C back: the claim
    must not be freed while the engine's thread still runs (the next generation raced it: a segfault or a
    ggml assert, seen in CI), and the next call must wait for that thread instead of refusing."""
    import contextlib

    import pygguf_diffusion._generation as generation_mod
    import pygguf_diffusion.model as model_mod

    it = model.stream_generate("the hat", max_new_tokens=200, max_denoising_steps=48)
    next(it)
    real = model_mod.sigint_held
    left = {"cuts": 1 if cut == "release" else 2}

    @contextlib.contextmanager
    def cut_short():
        if left["cuts"]:
            left["cuts"] -= 1
            raise KeyboardInterrupt  # lands before the block holds Ctrl-C: nothing in it ran
        with real():
            yield

    if cut == "release":
        it._gen.close()  # the stream's own cleanup ran: the engine has returned, the prefix is recorded
    for mod in (model_mod, generation_mod):  # the stream's cleanup, the claim's release
        monkeypatch.setattr(mod, "sigint_held", cut_short)
    with pytest.raises(KeyboardInterrupt):
        it.close()
    for mod in (model_mod, generation_mod):
        monkeypatch.setattr(mod, "sigint_held", real)
    assert model._busy and not left["cuts"]  # the claim stays until someone waits for the engine
    if drop:
        del it  # dropped instead of finished: its own cleanup or the next call ends the claim
    r = model.generate("the hat", max_new_tokens=4, max_denoising_steps=2)
    assert r.finish_reason in ("length", "stop") and not model._busy


def test_a_thread_pool_ggml_cannot_hold_is_refused_before_loading(converted, tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(_core.EngineError, match="not a regular file"):
        Model(fifo)  # returns at once instead of blocking on the pipe
    with pytest.raises(ValueError, match=r"n_threads must be an integer in \[1, 512\], got 100000"):
        Model(converted("spec9", "f32"), n_threads=100000)
    m = _core.Model(str(converted("spec9", "f32")))
    with pytest.raises(_core.EngineError, match="n_threads must be <= 512, got 100000"):
        _core.Context(m, n_ctx=64, n_threads=100000)


@pytest.mark.parametrize("end", ["close", "drop"])
@pytest.mark.parametrize("how", ["generate", "stream closed early", "chat"])
def test_a_closed_or_dropped_model_frees_its_context_at_once_not_at_the_next_collection(converted, how, end):
    """A Model and its stream's claim referred to each other, and a closure of the engine thread held the
    context: a Model closed or dropped after a generation kept its context (22 MB for the tiny model; the
    weights too when dropped) until the cycle collector ran. The parameter fuzzer's workers reached their
    6 GiB cap after a few thousand cases; a server dropping a real model would have held gigabytes."""
    import gc
    import weakref

    gc.disable()
    try:
        m = Model(converted("spec9", "f32"), n_ctx=256, n_threads=1)
        ctx, core_model = weakref.ref(m._ctx), weakref.ref(m._model)
        if how == "generate":
            m.generate("the hat", max_new_tokens=8, **FAST)
        elif how == "chat":
            list(m.create_chat_completion([{"role": "user", "content": "the hat"}], stream=True, max_tokens=8, **FAST))
        else:
            it = m.stream_generate("the hat", max_new_tokens=40, **FAST)
            next(it)
            it.close()
            del it  # a live iterator holds its Model, closed or not
        if end == "close":
            m.close()
        else:
            del m
        assert ctx() is None and core_model() is None
    finally:
        gc.enable()


@pytest.mark.skipif(os.name != "posix", reason="POSIX resource limits")
def test_threads_the_process_cannot_start_are_refused_not_exit_1(converted):
    """Under an address-space cap too small for 400 thread stacks, OpenMP's runtime printed 'libgomp: Thread
    creation failed' and ended the process with status 1 at the first compute (found by the parameter fuzzer,
    whose workers run under a cap). The context starts its threads once first and refuses by name."""
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from pygguf_diffusion import EngineError, Model
        try:
            Model({str(converted("spec9", "f32"))!r}, n_ctx=256, n_threads=400)
            print("started 400")
        except EngineError as e:
            print("refused", e)
        m = Model({str(converted("spec9", "f32"))!r}, n_ctx=256, n_threads=4, seed=1)
        print("after", m.generate("the hat", max_new_tokens=4, max_denoising_steps=2).finish_reason)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first, after = r.stdout.splitlines()
    assert first == "started 400" or first.startswith("refused n_threads 400: this process cannot start that many "
                                                      "threads"), first
    assert after == "after length"


def test_token_ids_must_be_ids(model):
    V = model.info["hparams"]["n_vocab"]
    with pytest.raises(ValueError, match=r"prompt\[1\] = 4294967301: token ids must be in \[0, "):
        model.generate([2, 2**32 + 5], **FAST)
    with pytest.raises(ValueError, match=r"prompt\[0\] = -1"):
        model.generate([-1], **FAST)
    with pytest.raises(ValueError, match=rf"prompt\[0\] = {V}"):
        model.generate([V], **FAST)
    with pytest.raises(TypeError, match=r"prompt\[1\] = 5.0: token ids must be integers"):
        model.generate([2, 5.0], **FAST)
    with pytest.raises(TypeError, match=r"prompt\[0\] = True"):
        model.generate([True], **FAST)
    with pytest.raises(TypeError, match="bytes are not token ids"):
        model.generate(b"the hat", **FAST)
    ok = model.generate(np.array([2, 5, 7], dtype=np.int64), max_new_tokens=4, **FAST)
    assert ok.prompt_tokens == [2, 5, 7]


def test_a_schedule_too_cold_for_float32_is_refused_and_leaves_the_model_clean(model):
    before = model.generate("the hat", max_new_tokens=8, seed=3, **FAST).tokens
    model.reset()
    for t_min, t_max in ((0.0, 1e-38), (0.0, 1e-4)):  # lowest step temperature 3e-39, 3.3e-5
        with pytest.raises(ValueError, match="lowest step temperature"):
            model.generate("the hat", t_min=t_min, t_max=t_max, **FAST)
    assert model.generate("the hat", max_new_tokens=8, seed=3, **FAST).tokens == before


def test_a_nan_left_in_the_self_conditioning_state_does_not_reach_a_fresh_canvas(converted):
    m = _core.Model(str(converted("spec9", "f32")))
    ctx = _core.Context(m, n_ctx=64, n_threads=1)
    ctx.encode(np.array([2, 5, 7], dtype=np.int32))
    C, V = ctx.canvas_length, m.info()["hparams"]["n_vocab"]
    canvas = np.arange(C, dtype=np.int32) + 3
    clean = ctx.decode_step(canvas, None, 0.8)
    assert np.isnan(ctx.decode_step(canvas, np.full((C, V), np.nan, dtype=np.float32), 0.8)).all()  # poisoned
    again = ctx.decode_step(canvas, None, 0.8)
    assert np.isfinite(again).all()
    np.testing.assert_array_equal(again, clean)


def _child(script: str, gguf: str) -> str:
    return textwrap.dedent(f"""
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # background shells ignore SIGINT
        from pygguf_diffusion import Model
        m = Model({gguf!r}, n_ctx=2048, n_threads=1, seed=5)
    """) + textwrap.dedent(script)


@pytest.mark.slow
def test_interpreter_exit_with_a_live_stream_is_clean(converted):
    script = _child("""
        it = m.stream_generate("the hat", max_new_tokens=1500, max_denoising_steps=48)
        next(it)
        print("started", flush=True)
    """, str(converted("spec9", "f32")))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "started" in r.stdout and "terminate" not in r.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_ctrl_c_twice_leaves_the_model_usable(converted):
    script = _child("""
        try:
            for ev in m.stream_generate("the hat", max_new_tokens=1500, max_denoising_steps=48):
                print("event", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        r = m.generate("the hat", max_new_tokens=4, max_denoising_steps=2)
        print("after", r.finish_reason, flush=True)
    """, str(converted("spec9", "f32")))
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "event"
        p.send_signal(signal.SIGINT)
        p.send_signal(signal.SIGINT)  # the second one lands while the first is being handled
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "interrupted" in out and "after length" in out, (out, err)


def test_values_of_the_wrong_kind_are_refused_by_name(model, converted):
    """Found by the parameter fuzzer: each of these reached Python's or pybind11's own words ('int' object
    is not iterable, incompatible constructor arguments, dictionary update sequence) instead of a check."""
    import numpy as np

    for prompt in (7, None, np.int64(5), np.zeros((2, 2), dtype=np.int64)):
        with pytest.raises(TypeError, match="prompt: pass text"):
            model.generate(prompt, **FAST)
    with pytest.raises(TypeError, match="tokenize: text must be a str"):
        model.tokenize(None)
    with pytest.raises(TypeError, match="tokens: pass a sequence of token ids, got str"):
        model.detokenize("the hat")
    with pytest.raises(ValueError, match=r"tokens\[1\] = -3: token ids must be in"):
        model.detokenize([2, -3])
    with pytest.raises(_core.EngineError, match=r"n_ctx must be <= 16777216"):
        Model(converted("spec9", "f32"), n_ctx=2**31 - 1)  # padded in int32, it overflowed a ggml view (abort)
    with pytest.raises(ValueError, match="stop must be"):
        model.generate("the hat", stop=5, **FAST)
    with pytest.raises(ValueError, match="response_format 'text' is not supported"):
        model.create_chat_completion([{"role": "user", "content": "x"}], response_format="text")
    for messages in ([["user", "x"]], "the hat", {"role": "user"}, [{"role": 5}]):
        with pytest.raises(ValueError, match="messages must be|message 0 must be"):
            model.create_chat_completion(messages, max_tokens=4, **FAST)
    path = converted("spec9", "f32")
    for kw, match in (({"n_gpu_layers": b"x"}, "n_gpu_layers must be"), ({"n_gpu_layers": -2}, "n_gpu_layers must be"),
                      ({"cpu_moe": 0.5}, "cpu_moe must be"), ({"tensor_overrides": np.float64(0.5)}, "tensor_overrides")):
        with pytest.raises(ValueError, match=match):
            Model(path, **kw)
    with Model(path, n_ctx=256, n_cpu_moe=None, tensor_overrides=None) as m:  # None: the defaults
        assert m.generate("the hat", max_new_tokens=4, **FAST).finish_reason in ("length", "stop")


def test_seeds_are_uint64(model, converted):
    for bad, kind in ((-1, ValueError), (2**64, ValueError), (1.5, TypeError), (True, TypeError), ("7", TypeError)):
        with pytest.raises(kind, match="seed must be"):
            model.generate("the hat", seed=bad, **FAST)
        with pytest.raises(kind, match="seed must be"):
            Model(converted("spec9", "f32"), seed=bad)
    a = model.generate("the hat", max_new_tokens=8, seed=2**64 - 1, **FAST)
    model.reset()
    assert model.generate("the hat", max_new_tokens=8, seed=np.uint64(2**64 - 1), **FAST).tokens == a.tokens


_PHASES = r'''
import _thread, json, signal, sys, threading, time
from pygguf_diffusion import CommitEvent, DraftEvent, Model

# a child of a background job of a non-interactive shell can start with SIGINT ignored, and interrupt_main()
# then does nothing; Ctrl-C semantics are what is tested here, whatever the parent left
signal.signal(signal.SIGINT, signal.default_int_handler)

path = sys.argv[1]
SHORT = dict(max_new_tokens=12, max_denoising_steps=4, seed=3)
ref = Model(path, n_ctx=4096, n_batch=4096, n_threads=2, seed=5)
expected = ref.generate("the hat", **SHORT).tokens
ref.close()
long_prompt = list(range(20, 500)) * 6                  # 2880 tokens: the encode takes a while
m = Model(path, n_ctx=4096, n_batch=4096, n_threads=2, seed=5)
report = {}

def interrupt(times=1, after=0.0):
    def fire():
        for _ in range(times):
            _thread.interrupt_main()
            time.sleep(0.001)
    if after:
        threading.Timer(after, fire).start()
    else:
        fire()

def run(phase, trigger):
    seen = []
    try:
        if phase == "before encode":
            interrupt()
        if phase == "during encode":
            interrupt(after=0.05)
        for ev in m.stream_generate(long_prompt, max_new_tokens=600, max_denoising_steps=6, seed=1):
            seen.append(type(ev).__name__)
            trigger(ev, seen)
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "interrupted"
    time.sleep(0.2)   # a late second signal of a pair lands here, not in the checks below
    after = m.generate("the hat", **SHORT).tokens
    report[phase] = {"outcome": outcome, "events_before": seen, "busy_after": m._busy,
                     "next_call_ok": after == expected}

none = lambda ev, seen: None
run("before encode", none)
run("during encode", none)
run("mid-step", lambda ev, seen: interrupt(after=0.002) if seen.count("DraftEvent") == 2 else None)
run("between canvases", lambda ev, seen: interrupt() if isinstance(ev, CommitEvent) else None)
run("twice", lambda ev, seen: interrupt(times=2) if seen.count("DraftEvent") == 3 else None)
print(json.dumps(report))
'''


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_ctrl_c_at_every_phase_leaves_the_model_usable(converted):
    # before the encode, while the encoder runs, mid-step, right after a canvas commits, twice in quick
    # succession: each interrupt ends the call, the Model is free at once, and the next call gives what a
    # fresh model gives
    import json

    r = subprocess.run([sys.executable, "-c", _PHASES, str(converted("spec9", "f32"))], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(report) == {"before encode", "during encode", "mid-step", "between canvases", "twice"}
    for phase, res in report.items():
        assert res["outcome"] == "interrupted", (phase, res)
        assert not res["busy_after"] and res["next_call_ok"], (phase, res)
    assert report["before encode"]["events_before"] == []
    assert report["during encode"]["events_before"] == []
    assert "CommitEvent" not in report["mid-step"]["events_before"]
    assert report["between canvases"]["events_before"][-1] == "CommitEvent"


_CYCLES = r'''
import ctypes, gc, json, sys
from pygguf_diffusion import Model

libc = ctypes.CDLL("libc.so.6")

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4   # resident pages of 4 KiB

rss = []
for i in range(200):
    m = Model(sys.argv[1], n_ctx=256, n_threads=2, seed=i)
    r = m.generate("the hat", max_new_tokens=8, max_denoising_steps=2)
    for ev in m.stream_generate("a cat", max_new_tokens=8, max_denoising_steps=2):
        break   # a stream dropped half-way, then the model closed under it
    m.close()
    del m, r
    gc.collect()
    libc.malloc_trim(0)   # freed heap goes back to the OS: what stays resident is what is still held
    rss.append(rss_kib())
print(json.dumps(rss))
'''


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux /proc")
def test_200_load_generate_close_cycles_keep_rss_flat(converted):
    import json

    # one malloc arena: glibc otherwise gives each new generation thread an arena of its own, whose retained
    # pages (up to 8 per core) look like growth for the first few hundred cycles and then stop
    env = dict(os.environ, MALLOC_ARENA_MAX="1")
    r = subprocess.run([sys.executable, "-c", _CYCLES, str(converted("spec9", "f32"))], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rss = json.loads(r.stdout.strip().splitlines()[-1])
    # after a warm-up (allocator pools, lazily imported modules), 180 more cycles add less than 1 MiB
    # (measured: about 1.3 KiB per cycle, the tokenizers library's, and falling); a leaked model (2.4 MB of
    # weights, its transposed embedding) or context (KV store, compute buffers) would add over 1 MiB a cycle
    assert rss[-1] - rss[19] < 1024, (rss[19], rss[99], rss[-1])
