"""Gemma-4-shaped tokenizer files for tiny checkpoints (the bundled model's and the tests' random ones).

The real vocabulary's special ids (pad 0, eos 1, bos 2, <|turn> 105, <turn|> 106, ...; SPEC §8), <0xXX>
byte-fallback tokens at 238..493, ' ' normalized to '▁', then the caller's single-character tokens and BPE
merges, `<unusedN>` fillers up to the vocabulary size. Written as tokenizer.json + tokenizer_config.json +
chat_template.jinja, the files the converter reads from a real checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<|turn>{{ role }}\n{{ m['content'] | trim }}<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

# id -> token text for the Gemma-4 control tokens (SPEC §8)
SPECIALS = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 46: "<|tool>", 47: "<tool|>",
            48: "<|tool_call>", 49: "<tool_call|>", 50: "<|tool_response>", 51: "<tool_response|>", 52: '<|"|>',
            98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>"}
NAMED = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
         "mask_token": "<mask>"}
EXTRA = ["<|tool>", "<tool|>", "<|think|>", "<|turn>", "<turn|>"]
BYTE0 = 238


def vocab_table(single: list[str], merges: list[tuple[str, str]], size: int) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i in range(BYTE0):
        vocab[SPECIALS.get(i, f"<unused{i}>")] = i
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = BYTE0 + b
    nxt = BYTE0 + 256
    for s in single + ["".join(m) for m in merges]:
        vocab[s] = nxt
        nxt += 1
    if nxt > size:
        raise ValueError(f"{nxt} tokens do not fit a vocabulary of {size}")
    for i in range(nxt, size):
        vocab[f"<unused{i}>"] = i
    return vocab


def write(out: Path, single: list[str], merges: list[tuple[str, str]], size: int,
          special_unused_below: int = 0) -> None:
    """Tokenizer files into `out`. Ids below `special_unused_below` that are <unusedN> are special too."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab = vocab_table(single, merges, size)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(SPECIALS.get(i, f"<unused{i}>"), special=True, normalized=False)
                            for i in range(BYTE0) if i in SPECIALS or i < special_unused_below])
    tok.save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": False,
           "model_max_length": 1 << 20, "extra_special_tokens": EXTRA, **NAMED}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
