#!/usr/bin/env python3
"""Canvas editing on the bundled tiny model: each task asked plainly next to the same task with a template,
a hint or a warm start, through the runtime (docs/canvas-editing.md). Accuracy and tokens per forward
(generated tokens / decoder forwards: positions a template fixes are not counted).

    python benchmarks/canvas_accuracy.py [--gguf FILE] [-n 300] [--json out.json]

Sets (held-out: seeds training never used):
- sudoku 4-8: tiny_tasks.held_out('sudoku', n, 2027), the training range of blanks;
  plain, and the same puzzle as a frozen template (the givens fixed, a hole per blank);
- sudoku 9-12: harder than training (sudoku_set seed 4049); plain and template;
- hints: puzzles with 12 blanks; plain, the same question with two cells of the solution fixed in the
  canvas as hints (template; the prompt unchanged: only a model that reads its canvas both ways gains),
  and, for reference, those two cells given in the question instead;
- addition: plain, and with the answer's length fixed (" " * (5 - digits) + a hole per digit);
- edit: the answer to the addition started from the right sum with one digit changed (a warm start).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import tiny_tasks as T  # noqa: E402

TEST_SEED = 2027
HARD_SEED = 4049


def run(m, items: list[tuple[str, str, dict]]) -> dict:
    """items: (question, expected answer, generate keywords)."""
    ok = toks = fwd = 0
    t0 = time.perf_counter()
    for q, expected, kw in items:
        prompt = m.tokenize(m.apply_chat_template([{"role": "user", "content": q}]), add_bos=False)
        r = m.generate(prompt, **kw)
        ok += T.score(r.text, expected)
        # tokens per forward as the engine counts it (fixed positions excluded)
        toks += r.stats.tokens_per_forward * r.stats.decoder_forwards
        fwd += r.stats.decoder_forwards
    n = len(items)
    return {"n": n, "acc": ok / n, "tokens_per_forward": toks / max(fwd, 1), "forwards": fwd / n,
            "seconds": round(time.perf_counter() - t0, 1)}


def sets(n: int) -> dict[str, dict[str, list[tuple[str, str, dict]]]]:
    out: dict[str, dict[str, list]] = {}
    easy = T.held_out("sudoku", n, TEST_SEED)
    out["sudoku 4-8"] = {
        "plain": [(q, a, {}) for q, a in easy],
        "template": [(q, a, {"template": T.sudoku_template(T.sudoku_cells(q))}) for q, a in easy]}
    hard = T.sudoku_set(n, HARD_SEED, 9, 12)
    out["sudoku 9-12"] = {
        "plain": [(T.sudoku_question(p), T._fmt(g), {}) for p, g in hard],
        "template": [(T.sudoku_question(p), T._fmt(g), {"template": T.sudoku_template(p)}) for p, g in hard]}
    rng = random.Random(f"hints-{HARD_SEED}")
    hinted = []
    for p, g in T.sudoku_set(n, HARD_SEED + 1, 12, 12):
        cells = rng.sample([i for i, c in enumerate(p) if c == 0], 2)
        h = [g[i] if i in cells else c for i, c in enumerate(p)]
        hinted.append((p, h, g))
    out["sudoku 12 + 2 hints"] = {
        "plain (no hints)": [(T.sudoku_question(p), T._fmt(g), {}) for p, h, g in hinted],
        "hints in the canvas": [(T.sudoku_question(p), T._fmt(g), {"template": T.sudoku_template(h)})
                                for p, h, g in hinted],
        "hints in the question": [(T.sudoku_question(h), T._fmt(g), {}) for p, h, g in hinted]}
    adds = T.held_out("add", n, TEST_SEED)
    out["addition"] = {
        "plain": [(q, a, {}) for q, a in adds],
        "length fixed": [(q, a, {"template": " " * (T.ADD_WIDTH - len(a)) + "{:%d}" % len(a)}) for q, a in adds]}
    rng = random.Random(f"edit-{TEST_SEED}")
    edits = []
    for q, a in adds:
        field = T.answer_target(q, a)
        i = rng.choice([j for j, c in enumerate(field) if c != " "])
        wrong = field[:i] + str((int(field[i]) + rng.randint(1, 9)) % 10) + field[i + 1:]
        edits.append((q, a, {"canvas": wrong}))
    out["addition, one digit wrong"] = {"plain": [(q, a, {}) for q, a in adds], "edit (warm start)": edits}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="default: the bundled model")
    ap.add_argument("-n", type=int, default=300, help="problems per set")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from pygguf_diffusion import Model

    m = Model(a.gguf, n_ctx=256, seed=0, n_threads=a.threads)
    results: dict[str, dict] = {"gguf": m.path}
    print(f"{Path(m.path).name}, {a.n} problems per set, seed 0, the GGUF's settings")
    print(f"{'set':26} {'form':22} {'accuracy':>8} {'tok/fwd':>8} {'fwd/problem':>11}")
    for name, forms in sets(a.n).items():
        for form, items in forms.items():
            r = run(m, items)
            results[f"{name} / {form}"] = r
            print(f"{name:26} {form:22} {r['acc']:8.1%} {r['tokens_per_forward']:8.2f} {r['forwards']:11.2f}",
                  flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
