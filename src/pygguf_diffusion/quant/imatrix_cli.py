"""dgemma-imatrix -m model.gguf -f calibration.txt -o imatrix.gguf: an importance matrix computed by our
engine (encoder and denoising loop), in the GGUF format llama.cpp's llama-quantize --imatrix reads."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .._core import EngineError
from .._signals import run_writer
from .collect import imatrix_from_file
from .imatrix import Imatrix


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dgemma-imatrix", description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True, help="the GGUF to measure (best: the bf16/f16 file)")
    ap.add_argument("-f", "--file", required=True, help="calibration text (UTF-8)")
    ap.add_argument("-o", "--output", required=True, help="the imatrix GGUF to write")
    ap.add_argument("--chat", action="store_true",
                    help="each non-empty line is a user message, rendered with the model's chat template")
    ap.add_argument("--chunk", type=int, default=256, help="tokens per prompt for plain text")
    ap.add_argument("--chunks", type=int, default=None, help="use at most this many prompts")
    ap.add_argument("--ctx", type=int, default=4096, help="context length (prompt + one canvas)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite an existing output file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    out = Path(args.output)
    if out.exists() and not args.force:
        print(f"error: {out}: already exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    if args.chunk < 1 or (args.chunks is not None and args.chunks < 1):
        print("error: --chunk and --chunks must be positive", file=sys.stderr)
        return 2
    t0 = time.perf_counter()

    def progress(i: int, n: int, steps: int) -> None:
        print(f"\r[{i}/{n}] prompts, {steps} steps in the last, {time.perf_counter() - t0:.0f} s", end="",
              file=sys.stderr, flush=True)

    made: list[Imatrix] = []

    def work() -> None:
        made.append(imatrix_from_file(args.model, args.file, chat=args.chat, chunk_tokens=args.chunk,
                                      max_chunks=args.chunks, n_ctx=args.ctx, n_threads=args.threads,
                                      seed=args.seed, progress=progress if sys.stderr.isatty() else None))
        made[0].save(out, force=args.force)

    rc = run_writer(work, "compute the importance matrix", (EngineError, ValueError, OSError),
                    prefix="\n" if sys.stderr.isatty() else "")
    if rc:
        return rc
    im = made[0]
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"wrote {out}: {len(im.sums)} matrices from {im.chunk_count} prompts in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
