"""How the command-line tools that write files end. SIGTERM/SIGHUP become an exception: by default they
end the process without unwinding, which would leave a half-written temporary file behind; raised as
`Terminated` they run the writer's cleanup (exit status 128 + the signal, as a shell reports it)."""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable


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
