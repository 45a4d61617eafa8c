#!/usr/bin/env python
"""Fine-tune the bundled tiny DiffusionGemma to use a frozen template canvas (4x4 sudoku given as a
template: the given digits fixed, the model fills the `{:1}` holes), keeping its three tasks.

The bundled GGUF is the only copy of the weights (the training checkpoint is not kept), so this script
  1. builds transformers' DiffusionGemmaForBlockDiffusion with train_tiny.py's config and loads the GGUF's
     tensors into it, inverting the converter's own name map (pygguf_diffusion.convert.tensor_map);
  2. checks the load: one prompt per task, the decoder's logits (without and with self-conditioning)
     against the runtime's (pygguf_diffusion._core) on the same GGUF, and the tokenizer's ids;
  3. fine-tunes with train_tiny.py's objective (train_tiny.train_step: uniform-noise corruption at
     t ~ U(eps, 1), flat CE over the canvas, the encoder's AR loss, self-conditioning with prob 0.5) on
     the three tasks, where sudoku puzzles have 4..12 blanks (unique completion) and, with probability
     --template-prob, come in template form: every canvas position but the blank cells (given digits,
     spaces, <turn|>, pads) stays clean, only the blanks are corrupted;
  4. exports an f16 GGUF through train_tiny.export (same converter path and metadata) and copies it to
     --output.
`--measure GGUF...` instead evaluates GGUFs through the runtime: sudoku plain vs template at 4-8 blanks
(tiny_tasks.held_out('sudoku', 300, 2027)) and at 9-12 blanks (300 puzzles of this file's generator, seed
--hard-seed, which training excludes).

  python examples/finetune_tiny.py --out /tmp/ce/ft-run --output /tmp/ce/tiny-ft.gguf
  python examples/finetune_tiny.py --measure src/pygguf_diffusion/models/tiny-diffusiongemma-F16.gguf \
      /tmp/ce/tiny-ft.gguf
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tiny_tasks as T  # noqa: E402
import train_tiny as TT  # noqa: E402

BUNDLED = HERE.parent / "src" / "pygguf_diffusion" / "models" / "tiny-diffusiongemma-F16.gguf"
TEST_SEED = 2027  # benchmarks/tiny_accuracy.py's held-out problems
TRAIN_EVAL_SEED = 12345  # train_tiny.py's evaluation problems
ROW_W = 5  # a sudoku answer row and its separator in the canvas: "3412 "

Example = tuple[str, str, str, "list[int] | None"]  # task, question, answer, blank cells if template form


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, default=BUNDLED, help="the model to start from")
    p.add_argument("--out", type=Path, default=Path("/tmp/ce/ft-run"), help="work dir (hf/, log.jsonl, ...)")
    p.add_argument("--output", type=Path, default=Path("/tmp/ce/tiny-ft.gguf"), help="the fine-tuned GGUF")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    TT.add_optimisation_args(p, steps=400, minutes=20, lr=4e-4, warmup=20)
    p.add_argument("--task-weights", default="0.3,0.3,0.4", help="add,sort,sudoku shares of a batch")
    p.add_argument("--template-prob", type=float, default=0.5, help="sudoku examples in template form")
    p.add_argument("--min-blanks", type=int, default=4)
    p.add_argument("--max-blanks", type=int, default=12)
    p.add_argument("--template-loss", choices=["canvas", "free"], default="canvas",
                   help="template rows: CE over the whole canvas (the published objective) or only the blanks")
    p.add_argument("--hard-seed", type=int, default=4049, help="the 9-12-blank test set's seed")
    p.add_argument("--hard-n", type=int, default=300)
    p.add_argument("--eval-n", type=int, default=64, help="transformers generate() problems per task")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--verify-only", action="store_true", help="load and check the GGUF, then stop")
    p.add_argument("--measure", type=Path, nargs="+", default=None, help="runtime evaluation of these GGUFs")
    p.add_argument("--json", type=Path, default=None, help="--measure: write the results here")
    return p.parse_args(argv)


def train_tiny_args(a: argparse.Namespace) -> argparse.Namespace:
    """train_tiny.py's defaults (the bundled model's architecture and objective), with this run's
    optimisation settings; train_step reads canvas, eps, sc_prob, ar_weight from it."""
    ta = TT.parse_args([])
    for k in ("seed", "threads", "steps", "batch", "lr", "min_lr_frac", "warmup", "wd", "clip"):
        setattr(ta, k, getattr(a, k))
    ta.out = a.out
    return ta


# ------------------------------------------------------------------------------------- GGUF -> torch

def _meta(reader: Any, key: str) -> Any:
    return reader.fields[key].contents()


def load_gguf_model(path: Path, ta: argparse.Namespace) -> tuple[Any, dict[str, Any], set[str]]:
    """transformers model of train_tiny's config holding the GGUF's weights (f16 -> f32 exactly). The
    checkpoint names come from the converter's map run over the model's own state dict, so the inverse is
    the converter's mapping by construction; tied / shared tensors (lm_head, the encoder's copy of the
    decoder's weights) are filled through the tensor they share. Also returns the checkpoint names stored
    as f16 (the converter keeps vectors and the router f32)."""
    import torch
    from gguf import GGUFReader
    from transformers import DiffusionGemmaForBlockDiffusion
    from pygguf_diffusion.convert import tensor_map

    r = GGUFReader(str(path))
    cfg = TT.make_config(ta)
    tc = cfg.get_text_config()
    want = {"diffusion-gemma.block_count": tc.num_hidden_layers,
            "diffusion-gemma.embedding_length": tc.hidden_size,
            "diffusion-gemma.feed_forward_length": tc.intermediate_size,
            "diffusion-gemma.attention.head_count": tc.num_attention_heads,
            "diffusion-gemma.attention.sliding_window": tc.sliding_window,
            "diffusion-gemma.expert_count": tc.num_experts, "diffusion-gemma.expert_used_count": tc.top_k_experts,
            "diffusion-gemma.expert_feed_forward_length": tc.moe_intermediate_size,
            "diffusion.canvas_length": cfg.canvas_length,
            "diffusion.eb_max_steps": T.GENERATION["max_denoising_steps"]}
    for k, v in want.items():
        if _meta(r, k) != v:
            raise SystemExit(f"{path}: {k} = {_meta(r, k)}, train_tiny's config has {v}")
    model = DiffusionGemmaForBlockDiffusion(cfg)
    sd = model.state_dict()
    inverse: dict[str, list[str]] = {}
    for name in sd:
        try:
            g = tensor_map.gguf_name(name)
        except KeyError:  # the encoder's views of the decoder's tensors: not saved, checked below
            continue
        if g is not None:
            inverse.setdefault(g, []).append(name)
    filled: set[str] = set()
    types: dict[str, int] = {}
    half: set[str] = set()
    with torch.no_grad():
        for t in r.tensors:
            if t.name == tensor_map.ROPE_FREQS:  # generated by the converter from the config
                continue
            if t.name not in inverse:
                raise SystemExit(f"{path}: tensor {t.name} has no checkpoint name")
            data = torch.from_numpy(np.array(t.data, dtype=np.float32))
            for name in inverse[t.name]:
                dst = sd[name]
                if tuple(dst.shape) != tuple(data.shape):
                    raise SystemExit(f"{t.name} {tuple(data.shape)} -> {name} {tuple(dst.shape)}: shape mismatch")
                dst.copy_(data)
                filled.add(name)
                if t.tensor_type.name == "F16":
                    half.add(name)
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    missing = [n for g, names in inverse.items() for n in names if n not in filled]
    if missing:
        raise SystemExit(f"{path}: no GGUF tensor for {missing[:5]}")
    ptrs = {sd[n].data_ptr() for n in filled}
    unfilled = [n for n, v in sd.items() if v.data_ptr() not in ptrs and "vision" not in n]
    if unfilled:
        raise SystemExit(f"checkpoint tensors the GGUF does not set: {unfilled[:5]}")
    info = {"gguf_tensors": len(r.tensors), "checkpoint_names_set": len(filled), "tensor_types": types}
    return model, info, half


def verify_against_runtime(model: Any, path: Path, codec: T.Codec, canvas: int) -> dict[str, Any]:
    """Decoder logits of the loaded model vs the runtime's, same GGUF, one prompt per task: a step from a
    random canvas without self-conditioning, then one with the first step's logits as self-conditioning.
    Also: the runtime's tokenizer and chat template give codec's prompt ids."""
    import torch
    from pygguf_diffusion import Model, _core

    res: dict[str, Any] = {}
    eng = _core.Model(str(path))
    rt = Model(str(path), n_ctx=256, seed=0, n_threads=2)
    rng = np.random.default_rng(0)
    model.eval()
    for task in ("add", "sort", "sudoku"):
        q, _ = T.held_out(task, 1, TEST_SEED)[0]
        prompt = codec.prompt_ids(q)
        rt_prompt = rt.tokenize(rt.apply_chat_template([{"role": "user", "content": q}]), add_bos=False)
        cv = rng.integers(0, T.VOCAB, canvas).astype(np.int32)
        ctx = _core.Context(eng, n_ctx=256, n_threads=2)
        ctx.encode(np.array(prompt, dtype=np.int32))
        got1 = ctx.decode_step(cv, temperature=1.0)
        got2 = ctx.decode_step(cv, sc="previous", temperature=1.0)
        L = len(prompt)
        with torch.no_grad():
            kw = dict(decoder_input_ids=torch.as_tensor(cv, dtype=torch.long)[None],
                      decoder_position_ids=torch.arange(L, L + canvas)[None])
            out = model(input_ids=torch.tensor([prompt]), position_ids=torch.arange(L)[None], **kw)
            ref1 = out.logits[0].numpy()
            ref2 = model(cache=out.cache, self_conditioning_logits=out.logits, **kw).logits[0].numpy()
        row = {}
        for lab, got, ref in (("no_sc", got1, ref1), ("sc", got2, ref2)):
            d = got.astype(np.float64) - ref
            row[lab] = {"nmse": float((d ** 2).mean() / (ref.astype(np.float64) ** 2).mean()),
                        "max_abs": float(np.abs(d).max()),
                        "argmax_agree": float((got.argmax(-1) == ref.argmax(-1)).mean())}
        row["prompt_ids_match"] = rt_prompt == prompt
        res[task] = row
    rt.close()
    model.train()
    return res


# ------------------------------------------------------------------------------------------- data

def sudoku_k(rng: random.Random, lo: int, hi: int) -> tuple[str, str, list[int]]:
    """A 4x4 puzzle with lo..hi blanks and a unique completion: question, answer, blank cells (0..15)."""
    p, g = T.sudoku_blanks(rng, lo, hi)
    return T.sudoku_question(p), T._fmt(g), [i for i, c in enumerate(p) if c == 0]


def hard_set(n: int, seed: int, lo: int = 9, hi: int = 12) -> list[tuple[str, str, list[int]]]:
    return [(T.sudoku_question(p), T._fmt(g), [i for i, c in enumerate(p) if c == 0])
            for p, g in T.sudoku_set(n, seed, lo, hi, tag="hard-sudoku")]


def blanks_of(question: str) -> list[int]:
    return [i for i, c in enumerate(T.sudoku_cells(question)) if c == 0]


def template_of(question: str) -> str:
    return T.sudoku_template(T.sudoku_cells(question))


def canvas_pos(cell: int) -> int:
    return (cell // 4) * ROW_W + cell % 4


class Sampler:
    """The training mix; never returns a problem of the evaluation sets (train_tiny's seed 12345, the
    benchmark's seed 2027, the 9-12-blank test set)."""

    def __init__(self, a: argparse.Namespace):
        self.rng = random.Random(a.seed)
        self.a = a
        self.weights = [float(w) for w in a.task_weights.split(",")]
        self.held = {t: {q for q, _ in T.held_out(t, 300, TEST_SEED) + T.held_out(t, 200, TRAIN_EVAL_SEED)}
                     for t in ("add", "sort", "sudoku")}
        self.held["sudoku"] |= {q for q, _, _ in hard_set(a.hard_n, a.hard_seed)}

    def __call__(self) -> Example:
        rng, a = self.rng, self.a
        task = rng.choices(["add", "sort", "sudoku"], self.weights)[0]
        while True:
            if task == "sudoku":
                q, ans, blanks = sudoku_k(rng, a.min_blanks, a.max_blanks)
                tb = blanks if rng.random() < a.template_prob else None
            else:
                (q, ans), tb = T.TASKS[task](rng), None
            if q not in self.held[task]:
                return task, q, ans, tb


def masks(group: list[Example], C: int, free_loss: bool) -> tuple[Any, Any]:
    """clean [B, C]: template rows keep every position but their blanks clean; loss_mask: template rows'
    blanks only (with --template-loss free), None for the whole canvas."""
    import torch

    clean = torch.zeros(len(group), C, dtype=torch.bool)
    for i, (_, _, _, tb) in enumerate(group):
        if tb is not None:
            clean[i] = True
            clean[i, [canvas_pos(c) for c in tb]] = False
    if not clean.any():
        return None, None
    return clean, (~clean if free_loss else None)


# ----------------------------------------------------------------------------------------- training

def lr_at(a: argparse.Namespace, s: int) -> float:
    if s < a.warmup:
        return a.lr * (s + 1) / a.warmup
    f = (s - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, f))))


def hf_accuracy(model: Any, codec: T.Codec, n: int, C: int) -> dict[str, float]:
    return {t: TT.hf_eval(model, codec, T.held_out(t, n, TRAIN_EVAL_SEED), C)[0]
            for t in ("add", "sort", "sudoku")}


def finetune(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    ta = train_tiny_args(a)
    tokdir = a.out / "tok"
    tokdir.mkdir(exist_ok=True)
    T.build_tokenizer_files(tokdir)
    codec = T.Codec(tokdir)
    t_load = time.time()
    model, info, _ = load_gguf_model(a.gguf, ta)
    model.generation_config = TT.load_generation_config(tokdir)
    summary: dict[str, Any] = {"args": {k: str(v) for k, v in vars(a).items()}, "load": info}
    summary["verify"] = verify_against_runtime(model, a.gguf, codec, ta.canvas)
    summary["load_s"] = round(time.time() - t_load, 1)
    print(f"loaded {a.gguf}: {info}", flush=True)
    for task, row in summary["verify"].items():
        print(f"  runtime vs torch, {task}: " + ", ".join(
            f"{k} nmse {v['nmse']:.2e} max|d| {v['max_abs']:.2e} argmax agree {v['argmax_agree']:.0%}"
            for k, v in row.items() if isinstance(v, dict)) + f"; prompt ids match: {row['prompt_ids_match']}",
            flush=True)
    torch.manual_seed(a.seed)
    te = time.time()
    summary["hf_eval_before"] = hf_accuracy(model, codec, a.eval_n, ta.canvas)
    print(f"transformers generate() before, {a.eval_n}/task (seed {TRAIN_EVAL_SEED}): "
          f"{summary['hf_eval_before']} [{time.time() - te:.0f}s]", flush=True)
    if a.verify_only:
        return summary

    gen = torch.Generator().manual_seed(a.seed)
    sample = Sampler(a)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98))
    model.train()
    log = open(a.out / "log.jsonl", "w")
    t0 = time.time()
    step = 0
    for step in range(1, a.steps + 1):
        for g_ in opt.param_groups:
            g_["lr"] = lr_at(a, step - 1)
        groups: dict[str, list[Example]] = {}
        for ex in (sample() for _ in range(a.batch)):
            groups.setdefault(ex[0], []).append(ex)
        opt.zero_grad(set_to_none=True)
        loss = dl = al = 0.0
        for task, group in groups.items():
            w = len(group) / a.batch
            clean, loss_mask = masks(group, ta.canvas, a.template_loss == "free")
            l_, d_, a_ = TT.train_step(model, codec, [(q, ans) for _, q, ans, _ in group], ta, gen,
                                       clean=clean, loss_mask=loss_mask)
            (w * l_).backward()
            loss, dl, al = loss + w * l_.detach(), dl + w * d_, al + w * a_
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        el = time.time() - t0
        n_tmpl = sum(ex[3] is not None for g in groups.values() for ex in g)
        log.write(json.dumps({"step": step, "time": round(el, 1), "loss": round(float(loss), 4),
                              "diff": round(float(dl), 4), "ar": round(float(al), 4), "gnorm": round(float(gn), 3),
                              "lr": lr_at(a, step - 1), "template_rows": n_tmpl}) + "\n")
        log.flush()
        if step % a.log_every == 0 or step == 1:
            print(f"step {step} {el:.0f}s ({el / step:.2f}s/step) loss {float(loss):.4f} diff {float(dl):.4f} "
                  f"ar {float(al):.4f} gnorm {float(gn):.2f} lr {lr_at(a, step - 1):.2e}", flush=True)
        if a.minutes and el > a.minutes * 60:
            print(f"stopping at step {step}: --minutes {a.minutes} reached", flush=True)
            break
    summary["steps_done"] = step
    summary["train_s"] = round(time.time() - t0, 1)
    te = time.time()
    summary["hf_eval_after"] = hf_accuracy(model, codec, a.eval_n, ta.canvas)
    print(f"transformers generate() after: {summary['hf_eval_after']} [{time.time() - te:.0f}s]", flush=True)
    gguf = TT.export(model, a.out, "f16")
    a.output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gguf, a.output)
    # round trip: the exported file loads back to the trained weights rounded as the f16 outtype rounds them
    back, _, half = load_gguf_model(a.output, ta)
    worst = 0.0
    with torch.no_grad():
        bsd = back.state_dict()
        half_ptrs = {bsd[n].data_ptr() for n in half}  # shared views (the encoder's) included
        for n, p in model.state_dict().items():
            if "vision" in n:
                continue
            want = p.half().float() if bsd[n].data_ptr() in half_ptrs else p
            worst = max(worst, float((bsd[n] - want).abs().max()))
    summary["export_roundtrip_max_abs"] = worst
    summary["gguf"] = str(a.output)
    summary["gguf_bytes"] = a.output.stat().st_size
    print(f"exported {a.output} ({a.output.stat().st_size / 1e6:.2f} MB); round trip max |diff| {worst:.2e}",
          flush=True)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# -------------------------------------------------------------------------------------- measurement

def runtime_sudoku(m: Any, problems: list[tuple[str, str]], template: bool) -> dict[str, Any]:
    ok, toks, fwd, steps, by_k, solved = 0, 0, 0, 0, {}, []
    for q, expected in problems:
        prompt = m.tokenize(m.apply_chat_template([{"role": "user", "content": q}]), add_bos=False)
        r = m.generate(prompt, template=template_of(q)) if template else m.generate(prompt)
        good = T.score(r.text, expected)
        ok += good
        solved.append(good)
        toks += r.stats.committed_tokens
        fwd += r.stats.decoder_forwards
        steps += sum(r.stats.steps_per_canvas)
        k = len(blanks_of(q))
        c = by_k.setdefault(k, [0, 0])
        c[0] += good
        c[1] += 1
    n = len(problems)
    return {"n": n, "acc": ok / n, "tokens_per_forward": toks / max(fwd, 1), "forwards_per_problem": fwd / n,
            "steps_per_canvas": steps / n, "by_blanks": {k: v[0] / v[1] for k, v in sorted(by_k.items())},
            "n_by_blanks": {k: v[1] for k, v in sorted(by_k.items())}, "solved": solved}


def measure(a: argparse.Namespace) -> dict[str, Any]:
    from pygguf_diffusion import Model

    sets = {"4-8": T.held_out("sudoku", 300, TEST_SEED),
            "9-12": [(q, ans) for q, ans, _ in hard_set(a.hard_n, a.hard_seed)]}
    out: dict[str, Any] = {}
    for path in a.measure:
        m = Model(str(path), n_ctx=256, seed=0, n_threads=a.threads)
        res = {}
        for name, probs in sets.items():
            for mode in ("plain", "template"):
                t0 = time.time()
                r = runtime_sudoku(m, probs, mode == "template")
                r["seconds"] = round(time.time() - t0, 1)
                res[f"{name} {mode}"] = r
                print(f"{path.name} sudoku {name:4} {mode:8} {r['acc']:6.1%}  tok/fwd {r['tokens_per_forward']:5.2f}"
                      f"  fwd/problem {r['forwards_per_problem']:5.2f}  by blanks "
                      + " ".join(f"{k}:{v:.0%}" for k, v in r["by_blanks"].items()), flush=True)
            pl, tm = res[f"{name} plain"]["solved"], res[f"{name} template"]["solved"]
            print(f"  paired, {name}: solved only with the template {sum(t and not q for q, t in zip(pl, tm))}, "
                  f"only plain {sum(q and not t for q, t in zip(pl, tm))}", flush=True)
        m.close()
        out[str(path)] = res
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    if a.measure:
        measure(a)
    else:
        finetune(a)


if __name__ == "__main__":
    main()
