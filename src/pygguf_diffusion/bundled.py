"""The tiny DiffusionGemma shipped inside the package: the default model of `Model()` and `dgemma-cli`.

A 4.6M-parameter DiffusionGemma (real structure: sliding and full attention layers, MoE beside a dense MLP,
the self-conditioning block, tied embeddings) trained by `examples/train_tiny.py` on three tasks whose later
answer tokens constrain earlier ones. Ask it exactly in these forms (the chat template is applied):

    4821+377=                    -> " 5198"  (sums right-aligned in 5 characters)
    sort: 42 7 19                -> 7 19 42
    sudoku: 3.12 .2.. .321 .1.4  -> 3412 1243 4321 2134

Sums come with leading spaces (scoring ignores surrounding whitespace): a fixed-width field gives every
canvas position one place value, which is what let a model this small learn carries within the training
budget (docs/bundled-model.md). Anything else gets nonsense: it knows nothing but these tasks.
"""
from __future__ import annotations

import os
from importlib import resources

FILENAME = "tiny-diffusiongemma-F16.gguf"
DESCRIPTION = ("the bundled tiny DiffusionGemma (4.6M parameters; it answers only `a+b=`, `sort: 42 7 19` and "
               "`sudoku: 3.12 .2.. .321 .1.4`)")
HINT = "pass a .gguf path (-m) or a Hub repo (-hf / Model.from_pretrained) for the real model"


def bundled_model_path() -> str | None:
    """Path of the bundled GGUF, or None where this install has none."""
    path = os.fspath(resources.files("pygguf_diffusion") / "models" / FILENAME)
    return path if os.path.isfile(path) else None
