"""The Gemma-4 tokenizer rebuilt from a GGUF's vocabulary with the `tokenizers` library.

BPE over raw UTF-8 with the GGUF's merges, `<0xXX>` byte fallback, the normalizer ' ' -> '▁' and no
pre-tokenizer: the Hugging Face GemmaTokenizer's behaviour (SPEC §8; 46 of 46 of llama.cpp's reference
tokenizations on the real 262,144-token vocabulary). Control tokens (type 3) are special (matched whole in
text, skipped when decoding with skip_special_tokens); user-defined tokens (type 4, e.g. `<|channel>`) are
matched whole and always rendered.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from . import _core

CONTROL, USER_DEFINED = 3, 4


def _split_merge(merge: str, vocab: dict[str, int]) -> tuple[str, str]:
    if merge.count(" ") == 1:
        a, b = merge.split(" ")
        return a, b
    for i, ch in enumerate(merge):  # a token itself holds a space: take the split whose halves exist
        if ch == " " and merge[:i] in vocab and merge[i + 1:] in vocab:
            return merge[:i], merge[i + 1:]
    raise ValueError(f"cannot split merge {merge!r}")


@dataclass
class GemmaTokenizer:
    """Encode/decode text for a DiffusionGemma GGUF. Build with `from_gguf`."""

    tokenizer: Tokenizer
    bos_id: int
    eos_id: int
    pad_id: int
    add_bos: bool
    eog_ids: list[int]
    chat_template: str | None
    special_ids: set[int] = field(default_factory=set)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> GemmaTokenizer:
        v = _core.read_vocab(os.fspath(path))
        if v["model"] not in ("gemma4", "llama"):
            raise ValueError(f"{path}: tokenizer model {v['model']!r} is not the Gemma-4 BPE tokenizer")
        return cls.from_vocab(v)

    @classmethod
    def from_vocab(cls, v: dict) -> GemmaTokenizer:
        tokens: list[str] = v["tokens"]
        types: list[int] = v["types"]
        vocab = {t: i for i, t in enumerate(tokens)}
        merges = [_split_merge(m, vocab) for m in v["merges"]]
        unk = "<unk>" if "<unk>" in vocab else None
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True, unk_token=unk))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        added = [AddedToken(tokens[i], special=types[i] == CONTROL, normalized=False)
                 for i in range(len(tokens)) if types[i] in (CONTROL, USER_DEFINED)]
        tok.add_tokens(added)
        special = {i for i in range(len(tokens)) if types[i] == CONTROL}
        return cls(tokenizer=tok, bos_id=v["bos_id"], eos_id=v["eos_id"], pad_id=v["pad_id"], add_bos=v["add_bos"],
                   eog_ids=list(v["eog_ids"]), chat_template=v["chat_template"] or None, special_ids=special)

    @property
    def n_vocab(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; special-token texts in it (e.g. `<|turn>`) become their ids."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos and self.bos_id >= 0 else []) + ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, i: int) -> str:
        return self.tokenizer.id_to_token(i) or ""
