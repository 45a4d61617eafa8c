"""Run a snippet once with the CPU's fused row reductions and once with the backend-independent ggml ops
(DGEMMA_GENERIC_REDUCTIONS: the path GPUs take), each in a fresh process (the switches are read once)."""
from __future__ import annotations

import os
import subprocess
import sys

GENERIC = {"DGEMMA_GENERIC_REDUCTIONS": "1"}


def run_with_envs(code: str, envs: list[dict[str, str]], args: tuple[str, ...] = ()) -> list[list[str]]:
    """The stdout lines of `python -c code *args`, once per extra environment, each in a fresh process."""
    runs = []
    for env in envs:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **env})
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.splitlines())
    return runs


def run_both_reduction_paths(code: str) -> tuple[list[str], list[str]]:
    """(fused stdout lines, generic stdout lines) of `python -c code`."""
    fused, generic = run_with_envs(code, [{}, GENERIC])
    return fused, generic
