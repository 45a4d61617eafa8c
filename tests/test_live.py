"""The --show-drafts view driven through many commits and drafts on a small reference terminal: committed
text is never lost or altered, drafts leave nothing behind, the cursor ends where committed text alone
leaves it (pending wrap included), whatever the widths, wide characters and newlines."""
from __future__ import annotations

import os
import random
import re
import select
import unicodedata

import pytest

from pygguf_diffusion._live import AnswerView, LoadProgress, Pen, answer_terminal


class Terminal:
    """A VT100 subset as xterm and tmux behave: autowrap with a pending-wrap state in the last column, wide
    characters (a wide character that does not fit wraps), LF as CR LF (a tty's onlcr), CR, CUU, CUF, ED,
    EL, SGR (only 'dim' tracked), scrolling into a history."""

    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.history: list[list[tuple[str, bool]]] = []
        self.screen = [self.blank() for _ in range(height)]
        self.r = self.c = 0
        self.pending = self.dim = False

    def blank(self) -> list[tuple[str, bool]]:
        return [(" ", False)] * self.w

    def down(self) -> None:
        if self.r == self.h - 1:
            self.history.append(self.screen.pop(0))
            self.screen.append(self.blank())
        else:
            self.r += 1

    def feed(self, data: str) -> None:
        for m in re.finditer(r"\x1b\[(\d*)([A-Za-z])|(.)", data, flags=re.DOTALL):
            n, cmd, ch = m.group(1), m.group(2), m.group(3)
            if cmd == "A":
                self.r, self.pending = max(self.r - int(n or 1), 0), False
            elif cmd == "C":
                self.c, self.pending = min(self.c + int(n or 1), self.w - 1), False
            elif cmd == "J":
                self.screen[self.r][self.c:] = [(" ", False)] * (self.w - self.c)
                for row in range(self.r + 1, self.h):
                    self.screen[row] = self.blank()
            elif cmd == "K":
                start = 0 if n == "2" else self.c
                self.screen[self.r][start:] = [(" ", False)] * (self.w - start)
            elif cmd == "m":
                self.dim = n == "2"
            elif ch == "\r":
                self.c, self.pending = 0, False
            elif ch == "\n":
                self.c, self.pending = 0, False
                self.down()
            elif ch is not None:
                wide = unicodedata.east_asian_width(ch) in ("W", "F")
                if self.pending or (wide and self.c == self.w - 1):
                    self.c, self.pending = 0, False
                    self.down()
                self.screen[self.r][self.c] = (ch, self.dim)
                if wide:
                    self.screen[self.r][self.c + 1] = ("", self.dim)
                step = 2 if wide else 1
                if self.c + step >= self.w:
                    self.c, self.pending = self.w - 1, True
                else:
                    self.c += step

    def state(self) -> tuple[list[str], int, int, bool, bool]:
        """(rows of history + screen without trailing blank rows, absolute cursor row, column, pending,
        whether any dim cell is visible)."""
        rows = ["".join(ch for ch, _ in row).rstrip() for row in self.history + self.screen]
        while rows and not rows[-1]:
            rows.pop()
        dim = any(d for row in self.screen for _, d in row)
        return rows, len(self.history) + self.r, self.c, self.pending, dim


class Tty:
    def __init__(self, term: Terminal) -> None:
        self.term = term

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> None:
        self.term.feed(s)

    def flush(self) -> None:
        pass


ALPHABET = "abcdefghij     .,\n漢字日本"


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, n)))


@pytest.mark.parametrize("seed", range(40))
def test_drafts_never_touch_committed_text(seed):
    rng = random.Random(seed)
    w, h = rng.choice([(2, 4), (5, 6), (9, 5), (20, 8), (60, 20)])
    term, ref = Terminal(w, h), Terminal(w, h)  # ref: the same committed text, no drafts at all
    view = AnswerView(Tty(term), drafts=True, size=lambda: (w, h))
    for _ in range(60):
        if rng.random() < 0.6:
            view.draft(text(rng, 4 * w))
            rows, r, _, _, _ = term.state()
            ref_rows, ref_r, _, _, _ = ref.state()
            rows += [""] * (ref_r + 1 - len(rows))  # trailing blank rows were trimmed
            ref_rows += [""] * (ref_r + 1 - len(ref_rows))
            assert r - ref_r <= h - 1  # the committed row stays on screen
            assert rows[:ref_r] == ref_rows[:ref_r]  # rows above the committed one are untouched
            assert rows[ref_r].startswith(ref_rows[ref_r])
        else:
            piece = text(rng, 2 * w)
            view.commit(piece)
            ref.feed(piece)
            assert term.state()[:4] == ref.state()[:4] and not term.state()[4]
    view.end()
    ref.feed("\n")
    assert term.state()[:4] == ref.state()[:4] and not term.state()[4]


def test_a_draft_taller_than_the_screen_is_cut_with_an_ellipsis():
    term = Terminal(10, 5)
    view = AnswerView(Tty(term), drafts=True, size=lambda: (10, 5))
    view.commit("answer")
    view.draft("x" * 200)
    rows, r, c, _, _ = term.state()
    assert rows[0] == "answerxxxx" and len(rows) == 4 and rows[-1].endswith("…")  # 3 rows below, as 5 - 2
    view.end()
    assert term.state()[:3] == (["answer"], 1, 0)


def test_a_resize_stops_the_drafts_without_touching_committed_text():
    term, size = Terminal(20, 6), [20, 6]
    view = AnswerView(Tty(term), drafts=True, size=lambda: (size[0], size[1]))
    view.commit("committed")
    view.draft("draft")
    size[1] = 4  # shorter: the rows are known, drafts go on with fewer rows
    view.draft("a much longer draft that wraps over many rows")
    assert term.state()[0][0].startswith("committeda much") and len(term.state()[0]) == 3
    size[0] = 10  # narrower: the terminal may reflow; no more erasing, the answer goes on below
    view.draft("x")
    view.commit(" more")
    view.end()
    rows = term.state()[0]
    assert rows[0].startswith("committed") and rows[-1] == " more"


def test_pen_wide_character_at_the_last_column_wraps():
    p = Pen(5, col=4)
    assert (p.write("漢"), p.rows, p.col) == ("漢", 1, 2)
    assert Pen(4).write("abcdefghij\nk", max_rows=1) == "abcdefg…"  # the last cell of the last row: '…'


def test_without_a_terminal_nothing_but_the_text_is_written():
    class Pipe:
        def __init__(self) -> None:
            self.data = ""

        def isatty(self) -> bool:
            return False

        def write(self, s: str) -> None:
            self.data += s

        def flush(self) -> None:
            pass

    out = Pipe()
    view = AnswerView(out, drafts=True)
    view.draft("never shown")
    view.commit("a\tb\x07")
    view.end()
    assert out.data == "a\tb\x07\n"  # piped output is the answer, byte for byte


def test_load_progress_line():
    term = Terminal(40, 3)
    with LoadProgress(Tty(term)) as p:
        for f in (0.0, 0.1, 0.1, 0.42, 1.0):
            p(f)
        assert term.state()[0] == ["loading model: 100%"]
    assert term.state()[0] == [] and term.state()[2] == 0


@pytest.mark.skipif(os.name != "posix", reason="POSIX terminals")
@pytest.mark.parametrize("hide_echo", [True, False])
def test_the_answer_terminal_keeps_its_output_through_ctrl_c_and_puts_the_settings_back(hide_echo):
    """Ctrl-C on a tty discards the output not yet shown unless NOFLSH is set (on a busy machine it dropped
    the erase of a draft: the tmux test saw a dim draft left on screen about 1 run in 10). The type-ahead
    is discarded by hand instead; the settings come back however the answer ends."""
    import pty
    import termios

    master, slave = pty.openpty()
    with open(slave, "w", closefd=True) as tty:
        before = termios.tcgetattr(slave)
        with answer_terminal(tty, tty, hide_echo=hide_echo):
            lflag = termios.tcgetattr(slave)[3]
            assert lflag & termios.NOFLSH
            assert bool(lflag & termios.ECHO) is not hide_echo
        assert termios.tcgetattr(slave) == before
        os.write(master, b"typed ahead\n")
        assert select.select([slave], [], [], 2)[0]  # a whole line waits to be read
        with pytest.raises(KeyboardInterrupt):
            with answer_terminal(tty, tty, hide_echo=hide_echo):
                raise KeyboardInterrupt
        assert not select.select([slave], [], [], 0.2)[0]  # discarded with the interrupt
        assert termios.tcgetattr(slave) == before
    os.close(master)
