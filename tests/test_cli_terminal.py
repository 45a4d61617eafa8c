"""dgemma-cli in a real terminal (tmux): the --show-drafts view with canvases that wrap over several rows,
Ctrl-C in the middle of an answer, and readline editing (history, Up, Ctrl-R, Ctrl-D)."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None or os.name != "posix", reason="needs tmux")

CLI = [sys.executable, "-c", "import sys; from pygguf_diffusion.cli import main; sys.exit(main())"]
# slow canvases (500 steps each, about half a second on one thread) so that drafts are on screen a while
SLOW = ["-c", "1024", "--steps", "500", "--confidence-threshold", "1e-9", "-t", "1", "-s", "1"]
W, H = 30, 20


class Tmux:
    """One tmux server (its own socket) running one command in a W x H window."""

    def __init__(self, tmp: Path, args: list[str], width: int = W, height: int = H) -> None:
        self.sock, self.err = str(tmp / "tmux.sock"), tmp / "stderr.txt"
        script = tmp / "run.sh"
        import pygguf_diffusion  # the copy under test, wherever the tmux server starts the command

        src = str(Path(pygguf_diffusion.__file__).resolve().parent.parent)
        # the shell traps Ctrl-C (with a handler: an ignored signal would be inherited) to report the exit
        script.write_text(f"trap true INT\nexport PYTHONPATH={shlex.quote(src)}\n"
                          f"{shlex.join(args)} 2>{shlex.quote(str(self.err))}\necho EXIT=$?\nsleep 600\n")
        self.tmux("new-session", "-d", "-x", str(width), "-y", str(height), "-s", "t",
                  f"sh {shlex.quote(str(script))}")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.sock, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def screen(self, escapes: bool = False, join: bool = True) -> str:
        """The history and the visible screen, wrapped rows joined into logical lines unless `join` is off."""
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", "t", *(["-J"] if join else []),
                         *(["-e"] if escapes else []))

    def lines(self) -> list[str]:
        """Screen rows as the terminal holds them (tmux does not mark rewritten rows as wrapped, so -J is
        no help), without trailing blanks."""
        out = [line.rstrip() for line in self.screen(join=False).split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    def wait(self, cond, timeout: float = 60.0, what: str = "") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{self.screen()}\nstderr:\n"
                             f"{self.err.read_text() if self.err.exists() else ''}")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def term(tmp_path):
    made: list[Tmux] = []

    def start(args: list[str], **kw) -> Tmux:
        t = Tmux(tmp_path, [*CLI, *args], **kw)
        made.append(t)
        return t

    yield start
    for t in made:
        t.close()


@pytest.fixture(scope="module")
def gguf(converted):
    return str(converted("spec9", "f32"))


def shown(text: str, width: int = W) -> list[str]:
    """The rows an answer takes on the screen: control characters shown as '·', lines cut every `width`
    cells (the tiny model's text is all one cell wide: ASCII, '·' and U+FFFD)."""
    text = "".join(ch if ch.isprintable() or ch == "\n" else "·" for ch in text).rstrip("\n")
    assert not any(unicodedata.east_asian_width(ch) in ("W", "F") for ch in text)
    return [line[i:i + width].rstrip() for line in text.split("\n")
            for i in range(0, max(len(line), 1), width)]


def piped_answer(gguf: str, *args: str) -> str:
    r = subprocess.run([*CLI, "-m", gguf, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def dim_on_screen(t: Tmux) -> bool:
    return "\x1b[2m" in t.screen(escapes=True)


def test_drafts_wrap_over_rows_and_leave_only_the_answer(gguf, term):
    args = ["-p", "the hat", "-n", "48", *SLOW]
    expected = shown(piped_answer(gguf, *args))
    assert len(expected) > 2  # the answer wraps; so do its canvases (8 tokens, ~60+ columns)
    t = term(["-m", gguf, *args, "--show-drafts"])
    seen_draft_rows = 0

    def drafting() -> bool:  # remember the tallest draft seen: it must have wrapped over several rows
        nonlocal seen_draft_rows
        rows = t.screen(escapes=True, join=False).rstrip().split("\n")
        first = next((i for i, r in enumerate(rows) if "\x1b[2m" in r), len(rows))  # the rest is the draft
        seen_draft_rows = max(seen_draft_rows, len(rows) - first)
        return "EXIT=" in t.screen()

    t.wait(drafting, what="the end of the answer")
    assert seen_draft_rows >= 2, "no draft wrapping over rows was ever painted"
    assert t.lines() == [*expected, "EXIT=0"]  # the committed answer exactly once, then the shell
    assert not dim_on_screen(t)


def test_ctrl_c_mid_answer_leaves_the_committed_text_and_no_draft(gguf, term):
    args = ["-p", "the hat", "-n", "48", *SLOW]
    full = shown(piped_answer(gguf, *args))
    t = term(["-m", gguf, *args, "--show-drafts"])

    def committed_and_drafting() -> bool:
        screen = t.screen(escapes=True)
        return "\x1b[2m" in screen and not screen.startswith("\x1b[2m")  # a draft after committed text

    t.wait(committed_and_drafting, what="a committed canvas with a draft after it")
    t.keys("C-c")
    t.wait(lambda: "EXIT=" in t.screen(), what="the exit")
    lines = t.lines()
    assert lines[-1] == "EXIT=130" and not dim_on_screen(t), repr(t.screen(escapes=True))
    committed = lines[:-1]  # what was committed, once, and nothing of the draft
    assert committed and committed[:-1] == full[:len(committed) - 1] and full[len(committed) - 1].startswith(
        committed[-1])
    assert "[interrupted]" in t.err.read_text()


def test_line_editing_history_and_ctrl_d(gguf, term):
    t = term(["-m", gguf, "-c", "1024", "-n", "8", "--steps", "2", "-t", "1", "-s", "1"], width=80)
    t.wait(lambda: t.lines() == [">"], what="the prompt")
    t.keys("the hat", "Enter")
    t.wait(lambda: t.err.read_text().count("] 8 tokens") == 1, what="the first answer")
    t.wait(lambda: t.lines()[-1] == ">", what="the next prompt")
    t.keys("Up")
    t.wait(lambda: t.lines()[-1] == "> the hat", what="Up recalling the message")
    t.keys("Enter")
    t.wait(lambda: t.err.read_text().count("] 8 tokens") == 2, what="the second answer")
    t.wait(lambda: t.lines()[-1] == ">", what="the next prompt")
    t.keys("C-r", "h", "a", "t")
    t.wait(lambda: t.lines()[-1] == "(reverse-i-search)`hat': the hat", what="Ctrl-R finding it")
    t.keys("C-g")
    t.wait(lambda: t.lines()[-1] == ">", what="the search cancelled")
    t.keys("C-d")
    t.wait(lambda: "EXIT=" in t.screen(), what="the exit")
    assert t.lines()[-2:] == [">", "EXIT=0"]  # Ctrl-D ends the prompt's line: the shell starts on a fresh one


def test_a_pasted_block_is_one_message(gguf, term, tmp_path):
    t = term(["-m", gguf, "-c", "1024", "-n", "8", "--steps", "2", "-t", "1", "-s", "1", "--raw", "-v"])
    t.wait(lambda: t.lines() == [">"], what="the prompt")
    paste = tmp_path / "paste.txt"
    paste.write_text('"""\nthe hat\non the\n"""\n')
    t.tmux("load-buffer", str(paste))
    t.tmux("paste-buffer", "-p", "-t", "t")  # bracketed, as a terminal pastes
    t.wait(lambda: "] 8 tokens" in t.err.read_text(), what="the answer")
    from pygguf_diffusion.tokenizer import GemmaTokenizer

    n = len(GemmaTokenizer.from_gguf(gguf).encode("the hat\non the", add_bos=True))
    assert f"prompt {n} tok" in t.err.read_text()  # one message, the block's two lines, no quotes
    assert t.err.read_text().count("] 8 tokens") == 1
