"""Counters for GET /metrics, in the Prometheus text format."""
from __future__ import annotations

import threading
from collections import Counter

from ..types import GenerationResult


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()   # (endpoint, status)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.steps = 0
        self.step_ms = 0.0
        self.generations: Counter[str] = Counter()           # finish reason

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def generation(self, r: GenerationResult) -> None:
        with self._lock:
            self.prompt_tokens += len(r.prompt_tokens)
            self.completion_tokens += len(r.tokens)
            self.steps += r.stats.decoder_forwards
            self.step_ms += r.stats.decode_ms
            self.generations[r.finish_reason] += 1

    def render(self, queue_length: int, cancelled: int, busy: bool) -> str:
        with self._lock:
            lines = ["# HELP dgemma_requests_total HTTP requests by endpoint and status.",
                     "# TYPE dgemma_requests_total counter"]
            lines += [f'dgemma_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP dgemma_generations_total Finished generations by finish reason.",
                      "# TYPE dgemma_generations_total counter"]
            lines += [f'dgemma_generations_total{{finish_reason="{k}"}} {n}' for k, n in sorted(self.generations.items())]
            for name, value, kind, text in (
                    ("dgemma_prompt_tokens_total", self.prompt_tokens, "counter", "Prompt tokens of finished generations."),
                    ("dgemma_completion_tokens_total", self.completion_tokens, "counter", "Tokens generated."),
                    ("dgemma_denoising_steps_total", self.steps, "counter", "Decoder steps run."),
                    ("dgemma_denoising_step_milliseconds_total", round(self.step_ms, 3), "counter",
                     "Milliseconds spent in decoder steps and sampling (divide by steps for ms per step)."),
                    ("dgemma_cancelled_total", cancelled, "counter",
                     "Generations stopped or skipped because their client went away."),
                    ("dgemma_queue_length", queue_length, "gauge", "Requests waiting for the model."),
                    ("dgemma_busy", int(busy), "gauge", "1 while a generation runs.")):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
            return "\n".join(lines) + "\n"
