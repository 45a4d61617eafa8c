"""dgemma-server: serve one DiffusionGemma GGUF over the OpenAI HTTP API (chat and completions, streaming
included), with a web page at / that shows the canvas denoising."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from ..cli import add_model_options, check_model_args, fail, load, load_failure, settings


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dgemma-server", description=__doc__.splitlines()[0])
    add_model_options(ap, chat=False)
    srv = ap.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                     "machine only; 0.0.0.0: every interface)")
    srv.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    srv.add_argument("--api-key", default=os.environ.get("DGEMMA_API_KEY") or None, metavar="KEY",
                     help="require 'Authorization: Bearer KEY' on every endpoint but /health (default: the "
                     "DGEMMA_API_KEY variable; unset: no key)")
    srv.add_argument("-v", "--verbose", action="store_true", help="log loading details and every request")
    return ap


def run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(name)s: %(message)s")
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        return fail("dgemma-server needs its web packages", e, "pip install 'pygguf_diffusion[server]'")
    failed = check_model_args(args, "dgemma-server",
                              None if 0 < args.port < 65536 else f"--port {args.port}: must be in [1, 65535]")
    if failed is not None:
        return failed
    try:  # before the model loads: a port in use is found in a second, not after minutes of loading
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as e:
        return fail("cannot listen", f"{args.host}:{args.port}: {e.strerror or e}", "pick another --port or --host")
    try:
        model = load(args)
    except (OSError, ValueError, RuntimeError, ImportError, MemoryError) as e:
        return load_failure(e, args, "dgemma-server")
    app = create_app(model, api_key=args.api_key, defaults=settings(args))
    print(f"dgemma-server: {app.state.model_id} on http://{args.host}:{args.port} (n_ctx {model.n_ctx})", file=sys.stderr,
          flush=True)
    # streams run for minutes: on SIGTERM or Ctrl-C give them 3 s, then cancel them (their generations stop
    # at the next step) instead of waiting for them to finish
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=3)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
