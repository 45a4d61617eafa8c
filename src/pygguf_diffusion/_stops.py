"""Stop strings over streamed text: the answer ends before the first occurrence of any of them."""
from __future__ import annotations

from collections.abc import Sequence


def check_stops(stop: str | Sequence[str] | None) -> list[str]:
    if stop is not None and not isinstance(stop, (str, Sequence)):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stops


class StopScanner:
    """Feeds on the whole answer text as it grows and says what may be streamed.

    Text that could be the start of a stop string completed by a later canvas is held back until the
    next canvas decides it, so streamed deltas never contain anything a stop later removes; so is a
    trailing incomplete UTF-8 character."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.emitted = 0      # characters of the answer already streamed
        self.stopped = False

    def feed(self, text: str, *, final: bool) -> tuple[str, int | None]:
        """Returns (delta to stream, cut) where cut is where a stop string starts (None: none yet)."""
        cut = None
        for s in self.stops:
            i = text.find(s)
            if i >= 0 and (cut is None or i < cut):
                cut = i
        if cut is not None:
            self.stopped = True
            safe = cut
        elif final:
            safe = len(text)
        else:
            safe = len(text) - max((self._partial(text, s) for s in self.stops), default=0)
            # a character split across canvases decodes as U+FFFD until its last byte arrives
            while safe > self.emitted and text[safe - 1] == "\ufffd":
                safe -= 1
        delta = text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return delta, cut

    @staticmethod
    def _partial(text: str, stop: str) -> int:
        """The longest proper prefix of stop that text ends with."""
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                return k
        return 0
