"""Export the checkpoint's tokenizer (tokenizer.json, tokenizer_config.json, chat template) into the
GGUF `gemma4` tokenizer form: tokens, scores, token types, merges, special ids."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import TokenType

from .errors import ConversionError
from .jsonfile import load_json

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
# Gemma-4 control tokens that a chat parser must see in the text: stored USER_DEFINED, as every published
# Gemma-4 / DiffusionGemma GGUF does.
VISIBLE_TOKENS = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                  "<tool_response|>", '<|"|>'}
SCORE = -1000.0  # published files carry no BPE scores; merges give the order


@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str]
    chat_template: str | None
    # tokenizer_config's unk_token / mask_token as ids (None: not defined). Published Gemma-4 GGUFs record
    # them (3 and 4); llama.cpp's diffusion CLI (#24423) refuses a file without a mask token id.
    unk_id: int | None = None
    mask_id: int | None = None


def _special_strings(tok_cfg: dict[str, Any]) -> set[str]:
    """Tokens the HF tokenizer lists as special: named `*_token` entries plus the extra/additional lists."""
    out: set[str] = set()

    def add(v: Any) -> None:
        if isinstance(v, str):
            out.add(v)
        elif isinstance(v, dict) and isinstance(v.get("content"), str):
            out.add(v["content"])

    for k, v in tok_cfg.items():
        if k.endswith("_token"):
            add(v)
    for k in ("additional_special_tokens", "extra_special_tokens"):
        v = tok_cfg.get(k)
        if isinstance(v, list):
            for x in v:
                add(x)
        elif isinstance(v, dict):
            for x in v.values():
                add(x)
    return out


def _chat_template(model_dir: Path, tok_cfg: dict[str, Any]) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    ct = tok_cfg.get("chat_template")
    if isinstance(ct, str):
        return ct
    if isinstance(ct, list):  # [{"name": "default", "template": "..."}, ...]
        for entry in ct:
            if isinstance(entry, dict) and entry.get("name") == "default":
                return entry.get("template")
    cj = model_dir / "chat_template.json"
    if cj.exists():
        return load_json(cj, "chat template").get("chat_template")
    return None


def load_vocab(model_dir: Path, n_vocab: int) -> Vocab:
    tj_path = model_dir / "tokenizer.json"
    tj = load_json(tj_path, "tokenizer (the GGUF carries the checkpoint's tokenizer)")
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback", False):
        raise ConversionError(f"{tj_path}: expected a BPE tokenizer with byte fallback (Gemma 4), found "
                              f"type {model.get('type')!r} byte_fallback={model.get('byte_fallback')}")

    tok_cfg: dict[str, Any] = {}
    tc_path = model_dir / "tokenizer_config.json"
    if tc_path.exists():
        tok_cfg = load_json(tc_path, "tokenizer_config.json")

    by_id: dict[int, str] = {}
    for text, idx in (model.get("vocab") or {}).items():
        by_id[int(idx)] = text
    added_special: dict[int, bool] = {}
    for at in tj.get("added_tokens") or []:
        by_id[int(at["id"])] = at["content"]
        added_special[int(at["id"])] = bool(at.get("special", False))
    if not by_id:
        raise ConversionError(f"{tj_path}: the vocabulary is empty")
    if max(by_id) >= n_vocab:
        raise ConversionError(f"{tj_path}: token id {max(by_id)} is outside the model's vocab_size {n_vocab}")

    specials = _special_strings(tok_cfg)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:  # embedding rows without a token: padding
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
            continue
        tokens.append(text)
        if text in VISIBLE_TOKENS:
            types.append(int(TokenType.USER_DEFINED))
        elif _BYTE_TOKEN.match(text):
            types.append(int(TokenType.BYTE))
        elif i in added_special and (text in specials or not tok_cfg):
            types.append(int(TokenType.CONTROL))
        elif i in added_special and not added_special[i]:
            types.append(int(TokenType.USER_DEFINED))
        else:
            types.append(int(TokenType.NORMAL))

    merges = []
    for m in model.get("merges") or []:
        merges.append(" ".join(m) if isinstance(m, list) else str(m))

    ids = {text: i for i, text in by_id.items()}

    def named(key: str) -> int | None:
        v = tok_cfg.get(key)
        text = v.get("content") if isinstance(v, dict) else v
        return ids.get(text) if isinstance(text, str) else None

    return Vocab(tokens=tokens, scores=[SCORE] * n_vocab, types=types, merges=merges,
                 chat_template=_chat_template(model_dir, tok_cfg), unk_id=named("unk_token"),
                 mask_id=named("mask_token"))
