"""Live terminal output for dgemma-cli: the answer with its current canvas draft painted after it
(--show-drafts), and the model-loading progress line.

The draft view never rewrites committed text it cannot reproduce: it tracks, the way a VT100/xterm/tmux
terminal does (wide characters take two cells, a character that does not fit wraps to the next row, a
full row leaves the cursor pending in its last column), the row and column where the committed text ends
and how many rows the painted draft went below it. To erase the draft it clears those rows from the last
up to the committed one and writes that row's committed cells again, which restores the cursor, pending
wrap included, exactly as if no draft had been painted.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import unicodedata
from collections.abc import Callable, Iterator
from typing import TextIO

from ._signals import sigint_held

DIM, RESET, CLEAR_ROW, UP = "\x1b[2m", "\x1b[0m", "\x1b[2K", "\x1b[A"
TAB = 8


def cell_width(ch: str) -> int:
    """Terminal cells of one printable character (wcwidth's rules for the common cases)."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


class Pen:
    """Where the cursor goes as text is written from a known column: `rows` advanced, `col` reached (== width
    while a wrap is pending) and `row_text`, what the current row holds."""

    def __init__(self, width: int, col: int = 0, row_text: str = "") -> None:
        self.width, self.col, self.row_text, self.rows = max(width, 2), col, row_text, 0

    def copy(self) -> Pen:
        return Pen(self.width, self.col, self.row_text)

    def write(self, text: str, max_rows: int | None = None) -> str:
        """The text to send for `text`: tabs expanded, control characters shown as '·', cut and ended with '…'
        where it would go more than `max_rows` rows below the starting one."""
        out: list[str] = []
        for ch in text:
            if ch == "\n":
                if max_rows is not None and self.rows + 1 > max_rows:
                    return self._cut(out)
                out.append(ch)
                self.rows, self.col, self.row_text = self.rows + 1, 0, ""
                continue
            chars = " " * (TAB - self.col % TAB) if ch == "\t" else ch if ch.isprintable() else "·"
            for c in chars:
                w = cell_width(c)
                wraps = self.col + w > self.width
                if max_rows is not None and (self.rows + wraps > max_rows or
                                             (self.rows + wraps == max_rows and
                                              (0 if wraps else self.col) + w > self.width - 1)):
                    return self._cut(out)
                if wraps:
                    self.rows, self.col, self.row_text = self.rows + 1, 0, ""
                out.append(c)
                self.col += w
                self.row_text += c
        return "".join(out)

    def _cut(self, out: list[str]) -> str:
        if self.col + 1 > self.width:  # no room for the ellipsis on this row: give up its last cell
            return "".join(out)
        self.col += 1
        self.row_text += "…"
        return "".join(out) + "…"


@contextlib.contextmanager
def answer_terminal(stdin: TextIO, stdout: TextIO, hide_echo: bool) -> Iterator[None]:
    """The terminal's settings while an answer streams to it.

    NOFLSH: by default Ctrl-C makes the tty discard its output queue, what was written but not yet shown
    (the terminal reads it a moment later; on a busy machine a whole paint). That dropped the erase of a
    draft, or the last committed text, and left the screen out of step with what the view had recorded.
    Typed-ahead input is discarded by hand instead, as the tty would have. With hide_echo (drafts are
    painted) keystrokes, and the '^C' a terminal echoes for Ctrl-C, are not echoed either: an echo moves
    the cursor, and a wrap it causes would throw the row count of the draft off."""
    term = stdin if _isatty(stdin) else stdout if _isatty(stdout) else None
    try:
        import termios

        fd = term.fileno() if term is not None else -1
        old = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):
        yield
        return
    new = list(old)
    new[3] |= termios.NOFLSH
    if hide_echo and term is stdin:
        new[3] &= ~(termios.ECHO | getattr(termios, "ECHOCTL", 0))
    termios.tcsetattr(fd, termios.TCSANOW, new)
    try:
        yield
    except KeyboardInterrupt:
        if term is stdin:
            termios.tcflush(fd, termios.TCIFLUSH)
        raise
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, old)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class AnswerView:
    """Streams committed text to `out`; with drafts (only on a terminal) paints the current canvas draft,
    dimmed, after the committed text and erases it before anything else is written."""

    def __init__(self, out: TextIO, drafts: bool, size: Callable[[], tuple[int, int]] | None = None) -> None:
        self.out = out
        self.drafts = drafts and out.isatty()
        self.size = size or (lambda: _terminal_size(out))
        columns, lines = self.size() if self.drafts else (80, 24)
        self.pen = Pen(columns)                    # the committed text; the answer starts on a fresh row
        self.max_rows = max(lines - 2, 0)          # the committed row must stay on screen to come back to it
        self.draft_rows: int | None = None         # rows the painted draft went below the committed row

    def _erase(self) -> str:
        """The sequence that erases the painted draft (state changes only once it is sent: _send)."""
        if self.draft_rows is None:
            return ""
        # row by row: tmux (scroll-on-clear) copies a screen cleared from its top-left corner into its history
        return "\r" + (CLEAR_ROW + UP) * self.draft_rows + CLEAR_ROW + self.pen.row_text

    def _send(self, s: str, draft_rows: int | None = None, pen: Pen | None = None) -> None:
        """Write s and record what is then on screen, with Ctrl-C held back until both are done (a
        KeyboardInterrupt between them would leave a draft that end() no longer knows about)."""
        with sigint_held():
            self.out.write(s)
            self.out.flush()
            self.draft_rows = draft_rows
            if pen is not None:
                self.pen = pen

    def draft(self, text: str) -> None:
        if not self.drafts:
            return
        columns, lines = self.size()
        if columns != self.pen.width:
            # the terminal may have reflowed its rows, so the rows to erase are unknown: leave the draft
            # (erasing by the old geometry could hit committed text) and go on below it without drafts
            self.drafts = False
            self._send(RESET + "\n")
            return
        self.max_rows = max(lines - 2, 0)
        pen = self.pen.copy()
        shown = pen.write(text, self.max_rows)
        self._send(self._erase() + DIM + shown + RESET, draft_rows=pen.rows)

    def commit(self, text: str) -> None:
        if not self.drafts:
            self._send(text)
            return
        pen = self.pen.copy()
        shown = pen.write(text)
        self._send(self._erase() + shown, pen=pen)

    def end(self) -> None:
        """Erase any draft and end the answer's last line."""
        self._send(self._erase() + "\n", pen=Pen(self.pen.width))


def _terminal_size(out: TextIO) -> tuple[int, int]:
    """The terminal's own size: cursor arithmetic cannot trust COLUMNS / LINES from the environment, which
    shutil.get_terminal_size prefers (and which go stale when the window is resized)."""
    try:
        size = os.get_terminal_size(out.fileno())
        if size.columns > 0 and size.lines > 0:
            return size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        pass
    return tuple(shutil.get_terminal_size((80, 24)))  # type: ignore[return-value]


class LoadProgress(logging.Filter):
    """`loading model: 42%` on one stderr line while a model loads (terminals only). Used as a context
    manager: the line is cleared at the end, and before each log record (which then starts on a clean line;
    the next report draws the line again)."""

    def __init__(self, err: TextIO | None = None) -> None:
        super().__init__()
        self.err = err if err is not None else sys.stderr
        self.enabled = self.err.isatty()
        self.shown = -1
        self.handlers: list[logging.Handler] = []

    def __call__(self, fraction: float) -> None:
        if not self.enabled:
            return
        pct = min(max(int(fraction * 100), 0), 100)
        if pct != self.shown:
            self.shown = pct
            self.err.write(f"\rloading model: {pct:3d}%")
            self.err.flush()

    def clear(self) -> None:
        if self.shown >= 0:
            self.err.write("\r\x1b[2K")
            self.err.flush()
            self.shown = -1

    def filter(self, record: logging.LogRecord) -> bool:
        self.clear()
        return True

    def __enter__(self) -> LoadProgress:
        if self.enabled:
            self.handlers = list(logging.getLogger().handlers)
            for h in self.handlers:
                h.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handlers:
            h.removeFilter(self)
        self.handlers = []
        self.clear()
