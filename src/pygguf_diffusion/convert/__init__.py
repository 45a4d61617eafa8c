"""Hugging Face DiffusionGemma checkpoint -> GGUF (the schema of ../shared/GGUF_SCHEMA.md)."""
from __future__ import annotations

from .converter import convert
from .errors import ConversionError
from .type_policy import OutType

__all__ = ["ConversionError", "OutType", "convert"]
