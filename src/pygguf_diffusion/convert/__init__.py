"""Hugging Face DiffusionGemma checkpoint -> GGUF (dgemma-convert, convert_hf_to_gguf.py)."""
from .converter import convert
from .errors import ConversionError

__all__ = ["ConversionError", "convert"]
