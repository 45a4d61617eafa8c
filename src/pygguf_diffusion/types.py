"""Results and streaming events of generation."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationStats:
    """Honest metrics (DESIGN §5). Times in milliseconds; committed tokens count up to the first EOS."""

    prompt_tokens: int
    prompt_ms: float
    steps_per_canvas: list[int]
    decoder_forwards: int
    decode_ms: float
    ttft_ms: float
    total_ms: float
    committed_tokens: int
    tokens_per_forward: float
    peak_rss_bytes: int

    @property
    def prompt_tok_s(self) -> float:
        return self.prompt_tokens / (self.prompt_ms / 1000) if self.prompt_ms > 0 else 0.0

    @property
    def ms_per_step(self) -> float:
        return self.decode_ms / self.decoder_forwards if self.decoder_forwards else 0.0

    @property
    def committed_tok_s(self) -> float:
        return self.committed_tokens / (self.total_ms / 1000) if self.total_ms > 0 else 0.0

    def line(self) -> str:
        steps = self.steps_per_canvas
        mean_steps = sum(steps) / len(steps) if steps else 0.0
        return (f"{self.committed_tokens} tokens in {self.total_ms / 1000:.2f} s = {self.committed_tok_s:.2f} tok/s "
                f"(committed) | prompt {self.prompt_tokens} tok at {self.prompt_tok_s:.1f} tok/s | "
                f"{len(steps)} canvas(es), {mean_steps:.1f} steps/canvas, {self.ms_per_step:.1f} ms/step | "
                f"TTFT {self.ttft_ms / 1000:.2f} s | {self.tokens_per_forward:.2f} tok/forward | "
                f"peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB")

    @classmethod
    def from_dict(cls, d: dict) -> GenerationStats:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class DraftEvent:
    """One denoising step: the current argmax canvas (the draft), never final."""

    canvas_index: int
    step: int
    steps_remaining: int
    temperature: float
    tokens: list[int]
    accepted: list[bool]
    mean_entropy: float
    text: str


@dataclass(frozen=True)
class CommitEvent:
    """A committed canvas: final tokens, and the text they add to the answer."""

    canvas_index: int
    tokens: list[int]
    steps: int
    text: str
    last: bool


@dataclass(frozen=True)
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (EOS), "length" (max_new_tokens or n_ctx), "abort"
    stats: GenerationStats | None = None
    prompt_tokens: list[int] = field(default_factory=list)


Event = DraftEvent | CommitEvent | GenerationResult
