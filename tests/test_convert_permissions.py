"""The converter's output has the permissions of an ordinary new file (0666 & ~umask), not mkstemp's 0600."""
from __future__ import annotations

import os
import stat

import pytest

from pygguf_diffusion.convert import convert


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_output_mode_follows_the_umask(checkpoint, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out = convert(checkpoint("spec9"), tmp_path / "m.gguf", "f32")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary file left behind
