"""Signals. Ctrl-C held back over the few steps that must not be cut in half (sigint_held). How the
command-line tools that write files end: SIGTERM/SIGHUP become an exception: by default they end the
process without unwinding, which would leave a half-written temporary file behind; raised as `Terminated`
they run the writer's cleanup (exit status 128 + the signal, as a shell reports it)."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Ctrl-C inside the block is held and delivered (the handler that was installed runs) when the block
    ends. For the short sequences that must not be cut in half: waiting for the engine thread to return
    (at most one step: it checks its abort flag after every step), then recording what the context holds;
    an escape sequence and the record of what it put on screen. The handler is swapped, not the signal
    mask: a blocked signal would go to another thread and Python would still raise KeyboardInterrupt in
    this one. Only the main thread receives signals; on any other thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, Any]] = []
    previous: Any = None
    try:
        # None: installed from C, or the interpreter is shutting down; it could not be put back
        if signal.getsignal(signal.SIGINT) is not None:
            # a signal that arrived just before this call is handled by the new handler too: Python looks
            # the handler up when it runs it, not when the signal arrives
            previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append((signum, frame)))
    except ValueError:  # an interpreter without signal handling
        previous = None
    if previous is None:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            _deliver(previous, *held[0])


def _deliver(handler: Any, signum: int, frame: Any) -> None:
    if callable(handler):
        handler(signum, frame)  # default_int_handler raises KeyboardInterrupt here
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
    # SIG_IGN, or a handler installed from C (None): nothing to deliver


class Terminated(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def raise_on_termination() -> None:
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _raise)


def run_writer(work: Callable[[], None], verb: str, errors: tuple[type[BaseException], ...],
               prefix: str = "") -> int:
    """Runs a writing tool's work with termination signals raised; returns its exit status after printing
    `error: cannot <verb>: ...` for the expected errors (1), an interruption (130) or a signal (128 + N).
    prefix goes before each message (a newline after a progress line)."""
    raise_on_termination()
    try:
        work()
    except errors as e:
        print(f"{prefix}error: cannot {verb}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}error: interrupted: no output was written", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"{prefix}error: terminated by signal {e.signum}: no output was written", file=sys.stderr)
        return 128 + e.signum
    except OSError as e:
        print(f"{prefix}error: cannot {verb}: {e}\n  check the paths and free disk space", file=sys.stderr)
        return 1
    return 0
