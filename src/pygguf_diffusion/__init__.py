"""pygguf_diffusion — run DiffusionGemma GGUF models locally (C++ engine on ggml)."""
from __future__ import annotations

from ._core import EngineError
from .gguf_info import GGUFInfo, inspect_gguf
from .model import Model
from .types import CommitEvent, DraftEvent, GenerationResult, GenerationStats

__version__ = "0.1.0"

__all__ = ["CommitEvent", "DraftEvent", "EngineError", "GGUFInfo", "GenerationResult", "GenerationStats", "Model",
           "__version__", "inspect_gguf"]
