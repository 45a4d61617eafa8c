"""dgemma-cli: chat with a DiffusionGemma GGUF (interactive by default, one-shot with -p).

The answer goes to stdout, everything else (logs, stats, prompts) to stderr, so pipes stay clean.
Ctrl-C stops the current answer, not the session; /exit or Ctrl-D ends it. A conversation longer than the
context loses its oldest turns (the system prompt stays), never the session.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

from . import bundled
from ._defaults import DEFAULT_N_CTX, INT32_MAX, MAX_THREADS
from ._live import AnswerView, LoadProgress, answer_terminal
from ._placement import KV_TYPES, check_rpc_servers, parse_overrides
from ._prompt import LineReader, read_message
from .canvas import DEFAULT_HOLE_TOKENS, infill_template, parse_template

HELP = """commands:
  /exit       end the session (or Ctrl-D)
  /clear      forget the conversation
  /regen      answer the last message again
  /help       this text
  a line ending in \\ continues on the next line; \"\"\" starts and ends a multi-line block"""

log = logging.getLogger("dgemma-cli")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dgemma-cli", description=__doc__.splitlines()[0])
    add_model_options(ap, chat=True)
    ed = ap.add_argument_group("canvas editing", "Shape every answer's canvases (docs/canvas-editing.md).")
    one = ed.add_mutually_exclusive_group()
    one.add_argument("--template", metavar="TEXT", help="the answer is TEXT with its holes filled: {} is a hole "
                     "of --hole-tokens tokens, {:N} one of N, {{ and }} are braces; the rest stays as written")
    one.add_argument("--infill", nargs=2, metavar=("PREFIX", "SUFFIX"), help="print only what the model writes "
                     "between PREFIX and SUFFIX (a hole of --hole-tokens tokens)")
    one.add_argument("--edit", metavar="TEXT", help="start the answer's canvases from TEXT instead of noise "
                     "(a warm start: the model revises it)")
    ed.add_argument("--hole-tokens", type=int, default=DEFAULT_HOLE_TOKENS, metavar="N",
                    help=f"positions of a {{}} hole and of the --infill hole (default: {DEFAULT_HOLE_TOKENS})")
    out = ap.add_argument_group("output")
    out.add_argument("--show-drafts", action="store_true", help="paint the canvas being denoised after the "
                     "committed text (terminals only)")
    out.add_argument("-v", "--verbose", action="store_true", help="log loading details; a second stats line "
                     "(device, threads, weights, buffer sizes)")
    return ap


def add_model_options(ap: argparse.ArgumentParser, chat: bool) -> None:
    """The model, offload, generation and diffusion flags (shared with dgemma-server; `chat`: the
    prompt flags too). check_options and load read what these set."""
    src = ap.add_argument_group("model")
    src.add_argument("-m", "--model", help="path of a .gguf file (default: the bundled tiny model, which "
                     "answers only 'a+b=', 'sort: 42 7 19' and 'sudoku: 3.12 .2.. .321 .1.4')")
    src.add_argument("-hf", "--hf-repo", metavar="REPO[:QUANT]", help="a Hugging Face repo, e.g. "
                     "unsloth/diffusiongemma-26B-A4B-it-GGUF:Q4_K_M (QUANT defaults to Q4_K_M)")
    src.add_argument("-c", "--ctx-size", type=int, metavar="N", help="context size: prompt + every canvas "
                     f"(default: {DEFAULT_N_CTX}, at most the model's context length)")
    src.add_argument("-ngl", "--n-gpu-layers", type=int, metavar="N",
                     help="layers on the GPU (default: -1, all; 0: CPU only)")
    src.add_argument("--cpu-moe", action="store_true", help="keep every expert tensor on the CPU")
    src.add_argument("--n-cpu-moe", type=int, metavar="N", help="keep the expert tensors of the first N layers "
                     "on the CPU")
    src.add_argument("--no-repack", action="store_true", help="keep the CPU's expert weights as the file has "
                     "them (read lazily from the mapping) instead of copying them at load into the CPU's faster "
                     "repacked layouts")
    src.add_argument("-ot", "--override-tensor", action="append", default=[], metavar="PATTERN=DEVICE,...",
                     help="tensors whose name matches the regular expression go to DEVICE (CPU, GPU or a "
                     "device name such as CUDA0); repeatable; the first match wins over -ngl and --*-moe")
    src.add_argument("--rpc", metavar="HOST:PORT,...", help="machines running dgemma-rpc-server: their devices "
                     "take GPU layers after the local GPU, split evenly in order")
    src.add_argument("-ctk", "--cache-type-k", metavar="TYPE",
                     help="KV store type of K: " + ", ".join(KV_TYPES) + " (default: f32)")
    src.add_argument("-ctv", "--cache-type-v", metavar="TYPE",
                     help="KV store type of V (default: f32)")
    src.add_argument("-t", "--threads", type=int, metavar="N",
                     help="CPU threads (default: the physical cores available to the process)")
    gen = ap.add_argument_group("generation", None if chat else "Defaults for requests that do not set them.")
    if chat:
        gen.add_argument("-p", "--prompt", help="answer this prompt and exit (one-shot)")
        gen.add_argument("-sys", "--system-prompt", metavar="TEXT", help="system message")
    gen.add_argument("-n", "--n-predict", type=int, default=-1, metavar="N",
                     help="max new tokens per answer (default: -1, until EOS or the context is full)")
    gen.add_argument("-s", "--seed", type=int, metavar="N", help="RNG seed (default: random)")
    if chat:
        gen.add_argument("--raw", action="store_true", help="no chat template: the prompt is plain text")
    gen.add_argument("--temp", type=float, metavar="X", help="scales the schedule's temperature for the token "
                     "drawn at accepted positions (default: 1; 0: greedy)")
    gen.add_argument("--top-k", type=int, metavar="N", help="draw among the N most likely tokens (default: 0, all)")
    gen.add_argument("--top-p", type=float, metavar="X", help="draw within the smallest set holding X of the "
                     "probability (default: 1, all)")
    dif = ap.add_argument_group("diffusion", "Each defaults to the GGUF's value (the checkpoint's "
                                "generation_config); dgemma-inspect FILE shows them.")
    dif.add_argument("--steps", type=int, metavar="N", help="max_denoising_steps per canvas")
    dif.add_argument("--entropy-bound", type=float, metavar="X", help="entropy_bound (nats, > 0)")
    dif.add_argument("--t-min", type=float, metavar="X", help="t_min: temperature at the last step")
    dif.add_argument("--t-max", type=float, metavar="X", help="t_max: temperature at the first step")
    dif.add_argument("--stability-threshold", type=int, metavar="N", help="stability_threshold (steps)")
    dif.add_argument("--confidence-threshold", type=float, metavar="X", help="confidence_threshold (> 0)")


def fail(what: str, detail: Any, hint: str = "") -> int:
    print(f"error: {what}: {detail}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
    return 1


def check_options(args: argparse.Namespace) -> str | None:
    """The first invalid option as 'flag value: what is allowed', or None. Runs before the model loads."""
    ints = [("--ctx-size", args.ctx_size, 1, INT32_MAX), ("--threads", args.threads, 1, MAX_THREADS),
            ("--steps", args.steps, 1, INT32_MAX),
            ("--stability-threshold", args.stability_threshold, 0, INT32_MAX),
            ("--n-gpu-layers", args.n_gpu_layers, -1, INT32_MAX), ("--seed", args.seed, 0, 2**64 - 1),
            ("--n-cpu-moe", args.n_cpu_moe, 0, INT32_MAX),
            ("--top-k", args.top_k, 0, INT32_MAX)]
    if args.n_predict != -1:
        ints.append(("--n-predict", args.n_predict, 1, INT32_MAX))
    for flag, v, lo, hi in ints:
        if v is not None and not lo <= v <= hi:
            allowed = f"must be >= {lo}" if v < lo else f"must be <= {hi}"
            return f"{flag} {v}: {allowed}" + (" (or -1: until EOS)" if flag == "--n-predict" else "")
    for flag, v, positive in [("--entropy-bound", args.entropy_bound, True), ("--t-min", args.t_min, False),
                              ("--t-max", args.t_max, False),
                              ("--confidence-threshold", args.confidence_threshold, True)]:
        if v is not None and (not math.isfinite(v) or (positive and v <= 0)):
            return f"{flag} {v}: must be a finite number" + (" > 0" if positive else "")
    if args.temp is not None and not (math.isfinite(args.temp) and args.temp >= 0):
        return f"--temp {args.temp}: must be a finite number >= 0"
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return f"--top-p {args.top_p}: must be in (0, 1]"
    for flag, v in (("--cache-type-k", args.cache_type_k), ("--cache-type-v", args.cache_type_v)):
        if v is not None and v not in KV_TYPES:
            return f"{flag} {v}: must be one of {', '.join(KV_TYPES)}"
    try:
        parse_overrides(args.override_tensor)
    except ValueError as e:
        return f"--override-tensor: {e}"
    try:
        check_rpc_servers(args.rpc)
    except ValueError as e:
        return f"--rpc: {str(e).removeprefix('rpc_servers: ')}"
    if getattr(args, "hole_tokens", 1) < 1:
        return f"--hole-tokens {args.hole_tokens}: must be >= 1"
    if getattr(args, "template", None) is not None:
        try:
            parse_template(args.template, args.hole_tokens)
        except ValueError as e:
            return f"--template {args.template!r}: {str(e).removeprefix('template: ')}"
    return None


def check_model_args(args: argparse.Namespace, prog: str, extra: str | None = None) -> int | None:
    """The checks before a model loads, shared by dgemma-cli and dgemma-server: one model source (the
    bundled model when none is given), the options (`extra`: the caller's own first invalid option), the
    file. Returns the exit status of the `error:` it printed, or None to go on."""
    if args.model and args.hf_repo:
        return fail("invalid option", "-m and -hf both given: pick one model", f"see {prog} --help")
    if not args.model and not args.hf_repo:
        args.model = bundled.bundled_model_path()
        if args.model is None:
            return fail("no model", "pass -m model.gguf or -hf repo[:quant] (this install has no bundled model)",
                        f"{prog} --help lists the options")
        print(f"no model given: using {bundled.DESCRIPTION}\n  {bundled.HINT}", file=sys.stderr)
    if args.seed == -1:  # llama.cpp's spelling of "random"
        args.seed = None
    bad = check_options(args) or extra
    if bad:
        return fail("invalid option", bad, f"see {prog} --help")
    if args.model and not os.path.isfile(args.model):
        return fail("cannot load model", f"{args.model}: no such file", "check the path, or use -hf repo[:quant]")
    if args.n_gpu_layers not in (None, 0) and not gpu_backends():
        print(f"warning: -ngl {args.n_gpu_layers}: this build has no GPU backend, running on the CPU "
              "(rebuild with e.g. CMAKE_ARGS=\"-DGGML_CUDA=ON\" pip install ...)", file=sys.stderr)
    return None


def gpu_backends() -> list[str]:
    """GPU devices this build can use (empty on a CPU-only build)."""
    from . import _core

    return list(_core.gpu_backends())


def load(args: argparse.Namespace):
    """The Model for -m / -hf, with a progress line on a terminal. -c unset: the API's default n_ctx."""
    from . import Model

    ngl = -1 if args.n_gpu_layers is None else args.n_gpu_layers
    kw: dict[str, Any] = dict(n_ctx=args.ctx_size, n_gpu_layers=ngl, n_threads=args.threads, seed=args.seed,
                              verbose=args.verbose, cpu_moe=args.cpu_moe, n_cpu_moe=args.n_cpu_moe or 0,
                              cpu_repack=not args.no_repack,
                              tensor_overrides=parse_overrides(args.override_tensor),
                              type_k=args.cache_type_k or "f32", type_v=args.cache_type_v or "f32",
                              rpc_servers=args.rpc)
    with LoadProgress() as progress:
        if progress.enabled:
            kw["progress"] = progress
        if args.hf_repo:
            repo, _, quant = args.hf_repo.partition(":")
            return Model.from_pretrained(repo, quant=quant or "Q4_K_M", **kw)
        return Model(args.model, **kw)


def load_failure(e: BaseException, args: argparse.Namespace, prog: str = "dgemma-cli") -> int:
    """`error: …` for a failed load, with the hint that fits the failure."""
    from . import EngineError
    from .hub import HubError

    if isinstance(e, HubError):
        return fail("cannot get the model from the Hugging Face Hub", e,
                    "check the repository name and quant, and your connection (HF_HUB_OFFLINE=1: cache "
                    "only)")
    if isinstance(e, FileNotFoundError):
        return fail("cannot load model", e, "check the path, or use -hf repo[:quant]")
    if isinstance(e, ImportError):
        return fail("cannot load model", e)
    if isinstance(e, MemoryError):
        return fail("cannot load model", "out of memory", "lower -c, or use a smaller quant")
    if isinstance(e, EngineError) and str(e).startswith(("tensor override", "type_k", "type_v")):
        return fail("invalid option", e, f"see {prog} --help")
    if isinstance(e, EngineError) and str(e).startswith(("RPC server", "this build has no RPC")):
        return fail("cannot use the RPC servers", e, "see dgemma-rpc-server --help")
    if isinstance(e, EngineError):
        if args.model and _valid_gguf(args.model):  # then it failed for another reason: memory, -c, -ngl
            return fail("cannot load model", e, "the file is a valid DiffusionGemma GGUF: lower -c (context "
                        "size) or -ngl, or free memory")
        return fail("cannot load model", e,
                    f"is it a DiffusionGemma GGUF? dgemma-inspect {args.model or 'FILE'} checks it")
    if isinstance(e, ValueError):
        return fail("invalid option", e, f"see {prog} --help")
    return fail("cannot load model", e)


def _valid_gguf(path: str) -> bool:
    from . import EngineError, inspect_gguf

    try:
        inspect_gguf(path)
    except (OSError, EngineError):
        return False
    return True


def settings(args: argparse.Namespace) -> dict[str, Any]:
    s = {"max_denoising_steps": args.steps, "entropy_bound": args.entropy_bound, "t_min": args.t_min,
         "t_max": args.t_max, "stability_threshold": args.stability_threshold,
         "confidence_threshold": args.confidence_threshold, "temperature": args.temp, "top_k": args.top_k,
         "top_p": args.top_p}
    s = {k: v for k, v in s.items() if v is not None}
    if args.n_predict != -1:
        s["max_new_tokens"] = args.n_predict
    if getattr(args, "template", None) is not None:
        s.update(template=args.template, hole_tokens=args.hole_tokens)
    elif getattr(args, "infill", None):
        s["template"] = infill_template(*args.infill, args.hole_tokens)
    elif getattr(args, "edit", None) is not None:
        s["canvas"] = args.edit
    return s


def prompt_tokens(model, messages: list[dict], raw: bool) -> list[int]:
    if raw:
        return model.tokenizer.encode("\n".join(m["content"] for m in messages if m["role"] != "assistant"),
                                      add_bos=True)
    # the chat template writes <bos> itself
    return model.tokenizer.encode(model.apply_chat_template(messages), add_bos=False)


def runtime_line(model, stats) -> str:
    """The -v stats line: where and how it ran, then memory and per-canvas steps."""
    info = model.runtime_info()
    mib = {k: info[k] / 2**20 for k in ("kv_bytes", "sc_bytes", "compute_bytes")}
    parts = [f"device {info['device']}", f"{info['n_threads']} threads", f"weights {info['weight_type']}",
             f"KV {mib['kv_bytes']:.1f} MiB", f"self-conditioning {mib['sc_bytes']:.1f} MiB",
             f"compute {mib['compute_bytes']:.1f} MiB", f"peak RSS {stats.peak_rss_bytes / 2**20:.0f} MiB",
             "steps per canvas " + " ".join(str(n) for n in stats.steps_per_canvas)]
    return " | ".join(parts)


def answer(model, tokens: list[int], args: argparse.Namespace, gen: dict[str, Any]) -> str | None:
    """Stream one answer; returns its text, or None when interrupted."""
    from . import CommitEvent, DraftEvent, GenerationResult

    infill = bool(getattr(args, "infill", None))   # only the hole is printed, once it is final
    view = AnswerView(sys.stdout, args.show_drafts and not infill)
    pieces: list[str] = []
    try:
        with answer_terminal(sys.stdin, sys.stdout, hide_echo=view.drafts):
            for ev in model.stream_generate(tokens, drafts=view.drafts, **gen):
                if isinstance(ev, DraftEvent):
                    view.draft(ev.text)
                elif isinstance(ev, CommitEvent):
                    pieces.append(ev.text)
                    if not infill:
                        view.commit(ev.text)
                elif isinstance(ev, GenerationResult):
                    if infill:
                        view.commit(ev.holes[0] if ev.holes else "")
                    view.end()
                    print(f"[{ev.finish_reason}] {ev.stats.line()}", file=sys.stderr)
                    if args.verbose:  # after the answer: a line in the middle would break the live view
                        print(runtime_line(model, ev.stats), file=sys.stderr)
    except KeyboardInterrupt:
        view.end()
        print("[interrupted]", file=sys.stderr)
        return None
    return "".join(pieces)


class Conversation:
    """The chat history, kept within the context: before each answer the oldest turns are dropped until the
    prompt leaves room for one canvas (chat.fit_messages); the user is told once per session."""

    def __init__(self, model, args: argparse.Namespace) -> None:
        self.model, self.raw = model, args.raw
        self.system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
        self.messages = list(self.system)
        self.told = False

    def clear(self) -> None:
        self.messages = list(self.system)

    def prompt(self) -> list[int]:
        """Tokens of the prompt for the next answer, after dropping what does not fit. ValueError when the
        newest message alone does not fit (it is then removed from the history)."""
        from .chat import fit_prompt

        budget = self.model.n_ctx - self.model.canvas_length
        try:
            tokens, kept, dropped = fit_prompt(self.messages, lambda m: prompt_tokens(self.model, m, self.raw),
                                               budget)
        except ValueError:
            if self.messages and self.messages[-1]["role"] == "user":
                self.messages.pop()
            raise
        if dropped and not self.told:
            print(f"(context full: dropping the oldest turns to stay within n_ctx {self.model.n_ctx})",
                  file=sys.stderr)
            self.told = True
        self.messages = kept
        return tokens


def chat(model, args: argparse.Namespace, gen: dict[str, Any]) -> int:
    conv = Conversation(model, args)
    read = LineReader()
    print(f"dgemma-cli: {model.name} (canvas {model.canvas_length}, n_ctx {model.n_ctx}); /help for commands",
          file=sys.stderr)
    while True:
        try:
            text = read_message(read)
        except KeyboardInterrupt:
            read.pending.clear()
            print("\n(/exit or Ctrl-D ends the session)", file=sys.stderr)
            continue
        if text is None or text.strip() == "/exit":
            return 0
        cmd = text.strip()
        if cmd == "/help":
            print(HELP, file=sys.stderr)
            continue
        if cmd == "/clear":
            conv.clear()
            model.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if cmd == "/regen":
            if conv.messages and conv.messages[-1]["role"] == "assistant":
                conv.messages.pop()
            if not conv.messages or conv.messages[-1]["role"] != "user":
                print("(nothing to regenerate)", file=sys.stderr)
                continue
        elif cmd.startswith("/"):
            print(f"(unknown command {cmd.split()[0]}; /help lists them)", file=sys.stderr)
            continue
        elif not cmd:
            continue
        else:
            conv.messages.append({"role": "user", "content": text})
        try:
            tokens = conv.prompt()
        except ValueError as e:
            fail("message too long", e, f"shorten it, or start with a larger -c (now {model.n_ctx})")
            continue
        reply = answer(model, tokens, args, gen)
        if reply is not None:
            conv.messages.append({"role": "assistant", "content": reply})


def one_shot(model, args: argparse.Namespace, gen: dict[str, Any]) -> int:
    conv = Conversation(model, args)
    conv.messages.append({"role": "user", "content": args.prompt})
    try:
        tokens = conv.prompt()
    except ValueError as e:
        return fail("prompt too long", e, f"shorten it, or raise -c (now {model.n_ctx})")
    return 0 if answer(model, tokens, args, gen) is not None else 130


def run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(name)s: %(message)s")
    failed = check_model_args(args, "dgemma-cli")
    if failed is not None:
        return failed
    try:
        model = load(args)
    except (OSError, ValueError, RuntimeError, ImportError, MemoryError) as e:
        return load_failure(e, args)
    gen = settings(args)
    try:
        return one_shot(model, args, gen) if args.prompt is not None else chat(model, args, gen)
    except ValueError as e:
        msg = str(e)
        if msg.startswith("invalid"):
            what, _, detail = msg.partition(": ")
        else:
            what, detail = "invalid generation setting", msg
        return fail(what, detail, "see dgemma-cli --help")
    except RuntimeError as e:
        return fail("generation failed", e)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except BrokenPipeError:
        # the reader went away (| head): stop quietly; stdout goes to devnull so that the interpreter's final
        # flush does not complain (Python's documented recipe, "Note on SIGPIPE")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # outside an answer (while loading): no traceback
        print("\n[interrupted]", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
