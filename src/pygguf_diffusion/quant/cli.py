"""dgemma-quantize IN.gguf OUT.gguf TYPE_OR_MIX: requantize a DiffusionGemma GGUF (llama-quantize's
command line, for this architecture)."""
from __future__ import annotations

import argparse
import logging
import sys

from .._signals import run_writer
from .._core import EngineError
from .policy import MIXES, Policy, parse_override, target_names
from .requantize import QuantizeError, requantize


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="dgemma-quantize",
        description="Requantize a DiffusionGemma GGUF with ggml's quantizer (the bytes llama-quantize writes).",
        epilog="mixes: " + "; ".join(f"{m.name}: {m.summary}" for m in MIXES.values()))
    ap.add_argument("input", help="the GGUF to read (best: the bf16/f16/f32 file)")
    ap.add_argument("output", help="the GGUF to write (appears only when complete)")
    ap.add_argument("type", metavar="TYPE_OR_MIX",
                    help="a mix (" + ", ".join(MIXES) + ") or one type for every matrix ("
                    + ", ".join(target_names()[len(MIXES):]) + ")")
    ap.add_argument("--imatrix", help="importance matrix GGUF (dgemma-imatrix, or llama-imatrix's GGUF format)")
    ap.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE",
                    help="store tensors whose name matches the regular expression PATTERN as TYPE (first match "
                    "wins), e.g. 'ffn_down_exps=q6_K'; repeatable")
    ap.add_argument("--allow-requantize", action="store_true",
                    help="accept an already quantized input (the errors add up)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output file")
    ap.add_argument("--threads", type=int, help="quantization threads (default: all available cores)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("-v", "--verbose", action="store_true", help="log each decision")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if args.threads is not None and not 1 <= args.threads <= 512:
        print(f"error: --threads {args.threads}: must be in [1, 512]", file=sys.stderr)
        return 2
    try:
        overrides = [parse_override(s) for s in args.tensor_type]
        Policy(args.type, 1, overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summaries = []
    rc = run_writer(lambda: requantize(
        args.input, args.output, args.type, tensor_types=overrides, imatrix=args.imatrix,
        allow_requantize=args.allow_requantize, force=args.force, n_threads=args.threads,
        progress=not args.no_progress and sys.stderr.isatty(), report=summaries.append),
        "quantize", (FileNotFoundError, QuantizeError, EngineError))
    if rc:
        return rc
    for sm in summaries:
        print(sm.text(), file=sys.stderr)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
