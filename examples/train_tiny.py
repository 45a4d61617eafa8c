#!/usr/bin/env python
"""Train a tiny DiffusionGemma on addition / sorting / 4x4 sudoku (issue 8), on CPU, then export it.

The model's published objective:
  * the supervised canvas (the answer as tiny_tasks.answer_target writes it: sums right-aligned; then
    <turn|>, padded with <pad> to the canvas length) corrupted with
    uniform random tokens over the whole vocabulary at a level t ~ U(eps, 1) per example (no mask token);
  * flat cross-entropy over the whole supervised canvas;
  * plus the encoder's autoregressive loss on the clean prompt sequence (weight --ar-weight, default 1.0),
    computed with the tied lm_head (+ softcap) on the encoder's last hidden state (after its final norm,
    as transformers returns it in `encoder_last_hidden_state`);
  * two-pass self-conditioning: a first decoder pass without self-conditioning under no_grad, then the
    trained pass with the first pass's logits as `self_conditioning_logits`, enabled per example with
    probability --sc-prob (0.5) through `self_conditioning_mask`.
Training matches inference: the prompt is the chat template rendered with the generation prompt; the
canvas positions follow the prompt (len(prompt) .. len(prompt)+C-1); a batch is right-padded, pads are
masked out of the encoder and of the decoder's view of the cache (checked by --selftest).

The bundled model is the defaults' run (seed 0; 3,500 steps of 64, about 84 minutes on 2 cores):
  python examples/train_tiny.py --out tiny-run
Other examples:
  nice -n 19 python examples/train_tiny.py --out /tmp/tiny/run1 --tasks add --steps 700
  nice -n 19 python examples/train_tiny.py --selftest --out /tmp/tiny/selftest
  nice -n 19 python examples/train_tiny.py --eval-only /tmp/tiny/run1/hf --final-eval-n 100
  python benchmarks/tiny_accuracy.py --gguf /tmp/tiny/run1/tiny-diffusiongemma-F16.gguf --hf /tmp/tiny/run1/hf
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_tasks as T  # noqa: E402


DEFAULT_TASK_WEIGHTS = {"add": 0.35, "sort": 0.4, "sudoku": 0.25}


def add_optimisation_args(p: argparse.ArgumentParser, *, steps: int, minutes: float, lr: float, warmup: int) -> None:
    """The schedule and optimiser flags (shared with finetune_tiny.py, which has its own defaults)."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--minutes", type=float, default=minutes,
                   help="safety stop: end training after this wall time (evaluations included); 0: none. "
                        "A slower machine stops earlier, so for an exact replay of a run give 0")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("tiny-run"))
    p.add_argument("--tasks", default="add,sort,sudoku")
    p.add_argument("--task-weights", default=None,
                   help="comma list matching --tasks (default: add 0.35, sort 0.4, sudoku 0.25: sudoku is learned "
                        "first, sorting last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    # architecture
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--global-head-dim", type=int, default=128)
    p.add_argument("--global-kv-heads", type=int, default=1)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--moe-intermediate", type=int, default=128)
    p.add_argument("--sliding-window", type=int, default=64)
    p.add_argument("--canvas", type=int, default=24)
    p.add_argument("--qk-norm-init", choices=["scaled", "ones"], default="scaled",
                   help="initial q_norm/k_norm weights: head_dim**-0.25 (attention logits of unit variance at "
                        "init; the model's attention scale is 1.0) or transformers' default 1.0")
    add_optimisation_args(p, steps=3500, minutes=84, lr=2e-3, warmup=100)
    p.add_argument("--eps", type=float, default=1e-3, help="t ~ U(eps, 1)")
    p.add_argument("--ar-weight", type=float, default=1.0)
    p.add_argument("--sc-prob", type=float, default=0.5)
    p.add_argument("--max-add-digits", type=int, default=4)
    # evaluation / logging
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-n", type=int, default=64, help="held-out problems per task during training")
    p.add_argument("--final-eval-n", type=int, default=200)
    p.add_argument("--eval-seed", type=int, default=12345)
    p.add_argument("--eval-steps", type=int, default=None, help="max_denoising_steps for eval (default: config)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--outtype", default="f16", help="f16: the bundled file (<= 10 MB)")
    p.add_argument("--eval-only", type=Path, default=None, help="evaluate a saved checkpoint dir")
    p.add_argument("--selftest", action="store_true", help="check padded-batch forward == one-by-one forward")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ model

def make_config(a):
    from transformers import DiffusionGemmaConfig

    n = a.layers
    layer_types = ["full_attention" if (i + 1) % 6 == 0 or i == n - 1 else "sliding_attention" for i in range(n)]
    text = dict(vocab_size=T.VOCAB, hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=n,
                num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
                global_head_dim=a.global_head_dim, num_global_key_value_heads=a.global_kv_heads,
                sliding_window=a.sliding_window, num_experts=a.experts, top_k_experts=a.top_k,
                moe_intermediate_size=a.moe_intermediate, use_bidirectional_attention="vision",
                layer_types=layer_types, max_position_embeddings=4096,
                pad_token_id=T.PAD, bos_token_id=T.BOS, eos_token_id=T.EOS_IDS)
    return DiffusionGemmaConfig(text_config=text, vision_config=dict(T.VISION), canvas_length=a.canvas,
                                eos_token_id=T.EOS_IDS, pad_token_id=T.PAD, bos_token_id=T.BOS)


def init_qk_norms(model, how: str) -> None:
    """DiffusionGemma attends with scale 1.0 after RMS-normalizing q and k, so with the norms' default
    weight 1 the initial attention logits have standard deviation sqrt(head_dim) (8 to 11 here): softmax
    saturates on random keys and attention learns slowly. head_dim**-0.25 on each side gives unit variance,
    what the usual 1/sqrt(head_dim) scale gives; only the initial value changes, not the structure."""
    import torch

    if how == "ones":
        return
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith(("q_norm", "k_norm")) and getattr(mod, "weight", None) is not None:
                mod.weight.fill_(mod.weight.shape[0] ** -0.25)


def load_generation_config(d: Path):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    return DiffusionGemmaGenerationConfig.from_pretrained(d)


def softcap_logits(model, h):
    import torch

    c = model.final_logit_softcapping
    return torch.tanh(model.lm_head(h).float() / c) * c


def collate(codec, batch, C):
    """batch: list of (question, answer) -> the clean sequences (prompt + answer + <turn|>, right-padded),
    their mask, the prompt-only mask (the decoder's view of the cache), prompt lengths, the clean canvas."""
    import torch

    prompts = [codec.prompt_ids(q) for q, _ in batch]
    answers = [codec.answer_ids(T.answer_target(q, ans)) for q, ans in batch]
    S = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids = torch.zeros(len(batch), S, dtype=torch.long)
    seq_am = torch.zeros(len(batch), S, dtype=torch.bool)
    prompt_am = torch.zeros(len(batch), S, dtype=torch.bool)
    x0 = torch.full((len(batch), C), T.PAD, dtype=torch.long)
    for i, (p, ans) in enumerate(zip(prompts, answers)):
        if len(ans) > C:
            raise ValueError(f"answer of {len(ans)} tokens does not fit the canvas ({C})")
        ids[i, :len(p) + len(ans)] = torch.tensor(p + ans)
        seq_am[i, :len(p) + len(ans)] = True
        prompt_am[i, :len(p)] = True
        x0[i, :len(ans)] = torch.tensor(ans)
    lens = prompt_am.sum(1)
    return ids, seq_am, prompt_am, lens, x0


def encode(model, ids, am):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.get_text_config())
    enc = model.model.encoder(input_ids=ids, attention_mask=am, cache=cache)
    return enc.last_hidden_state, enc.cache


def decode(model, cache, am, lens, canvas, sc_logits=None, sc_mask=None):
    import torch

    C = canvas.shape[1]
    dpos = lens[:, None] + torch.arange(C)[None]
    dam = torch.cat([am, torch.ones(am.shape[0], C, dtype=torch.bool)], 1)
    return model(cache=cache, decoder_input_ids=canvas, decoder_position_ids=dpos, decoder_attention_mask=dam,
                 self_conditioning_logits=sc_logits, self_conditioning_mask=sc_mask).logits


def first_pass_logits(model, cache, am, lens, xt, sc_mask):
    """The self-conditioning first pass (no grad), computed only for the rows that use it: the model
    multiplies the soft embedding of the other rows by 0, so their logits are left at 0. The cache is cut to
    those rows for the pass and restored after (the decoder reads the cache, never writes it)."""
    import torch

    idx = sc_mask.nonzero().squeeze(1)
    out = torch.zeros(*xt.shape, T.VOCAB)
    saved = [(layer.keys, layer.values) for layer in cache.layers]
    try:
        cache.batch_select_indices(idx)
        with torch.no_grad():
            out[idx] = decode(model, cache, am[idx], lens[idx], xt[idx])
    finally:
        for layer, (k, v) in zip(cache.layers, saved):
            layer.keys, layer.values = k, v
    return out


def train_step(model, codec, batch, a, gen, clean=None, loss_mask=None):
    """One loss on a micro-batch. Hooks for fine-tuning (examples/finetune_tiny.py), both off by default:
    `clean` [B, C] bool marks canvas positions that are never corrupted (a template's fixed text);
    `loss_mask` [B, C] bool limits the diffusion loss to those positions (mean over them)."""
    import torch
    import torch.nn.functional as F

    C, V = a.canvas, T.VOCAB
    ids, seq_am, am, lens, x0 = collate(codec, batch, C)
    B = len(batch)
    # The encoder reads the clean sequence (prompt + answer) causally, as for a multi-canvas answer; its AR
    # loss covers every next token (tied lm_head on the final-normed hidden state). The decoder sees only
    # the prompt part of the cache (`am`), the context inference gives it.
    h, cache = encode(model, ids, seq_am)
    ar_logits = softcap_logits(model, h[:, :-1])
    tgt = ids[:, 1:].masked_fill(~seq_am[:, 1:], -100)
    ar_loss = F.cross_entropy(ar_logits.reshape(-1, V), tgt.reshape(-1), ignore_index=-100)
    # corruption: uniform random tokens at level t ~ U(eps, 1)
    t = a.eps + (1 - a.eps) * torch.rand(B, generator=gen)
    noisy = torch.rand(B, C, generator=gen) < t[:, None]
    if clean is not None:
        noisy &= ~clean
    xt = torch.where(noisy, torch.randint(0, V, (B, C), generator=gen), x0)
    sc_mask = torch.rand(B, generator=gen) < a.sc_prob
    sc_logits = None
    if sc_mask.any():
        sc_logits = first_pass_logits(model, cache, am, lens, xt, sc_mask)
    else:
        sc_mask = None
    logits = decode(model, cache, am, lens, xt, sc_logits, sc_mask)
    if loss_mask is None:
        diff_loss = F.cross_entropy(logits.reshape(-1, V), x0.reshape(-1))
    else:
        diff_loss = F.cross_entropy(logits.reshape(-1, V), x0.masked_fill(~loss_mask, -100).reshape(-1),
                                    ignore_index=-100)
    loss = diff_loss + a.ar_weight * ar_loss
    return loss, diff_loss.detach(), ar_loss.detach()


# ------------------------------------------------------------------------------------------------- eval

def hf_eval(model, codec, problems, C, steps=None, bs=64):
    """Held-out accuracy through transformers' generate() (checkpoint generation settings), batched by
    prompt length so no padding is involved. Returns accuracy, mean tokens per forward, outputs."""
    import torch

    model.eval()
    groups: dict[int, list[int]] = {}
    prompts = [codec.prompt_ids(q) for q, _ in problems]
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    outs: list[str] = [""] * len(problems)
    tpf: list[float] = [0.0] * len(problems)
    kw = {} if steps is None else {"max_denoising_steps": steps}
    with torch.no_grad():
        for L, idx in sorted(groups.items()):
            for s in range(0, len(idx), bs):
                chunk = idx[s:s + bs]
                inp = torch.tensor([prompts[i] for i in chunk])
                r = model.generate(inp, max_new_tokens=C, **kw)
                for j, i in enumerate(chunk):
                    new = r.sequences[j, L:].tolist()
                    cut = next((k for k, x in enumerate(new) if x in T.EOS_IDS), len(new))
                    outs[i] = codec.decode(new[:cut])
                    tpf[i] = float(r.tokens_per_forward[j])
    ok = [T.score(o, a) for o, (_, a) in zip(outs, problems)]
    model.train()
    return sum(ok) / len(ok), sum(tpf) / len(tpf), outs


def probe_eval(model, codec, problems, C):
    """Two diagnostics beside the sampler's accuracy, on one padded batch (no sampling loop):
    `one_shot`: the decoder's argmax from a canvas of pure noise (no self-conditioning) is the whole answer;
    `ar`: the encoder, teacher-forced on the clean sequence, predicts every answer token. The first says
    whether the decoder learned the task, the second whether the shared trunk did."""
    import torch

    model.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ids, seq_am, am, lens, x0 = collate(codec, problems, C)
        h, cache = encode(model, ids, seq_am)
        ar_pred = softcap_logits(model, h[:, :-1]).argmax(-1)
        xt = torch.randint(0, T.VOCAB, x0.shape, generator=g)
        pred = decode(model, cache, am, lens, xt).argmax(-1)
    one_shot = ar = 0
    for i in range(len(problems)):
        n_ans = int((seq_am[i].sum() - lens[i]).item())  # answer tokens incl. <turn|>
        one_shot += bool((pred[i, :n_ans] == x0[i, :n_ans]).all())
        L = int(lens[i])
        ar += bool((ar_pred[i, L - 1:L - 1 + n_ans] == ids[i, L:L + n_ans]).all())
    model.train()
    return one_shot / len(problems), ar / len(problems)


def eval_all(model, codec, tasks, n, seed, C, steps=None):
    res = {}
    for task in tasks:
        probs = T.held_out(task, n, seed)
        acc, tpf, outs = hf_eval(model, codec, probs, C, steps)
        one_shot, ar = probe_eval(model, codec, probs, C)
        res[task] = {"acc": acc, "tokens_per_forward": tpf, "one_shot": one_shot, "ar": ar,
                     "examples": [(q, a, o) for (q, a), o in list(zip(probs, outs))[:3]]}
    return res


# ------------------------------------------------------------------------------------------------ export

def export(model, out: Path, outtype: str) -> Path:
    from pygguf_diffusion.convert import convert

    hf = out / "hf"
    model.save_pretrained(hf)
    T.build_tokenizer_files(hf)  # also writes generation_config.json (the checkpoint's sampler settings)
    gguf = out / f"tiny-diffusiongemma-{outtype.upper()}.gguf"
    convert(hf, gguf, outtype, force=True)
    return gguf


# ------------------------------------------------------------------------------------------------ main

def selftest(a):
    """A right-padded batch gives the same decoder logits and AR hidden states as one-by-one calls."""
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(make_config(a)).eval()
    tokdir = a.out / "tok"
    tokdir.mkdir(parents=True, exist_ok=True)
    T.build_tokenizer_files(tokdir)
    codec = T.Codec(tokdir)
    rng = random.Random(0)
    batch = [T.TASKS[t](rng) for t in ("add", "sort", "sudoku", "add")]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ids, seq_am, am, lens, x0 = collate(codec, batch, a.canvas)
        xt = torch.randint(0, T.VOCAB, x0.shape, generator=g)
        h, cache = encode(model, ids, seq_am)
        l0 = decode(model, cache, am, lens, xt)
        l1 = decode(model, cache, am, lens, xt, l0, torch.tensor([True, False, True, True]))
        worst = 0.0
        for i in range(len(batch)):
            L = int(lens[i])
            hi, ci = encode(model, ids[i:i + 1, :L], am[i:i + 1, :L])
            # reference: transformers' own decoder path with defaults (positions from the cache, no mask)
            r0 = model(cache=ci, decoder_input_ids=xt[i:i + 1]).logits
            sc = l0[i:i + 1] if i != 1 else None
            r1 = model(cache=ci, decoder_input_ids=xt[i:i + 1], self_conditioning_logits=sc).logits
            d = max((hi[0] - h[i, :L]).abs().max().item(), (r0[0] - l0[i]).abs().max().item(),
                    (r1[0] - l1[i]).abs().max().item())
            worst = max(worst, d)
            print(f"example {i} (prompt {L} tokens): max |diff| {d:.2e}")
    print("selftest", "OK" if worst < 1e-4 else "FAILED", worst)
    return worst < 1e-4


def main(argv=None):
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    tasks = a.tasks.split(",")
    if a.selftest:
        sys.exit(0 if selftest(a) else 1)
    if a.eval_only:
        return eval_only(a, tasks)

    from transformers import DiffusionGemmaForBlockDiffusion

    random.seed(a.seed)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    rng = random.Random(a.seed)
    model = DiffusionGemmaForBlockDiffusion(make_config(a))
    init_qk_norms(model, a.qk_norm_init)
    model.train()
    n_params = sum(p.numel() for n, p in model.named_parameters() if "vision" not in n)
    tokdir = a.out / "tok"
    tokdir.mkdir(exist_ok=True)
    T.build_tokenizer_files(tokdir)
    codec = T.Codec(tokdir)
    model.generation_config = load_generation_config(tokdir)  # eval with the checkpoint's sampler settings
    held = {t: {q for q, _ in T.held_out(t, max(a.eval_n, a.final_eval_n), a.eval_seed)} for t in tasks}
    weights = ([DEFAULT_TASK_WEIGHTS[t] for t in tasks] if a.task_weights is None
               else [float(w) for w in a.task_weights.split(",")])
    if len(weights) != len(tasks):
        sys.exit(f"error: --task-weights: {len(weights)} weights for {len(tasks)} tasks; give one per task")

    def sample():
        t = rng.choices(tasks, weights)[0]
        while True:
            q, ans = (T.addition(rng, a.max_add_digits) if t == "add" else T.TASKS[t](rng))
            if q not in held[t]:
                return t, q, ans

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.dim() < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98))

    def lr_at(s):
        if s < a.warmup:
            return a.lr * (s + 1) / a.warmup
        f = (s - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, f))))

    log = open(a.out / "log.jsonl", "w")
    print(f"params (text) {n_params:,}; tasks {tasks}; steps {a.steps} x batch {a.batch}; threads {a.threads}",
          flush=True)
    try:
        from tqdm import tqdm
        bar = tqdm(total=a.steps, dynamic_ncols=True, mininterval=5)
    except ImportError:  # pragma: no cover
        bar = None
    t0 = time.time()
    ema = None
    step = 0
    for step in range(1, a.steps + 1):
        for g_ in opt.param_groups:
            g_["lr"] = lr_at(step - 1)
        # One optimizer step over a mixed batch, run as one micro-batch per task: sequences of one task have
        # similar lengths, so padding (wasted compute) stays small. Losses are weighted by micro-batch size.
        groups: dict[str, list] = {}
        for t, q, ans in (sample() for _ in range(a.batch)):
            groups.setdefault(t, []).append((q, ans))
        opt.zero_grad(set_to_none=True)
        loss = dl = al = 0.0
        for t in tasks:
            if t in groups:
                w = len(groups[t]) / a.batch
                l_, d_, a_ = train_step(model, codec, groups[t], a, gen)
                (w * l_).backward()
                loss, dl, al = loss + w * l_.detach(), dl + w * d_, al + w * a_
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        el = time.time() - t0
        rec = {"step": step, "time": round(el, 1), "loss": round(loss.item(), 4), "diff": round(dl.item(), 4),
               "ar": round(al.item(), 4), "gnorm": round(float(gn), 3), "lr": lr_at(step - 1)}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", diff=f"{dl.item():.3f}", ar=f"{al.item():.3f}")
        if step % a.log_every == 0:
            msg = (f"step {step} {el:.0f}s ({el / step:.2f}s/step) loss {loss.item():.4f} (ema {ema:.4f}) "
                   f"diff {dl.item():.4f} ar {al.item():.4f} gnorm {float(gn):.2f} lr {lr_at(step - 1):.2e}")
            (bar.write if bar is not None else print)(msg)
        stop = bool(a.minutes) and el > a.minutes * 60
        if a.eval_every and (step % a.eval_every == 0) and step != a.steps and not stop:
            te = time.time()
            res = eval_all(model, codec, tasks, a.eval_n, a.eval_seed, a.canvas, a.eval_steps)
            rec["eval"] = {t: {k: r[k] for k in ("acc", "one_shot", "ar")} | {"tpf": r["tokens_per_forward"]}
                           for t, r in res.items()}
            rec["eval_s"] = round(time.time() - te, 1)
            model.save_pretrained(a.out / "checkpoint")  # the latest evaluated weights survive an interruption
            msg = f"eval @ step {step}: " + ", ".join(
                f"{t} {r['acc']:.1%} (tpf {r['tokens_per_forward']:.2f}; one-shot {r['one_shot']:.0%}, "
                f"AR {r['ar']:.0%})" for t, r in res.items()) + \
                f" [{rec['eval_s']}s]; e.g. {res[tasks[0]]['examples'][0]}"
            (bar.write if bar is not None else print)(msg)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if stop:
            print(f"stopping at step {step}: --minutes {a.minutes} reached", flush=True)
            break
    if bar is not None:
        bar.close()
    train_s = time.time() - t0
    summary = {"args": {k: str(v) for k, v in vars(a).items()}, "steps_done": step, "train_s": round(train_s, 1),
               "s_per_step": round(train_s / step, 3), "params_text": n_params, "final_loss_ema": ema}
    te = time.time()
    res = eval_all(model, codec, tasks, a.final_eval_n, a.eval_seed, a.canvas, a.eval_steps)
    summary["final_eval"] = res
    summary["final_eval_s"] = round(time.time() - te, 1)
    print("final held-out (transformers generate): " + ", ".join(
        f"{t} {r['acc']:.1%} (tpf {r['tokens_per_forward']:.2f})" for t, r in res.items()), flush=True)
    if not a.no_export:
        gguf = export(model, a.out, a.outtype)
        summary["gguf"] = str(gguf)
        summary["gguf_bytes"] = gguf.stat().st_size
        print(f"exported {gguf} ({gguf.stat().st_size / 1e6:.2f} MB)", flush=True)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def eval_only(a, tasks):
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(a.eval_only, dtype=torch.float32)
    codec = T.Codec(a.eval_only)
    C = model.config.canvas_length
    torch.manual_seed(a.seed)
    res = eval_all(model, codec, tasks, a.final_eval_n, a.eval_seed, C, a.eval_steps)
    for t, r in res.items():
        print(f"transformers {t}: {r['acc']:.1%} tpf {r['tokens_per_forward']:.2f} one-shot {r['one_shot']:.0%} "
              f"AR {r['ar']:.0%}; e.g. {r['examples'][:2]}", flush=True)
    return res


if __name__ == "__main__":
    main()
