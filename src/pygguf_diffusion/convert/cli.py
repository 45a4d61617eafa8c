"""dgemma-convert / convert_hf_to_gguf.py: the command line llama.cpp users know."""
from __future__ import annotations

import argparse
import logging
import sys

from .converter import convert
from .errors import ConversionError
from .._signals import run_writer
from ..quant.policy import MIXES, Policy, parse_override, target_names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="dgemma-convert",
        description="Convert a Hugging Face DiffusionGemma checkpoint directory into a GGUF file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("model", help="checkpoint directory (config.json, *.safetensors, tokenizer.json, ...)")
    ap.add_argument("--outfile", help="output path (default: <model>/<name>-<OUTTYPE>.gguf)")
    ap.add_argument("--outtype", default="bf16", metavar="TYPE_OR_MIX",
                    help="a mix (" + ", ".join(MIXES) + ") or one type for every matrix ("
                    + ", ".join(target_names()[len(MIXES):]) + "); norms, scales and the router always stay f32")
    ap.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE",
                    help="store tensors whose name matches the regular expression PATTERN as TYPE (first match "
                    "wins), e.g. 'ffn_down_exps=q6_K'; repeatable")
    ap.add_argument("--imatrix", help="importance matrix GGUF from dgemma-imatrix (needed by the IQ2/IQ3 types)")
    ap.add_argument("--threads", type=int, help="quantization threads (default: all available cores)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output file")
    ap.add_argument("--name", help="general.name to record (default: the directory name)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("-v", "--verbose", action="store_true", help="log each decision")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if args.threads is not None and not 1 <= args.threads <= 512:
        print(f"error: --threads {args.threads}: must be in [1, 512]", file=sys.stderr)
        return 2
    summaries = []
    try:
        overrides = [parse_override(s) for s in args.tensor_type]
        Policy(args.outtype, 1, overrides)  # a usage error, before reading the checkpoint
    except ValueError as e:
        where = "" if str(e).startswith("--tensor-type") else f"--outtype {args.outtype}: "
        print(f"error: {where}{e}", file=sys.stderr)
        return 2
    written: list = []
    rc = run_writer(lambda: written.append(convert(
        args.model, args.outfile, args.outtype, force=args.force,
        progress=not args.no_progress and sys.stderr.isatty(), name=args.name, tensor_types=overrides,
        imatrix=args.imatrix, n_threads=args.threads, report=summaries.append)), "convert", (ConversionError,))
    if rc:
        return rc
    for sm in summaries:
        print(sm.text(), file=sys.stderr)
    print(written[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
