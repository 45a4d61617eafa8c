"""Open a DiffusionGemma GGUF with the engine, check it against the schema and describe it.

    dgemma-inspect model.gguf [--tensors] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _core, _logging


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str
    shape: tuple[int, ...]  # ggml order: fastest dimension first
    offset: int
    nbytes: int


@dataclass(frozen=True)
class LayerInfo:
    sliding: bool
    n_head_kv: int
    head_dim: int
    has_v: bool
    fused_gate_up: bool


@dataclass(frozen=True)
class GGUFInfo:
    """What the engine read from a GGUF after checking it (no tensor data is loaded)."""

    path: str
    file_size: int
    gguf_version: int
    architecture: str
    name: str
    file_type: int
    hparams: dict[str, Any]
    diffusion: dict[str, Any]
    tokenizer: dict[str, Any]
    layers: list[LayerInfo]
    tensors: list[TensorInfo]
    defaulted_keys: list[str] = field(default_factory=list)

    @property
    def tensor_types(self) -> dict[str, int]:
        """Tensor count per ggml type."""
        return dict(Counter(t.type for t in self.tensors))

    @property
    def layer_layout(self) -> str:
        """One letter per layer: S sliding, F full attention."""
        return "".join("S" if layer.sliding else "F" for layer in self.layers)

    def summary(self) -> str:
        hp = self.hparams
        types = ", ".join(f"{k} {v}" for k, v in sorted(self.tensor_types.items()))
        lines = [
            f"{self.path}: {self.architecture} (GGUF v{self.gguf_version}, {self.file_size / 2**20:.1f} MiB)",
            f"  layers     {hp['n_layer']}  [{self.layer_layout}]",
            f"  hidden     {hp['n_embd']}  heads {hp['n_head']}  head_dim swa/full {hp['head_dim_swa']}/"
            f"{hp['head_dim_full']}  kv heads {[layer.n_head_kv for layer in self.layers]}",
            f"  ffn        dense {hp['n_ff']}  experts {hp['n_expert']} top-{hp['n_expert_used']} "
            f"width {hp['n_ff_expert']}",
            f"  vocab      {hp['n_vocab']}  tokenizer {self.tokenizer['model']}  "
            f"eog {self.tokenizer['eog_ids']}",
            f"  canvas     {self.diffusion['canvas_length']}  steps {self.diffusion['max_denoising_steps']}  "
            f"t {self.diffusion['t_max']:.4g}->{self.diffusion['t_min']:.4g}  "
            f"entropy_bound {self.diffusion['entropy_bound']:.4g}",
            f"  tensors    {len(self.tensors)} ({types})",
        ]
        if self.defaulted_keys:
            lines.append(f"  defaulted  {', '.join(self.defaulted_keys)}")
        return "\n".join(lines)


def inspect_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Check a GGUF against the DiffusionGemma schema and describe it.

    Raises FileNotFoundError when nothing exists at `path` (as `Model` does), and EngineError, naming the
    file and the problem, for everything else: a path that cannot be opened (a directory, no permission,
    a symlink loop), a file that is not a GGUF, is truncated, or does not match the DiffusionGemma schema.
    """
    path = os.fspath(path)
    try:
        os.stat(path)
    except (FileNotFoundError, ValueError):  # ValueError: an embedded NUL, which no file name can hold
        raise FileNotFoundError(f"{os.fsdecode(path)}: no such file; pass the path of a .gguf file") from None
    except OSError as e:
        raise _core.EngineError(f"{os.fsdecode(path)}: cannot open: {e.strerror}") from None
    _logging.install()
    d = _core.inspect_gguf(path)
    return GGUFInfo(
        path=d["path"],
        file_size=d["file_size"],
        gguf_version=d["gguf_version"],
        architecture=d["architecture"],
        name=d["name"],
        file_type=d["file_type"],
        hparams=dict(d["hparams"]),
        diffusion=dict(d["diffusion"]),
        tokenizer=dict(d["tokenizer"]),
        layers=[LayerInfo(**layer) for layer in d["layers"]],
        tensors=[TensorInfo(**t) for t in d["tensors"]],
        defaulted_keys=list(d["defaulted_keys"]),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dgemma-inspect", description=__doc__.splitlines()[0])
    ap.add_argument("gguf", help="path of a DiffusionGemma .gguf file")
    ap.add_argument("--tensors", action="store_true", help="list every tensor")
    ap.add_argument("--json", action="store_true", help="print the description as JSON")
    args = ap.parse_args(argv)
    try:
        info = inspect_gguf(args.gguf)
    except (FileNotFoundError, _core.EngineError) as e:
        print(f"error: cannot load model: {e}", file=sys.stderr)
        return 1
    try:
        _print(info, args)
    except BrokenPipeError:  # | head: stop quietly (Python's documented recipe, "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _print(info: GGUFInfo, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(asdict(info), indent=2))
        return
    print(info.summary())
    if args.tensors:
        for t in info.tensors:
            print(f"  {t.name:40s} {t.type:6s} {list(t.shape)!s:24s} {t.nbytes}")
    sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush


if __name__ == "__main__":
    sys.exit(main())
