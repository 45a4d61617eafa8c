"""Routes the engine's (and ggml's) log lines into the `pygguf_diffusion.engine` logger."""
from __future__ import annotations

import logging

from . import _core

logger = logging.getLogger("pygguf_diffusion.engine")

# ggml levels: 1 debug, 2 info, 3 warn, 4 error
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}


def _sink(level: int, text: str) -> None:
    text = text.rstrip("\n")
    if text:
        logger.log(_LEVELS.get(level, logging.INFO), "%s", text)


def install() -> None:
    """Send engine log lines to Python logging instead of stderr. Idempotent."""
    _core.set_log_sink(_sink)
