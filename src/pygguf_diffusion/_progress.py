"""A tqdm progress bar on stderr for the file-writing tools, or nothing when disabled (not a terminal)."""
from __future__ import annotations

import sys
from typing import Any


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="w", unit_scale=True, desc=desc, file=sys.stderr, leave=True)
