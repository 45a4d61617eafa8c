"""The closing summary of a conversion or requantization: size, bits per weight, the types of each
tensor class, and every fallback or override with its reason."""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .policy import TensorClass

logger = logging.getLogger(__name__)


@dataclass
class WriteSummary:
    path: str = ""
    target: str = ""
    file_bytes: int = 0
    weights: int = 0               # values in all tensors
    data_bytes: int = 0            # bytes of tensor data
    by_class: dict[TensorClass, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    params_by_class: Counter[TensorClass] = field(default_factory=Counter)
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # reason -> tensor names

    def add(self, name: str, cls: TensorClass, qtype: str, n_values: int, n_bytes: int, reason: str | None) -> None:
        self.weights += n_values
        self.data_bytes += n_bytes
        self.by_class[cls][qtype] += 1
        self.params_by_class[cls] += n_values
        if reason:
            self.notes[reason].append(name)

    def finish(self, path: Path, report: Callable[[WriteSummary], None] | None) -> Path:
        """Record the written file's size, log the summary and hand it to report; returns path."""
        self.file_bytes = path.stat().st_size
        logger.info("%s", self.text())
        if report is not None:
            report(self)
        return path

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.data_bytes / max(1, self.weights)

    def text(self) -> str:
        size = (f"{self.file_bytes / 2**30:.2f} GiB" if self.file_bytes >= 2**30
                else f"{self.file_bytes / 2**20:.2f} MiB")
        lines = [f"wrote {self.path}: {size} ({self.file_bytes:,} bytes), "
                 f"{self.bits_per_weight:.2f} bits per weight over {self.weights:,} weights, {self.target}"]
        for cls in TensorClass:
            if cls not in self.by_class:
                continue
            types = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(self.by_class[cls].items()))
            lines.append(f"  {cls.value:<15} {types:<28} {self.params_by_class[cls]:>15,} weights")
        for reason, names in self.notes.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"  note: {shown}: {reason}")
        return "\n".join(lines)
