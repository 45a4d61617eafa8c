"""Chats: the GGUF's `tokenizer.chat_template` rendered with jinja2 the way transformers'
`apply_chat_template` renders it (sandboxed, trim_blocks + lstrip_blocks, loop controls, a `tojson` that
keeps non-ASCII, `raise_exception`, `strftime_now`), and the policy that keeps a conversation within the
context (`fit_messages`)."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template could not be rendered for these messages."""


# A chat template is code from the file. Rendering is bounded so that a hostile one fails in seconds
# instead of tying up the caller: loop items over all range() calls, the size of any string or list that
# `*` builds, exponents, the output, and the wall time (checked at every range item and output chunk).
MAX_RANGE_ITEMS = 1_000_000
MAX_TEMPLATE_OUTPUT = 32 * 1024 * 1024  # characters; a 128k-token prompt is well under 1 MB
MAX_RENDER_SECONDS = 10.0
_budget = threading.local()


def _over(what: str) -> None:
    raise jinja2.exceptions.SecurityError(f"the chat template exceeds the renderer's limits: {what}")


def _check_time() -> None:
    if time.monotonic() > _budget.deadline:
        _over(f"it ran for more than {MAX_RENDER_SECONDS:g} s")


def _counted_range(*args: int) -> range:
    r = range(*args)
    _budget.items += len(r)
    if _budget.items > MAX_RANGE_ITEMS:
        _over(f"its loops ask for more than {MAX_RANGE_ITEMS:,} range() items")
    _check_time()
    return r


class _LimitedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_TEMPLATE_OUTPUT:
                    _over(f"`*` would build {len(seq) * n:,} items")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 1024:
            _over(f"an exponent of {right}")
        return super().call_binop(context, operator, left, right)


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _Namespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore attributes (no reach into interpreter internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = _LimitedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["range"] = _counted_range
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the model's chat template does not parse: {e}") from e


def check_messages(messages: Any) -> None:
    """A chat is a sequence of {"role": str, "content": ...} mappings: ChatTemplateError (a ValueError)
    naming the first entry that is not."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
                                f"{type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"message {i} must be a dict with a 'role' string (and usually 'content'), "
                                    f"got {m!r:.80}")


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                bos_token: str = "<bos>", eos_token: str = "<eos>", tools: list[dict] | None = None,
                **extra: Any) -> str:
    """The prompt text for `messages` ({"role", "content"} dicts). The Gemma templates emit `<bos>`
    themselves, so tokenize the result without adding another."""
    check_messages(messages)
    _budget.items, _budget.deadline = 0, time.monotonic() + MAX_RENDER_SECONDS
    try:
        out, size = [], 0
        for chunk in _compile(template).generate(messages=[dict(m) for m in messages], tools=tools,
                                                 add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                                                 eos_token=eos_token, **extra):
            size += len(chunk)
            if size > MAX_TEMPLATE_OUTPUT:
                _over(f"its output passes {MAX_TEMPLATE_OUTPUT:,} characters")
            _check_time()
            out.append(chunk)
        return "".join(out)
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"cannot render the chat: {e}") from e
    except (OverflowError, MemoryError, RecursionError) as e:
        raise ChatTemplateError(f"cannot render the chat: {type(e).__name__}: {e}") from e


def fit_messages(messages: Sequence[Mapping[str, Any]], count_tokens: Callable[[list[dict]], int],
                 budget: int) -> tuple[list[dict], int]:
    """Drop the oldest turns until `count_tokens(kept) <= budget`; return (kept, number of messages dropped).

    The leading system (or developer) messages are always kept, and so is everything from the newest user
    message on. Turns are dropped whole (a user message with the replies that follow it), so the roles
    still alternate as chat templates require. `count_tokens` gives the prompt length of a message list
    (the rendered template, tokenized); the budget is usually n_ctx minus room for one canvas. Raises
    ValueError when even the system messages and the newest user message do not fit.
    """
    check_messages(messages)
    msgs = [dict(m) for m in messages]
    head = 0
    while head < len(msgs) and msgs[head].get("role") in ("system", "developer"):
        head += 1
    rest = msgs[head:]
    users = [i for i, m in enumerate(rest) if m.get("role") == "user"]
    last = users[-1] if users else max(len(rest) - 1, 0)
    cuts = [0, *(i for i in users if 0 < i <= last)]  # each is the start of a whole turn
    if cuts[-1] != last:
        cuts.append(last)

    def fits(cut: int) -> bool:
        return count_tokens(msgs[:head] + rest[cut:]) <= budget

    if fits(0):
        return msgs, 0
    if not fits(last):
        need = count_tokens(msgs[:head] + rest[last:])
        raise ValueError(f"the newest message does not fit in the context: the system prompt and this "
                         f"message take {need} tokens, {budget} are available")
    lo, hi = 0, len(cuts) - 1  # cuts[lo] does not fit, cuts[hi] fits; the prompt shrinks as the cut moves on
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(cuts[mid]):
            hi = mid
        else:
            lo = mid
    return msgs[:head] + rest[cuts[hi]:], cuts[hi]


def fit_prompt(messages: Sequence[Mapping[str, Any]], tokenize: Callable[[list[dict]], list[int]],
               budget: int) -> tuple[list[int], list[dict], int]:
    """fit_messages for a real prompt: returns (tokens of the kept messages, kept, messages dropped).

    Each candidate history is rendered and tokenized once; the kept one's tokens are returned instead of
    being computed again. (Candidates are the system messages plus a suffix of the rest, so their lengths
    tell them apart.)"""
    seen: dict[int, list[int]] = {}

    def count(msgs: list[dict]) -> int:
        if len(msgs) not in seen:
            seen[len(msgs)] = tokenize(msgs)
        return len(seen[len(msgs)])

    kept, dropped = fit_messages(messages, count, budget)
    count(kept)
    return seen[len(kept)], kept, dropped
