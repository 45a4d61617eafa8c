"""Reading the user's messages in dgemma-cli: readline editing on a terminal, plain lines from a pipe,
multi-line messages (a trailing backslash, or a \"\"\" block)."""
from __future__ import annotations

import sys


class LineReader:
    """Lines from stdin: with line editing and history (readline: arrow keys, Ctrl-R) when stdin and stdout
    are a terminal (readline prompts on stdout), plain reads otherwise (pipes; the prompt then goes to
    stderr when stdin is a terminal)."""

    def __init__(self) -> None:
        self.interactive = sys.stdin.isatty()
        self.editing = False
        if self.interactive and sys.stdout.isatty():
            try:
                import readline  # noqa: F401 - importing it gives input() line editing and history
                self.editing = True
            except ImportError:  # e.g. Windows without pyreadline
                pass
        self.pending: list[str] = []  # lines of one bracketed paste

    def __call__(self, prompt: str) -> str | None:
        """One line without its newline; None at end of input (after a newline on a terminal)."""
        if self.pending:
            return self.pending.pop(0)
        if self.editing:
            try:
                text = input(prompt)
            except EOFError:
                text = None
        else:
            if self.interactive:
                sys.stderr.write(prompt)
                sys.stderr.flush()
            line = sys.stdin.readline()
            text = line.removesuffix("\n").removesuffix("\r") if line else None
        if text is None:
            if self.interactive:  # Ctrl-D: the shell's prompt starts on a fresh line (below ours)
                where = sys.stdout if self.editing else sys.stderr
                where.write("\n")
                where.flush()
            return None
        first, *self.pending = text.split("\n")  # readline's bracketed paste returns several lines at once
        return first


def read_message(read: LineReader) -> str | None:
    """One user message (None at end of input): a line, lines joined by a trailing \\, or a \"\"\" block."""
    lines: list[str] = []
    block = False
    prompt = "> "
    while True:
        line = read(prompt)
        if line is None:
            return "\n".join(lines) if lines else None
        if line.strip() == '"""':
            if block:
                return "\n".join(lines)
            block, prompt = True, ". "
            continue
        if block:
            lines.append(line)
        elif line.endswith("\\"):
            lines.append(line[:-1])
            prompt = ". "
        else:
            lines.append(line)
            return "\n".join(lines)
