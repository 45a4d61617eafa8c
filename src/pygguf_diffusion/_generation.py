"""A stream's hold on its Model (_Claim) and the iterator stream_generate returns (_Generation): the
engine threads a stream started are waited for, through any Ctrl-C, before the Model is free again."""
from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._engine_thread import EngineThread
from ._signals import sigint_held
from .types import Event

if TYPE_CHECKING:
    from .model import Model

_LIVE: weakref.WeakSet[_Generation] = weakref.WeakSet()  # started or not, until finished or closed


class _Claim:
    """A stream's hold on its Model: the engine threads it started, their abort flag, whether the Model
    recorded what the context holds. The Model keeps it (a stream dropped mid-release must not strand it);
    it refers to the Model weakly, since a cycle would keep a dropped Model's weights and context alive until
    the next garbage collection."""

    def __init__(self, model: Model) -> None:
        self.model = weakref.ref(model)
        self.abort = threading.Event()
        self.workers: list[EngineThread] = []
        self.settled = threading.Event()
        self.released = False
        self.stream: weakref.ref | None = None  # the generator consuming the engine's events

    @property
    def stream_ended(self) -> bool:
        """The consuming generator has finished (returned, raised, closed) or is gone: nothing but the
        release is left to do. The interpreter sets this, so no Ctrl-C can leave it half-updated."""
        gen = self.stream() if self.stream is not None else None
        return gen is None or gen.gi_frame is None

    def stop(self) -> None:
        """Ask the engine to stop after its current step and wait for it (any thread)."""
        self.abort.set()
        for w in self.workers:
            w.wait()

    def release(self) -> None:
        """Free the Model once the engine's threads have returned. Ctrl-C meanwhile is delivered after
        the release; one that lands before it starts leaves the claim held, and the Model's next call
        finishes it (Model._finish_interrupted_release): a new generation never overlaps this one."""
        with sigint_held():
            if self.released:
                return
            self.stop()
            model = self.model()
            if self.workers and not self.settled.is_set() and model is not None and model._ctx is not None:
                model._forget_prefix()  # what the context holds is unknown: start afresh
            self.released = True


class _Generation(Iterator[Event]):
    """The iterator stream_generate returns: it holds the Model's claim from the call until the stream
    ends, is closed, or is dropped (even if it never started), and lets close() and interpreter exit stop
    a stream that is running in another frame or thread."""

    def __init__(self, model: Model, claim: _Claim, tokens: list[int], settings: dict[str, Any], seed: int,
                 drafts: bool, stops: list[str]) -> None:
        self.model = model
        self._claim = claim
        self._gen = model._stream(tokens, settings, seed, drafts, stops, claim)
        claim.stream = weakref.ref(self._gen)
        self._consumer: int | None = None  # the thread that iterates it
        _LIVE.add(self)

    def __next__(self) -> Event:
        self._consumer = threading.get_ident()
        try:
            return next(self._gen)
        except BaseException:  # StopIteration, an error, Ctrl-C: the generator has run its cleanup
            self._release()
            raise

    def close(self) -> None:
        try:
            self._gen.close()
        finally:
            self._release()

    def close_or_stop(self) -> None:
        """close() from the consuming thread; from any other, stop() (closing a generator another thread
        may be resuming races it), and the consumer's iteration then ends with the aborted result."""
        if self._consumer in (None, threading.get_ident()):
            self.close()
        else:
            self.stop()

    def stop(self) -> None:
        self._claim.stop()

    def __del__(self) -> None:
        self.close()

    def _release(self) -> None:
        self._claim.release()
        if self._claim.released:
            _LIVE.discard(self)
