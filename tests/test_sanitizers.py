"""The engine under AddressSanitizer + UndefinedBehaviorSanitizer (tools/sanitize.sh): the engine-facing
tests run against a sanitized build of _core and ggml, and any report fails. The build takes about 4
minutes on 2 cores the first time (cached in build/asan afterwards)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _have_runtime() -> bool:
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        return False
    out = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return os.path.isabs(out) and os.path.exists(out)


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix" or not _have_runtime(), reason="needs gcc's ASan and UBSan runtimes")
def test_the_engine_facing_tests_run_clean_under_asan_and_ubsan():
    r = subprocess.run(["bash", str(ROOT / "tools" / "sanitize.sh")], cwd=ROOT, capture_output=True, text=True,
                       timeout=3600)
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, tail
    assert "sanitized _core:" in r.stdout and "sanitizer reports:" not in r.stdout, tail
    assert " passed" in r.stdout and " failed" not in r.stdout, tail
