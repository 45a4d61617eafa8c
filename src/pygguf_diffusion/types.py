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
        """Prompt tokens encoded by this call / prompt encoding time."""
        return _rate(self.prompt_tokens, self.prompt_ms)

    @property
    def decode_tok_s(self) -> float:
        """Committed answer tokens / denoising time (decoder steps and sampling; prompt excluded)."""
        return _rate(self.committed_tokens, self.decode_ms)

    @property
    def committed_tok_s(self) -> float:
        """End to end: committed answer tokens / total wall time of the call (prompt included)."""
        return _rate(self.committed_tokens, self.total_ms)

    @property
    def steps_per_canvas_mean(self) -> float:
        steps = self.steps_per_canvas
        return sum(steps) / len(steps) if steps else 0.0

    @property
    def ms_per_step(self) -> float:
        return self.decode_ms / self.decoder_forwards if self.decoder_forwards else 0.0

    def line(self) -> str:
        """One short line with every headline figure (defined in the README's stats paragraph)."""
        return " | ".join([
            f"{self.committed_tokens} tokens",
            # a prompt the context already held is not encoded again: no rate to speak of
            f"prompt {self.prompt_tokens} tok at {self.prompt_tok_s:.1f} tok/s" if self.prompt_tokens
            else "prompt 0 tok (stored)",
            f"decode {self.decode_tok_s:.1f} tok/s",
            f"end-to-end {self.committed_tok_s:.1f} tok/s",
            f"TTFT {self.ttft_ms / 1000:.2f} s",
            f"{self.steps_per_canvas_mean:.1f} steps/canvas at {self.ms_per_step:.1f} ms/step",
            f"{self.tokens_per_forward:.2f} tok/forward"])

    @classmethod
    def from_dict(cls, d: dict) -> GenerationStats:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _rate(tokens: int, ms: float) -> float:
    return tokens / (ms / 1000) if ms > 0 else 0.0


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
    holes: list[str] = field(default_factory=list)   # with a template: the text written into each hole

    def usage(self) -> dict[str, int]:
        """The OpenAI `usage` object of this generation."""
        return {"prompt_tokens": len(self.prompt_tokens), "completion_tokens": len(self.tokens),
                "total_tokens": len(self.prompt_tokens) + len(self.tokens)}


Event = DraftEvent | CommitEvent | GenerationResult
