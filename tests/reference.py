"""transformers 5.24.0 as the reference: encoder K/V and decoder logits for given prompts and canvases."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    return float(((got.astype(np.float64) - ref) ** 2).mean() / (ref.astype(np.float64) ** 2).mean())


def max_abs(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max())


@dataclass
class Reference:
    """A transformers model in f32 with a DynamicCache, driven the way generate() drives it."""

    ckpt: Path

    def __post_init__(self) -> None:
        import torch
        from transformers import DiffusionGemmaForBlockDiffusion

        self.torch = torch
        self.model = DiffusionGemmaForBlockDiffusion.from_pretrained(self.ckpt, dtype=torch.float32).eval()
        self.cache = None
        self.n_past = 0

    def step(self, canvas: np.ndarray, *, encode: np.ndarray | None = None,
             sc_logits: np.ndarray | None = None) -> np.ndarray:
        """Optionally encode tokens at the next positions, then one decoder step; returns logits [C, V]."""
        torch = self.torch
        kw = {}
        if encode is not None:
            n = len(encode)
            kw["input_ids"] = torch.as_tensor(encode, dtype=torch.long)[None]
            kw["position_ids"] = torch.arange(self.n_past, self.n_past + n)[None]
        if sc_logits is not None:
            kw["self_conditioning_logits"] = torch.as_tensor(sc_logits)[None]
        start = self.n_past + (len(encode) if encode is not None else 0)
        with torch.no_grad():
            out = self.model(cache=self.cache, decoder_input_ids=torch.as_tensor(canvas, dtype=torch.long)[None],
                             decoder_position_ids=torch.arange(start, start + len(canvas))[None], **kw)
        self.cache = out.cache
        self.n_past = start
        return out.logits[0].numpy()

    def encode(self, tokens: np.ndarray, chunk: int = 1024) -> None:
        """Encode tokens at the next positions (in chunks: a long prompt's causal mask would not fit)."""
        torch = self.torch
        enc = self.model.model.encoder
        for i in range(0, len(tokens), chunk):
            part = torch.as_tensor(tokens[i:i + chunk], dtype=torch.long)[None]
            with torch.no_grad():
                out = enc(input_ids=part, cache=self.cache, use_cache=True,
                          position_ids=torch.arange(self.n_past, self.n_past + part.shape[1])[None])
            self.cache = out.cache
            self.n_past += part.shape[1]

    def kv(self, il: int) -> tuple[np.ndarray, np.ndarray]:
        """K and V the cache holds for layer il, each [n, n_kv, hd] (sliding layers: the last sw-1)."""
        layer = self.cache.layers[il]
        return (layer.keys[0].permute(1, 0, 2).numpy(), layer.values[0].permute(1, 0, 2).numpy())
