"""One model, one generation at a time: requests wait in a queue and run in order on one thread. Each job
hands its events to the request's event loop; a job whose client went away is skipped if it has not
started and stopped at its next denoising step if it has."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from ..model import Model
from ..types import DraftEvent, GenerationResult
from .requests import Request

logger = logging.getLogger(__name__)

END = object()   # the last item a job emits


@dataclass
class Job:
    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the request's loop is closed: nobody is listening
            self.cancelled.set()


class Runner:
    def __init__(self, model: Model, on_result: Any = None) -> None:
        self.model = model
        self.on_result = on_result   # called with each GenerationResult on the runner thread
        self.cancelled = 0           # jobs stopped or skipped because their client went away
        self._current: Job | None = None
        self._closing = False
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="dgemma-server-runner", daemon=True)
        self._thread.start()

    @property
    def queue_length(self) -> int:
        return self._jobs.qsize()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        """Stop the running generation at its next step, skip the queued ones, end the thread."""
        self._closing = True
        if self._current is not None:
            self._current.cancelled.set()
        self._jobs.put(None)
        self._thread.join(timeout=60)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._closing:
                job.cancelled.set()
            if job.cancelled.is_set():
                self.cancelled += 1
                job.emit(END)
                continue
            self._current = job
            try:
                self._run(job)
            except Exception as e:  # noqa: BLE001 - reported to the request, the server stays up
                logger.exception("generation failed")
                job.emit(e)
            self._current = None
            job.emit(END)

    def _run(self, job: Job) -> None:
        r = job.request
        # drafts always: each denoising step comes back here, so a cancelled job stops within one step
        it = self.model.stream_generate(r.tokens, drafts=True, **r.settings)
        try:
            for ev in it:
                if job.cancelled.is_set():
                    self.cancelled += 1
                    return
                if isinstance(ev, DraftEvent) and not r.include_drafts:
                    continue
                if isinstance(ev, GenerationResult) and self.on_result is not None:
                    self.on_result(ev)
                job.emit(ev)
        finally:
            it.close()
