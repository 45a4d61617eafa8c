"""OpenAI request bodies → the Model's generation keywords, checked before anything is queued.

A request the Model would refuse is refused here, with the Model's own message, as a 400: once a stream
has started its status line is sent. The diffusion settings are accepted as extra body fields with the
reference names; `top_k` and the other OpenAI sampling keywords map as in Model.stream_generate. Canvas
editing (docs/canvas-editing.md) takes the extra fields `template`, `canvas`, `frozen` and `hole_tokens`
(Model.stream_generate's keywords), and /v1/completions OpenAI's insert field `suffix`: the answer is a
hole of `hole_tokens` followed by the suffix, and the completion's text is what fills the hole."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..canvas import DEFAULT_HOLE_TOKENS, infill_template
from ..model import Model

_DIFFUSION = ("max_denoising_steps", "entropy_bound", "t_min", "t_max", "stability_threshold", "confidence_threshold")
_SAMPLING = ("temperature", "top_k", "top_p")
_CANVAS = ("template", "canvas", "frozen", "hole_tokens")
# accepted and ignored: they do not change what this server computes
_IGNORED = ("model", "user", "frequency_penalty", "presence_penalty", "logit_bias", "parallel_tool_calls",
            "store", "metadata", "service_tier")


class BadRequest(ValueError):
    """A request this server refuses (400), with the OpenAI error's `param` when one field is at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Request:
    kind: str                      # "chat" or "completion"
    tokens: list[int]
    settings: dict[str, Any]       # Model.stream_generate keywords, stop and seed included
    stream: bool = False
    include_usage: bool = False
    include_drafts: bool = False
    echo_model: str = ""
    infill: bool = False           # /v1/completions with a suffix: the text is the hole's


def parse(body: Any, kind: str, model: Model, defaults: dict[str, Any] | None = None, model_id: str = "") -> Request:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    known = set(_DIFFUSION + _SAMPLING + _CANVAS + _IGNORED) | {"stream", "stream_options", "max_tokens", "stop", "seed", "n"}
    known |= {"messages", "max_completion_tokens", "response_format", "context_overflow"} if kind == "chat" else {
        "prompt", "echo", "suffix", "best_of", "logprobs"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", unknown[0])
    settings: dict[str, Any] = {k: body[k] for k in _DIFFUSION + _SAMPLING + _CANVAS if body.get(k) is not None}
    limit = body.get("max_completion_tokens") if kind == "chat" else None
    limit = body.get("max_tokens") if limit is None else limit
    if limit is not None:
        settings["max_new_tokens"] = limit
    for k in ("stop", "seed"):
        if body.get(k) is not None:
            settings[k] = body[k]
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or n != 1):
        raise BadRequest(f"n={n!r}: only one choice per request is supported", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict) or set(opts) - {"include_usage", "include_drafts"}:
        raise BadRequest("stream_options may hold include_usage and include_drafts (booleans)", "stream_options")
    if kind == "chat":
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type", "text") != "text"):
            raise BadRequest(f"response_format {fmt!r} is not supported (plain text only)", "response_format")
        overflow = body.get("context_overflow", "error")
        if overflow not in ("error", "drop_oldest"):
            raise BadRequest("context_overflow must be 'error' or 'drop_oldest'", "context_overflow")
        if "messages" not in body:
            raise BadRequest("messages is required", "messages")
        prompt = _chat_tokens(model, body["messages"], overflow)
    else:
        for k, ok in (("echo", (None, False)), ("best_of", (None, 1)), ("logprobs", (None,))):
            if body.get(k) not in ok:
                raise BadRequest(f"{k} is not supported", k)
        suffix = body.get("suffix")
        if suffix is not None:
            if not isinstance(suffix, str):
                raise BadRequest("suffix must be a string", "suffix")
            if settings.get("template") is not None or settings.get("canvas") is not None:
                raise BadRequest("suffix fills a hole of its own: pass it without template or canvas", "suffix")
            n = settings.pop("hole_tokens", DEFAULT_HOLE_TOKENS)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise BadRequest(f"hole_tokens must be an integer >= 1, got {n!r}", "hole_tokens")
            settings["template"] = infill_template("", suffix, n)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]   # a batch of one
        if not isinstance(prompt, (str, list)):
            raise BadRequest("prompt must be a string, a list of token ids, or a list holding one of those", "prompt")
    settings = {**(defaults or {}), **settings}
    try:
        tokens = model.check_generation(prompt, **settings)
    except (ValueError, TypeError) as e:
        raise BadRequest(str(e)) from None
    return Request(kind=kind, tokens=tokens, settings=settings, stream=stream,
                   include_usage=bool(opts.get("include_usage")), include_drafts=bool(opts.get("include_drafts")),
                   echo_model=body["model"] if isinstance(body.get("model"), str) else model_id,
                   infill=kind == "completion" and body.get("suffix") is not None)


def _chat_tokens(model: Model, messages: Any, overflow: str) -> list[int]:
    try:
        return model._chat_tokens(messages, overflow)   # noqa: SLF001 - the same fitting as create_chat_completion
    except (ValueError, TypeError) as e:
        raise BadRequest(str(e), "messages") from None
