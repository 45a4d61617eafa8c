"""SIGTERM/SIGHUP as an exception in the command-line tools that write files: by default they end the
process without unwinding, which would leave a half-written temporary file behind; raised as
`Terminated` they run the writer's cleanup (exit status 128 + the signal, as a shell reports it)."""
from __future__ import annotations

import signal


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
