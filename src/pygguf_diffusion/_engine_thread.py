"""The thread a generation runs the engine on, and the one rule that keeps a context safe: nothing touches
it again until that thread has returned, however many Ctrl-C land while the caller waits.

Thread.join()/is_alive() cannot carry that rule on CPython 3.11: a KeyboardInterrupt that lands inside
join() makes the thread report itself stopped while it still runs (the bpo-45274 cleanup releases the
running thread's state lock), and the next generation then raced the engine on the same context (ggml
asserted in get_rows; an exit with the thread alive died in std::terminate). The engine thread here sets
an Event when the engine has returned, and the waits that must finish hold Ctrl-C until they do."""
from __future__ import annotations

import atexit
import threading
from collections.abc import Callable

from ._signals import sigint_held

_RUNNING: set[EngineThread] = set()  # launched and not yet returned; guarded by _LOCK
_LOCK = threading.Lock()


class EngineThread:
    """Runs target() on a daemon thread. `done` is set once target has returned (or raised); until then
    the engine may be using the context. `abort` is the flag the engine polls after every step."""

    def __init__(self, target: Callable[[], None], abort: threading.Event, name: str = "dgemma-generate") -> None:
        self.abort = abort
        self.done = threading.Event()
        self.launched = False
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._target = None  # its closure may hold a context: not for as long as this object lives
            with _LOCK:
                _RUNNING.discard(self)
            self.done.set()

    def start(self) -> None:
        with sigint_held():  # `launched` must say whether the thread exists, whatever Ctrl-C does
            with _LOCK:
                _RUNNING.add(self)
            try:
                self._thread.start()
            except BaseException:
                with _LOCK:
                    _RUNNING.discard(self)
                raise
            self.launched = True

    @property
    def running(self) -> bool:
        return self.launched and not self.done.is_set()

    def wait(self) -> None:
        """Block until the engine has returned; Ctrl-C meanwhile is delivered afterwards."""
        if not self.launched:
            return
        with sigint_held():
            self.done.wait()


@atexit.register
def _stop_running_engines() -> None:
    # an engine thread still running while the interpreter tears down is killed inside the engine when it
    # next takes the GIL (std::terminate): stop each after its current step and wait for it
    with _LOCK:
        running = list(_RUNNING)
    for t in running:
        t.abort.set()
    for t in running:
        t.wait()
