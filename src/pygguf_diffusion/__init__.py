"""pygguf_diffusion — run DiffusionGemma GGUF models locally (C++ engine on ggml)."""
from __future__ import annotations

from ._core import EngineError
from .gguf_info import GGUFInfo, inspect_gguf

__version__ = "0.1.0"

__all__ = ["EngineError", "GGUFInfo", "__version__", "inspect_gguf"]
