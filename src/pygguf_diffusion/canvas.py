"""Canvas editing: what the answer's canvases start from and which positions are fixed.

The engine takes, per generated position (position i is slot i % C of canvas i // C), a starting token or
-1 (uniform noise) and a frozen flag (never renoised, always accepted; docs/generation-contract.md). This
module builds those two lists from the three user-facing forms:

- a warm start (`canvas=` text or ids, `Model.edit`): the canvas starts from the given tokens, all free;
- a template (`template="The capital of {} is {}."`, `Model.infill`): the text is fixed, each hole `{}`
  (`hole_tokens` positions) or `{:N}` (N positions) is free, and the answer ends with the template: an
  end-of-turn token and padding to the canvas end are fixed after it, as the model saw in training;
- the explicit form (`canvas=` ids with -1 for noise, `frozen=` flags).

Seams (documented in docs/canvas-editing.md): each text piece is tokenized on its own, so a hole always
starts and ends on a token boundary. Where the tokenizer attaches a space to the word after it (Gemma's:
" Paris" is one token), spaces at the end of a piece that precedes a hole move into the hole, so
"The capital of {}" leaves the model to write " Paris" rather than pinning a lone space token before it;
a tokenizer that writes spaces as tokens of their own (the bundled model's, one token per character)
keeps them fixed where the template has them. A hole inside a word ("un{}able") still splits the word at
token boundaries the tokenizer would not have chosen; place holes at word boundaries where possible.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._defaults import INT32_MAX

DEFAULT_HOLE_TOKENS = 8
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(:(\d*))?\}|\{|\}")


@dataclass(frozen=True)
class CanvasSpec:
    """Starting tokens (-1: noise) and frozen flags per generated position; holes as [start, end)."""

    init: list[int]
    frozen: list[bool]
    holes: list[tuple[int, int]] = field(default_factory=list)

    def engine_args(self) -> dict[str, Any]:
        if not self.init:
            return {}
        return {"canvas_init": self.init, "canvas_frozen": [int(f) for f in self.frozen]}


def parse_template(template: str, hole_tokens: int, max_width: int | None = None) -> list[str | int]:
    """The template as text pieces (str) and holes (their width in tokens, int). `{}` is a hole of
    `hole_tokens`, `{:N}` a hole of N; `{{` and `}}` are literal braces. ValueError for anything else, and
    for a hole wider than max_width (the context: no answer could reach its end)."""
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    parts: list[str | int] = []
    text: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        text.append(template[pos:m.start()])
        pos = m.end()
        tok = m.group(0)
        if tok in ("{{", "}}"):
            text.append(tok[0])
            continue
        if tok in ("{", "}"):
            raise ValueError(f"template: a lone {tok!r} at character {m.start()}; write {tok * 2!r} for a "
                             "literal brace, {} for a hole or {:N} for a hole of N tokens")
        width = hole_tokens if not m.group(2) else int(m.group(2))
        if width < 1:
            raise ValueError(f"template: the hole at character {m.start()} has {width} tokens; give it at least 1")
        if max_width is not None and width > max_width:
            raise ValueError(f"template: the hole at character {m.start()} has {width} tokens, more than the "
                             f"context holds (n_ctx {max_width}); make it smaller")
        parts.append("".join(text))
        text = []
        parts.append(width)
    parts.append("".join(text) + template[pos:])
    if not any(isinstance(p, int) for p in parts):
        raise ValueError("template: no hole to fill; mark each with {} (or {:N} for N tokens)")
    return [p for p in parts if p != ""]


def template_spec(template: str, encode: Callable[[str], list[int]], *, hole_tokens: int, end_id: int,
                  pad_id: int, canvas_length: int, max_width: int | None = None) -> CanvasSpec:
    """Fixed text, free holes, then a fixed end-of-turn token and padding to the end of its canvas."""
    parts = parse_template(template, hole_tokens, max_width)
    space_joins_word = len(encode(" the")) == 1
    init: list[int] = []
    frozen: list[bool] = []
    holes: list[tuple[int, int]] = []
    for i, p in enumerate(parts):
        if isinstance(p, int):
            holes.append((len(init), len(init) + p))
            init.extend([-1] * p)
            frozen.extend([False] * p)
            continue
        if space_joins_word and i + 1 < len(parts):  # the space belongs to the word the hole holds
            p = p.rstrip(" ")
        ids = encode(p)
        init.extend(ids)
        frozen.extend([True] * len(ids))
    init.append(end_id)
    frozen.append(True)
    n_pad = -len(init) % canvas_length
    init.extend([pad_id] * n_pad)
    frozen.extend([True] * n_pad)
    return CanvasSpec(init=init, frozen=frozen, holes=holes)


def escape(text: str) -> str:
    """Text as a template piece: braces doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def infill_template(prefix: str, suffix: str, hole_tokens: int) -> str:
    """The template of an infill: prefix, one hole of hole_tokens positions, suffix (taken literally)."""
    return f"{escape(prefix)}{{:{hole_tokens}}}{escape(suffix)}"


def warm_spec(tokens: Sequence[int]) -> CanvasSpec:
    """A warm start: the canvases begin from `tokens`, every position free."""
    return CanvasSpec(init=list(tokens), frozen=[False] * len(tokens))


def explicit_spec(canvas: Sequence[int], frozen: Sequence[bool] | None, n_vocab: int) -> CanvasSpec:
    """canvas: a token per position, -1 for noise; frozen: a flag per position (default: none)."""
    if isinstance(canvas, (str, bytes)) or not isinstance(canvas, (Sequence, np.ndarray)):
        raise TypeError(f"canvas: pass text (str) or a sequence of token ids (-1: noise), got {type(canvas).__name__}")
    init: list[int] = []
    for i, t in enumerate(canvas):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"canvas[{i}] = {t!r}: token ids must be integers")
        if not -1 <= int(t) < n_vocab:
            raise ValueError(f"canvas[{i}] = {int(t)}: token ids must be in [0, {n_vocab}), or -1 for noise")
        init.append(int(t))
    if frozen is None:
        return CanvasSpec(init=init, frozen=[False] * len(init))
    if isinstance(frozen, (str, bytes)) or not isinstance(frozen, (Sequence, np.ndarray)):
        raise TypeError(f"frozen: pass a sequence of booleans, got {type(frozen).__name__}")
    flags = [bool(f) for f in frozen]
    if len(flags) != len(init):
        raise ValueError(f"frozen has {len(flags)} flags for a canvas of {len(init)} positions; give one per position")
    for i, (t, f) in enumerate(zip(init, flags)):
        if f and t < 0:
            raise ValueError(f"frozen[{i}]: position {i} is noise (-1) in canvas; a frozen position needs a token")
    return CanvasSpec(init=init, frozen=flags)


def hole_texts(tokens: Sequence[int], spec: CanvasSpec, decode: Callable[[list[int]], str]) -> list[str]:
    """The text the model wrote into each hole (padding it wrote there dropped by `decode`); a hole the
    answer did not reach (an earlier end of turn, max_new_tokens) is cut where the answer ends."""
    return [decode(list(tokens[a:b])) for a, b in spec.holes]


def check_hole_tokens(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= INT32_MAX:
        raise ValueError(f"hole_tokens must be an integer >= 1, got {n!r}")
    return int(n)


def build_spec(tok: Any, *, template: Any, canvas: Any, frozen: Any, hole_tokens: Any, canvas_length: int,
               n_ctx: int, n_vocab: int) -> CanvasSpec | None:
    """The spec of Model.stream_generate's canvas keywords (None: none given), checked: ValueError or
    TypeError naming the problem. `tok`: the model's GemmaTokenizer."""
    hole_tokens = check_hole_tokens(DEFAULT_HOLE_TOKENS if hole_tokens is None else hole_tokens)
    if template is not None:
        if canvas is not None or frozen is not None:
            raise ValueError("pass either template= or canvas= (and frozen=), not both")
        end = tok.tokenizer.token_to_id("<turn|>")
        end = end if end is not None else tok.eos_id
        return template_spec(template, tok.encode, hole_tokens=hole_tokens, end_id=end,
                             pad_id=tok.pad_id if tok.pad_id >= 0 else end, canvas_length=canvas_length,
                             max_width=n_ctx)
    if canvas is None:
        if frozen is not None:
            raise ValueError("frozen= needs canvas= (the token ids it fixes)")
        return None
    if isinstance(canvas, str):
        if frozen is not None:
            raise ValueError("frozen= needs canvas= as token ids (one flag per position), not text")
        return warm_spec(tok.encode(canvas))
    return explicit_spec(canvas, frozen, n_vocab)
