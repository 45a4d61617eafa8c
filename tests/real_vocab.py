"""llama.cpp's real Gemma-4 vocabulary and reference tokenizations, taken from the pinned source
distribution the build already downloaded (no network at test time)."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

MEMBERS = ("ggml-vocab-gemma-4.gguf", "ggml-vocab-gemma-4.gguf.inp", "ggml-vocab-gemma-4.gguf.out")
TEMPLATE = "templates/google-gemma-4-31B-it.jinja"
PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"


def archive() -> Path | None:
    bases = [os.environ.get("DGEMMA_CACHE_DIR"),
             os.environ.get("XDG_CACHE_HOME") and os.path.join(os.environ["XDG_CACHE_HOME"], "pygguf_diffusion"),
             os.path.expanduser("~/.cache/pygguf_diffusion")]
    for b in bases:
        if b and (Path(b) / "downloads" / "llama_cpp_python-0.3.36.tar.gz").exists():
            return Path(b) / "downloads" / "llama_cpp_python-0.3.36.tar.gz"
    return None


def extract(dst: Path) -> Path | None:
    """The vocabulary files under dst (extracted once), or None when the archive is not cached."""
    src = archive()
    if src is None:
        return None
    if all((dst / m).exists() for m in MEMBERS) and (dst / "gemma4.jinja").exists():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    wanted = {PREFIX + m: m for m in MEMBERS} | {PREFIX + TEMPLATE: "gemma4.jinja"}
    with tarfile.open(src, "r:gz") as tar:
        for member in tar:
            if member.name in wanted:
                f = tar.extractfile(member)
                assert f is not None
                (dst / wanted[member.name]).write_bytes(f.read())
    return dst
