"""dgemma-convert / convert_hf_to_gguf.py: the command line llama.cpp users know."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from .converter import convert
from .errors import ConversionError
from .type_policy import OutType


class _Terminated(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise _Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="dgemma-convert",
        description="Convert a Hugging Face DiffusionGemma checkpoint directory into a GGUF file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("model", help="checkpoint directory (config.json, *.safetensors, tokenizer.json, ...)")
    ap.add_argument("--outfile", help="output path (default: <model>/<name>-<OUTTYPE>.gguf)")
    ap.add_argument("--outtype", default="bf16", choices=[t.value for t in OutType],
                    help="weight type of the matrices; norms, scales and the router always stay f32")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output file")
    ap.add_argument("--name", help="general.name to record (default: the directory name)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("-v", "--verbose", action="store_true", help="log each decision")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    # SIGTERM/SIGHUP end the process without unwinding by default, which left the half-written temporary
    # file behind; as an exception they run the converter's cleanup (SIGKILL's are removed by the next run)
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _raise_terminated)
    try:
        out = convert(args.model, args.outfile, args.outtype, force=args.force,
                      progress=not args.no_progress and sys.stderr.isatty(), name=args.name)
    except ConversionError as e:
        print(f"error: cannot convert: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted: no output was written", file=sys.stderr)
        return 130
    except _Terminated as e:
        print(f"error: terminated by signal {e.signum}: no output was written", file=sys.stderr)
        return 128 + e.signum
    except OSError as e:
        print(f"error: cannot convert: {e}\n  check the paths and free disk space", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
