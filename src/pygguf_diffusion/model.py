"""The Python API: load a DiffusionGemma GGUF, generate (streaming first), chat."""
from __future__ import annotations

import logging
import os
import queue
import secrets
import time
import uuid
from dataclasses import replace
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import _core, _logging
from ._defaults import DEFAULT_N_CTX, INT32_MAX, MAX_THREADS
from ._engine_thread import EngineThread
from ._generation import _LIVE, _Claim, _Generation
from ._placement import KV_TYPES, check_overrides, check_rpc_servers
from ._signals import sigint_held
from ._stops import StopScanner, check_stops
from .canvas import DEFAULT_HOLE_TOKENS, CanvasSpec, build_spec, check_hole_tokens, hole_texts, infill_template
from .chat import fit_prompt, render_chat
from .tokenizer import GemmaTokenizer
from .types import CommitEvent, DraftEvent, Event, GenerationResult, GenerationStats

logger = logging.getLogger(__name__)

_POLL_S = 0.05  # how often a waiting consumer wakes up, so Ctrl-C reaches it promptly


class Model:
    """A DiffusionGemma model with one sequence context (its prompt KV store).

    >>> m = Model("model.gguf", n_ctx=8192, seed=0)
    >>> Model().create_chat_completion([{"role": "user", "content": "4821+377="}])  # the bundled tiny model
    >>> m.generate("Why is the sky blue?", max_new_tokens=256).text
    >>> for ev in m.stream_generate("Hi", drafts=True): ...

    One generation at a time per Model: stream_generate claims it from the call until its iterator is
    exhausted, closed or dropped (a second call meanwhile raises RuntimeError). close() stops a running
    generation after its current step, from any thread; at interpreter exit live streams are stopped.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, n_gpu_layers: int = -1,
                 n_ctx: int | None = None, n_threads: int | None = None, n_batch: int = 512, seed: int | None = None, verbose: bool = False,
                 cpu_moe: bool = False, n_cpu_moe: int = 0, tensor_overrides: Sequence[tuple[str, str]] = (),
                 type_k: str = "f32", type_v: str = "f32", rpc_servers: str | Sequence[str] | None = None,
                 cpu_repack: bool = True, progress: Callable[[float], None] | None = None) -> None:
        """n_ctx: positions the context holds (prompt + every canvas); None = min(8192, the model's
        context_length). n_threads: None = the physical cores this process may use. progress: called
        with the fraction loaded in [0, 1] while the weights are placed. path None: the bundled tiny model,
        announced on the `pygguf_diffusion` logger (stderr by default).

        Placement (with a GPU): n_gpu_layers (-1 all, 0 none, N the last N layers), cpu_moe (every expert
        tensor on the CPU), n_cpu_moe (the experts of the first N layers on the CPU), tensor_overrides
        [(regex, "CPU" | "GPU" | a device name)], the first match winning over the rest (llama.cpp's -ot).
        type_k / type_v: the KV store's element types (f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0).
        rpc_servers: ["host:port", ...] (or "a:1,b:2") of machines running dgemma-rpc-server: their devices
        take GPU layers after the local GPU, split evenly in order (n_gpu_layers and the overrides apply).
        cpu_repack: the CPU's expert weights in the CPU backend's repacked layouts where it has one for their
        type (q4_0, q4_K, iq4_nl, mxfp4 on AVX2): faster expert products and prompts, for a copy made at load
        (about 10 s for the released model's 8 GB of q4_K experts on 2 cores) instead of a mapping read lazily."""
        if path is None:
            from . import bundled

            path = bundled.bundled_model_path()
            if path is None:
                raise FileNotFoundError("no model path given and this install has no bundled model; pass a "
                                        ".gguf path or use Model.from_pretrained")
            logger.warning("no model path given: using %s; %s", bundled.DESCRIPTION, bundled.HINT)
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such model file; pass a .gguf path or use Model.from_pretrained")
        for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_threads", n_threads), ("n_cpu_moe", n_cpu_moe)):
            if v is None and name != "n_batch":
                continue
            hi = MAX_THREADS if name == "n_threads" else INT32_MAX
            lo = 0 if name == "n_cpu_moe" else 1
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or not -1 <= n_gpu_layers <= INT32_MAX:
            raise ValueError(f"n_gpu_layers must be an integer in [-1, {INT32_MAX}] (-1: all), got {n_gpu_layers!r}")
        for name, flag in (("cpu_moe", cpu_moe), ("cpu_repack", cpu_repack)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        overrides = check_overrides(tensor_overrides)
        rpc = check_rpc_servers(rpc_servers)
        for name, v in (("type_k", type_k), ("type_v", type_v)):
            if v not in KV_TYPES:
                raise ValueError(f"{name} must be one of {', '.join(KV_TYPES)}, got {v!r}")
        if seed is not None:
            _check_seed(seed)
        _logging.install()
        if verbose:
            logging.getLogger("pygguf_diffusion").setLevel(logging.INFO)
        self.path = path
        self._model = _core.Model(path, n_gpu_layers, bool(cpu_moe), progress=progress, n_cpu_moe=n_cpu_moe or 0,
                                  tensor_overrides=overrides, rpc_servers=rpc, cpu_repack=bool(cpu_repack))
        self.info: dict[str, Any] = self._model.info()
        vocab = self._model.vocab()  # the engine's checks: EngineError naming the file
        try:
            self.tokenizer = GemmaTokenizer.from_vocab(vocab)
        except Exception as e:  # noqa: BLE001 - ValueError, KeyError, and the tokenizers library's own types
            raise _core.EngineError(f"{path}: the tokenizer in the file is broken: {e}") from None
        if n_ctx is None:
            n_ctx = min(DEFAULT_N_CTX, self.info["hparams"]["n_ctx_train"] or DEFAULT_N_CTX)
        self._ctx = _core.Context(self._model, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads or _default_threads(),
                                  type_k=type_k, type_v=type_v)
        if self._ctx.n_ctx <= self._ctx.canvas_length:
            raise ValueError(f"n_ctx {self._ctx.n_ctx} leaves no room for a prompt: one canvas takes "
                             f"{self._ctx.canvas_length} positions; use n_ctx (-c) above that, e.g. "
                             f"{self._ctx.canvas_length + 1024}")
        self._seed = seed
        self._stored: list[int] = []  # tokens whose K/V the context holds, in order
        self._claim: _Claim | None = None  # the stream generation holding this Model, until released
        self._warned_overflow = False

    # ---- construction from the Hub --------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, repo_id: str, *, quant: str | None = "Q4_K_M", filename: str | None = None,
                        **kwargs: Any) -> Model:
        """Download (or find in the Hugging Face cache) a GGUF from `repo_id` and load it."""
        from .hub import download_gguf

        return cls(download_gguf(repo_id, quant=quant, filename=filename), **kwargs)

    # ---- basics ------------------------------------------------------------------------------------------
    def _context(self) -> Any:
        if self._ctx is None:
            raise RuntimeError("the model is closed")
        return self._ctx

    @property
    def n_ctx(self) -> int:
        return self._context().n_ctx

    @property
    def canvas_length(self) -> int:
        return self._context().canvas_length

    @property
    def name(self) -> str:
        return self.info.get("name") or os.path.basename(self.path)

    def runtime_info(self) -> dict[str, Any]:
        """Where and how this model runs: device of the output layer, CPU threads, dominant weight type,
        and the bytes held by the KV store, the self-conditioning state and the compute buffers."""
        mem = self._context().memory()
        by_type: dict[str, int] = {}
        for t in self.info["tensors"]:
            if len(t["shape"]) >= 2:
                by_type[t["type"]] = by_type.get(t["type"], 0) + t["nbytes"]
        return {"device": mem["device"], "n_threads": self._ctx.n_threads,
                "weight_type": max(by_type, key=by_type.__getitem__) if by_type else "?",
                "kv_bytes": mem["kv_bytes"], "sc_bytes": mem["sc_bytes"], "compute_bytes": mem["compute_bytes"]}

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"tokenize: text must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_bos=bool(add_bos))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(self._check_ids(tokens, "tokens"))

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        template = self.tokenizer.chat_template
        if not template:
            raise ValueError(f"{self.path}: the GGUF has no tokenizer.chat_template; pass a plain prompt instead")
        tok = self.tokenizer
        return render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                           bos_token=tok.token_text(tok.bos_id) if tok.bos_id >= 0 else "",
                           eos_token=tok.token_text(tok.eos_id) if tok.eos_id >= 0 else "", **kwargs)

    def reset(self) -> None:
        """Forget the stored prefix (the next call encodes its whole prompt)."""
        self._context()
        self._finish_interrupted_release()
        if self._busy:
            raise RuntimeError("a generation is running on this Model: finish or close its iterator first")
        self._forget_prefix()

    def close(self) -> None:
        """Stop a running generation (it ends after its current step) and free the weights and context.
        Idempotent; afterwards every call but close() raises RuntimeError("the model is closed")."""
        for gen in list(_LIVE):
            if gen.model is self:
                gen.close_or_stop()
        self._ctx = None  # type: ignore[assignment]
        self._model = None  # type: ignore[assignment]

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- generation ----------------------------------------------------------------------------------
    def stream_generate(self, prompt: str | Sequence[int], *, max_new_tokens: int | None = None,
                        max_denoising_steps: int | None = None, entropy_bound: float | None = None,
                        t_min: float | None = None, t_max: float | None = None,
                        stability_threshold: int | None = None, confidence_threshold: float | None = None,
                        seed: int | None = None, temperature: float | None = None, top_k: int | None = None,
                        top_p: float | None = None, stop: str | Sequence[str] | None = None,
                        drafts: bool = True, template: str | None = None,
                        canvas: str | Sequence[int] | None = None, frozen: Sequence[bool] | None = None,
                        hole_tokens: int = DEFAULT_HOLE_TOKENS) -> Iterator[Event]:
        """Yield a DraftEvent per denoising step (if `drafts`), a CommitEvent per canvas, then the
        GenerationResult. Stopping the iteration (or Ctrl-C) stops generation after the current step and
        leaves the model usable. Unset settings come from the GGUF (the checkpoint's generation_config).

        The OpenAI / llama-cpp-python sampling keywords act on the token drawn for each accepted position
        (the schedule t_max..t_min still drives acceptance and self-conditioning): `temperature` scales the
        step's temperature for that draw (1 = the model's schedule, the default; 0 = greedy: the argmax is
        accepted instead of a sample), `top_k` and `top_p` restrict it. `stop`: generation ends at the
        first occurrence of any of these strings, which is not returned (finish_reason "stop").

        Canvas editing (docs/canvas-editing.md): `template="The capital of {} is {}."` fixes the answer's
        text and lets the model fill the holes (`{}`: `hole_tokens` tokens, `{:N}`: N; the answer ends with
        the template; GenerationResult.holes has each hole's text); `canvas=` text or token ids starts the
        canvases from them instead of noise (a warm start; -1 ids stay noise), and `frozen=` (a flag per
        canvas position, with canvas ids) fixes positions to their canvas token."""
        self._context()
        self._finish_interrupted_release()
        if self._busy:
            raise RuntimeError("a generation is already running on this Model: finish or close() its iterator "
                               "first (an iterator left open by an exception holds the Model until it is dropped)")
        tokens, settings, stops, seed = self._validated(
            prompt, stop, seed, max_new_tokens=max_new_tokens, max_denoising_steps=max_denoising_steps,
            entropy_bound=entropy_bound, t_min=t_min, t_max=t_max, stability_threshold=stability_threshold,
            confidence_threshold=confidence_threshold, temperature=temperature, top_k=top_k, top_p=top_p,
            template=template, canvas=canvas, frozen=frozen, hole_tokens=hole_tokens)
        # The Model is claimed now, not at the first next(): a second stream fails here instead of racing
        # this one. Finishing, closing or dropping the iterator releases it.
        claim = self._claim = _Claim(self)
        try:
            return _Generation(self, claim, tokens, settings, seed, drafts, stops)
        except BaseException:
            claim.release()
            raise

    @property
    def _busy(self) -> bool:
        return self._claim is not None and not self._claim.released

    def _finish_interrupted_release(self) -> None:
        """A stream that has ended but whose release a second Ctrl-C cut short still holds the claim: wait
        for its engine thread (at most the current step) and release it, rather than race that thread."""
        if self._busy and self._claim.stream_ended:
            self._claim.release()

    def _check_ids(self, prompt: Any, what: str = "prompt") -> list[int]:
        text = "text (str) or " if what == "prompt" else ""
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            raise TypeError(f"{what}: bytes are not token ids; pass {text}a sequence of token ids")
        if (isinstance(prompt, str) or not isinstance(prompt, (Sequence, np.ndarray)) or
                (isinstance(prompt, np.ndarray) and prompt.ndim != 1)):
            raise TypeError(f"{what}: pass {text}a sequence of token ids, got {type(prompt).__name__}")
        n_vocab = int(self.info["hparams"]["n_vocab"])
        ids = []
        for i, t in enumerate(prompt):
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
                raise TypeError(f"{what}[{i}] = {t!r}: token ids must be integers")
            if not 0 <= int(t) < n_vocab:
                raise ValueError(f"{what}[{i}] = {int(t)}: token ids must be in [0, {n_vocab}) for this model")
            ids.append(int(t))
        return ids

    def check_generation(self, prompt: str | Sequence[int], *, stop: str | Sequence[str] | None = None,
                         seed: int | None = None, **settings: Any) -> list[int]:
        """The checks stream_generate makes before it starts (same keywords), and that the prompt leaves
        room for one canvas in n_ctx, without starting anything or waiting for a running generation:
        ValueError or TypeError naming the problem. Returns the prompt's token ids."""
        self._context()
        unknown = set(settings) - set(_SETTINGS) - set(_CANVAS_KEYWORDS)
        if unknown:
            raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
        tokens = self._validated(prompt, stop, seed, **settings)[0]
        if len(tokens) + self.canvas_length > self.n_ctx:
            raise ValueError(f"the prompt takes {len(tokens)} tokens and n_ctx {self.n_ctx} leaves room for "
                             f"{self.n_ctx - self.canvas_length} (one canvas of {self.canvas_length} must fit too)")
        return tokens

    def _validated(self, prompt: Any, stop: Any, seed: Any, **kw: Any) -> tuple[list[int], dict, list[str], int]:
        spec = self._canvas_spec(**{k: kw.pop(k, None) for k in _CANVAS_KEYWORDS})
        settings = _check_settings(**kw)
        stops = check_stops(stop)
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else self._check_ids(prompt)
        if not tokens:
            raise ValueError("the prompt is empty")
        try:  # the engine's own checks, before anything touches the stored prefix
            _core.check_generate(self._ctx, **settings)
        except _core.EngineError as e:
            raise _translate(e) from None
        if seed is None:
            seed = self._seed if self._seed is not None else secrets.randbits(63)
        _check_seed(seed)
        if spec is not None:
            settings["canvas"] = spec
        return tokens, settings, stops, int(seed)

    def _canvas_spec(self, template: Any, canvas: Any, frozen: Any, hole_tokens: Any) -> CanvasSpec | None:
        return build_spec(self.tokenizer, template=template, canvas=canvas, frozen=frozen, hole_tokens=hole_tokens,
                          canvas_length=self.canvas_length, n_ctx=self.n_ctx,
                          n_vocab=int(self.info["hparams"]["n_vocab"]))

    def infill(self, prefix: str, suffix: str, *, prompt: str | Sequence[int],
               hole_tokens: int = DEFAULT_HOLE_TOKENS, **kwargs: Any) -> GenerationResult:
        """Fill the hole between `prefix` and `suffix` of the answer to `prompt` (same settings as
        stream_generate): the answer is fixed to prefix + hole_tokens free positions + suffix, and the
        result's text and tokens are the hole's (spaces the prefix ends with may move into the hole:
        docs/canvas-editing.md)."""
        for name, v in (("prefix", prefix), ("suffix", suffix)):
            if not isinstance(v, str):
                raise TypeError(f"infill: {name} must be a str, got {type(v).__name__}")
        n = check_hole_tokens(hole_tokens)
        template = infill_template(prefix, suffix, n)
        r = self.generate(prompt, template=template, **kwargs)
        a, b = self._canvas_spec(template, None, None, n).holes[0]
        return replace(r, text=r.holes[0], tokens=r.tokens[a:b])

    def edit(self, text: str, instruction: str | Sequence[int], **kwargs: Any) -> GenerationResult:
        """Revise `text`: generate the answer to `instruction` (a prompt, as generate takes) with the
        canvases starting from `text` instead of noise (a warm start; nothing is fixed, so the model keeps
        what it agrees with and rewrites the rest)."""
        if not isinstance(text, str):
            raise TypeError(f"edit: text must be a str, got {type(text).__name__}")
        return self.generate(instruction, canvas=text, **kwargs)

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> GenerationResult:
        """Generate to the end and return text, tokens, finish reason and stats (same settings as
        stream_generate)."""
        result = None
        for ev in self.stream_generate(prompt, drafts=False, **kwargs):
            if isinstance(ev, GenerationResult):
                result = ev
        assert result is not None
        return result

    def _reuse_prefix(self, tokens: list[int]) -> list[int]:
        """Keep the stored K/V of the longest common prefix; return the tokens still to encode.

        A prompt stored whole is not encoded again: its K/V are bit for bit those of its first encoding,
        so the same prompt, seed and settings repeat the answer. The sliding layers can only drop a
        bounded number of positions (kv ring); past that the whole prompt is encoded afresh."""
        n = 0
        for a, b in zip(self._stored, tokens):
            if a != b:
                break
            n += 1
        if n < len(self._stored):
            try:
                self._ctx.truncate(n)
            except _core.EngineError:
                self._ctx.truncate(0)
                n = 0
            self._stored = self._stored[:n]
        if n:
            logger.debug("reusing %d stored tokens of %d", n, len(tokens))
        return tokens[n:]

    def _stream(self, tokens: list[int], settings: dict[str, Any], seed: int, drafts: bool,
                stops: list[str], claim: _Claim) -> Iterator[Event]:
        abort = claim.abort
        self._context()  # an iterator created before close() and started after it
        q: queue.Queue = queue.Queue()
        commits: list[dict] = []
        eog = set(self.tokenizer.eog_ids)
        todo = self._reuse_prefix(tokens)

        def on_draft(d: dict) -> None:
            q.put(("draft", d))

        def on_commit(d: dict) -> None:
            commits.append(d)
            q.put(("commit", d))

        spec: CanvasSpec | None = settings.get("canvas")
        engine_settings = {k: v for k, v in settings.items() if k != "canvas"}
        if spec is not None:
            engine_settings.update(spec.engine_args())

        def work() -> None:
            try:
                r = _core.generate(self._ctx, np.asarray(todo, dtype=np.int32), seed=seed,
                                   on_draft=on_draft if drafts else None, on_commit=on_commit,
                                   should_abort=abort.is_set, **engine_settings)
                q.put(("done", r))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
                q.put(("error", e))

        worker = EngineThread(work, abort)
        claim.workers.append(worker)
        answer: list[int] = []
        scanner = StopScanner(stops)
        stop_text = ""  # the answer up to the stop string, once one is found
        worker.start()
        try:
            while True:
                try:
                    kind, payload = q.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if scanner.stopped and kind in ("draft", "commit"):
                    continue  # a stop string ended the answer: the rest of the run is discarded
                if kind == "draft":
                    toks = payload["argmax"].tolist()
                    yield DraftEvent(canvas_index=payload["canvas_index"], step=payload["step"],
                                     steps_remaining=payload["steps_remaining"],
                                     temperature=float(payload["temperature"]), tokens=toks,
                                     accepted=payload["accepted"].tolist(),
                                     mean_entropy=float(payload["mean_entropy"]),
                                     text=self.tokenizer.decode([t for t in toks if t not in eog]))
                elif kind == "commit":
                    toks = payload["tokens"].tolist()
                    answer.extend(t for t in toks if t not in eog)
                    full = self.tokenizer.decode(answer)
                    delta, cut = scanner.feed(full, final=bool(payload["last"]))
                    if cut is not None:
                        abort.set()
                        stop_text = full[:cut]
                        answer = _tokens_within(answer, cut, self.tokenizer.decode)
                    yield CommitEvent(canvas_index=payload["canvas_index"], tokens=toks, steps=payload["steps"],
                                      text=delta, last=bool(payload["last"]) or scanner.stopped)
                elif kind == "error":
                    raise _translate(payload)
                else:
                    r = payload
                    stopped = scanner.stopped
                    out = answer if stopped else list(r["tokens"])
                    yield GenerationResult(text=stop_text if stopped else self.tokenizer.decode(answer),
                                           tokens=out, finish_reason="stop" if stopped else r["finish_reason"],
                                           stats=GenerationStats.from_dict(r["stats"]), prompt_tokens=tokens,
                                           holes=hole_texts(out, spec, self.tokenizer.decode) if spec else [])
                    return
        finally:
            # a Ctrl-C before this block is held leaves the claim unsettled: its release waits for the
            # engine and forgets the stored prefix instead
            with sigint_held():
                abort.set()
                worker.wait()
                self._settle(tokens, commits)
                claim.settled.set()

    def _forget_prefix(self) -> None:
        self._ctx.truncate(0)
        self._stored = []

    def _settle(self, prompt: list[int], commits: list[dict]) -> None:
        """Record what the context now holds: the prompt and every re-encoded (non-final) canvas."""
        if self._ctx is None:  # closed while the generation ran
            return
        stored = list(prompt)
        for c in commits:
            if not c["last"]:
                stored.extend(c["tokens"].tolist())
        n = self._ctx.n_past
        if n <= len(stored):  # fewer after an error before (part of) the prompt was encoded
            self._stored = stored[:n]
        else:  # cannot happen unless the context was used behind our back: start afresh
            self._forget_prefix()

    # ---- chat ----------------------------------------------------------------------------------------
    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]], *, stream: bool = False,
                               max_tokens: int | None = None, n: int = 1, response_format: Any = None,
                               context_overflow: str = "drop_oldest", **kwargs: Any) -> dict | Iterator[dict]:
        """OpenAI-shaped chat completion (`stream=True`: chat.completion.chunk dicts). Settings as
        stream_generate (`temperature`, `top_p`, `top_k`, `stop`, `seed` included); `max_tokens` is the
        OpenAI name of max_new_tokens. `n` must be 1; `response_format` is not supported yet.

        A conversation longer than the context (its prompt plus one canvas must fit n_ctx) loses its oldest
        turns, as dgemma-cli does: the system messages and the newest user message are always kept, turns
        are dropped whole (logged once per Model). `context_overflow="error"` raises ValueError instead."""
        if isinstance(n, bool) or n != 1:
            raise ValueError(f"n={n!r}: only one choice per request is supported (n=1)")
        if response_format is not None and (not isinstance(response_format, Mapping) or
                                            response_format.get("type", "text") != "text"):
            raise ValueError(f"response_format {response_format!r} is not supported yet (plain text only)")
        if max_tokens is not None:
            if "max_new_tokens" in kwargs:
                raise ValueError("pass max_tokens or max_new_tokens, not both")
            kwargs["max_new_tokens"] = max_tokens
        if context_overflow not in ("drop_oldest", "error"):
            raise ValueError(f"context_overflow must be 'drop_oldest' or 'error', got {context_overflow!r}")
        tokens = self._chat_tokens(messages, context_overflow)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not stream:
            r = self.generate(tokens, **kwargs)
            return {"id": cid, "object": "chat.completion", "created": created, "model": self.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                                 "finish_reason": r.finish_reason}],
                    "usage": r.usage()}
        return self._chat_chunks(tokens, cid, created, kwargs)

    def _chat_tokens(self, messages: Sequence[Mapping[str, Any]], overflow: str) -> list[int]:
        """The prompt tokens of a conversation that fits n_ctx with room for one canvas."""
        def tokenize(msgs: Sequence[Mapping[str, Any]]) -> list[int]:
            # the template emits <bos> itself
            return self.tokenizer.encode(self.apply_chat_template(msgs, add_generation_prompt=True))

        budget = self.n_ctx - self.canvas_length
        if overflow == "error":
            tokens = tokenize(messages)
            if len(tokens) > budget:
                raise ValueError(f"the conversation takes {len(tokens)} prompt tokens and n_ctx {self.n_ctx} leaves "
                                 f"room for {budget} (one canvas of {self.canvas_length} must fit too); use a "
                                 "larger n_ctx or context_overflow='drop_oldest'")
            return tokens
        tokens, _, dropped = fit_prompt(messages, tokenize, budget)
        if dropped:
            log = logger.debug if self._warned_overflow else logger.warning
            log("the conversation outgrew n_ctx %d: dropped its %d oldest messages", self.n_ctx, dropped)
            self._warned_overflow = True
        return tokens

    def _chat_chunks(self, tokens: list[int], cid: str, created: int, kwargs: dict) -> Iterator[dict]:
        def chunk(delta: dict, finish: str | None = None, **extra: Any) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

        yield chunk({"role": "assistant", "content": ""})
        for ev in self.stream_generate(tokens, drafts=False, **kwargs):
            if isinstance(ev, CommitEvent) and ev.text:
                yield chunk({"content": ev.text})
            elif isinstance(ev, GenerationResult):
                yield chunk({}, ev.finish_reason, usage=ev.usage())


def _default_threads() -> int:
    try:
        from ._threads import default_threads
    except ImportError:  # pragma: no cover - the engine then uses every hardware thread
        return 0
    return default_threads()


def _tokens_within(tokens: list[int], n_chars: int, decode: Callable[[list[int]], str]) -> list[int]:
    """The longest prefix of tokens whose text fits in the first n_chars characters."""
    lo, hi = 0, len(tokens)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(decode(tokens[:mid])) <= n_chars:
            lo = mid
        else:
            hi = mid - 1
    return tokens[:lo]


def _check_seed(seed: Any) -> None:
    # the engine's seed is a uint64: pybind's TypeError for -1 or 2**70, and 1.5 silently became 1
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer (None: a random one), got {seed!r}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64 - 1] (None: a random one), got {seed}")


_CANVAS_KEYWORDS = ("template", "canvas", "frozen", "hole_tokens")
_SETTINGS = ("max_new_tokens", "max_denoising_steps", "entropy_bound", "t_min", "t_max", "stability_threshold",
             "confidence_threshold", "temperature", "top_k", "top_p")


def _check_settings(**kw: Any) -> dict[str, Any]:
    ints = ("max_new_tokens", "max_denoising_steps", "stability_threshold", "top_k")
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if v is None:
            continue
        if k in ints:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{k} must be an integer, got {v!r}")
            out[k] = int(v)
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not np.isfinite(v):
                raise ValueError(f"{k} must be a finite number, got {v!r}")
            out[k] = float(v)
    for k in ints:
        if k in out and not -INT32_MAX <= out[k] <= INT32_MAX:
            raise ValueError(f"{k} must fit in 32 bits, got {out[k]}")
    if out.get("max_new_tokens", 1) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {out['max_new_tokens']}")
    return out


def _translate(e: BaseException) -> BaseException:
    if isinstance(e, _core.EngineError) and str(e).startswith("invalid generation setting"):
        return ValueError(str(e))
    return e
