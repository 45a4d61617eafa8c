"""Tasks, tokenizer and checkpoint files for the tiny DiffusionGemma (issue 8).

Three tasks whose later answer tokens constrain earlier ones (exact formats of the issue):
  addition  `4821+377=`                    -> `5198`
  sorting   `sort: 42 7 19`                -> `7 19 42`
  sudoku    `sudoku: 3.12 .2.. .321 .1.4`  -> the four completed rows, same layout

The tokenizer is Gemma-4 shaped (BPE with byte fallback, ' ' -> '▁', the real special ids: pad 0, eos 1,
bos 2, <|turn> 105, <turn|> 106, <0xXX> byte tokens at 238..493), one token per character for the task
alphabet (digits, a-z, '▁', '.', '+', '=', ':', '\n'), plus merges for the role names `user` / `model`.
"""
from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gemma4_tokenizer  # noqa: E402
from gemma4_tokenizer import CHAT_TEMPLATE  # noqa: E402

VOCAB = 768  # a multiple of 256 (k-quant rows); ids >= the alphabet are <unusedN> fillers

PAD, EOS, BOS, TURN_OPEN, TURN_CLOSE = 0, 1, 2, 105, 106
EOS_IDS = [1, 106, 50]
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


def build_tokenizer_files(out: Path) -> None:
    """Tokenizer files plus generation_config.json (the checkpoint's sampler settings)."""
    gemma4_tokenizer.write(out, SINGLE, MERGES, VOCAB)
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


ADD_WIDTH = 5  # the longest sum, 9999+9999 = 19998


def answer_target(question: str, answer: str) -> str:
    """The text the model is trained to write for `answer`. Sums are right-aligned in a field of ADD_WIDTH
    characters (leading spaces, which scoring ignores as surrounding whitespace): each canvas position then
    holds one place value whatever the operands' lengths, and the digit of `b` it needs sits at a fixed
    distance before `=`. Left-aligned, a position's place value depends on the sum's length, i.e. on the
    carry out of the top digit, which the model would have to compute before it can align anything."""
    if question.endswith("=") and "+" in question:
        return answer.rjust(ADD_WIDTH)
    return answer


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


# ------------------------------------------------------------------------------------ runtime evaluation

def runtime_eval(model, problems: list[tuple[str, str]], **settings) -> dict:
    """Ask a pygguf_diffusion Model each question through its chat template (as dgemma-cli does) with the
    GGUF's default settings unless `settings` overrides them. Returns accuracy, pooled tokens per forward
    (returned tokens, EOS included, / decoder forwards), mean steps per canvas and the answers."""
    outs, ok, toks, fwd, steps, canvases = [], 0, 0, 0, 0, 0
    for q, expected in problems:
        text = model.apply_chat_template([{"role": "user", "content": q}])
        r = model.generate(model.tokenize(text, add_bos=False), **settings)
        outs.append(r.text)
        ok += score(r.text, expected)
        toks += r.stats.committed_tokens
        fwd += r.stats.decoder_forwards
        steps += sum(r.stats.steps_per_canvas)
        canvases += len(r.stats.steps_per_canvas)
    n = len(problems)
    return {"n": n, "acc": ok / n, "tokens_per_forward": toks / max(fwd, 1),
            "steps_per_canvas": steps / max(canvases, 1), "outputs": outs}


# ------------------------------------------------------------------------------ canvas editing (issue 13)

def _unique(puzzle: list[int]) -> bool:
    return sum(all(p == 0 or p == h[i] for i, p in enumerate(puzzle)) for h in GRIDS) == 1


def sudoku_blanks(rng: random.Random, lo: int, hi: int) -> tuple[list[int], tuple[int, ...]]:
    """A 4x4 puzzle with lo..hi blanks (0 cells) and a unique completion: (puzzle cells, solution)."""
    k = rng.randint(lo, hi)
    while True:
        g = rng.choice(GRIDS)
        blanks = set(rng.sample(range(16), k))
        puzzle = [0 if i in blanks else v for i, v in enumerate(g)]
        if _unique(puzzle):
            return puzzle, g


def sudoku_set(n: int, seed: int, lo: int, hi: int, tag: str = "sudoku") -> list[tuple[list[int], tuple[int, ...]]]:
    """n distinct puzzles of lo..hi blanks from their own seed (training used GRIDS at 4..8 blanks)."""
    rng = random.Random(f"{tag}-{lo}-{hi}-{seed}")
    seen, out = set(), []
    while len(out) < n:
        p, g = sudoku_blanks(rng, lo, hi)
        if tuple(p) not in seen:
            seen.add(tuple(p))
            out.append((p, g))
    return out


def sudoku_question(puzzle: list[int]) -> str:
    return "sudoku: " + _fmt(puzzle)


def sudoku_cells(question: str) -> list[int]:
    """The puzzle of a `sudoku: 3.12 .2.. ...` question, 0 for a blank."""
    return [0 if c == "." else int(c) for c in question.split(": ", 1)[1].replace(" ", "")]


def sudoku_template(cells: list[int]) -> str:
    """The answer's template: the digits of `cells` fixed, a one-token hole per 0."""
    return " ".join("".join(str(c) if c else "{:1}" for c in cells[r * 4:r * 4 + 4]) for r in range(4))
