"""Importance matrices computed by our engine: calibration prompts go through the encoder and a whole
denoising canvas each, with the context's activation collector on (every matrix product's input rows,
per expert for the expert tensors), and the sums become an Imatrix (llama.cpp's GGUF imatrix format)."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .imatrix import Imatrix

logger = logging.getLogger(__name__)


def calibration_prompts(text: str, model, *, chat: bool, chunk_tokens: int) -> list[list[int]]:
    """Token lists to run: with chat, each non-empty line as a user turn through the chat template; else
    the text's tokens in chunks of chunk_tokens (the first with BOS)."""
    if chat:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return [model.tokenize(model.apply_chat_template([{"role": "user", "content": ln}]), add_bos=False)
                for ln in lines]
    ids = model.tokenize(text, add_bos=False)
    bos = [model.tokenizer.bos_id] if model.tokenizer.bos_id >= 0 else []
    return [bos + ids[i:i + chunk_tokens] for i in range(0, len(ids), chunk_tokens)]


def collect(model, prompts: Iterable[Sequence[int]], *, dataset: str, chunk_tokens: int,
            progress: Callable[[int, int, int], None] | None = None, **generate_kwargs) -> Imatrix:
    """Runs each prompt (encode + one canvas of denoising) with statistics on; returns the Imatrix.
    progress(i, n, steps) after each prompt."""
    prompts = list(prompts)
    ctx = model._context()
    ctx.clear_activations()
    ctx.collect_activations(True)
    try:
        for i, p in enumerate(prompts):
            r = model.generate(list(p), max_new_tokens=model.canvas_length, **generate_kwargs)
            if progress is not None:
                progress(i + 1, len(prompts), sum(r.stats.steps_per_canvas))
        stats = ctx.activations()
    finally:
        ctx.collect_activations(False)
        ctx.clear_activations()
    im = Imatrix(datasets=[dataset], chunk_count=len(prompts), chunk_size=chunk_tokens)
    for name, (sums, counts) in stats.items():
        im.add(name, sums, counts)
    return im


def imatrix_from_file(model_path: str | os.PathLike[str], calibration: str | os.PathLike[str], *,
                      chat: bool = False, chunk_tokens: int = 256, max_chunks: int | None = None, n_ctx: int = 4096,
                      n_threads: int | None = None, seed: int = 0,
                      progress: Callable[[int, int, int], None] | None = None) -> Imatrix:
    from ..model import Model

    text = Path(calibration).read_text(encoding="utf-8")
    m = Model(model_path, n_ctx=n_ctx, seed=seed, n_threads=n_threads)
    try:
        prompts = calibration_prompts(text, m, chat=chat, chunk_tokens=chunk_tokens)
        if max_chunks is not None:
            prompts = prompts[:max_chunks]
        if not prompts:
            raise ValueError(f"{calibration}: no calibration text")
        too_long = [i for i, p in enumerate(prompts) if len(p) + m.canvas_length > m.n_ctx]
        if too_long:
            raise ValueError(f"{calibration}: line {too_long[0] + 1} is {len(prompts[too_long[0]])} tokens, more "
                             f"than the context holds with a canvas ({m.n_ctx - m.canvas_length})")
        return collect(m, prompts, dataset=Path(calibration).name, chunk_tokens=chunk_tokens, progress=progress)
    finally:
        m.close()
