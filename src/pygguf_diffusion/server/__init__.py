"""dgemma-server: an OpenAI-compatible HTTP server for one DiffusionGemma model (Starlette on uvicorn)."""
from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
