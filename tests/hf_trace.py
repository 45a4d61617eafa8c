"""Run transformers' generate() while recording its random draws, so the engine's loop can replay them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Trace:
    new_tokens: np.ndarray        # generated tokens, cut after the first EOS (the EOS kept)
    init: np.ndarray              # [n_canvases, C]
    sampled: np.ndarray           # [n_canvases, N, C] (zeros for steps not run)
    noise: np.ndarray             # [n_canvases, N, C]
    steps: list[int]              # denoising steps per canvas
    tokens_per_forward: float


def record_generate(ckpt: Path, prompt: np.ndarray, *, seed: int, steps: int, eos: list[int],
                    max_new_tokens: int, decoder_input_ids: np.ndarray | None = None, **gen) -> Trace:
    """decoder_input_ids: the first canvas's starting tokens (transformers still draws the random canvas
    it replaces: its default argument is evaluated, so the recorded init is that draw)."""
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(ckpt, dtype=torch.float32).eval()
    C = model.config.canvas_length
    events: list[tuple[str, np.ndarray]] = []
    real_randint, real_multinomial = torch.randint, torch.multinomial

    def randint(*a, **k):
        out = real_randint(*a, **k)
        events.append(("randint", out.reshape(-1).numpy().copy()))
        return out

    def multinomial(*a, **k):
        out = real_multinomial(*a, **k)
        events.append(("multinomial", out.reshape(-1).numpy().copy()))
        return out

    if "entropy_bound" in gen:  # the reference takes it inside a sampler config object
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

        gen["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(gen.pop("entropy_bound")))
    if decoder_input_ids is not None:
        gen["decoder_input_ids"] = torch.as_tensor(decoder_input_ids, dtype=torch.long)[None]
    torch.manual_seed(seed)
    torch.randint, torch.multinomial = randint, multinomial
    try:
        with torch.no_grad():
            out = model.generate(torch.as_tensor(prompt, dtype=torch.long)[None], max_new_tokens=max_new_tokens,
                                 max_denoising_steps=steps, eos_token_id=eos, pad_token_id=0, **gen)
    finally:
        torch.randint, torch.multinomial = real_randint, real_multinomial

    # per canvas: randint (init), then per step multinomial + randint (noise)
    inits, sampled, noise, counts = [], [], [], []
    i = 0
    while i < len(events):
        kind, v = events[i]
        assert kind == "randint" and v.size == C, (i, kind, v.size)
        inits.append(v)
        s_rows, n_rows = [], []
        i += 1
        while i < len(events) and events[i][0] == "multinomial":
            s_rows.append(events[i][1])
            n_rows.append(events[i + 1][1])
            i += 2
        counts.append(len(s_rows))
        pad = [np.zeros(C, np.int64)] * (steps - len(s_rows))
        sampled.append(np.stack(s_rows + pad))
        noise.append(np.stack(n_rows + pad))
    seq = out.sequences[0, len(prompt):].numpy()
    cut = len(seq)
    for j, t in enumerate(seq):
        if t in eos:
            cut = j + 1
            break
    return Trace(new_tokens=seq[:cut], init=np.stack(inits).astype(np.int32),
                 sampled=np.stack(sampled).astype(np.int32), noise=np.stack(noise).astype(np.int32),
                 steps=counts, tokens_per_forward=float(out.tokens_per_forward[0]))
