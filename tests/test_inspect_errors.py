"""inspect_gguf raises its documented types for every failure; dgemma-inspect turns each into `error: …`."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pygguf_diffusion import EngineError, inspect_gguf

INSPECT = [sys.executable, "-c", "import sys; from pygguf_diffusion.gguf_info import main; sys.exit(main())"]


def cases(tmp_path, gguf) -> list[tuple[str, type[Exception], str]]:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "text.gguf").write_text("hello")
    os.mkfifo(tmp_path / "fifo.gguf")  # opening it for reading would block until a writer comes
    return [
        (str(tmp_path / "missing.gguf"), FileNotFoundError, "no such file"),
        (str(tmp_path / "dangling"), FileNotFoundError, "no such file"),
        ("", FileNotFoundError, "no such file"),
        (str(tmp_path), EngineError, "is a directory"),
        (str(tmp_path / "loop"), EngineError, "cannot open"),
        (f"{gguf}/inside", EngineError, "cannot open: Not a directory"),
        (str(tmp_path / "text.gguf"), EngineError, "not a GGUF file"),
        (str(tmp_path / "fifo.gguf"), EngineError, "not a regular file"),
    ]


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_every_failure_has_the_documented_type(converted, tmp_path):
    for path, kind, text in cases(tmp_path, converted("spec9", "f32")):
        with pytest.raises(kind, match=text):
            inspect_gguf(path)
    with pytest.raises(FileNotFoundError):
        inspect_gguf("a\0b")  # no file name can hold a NUL


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_dgemma_inspect_prints_an_error_never_a_traceback(converted, tmp_path):
    for path, _, text in cases(tmp_path, converted("spec9", "f32")):
        r = subprocess.run([*INSPECT, path], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr.startswith("error: cannot load model:"), (path, r.stderr)
        assert text in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(os.name != "posix", reason="SIGPIPE semantics")
def test_dgemma_inspect_into_a_closed_pipe_is_quiet(converted):
    p = subprocess.Popen([*INSPECT, str(converted("spec9", "f32")), "--tensors"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert p.returncode == 1 and err == ""
