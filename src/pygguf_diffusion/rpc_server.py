"""dgemma-rpc-server: lend this machine's GPU (or CPU) to a model on another machine over ggml's RPC
protocol. The model's machine passes --rpc HOST:PORT (dgemma-cli, dgemma-server) or
Model(rpc_servers=[...]); its GPU layers are then split over its own GPU and every server given.

Anyone who can reach the port can run computations on the device and read what is sent: serve on a
trusted network only (the default host is 127.0.0.1)."""
from __future__ import annotations

import argparse
import logging
import sys

from . import _core
from ._defaults import MAX_THREADS

log = logging.getLogger("dgemma-rpc-server")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dgemma-rpc-server", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 "
                    "exposes the device to the whole network)")
    ap.add_argument("-p", "--port", type=int, default=50052, help="TCP port (default: 50052)")
    ap.add_argument("-d", "--device", default="", help="the device to serve, by ggml name (CUDA0, CPU, ...; "
                    "default: the first GPU, else the CPU)")
    ap.add_argument("-t", "--threads", type=int, default=0, metavar="N", help="CPU threads when serving the CPU "
                    "(default: all)")
    ap.add_argument("-c", "--cache", default="", metavar="DIR", help="keep the tensors clients send in DIR, so a "
                    "reconnecting client need not send them again")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.port <= 65535:
        print(f"error: invalid option: --port {args.port}: must be in 1..65535", file=sys.stderr)
        return 1
    if not 0 <= args.threads <= MAX_THREADS:
        print(f"error: invalid option: --threads {args.threads}: must be in 0..{MAX_THREADS}", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach port {args.port} can use this device and "
              "read what is sent; use a trusted network only", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        _core.rpc_serve(f"{host}:{args.port}", args.device, args.threads, args.cache)
    except _core.EngineError as e:
        print(f"error: cannot serve: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    # ggml's server returns only when it cannot listen or accept (a port in use, a signal)
    print(f"error: cannot serve: the RPC server stopped (is port {args.port} in use?)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
