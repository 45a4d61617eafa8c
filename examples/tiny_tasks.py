"""Tasks, tokenizer and checkpoint files for the tiny DiffusionGemma (issue 8).

Three tasks whose later answer tokens constrain earlier ones (exact formats of the issue):
  addition  `4821+377=`                    -> `5198`
  sorting   `sort: 42 7 19`                -> `7 19 42`
  sudoku    `sudoku: 1.3. .4.. ..1. 3.4.`  -> the four completed rows, same layout

The tokenizer is Gemma-4 shaped (BPE with byte fallback, ' ' -> '▁', the real special ids: pad 0, eos 1,
bos 2, <|turn> 105, <turn|> 106, <0xXX> byte tokens at 238..493), one token per character for the task
alphabet (digits, a-z, '▁', '.', '+', '=', ':', '\n'), plus merges for the role names `user` / `model`.
"""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

VOCAB = 768  # a multiple of 256 (k-quant rows); ids >= the alphabet are <unusedN> fillers

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<|turn>{{ role }}\n{{ m['content'] | trim }}<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

PAD, EOS, BOS, TURN_OPEN, TURN_CLOSE = 0, 1, 2, 105, 106
EOS_IDS = [1, 106, 50]
SPECIALS = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 46: "<|tool>", 47: "<tool|>",
            48: "<|tool_call>", 49: "<tool_call|>", 50: "<|tool_response>", 51: "<tool_response|>", 52: '<|"|>',
            98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>"}
NAMED = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
         "mask_token": "<mask>"}
EXTRA = ["<|tool>", "<tool|>", "<|think|>", "<|turn>", "<turn|>"]
BYTE0 = 238
SINGLE = ["▁", "\n", *"0123456789", *"abcdefghijklmnopqrstuvwxyz", ".", "+", "=", ":"]
MERGES = [("u", "s"), ("us", "e"), ("use", "r"), ("m", "o"), ("mo", "d"), ("mod", "e"), ("mode", "l")]

GENERATION = {
    "max_new_tokens": 256, "max_denoising_steps": 48, "t_min": 0.4, "t_max": 0.8, "stability_threshold": 1,
    "confidence_threshold": 0.005,
    "sampler_config": {"entropy_bound": 0.1, "_cls_name": "EntropyBoundSamplerConfig"},
    "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": EOS_IDS}

# tiny vision tower: the config class wants one; the converter ignores its tensors
VISION = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=64, patch_size=4)


def vocab_table() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i in range(BYTE0):
        vocab[SPECIALS.get(i, f"<unused{i}>")] = i
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = BYTE0 + b
    nxt = BYTE0 + 256
    for s in SINGLE + ["".join(m) for m in MERGES]:
        vocab[s] = nxt
        nxt += 1
    while nxt < VOCAB:
        vocab[f"<unused{nxt}>"] = nxt
        nxt += 1
    return vocab


def build_tokenizer_files(out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab = vocab_table()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES, byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(SPECIALS[i], special=True, normalized=False) for i in sorted(SPECIALS)])
    tok.save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": False,
           "model_max_length": 1 << 20, "extra_special_tokens": EXTRA, **NAMED}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "generation_config.json").write_text(json.dumps(GENERATION, indent=2))


class Codec:
    """Prompt / answer ids exactly as inference builds them: chat template rendered with the generation
    prompt, tokenized without adding special tokens; the answer followed by <turn|>."""

    def __init__(self, tok_dir: Path):
        from tokenizers import Tokenizer
        import jinja2

        self.tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        self.template = jinja2.Environment().from_string(CHAT_TEMPLATE)

    def render(self, user: str) -> str:
        return self.template.render(messages=[{"role": "user", "content": user}], bos_token="<bos>",
                                    add_generation_prompt=True)

    def prompt_ids(self, user: str) -> list[int]:
        return self.tok.encode(self.render(user), add_special_tokens=False).ids

    def answer_ids(self, answer: str) -> list[int]:
        return self.tok.encode(answer, add_special_tokens=False).ids + [TURN_CLOSE]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- tasks

def _num(rng: random.Random, max_digits: int) -> int:
    d = rng.randint(1, max_digits)
    return rng.randint(0, 9) if d == 1 else rng.randint(10 ** (d - 1), 10 ** d - 1)


def addition(rng: random.Random, max_digits: int = 4) -> tuple[str, str]:
    a, b = _num(rng, max_digits), _num(rng, max_digits)
    return f"{a}+{b}=", str(a + b)


def sorting(rng: random.Random) -> tuple[str, str]:
    xs = [rng.randint(0, 99) for _ in range(rng.randint(3, 8))]
    return "sort: " + " ".join(map(str, xs)), " ".join(map(str, sorted(xs)))


def _all_grids() -> list[tuple[int, ...]]:
    grids = []
    for rows in itertools.product(itertools.permutations((1, 2, 3, 4)), repeat=4):
        g = [x for r in rows for x in r]
        if all(len({g[r * 4 + c] for r in range(4)}) == 4 for c in range(4)) and all(
                len({g[(br + i) * 4 + bc + j] for i in (0, 1) for j in (0, 1)}) == 4
                for br in (0, 2) for bc in (0, 2)):
            grids.append(tuple(g))
    return grids


GRIDS = _all_grids()
assert len(GRIDS) == 288


def _fmt(cells) -> str:
    return " ".join("".join(str(c) if c else "." for c in cells[r * 4:r * 4 + 4]) for r in range(4))


def sudoku(rng: random.Random) -> tuple[str, str]:
    while True:
        g = rng.choice(GRIDS)
        k = rng.randint(4, 8)
        blanks = set(rng.sample(range(16), k))
        puzzle = [0 if i in blanks else v for i, v in enumerate(g)]
        n = sum(all(p == 0 or p == h[i] for i, p in enumerate(puzzle)) for h in GRIDS)
        if n == 1:
            return "sudoku: " + _fmt(puzzle), _fmt(g)


TASKS = {"add": addition, "sort": sorting, "sudoku": sudoku}


def held_out(task: str, n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(f"heldout-{task}-{seed}")
    seen, out = set(), []
    while len(out) < n:
        q, a = TASKS[task](rng)
        if q not in seen:
            seen.add(q)
            out.append((q, a))
    return out


def score(answer: str, expected: str) -> bool:
    return answer.strip() == expected.strip()
