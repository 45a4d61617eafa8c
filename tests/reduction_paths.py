"""Run a snippet once with the CPU's fused row reductions and once with the backend-independent ggml ops
(DGEMMA_GENERIC_REDUCTIONS: the path GPUs take), each in a fresh process (the switch is read once)."""
from __future__ import annotations

import os
import subprocess
import sys


def run_both_reduction_paths(code: str) -> tuple[list[str], list[str]]:
    """(fused stdout lines, generic stdout lines) of `python -c code`."""
    runs = []
    for env in ({}, {"DGEMMA_GENERIC_REDUCTIONS": "1"}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **env})
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.splitlines())
    return runs[0], runs[1]
