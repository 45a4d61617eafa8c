"""dgemma-cli: chat with a DiffusionGemma GGUF (interactive by default, one-shot with -p).

The answer goes to stdout, everything else (logs, stats, prompts) to stderr, so pipes stay clean.
Ctrl-C stops the current answer, not the session; /exit or Ctrl-D ends it.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import unicodedata
from typing import Any

HELP = """commands:
  /exit       end the session (or Ctrl-D)
  /clear      forget the conversation
  /regen      answer the last message again
  /help       this text
  a line ending in \\ continues on the next line; \"\"\" starts and ends a multi-line block"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dgemma-cli", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = ap.add_argument_group("model")
    src.add_argument("-m", "--model", help="path of a .gguf file")
    src.add_argument("-hf", "--hf-repo", metavar="REPO[:QUANT]", help="a Hugging Face repo, e.g. "
                     "unsloth/diffusiongemma-26B-A4B-it-GGUF:Q4_K_M")
    src.add_argument("-c", "--ctx-size", type=int, default=8192, help="context size (prompt + every canvas)")
    src.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1, help="layers on the GPU (-1: all)")
    src.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    gen = ap.add_argument_group("generation")
    gen.add_argument("-p", "--prompt", help="answer this prompt and exit (one-shot)")
    gen.add_argument("-sys", "--system-prompt", help="system message")
    gen.add_argument("-n", "--n-predict", type=int, default=-1, help="max new tokens per answer (-1: until EOS)")
    gen.add_argument("-s", "--seed", type=int, default=None, help="RNG seed (default: random)")
    gen.add_argument("--raw", action="store_true", help="no chat template: the prompt is plain text")
    dif = ap.add_argument_group("diffusion (defaults: the model's generation_config)")
    dif.add_argument("--steps", type=int, help="max_denoising_steps")
    dif.add_argument("--entropy-bound", type=float, help="entropy_bound (nats)")
    dif.add_argument("--t-min", type=float, help="t_min: temperature at the last step")
    dif.add_argument("--t-max", type=float, help="t_max: temperature at the first step")
    dif.add_argument("--stability-threshold", type=int, help="stability_threshold")
    dif.add_argument("--confidence-threshold", type=float, help="confidence_threshold")
    out = ap.add_argument_group("output")
    out.add_argument("--show-drafts", action="store_true", help="repaint the canvas live while it denoises "
                     "(terminals only)")
    out.add_argument("-v", "--verbose", action="store_true", help="log loading details and per-canvas stats")
    return ap


def fail(what: str, detail: Any, hint: str = "") -> int:
    print(f"error: {what}: {detail}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
    return 1


def load(args: argparse.Namespace):
    from . import Model

    kw = dict(n_ctx=args.ctx_size, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads, seed=args.seed,
              verbose=args.verbose)
    if args.hf_repo:
        repo, _, quant = args.hf_repo.partition(":")
        return Model.from_pretrained(repo, quant=quant or "Q4_K_M", **kw)
    return Model(args.model, **kw)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    s = {"max_denoising_steps": args.steps, "entropy_bound": args.entropy_bound, "t_min": args.t_min,
         "t_max": args.t_max, "stability_threshold": args.stability_threshold,
         "confidence_threshold": args.confidence_threshold}
    s = {k: v for k, v in s.items() if v is not None}
    if args.n_predict != -1:
        s["max_new_tokens"] = args.n_predict
    return s


def _fit(text: str, width: int) -> str:
    """One terminal line: control characters shown as '·', wide characters counted twice, cut at width."""
    out, used = [], 0
    for ch in text:
        if not ch.isprintable():
            ch = "·"
        w = 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "".join(out)


class Printer:
    """Streams committed text to stdout; with drafts on a terminal, repaints the live canvas on one line."""

    def __init__(self, drafts: bool) -> None:
        self.drafts = drafts and sys.stdout.isatty()
        self.width = shutil.get_terminal_size((100, 20)).columns
        self.painted = False

    def draft(self, text: str, step: int) -> None:
        if not self.drafts:
            return
        line = _fit(f"[{step:2d}] " + text.replace("\n", "⏎"), self.width - 1)
        sys.stdout.write("\r\x1b[2K\x1b[2m" + line + "\x1b[0m")
        sys.stdout.flush()
        self.painted = True

    def commit(self, text: str) -> None:
        if self.painted:
            sys.stdout.write("\r\x1b[2K")
            self.painted = False
        sys.stdout.write(text)
        sys.stdout.flush()

    def end(self) -> None:
        self.commit("")
        sys.stdout.write("\n")
        sys.stdout.flush()


def answer(model, messages: list[dict], args: argparse.Namespace, gen: dict[str, Any]) -> str | None:
    """Stream one answer; returns its text, or None when interrupted."""
    from . import CommitEvent, DraftEvent, GenerationResult

    if args.raw:
        prompt = "\n".join(m["content"] for m in messages if m["role"] != "assistant")
    else:
        prompt = model.apply_chat_template(messages)
    tokens = model.tokenizer.encode(prompt, add_bos=args.raw)
    out = Printer(args.show_drafts)
    pieces: list[str] = []
    try:
        for ev in model.stream_generate(tokens, drafts=out.drafts, **gen):
            if isinstance(ev, DraftEvent):
                out.draft("".join(pieces) + ev.text, ev.step)
            elif isinstance(ev, CommitEvent):
                pieces.append(ev.text)
                out.commit(ev.text)
                if args.verbose:
                    logging.getLogger("dgemma-cli").info("canvas %d: %d steps", ev.canvas_index, ev.steps)
            elif isinstance(ev, GenerationResult):
                out.end()
                print(f"[{ev.finish_reason}] {ev.stats.line()}", file=sys.stderr)
    except KeyboardInterrupt:
        out.end()
        print("[interrupted]", file=sys.stderr)
        return None
    return "".join(pieces)


def read_message() -> str | None:
    """One user message from stdin (None at EOF)."""
    lines: list[str] = []
    block = False
    prompt = "> "
    while True:
        if sys.stdin.isatty():
            sys.stderr.write(prompt)
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return None if not lines else "\n".join(lines)
        line = line.rstrip("\n")
        if line.strip() == '"""':
            if block:
                return "\n".join(lines)
            block, prompt = True, ". "
            continue
        if block:
            lines.append(line)
        elif line.endswith("\\"):
            lines.append(line[:-1])
            prompt = ". "
        else:
            lines.append(line)
            return "\n".join(lines)


def chat(model, args: argparse.Namespace, gen: dict[str, Any]) -> int:
    system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    messages = list(system)
    print(f"dgemma-cli: {model.name} (canvas {model.canvas_length}, n_ctx {model.n_ctx}); /help for commands",
          file=sys.stderr)
    while True:
        try:
            text = read_message()
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D ends the session)", file=sys.stderr)
            continue
        if text is None or text.strip() == "/exit":
            return 0
        cmd = text.strip()
        if cmd == "/help":
            print(HELP, file=sys.stderr)
            continue
        if cmd == "/clear":
            messages = list(system)
            model.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if cmd == "/regen":
            if messages and messages[-1]["role"] == "assistant":
                messages.pop()
            if not messages or messages[-1]["role"] != "user":
                print("(nothing to regenerate)", file=sys.stderr)
                continue
        elif cmd.startswith("/"):
            print(f"(unknown command {cmd.split()[0]}; /help lists them)", file=sys.stderr)
            continue
        elif not cmd:
            continue
        else:
            messages.append({"role": "user", "content": text})
        reply = answer(model, messages, args, gen)
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(name)s: %(message)s")
    if not args.model and not args.hf_repo:
        return fail("no model", "pass -m model.gguf or -hf repo[:quant]", "dgemma-cli --help lists the options")
    if args.model and not os.path.isfile(args.model):
        return fail("cannot load model", f"{args.model}: no such file", "check the path, or use -hf repo[:quant]")
    for name in ("ctx_size", "n_predict", "threads", "steps"):
        v = getattr(args, name)
        if v is not None and v < 1 and not (name == "n_predict" and v == -1):
            return fail("invalid option", f"--{name.replace('_', '-')} {v}: must be >= 1")
    try:
        model = load(args)
    except (OSError, ValueError, RuntimeError) as e:
        return fail("cannot load model", e, "is it a DiffusionGemma GGUF? dgemma-inspect FILE checks it")
    gen = settings(args)
    try:
        if args.prompt is not None:
            system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
            reply = answer(model, [*system, {"role": "user", "content": args.prompt}], args, gen)
            return 0 if reply is not None else 130
        return chat(model, args, gen)
    except ValueError as e:
        msg = str(e)
        what, _, detail = msg.partition(": ") if msg.startswith("invalid") else ("invalid generation setting", "", msg)
        return fail(what, detail, "see dgemma-cli --help")
    except RuntimeError as e:
        return fail("generation failed", e)


if __name__ == "__main__":
    sys.exit(main())
