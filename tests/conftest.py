from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """checkpoint(name) -> directory of the tiny HF checkpoint `name` (built once per session)."""
    root = tmp_path_factory.mktemp("ckpt")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tiny_checkpoint.build(tiny_checkpoint.spec(name), root / name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def converted(checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """converted(name, outtype) -> GGUF converted from checkpoint `name` (once per session)."""
    from pygguf_diffusion.convert import convert

    root = tmp_path_factory.mktemp("gguf")
    done: dict[tuple[str, str], Path] = {}

    def get(name: str, outtype: str = "f32") -> Path:
        key = (name, outtype)
        if key not in done:
            done[key] = convert(checkpoint(name), root / f"{name}-{outtype}.gguf", outtype)
        return done[key]

    return get
