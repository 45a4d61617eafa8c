"""The pinned ggml fetch (cmake/FetchGGML.cmake) verifies the archive's sha256 before using it."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cmake" / "fetch_ggml.cmake"
PIN = (ROOT / "cmake" / "ggml_pin.cmake").read_text()
SHA = re.search(r'DGEMMA_GGML_DIST_SHA256\s+"([0-9a-f]{64})"', PIN).group(1)
FILE = re.search(r'DGEMMA_GGML_DIST_FILE\s+"([^"]+)"', PIN).group(1)
CMAKE = shutil.which("cmake")

pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")


def fetch(tmp_path: Path, *defs: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DGEMMA_CACHE_DIR", "XDG_CACHE_HOME")}
    return subprocess.run([CMAKE, *defs, "-P", str(SCRIPT)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)


def fake_archive(path: Path) -> Path:
    """A well-formed tarball with the expected layout but the wrong content (so the wrong hash)."""
    src = path.parent / "fake-src" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "ggml"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text("message(FATAL_ERROR \"this tree must never be used\")\n")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(path.parent / "fake-src" / "llama_cpp_python-0.3.36", arcname="llama_cpp_python-0.3.36")
    return path


def test_wrong_hash_stops_the_build(tmp_path):
    archive = fake_archive(tmp_path / FILE)
    cache = tmp_path / "cache"
    r = fetch(tmp_path, f"-DDGEMMA_GGML_SDIST={archive}", f"-DDGEMMA_GGML_CACHE_DIR={cache}")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "ggml source archive failed verification" in out
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in out and SHA in out
    # nothing was extracted from the rejected archive
    assert not any(cache.glob("ggml-*/ggml/CMakeLists.txt")) if cache.exists() else True


def test_tampered_cached_download_is_not_trusted(tmp_path):
    """A corrupt archive in the download cache is discarded, never extracted: with the package index out of
    reach (no pip index), the fetch must fail rather than build from it."""
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    fake_archive(cache / "downloads" / FILE)
    env_python = tmp_path / "nopython"
    env_python.write_text("#!/bin/sh\nexit 3\n")
    env_python.chmod(0o755)
    r = fetch(tmp_path, f"-DDGEMMA_GGML_CACHE_DIR={cache}", f"-DPython_EXECUTABLE={env_python}")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "wrong hash" in out and "cannot download ggml" in out
    assert not (cache / "downloads" / FILE).exists()
    assert not any(cache.glob("ggml-*/ggml/CMakeLists.txt"))


def _genuine_archive() -> Path | None:
    for base in (os.environ.get("DGEMMA_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME") and
                 os.path.join(os.environ["XDG_CACHE_HOME"], "pygguf_diffusion"),
                 os.path.expanduser("~/.cache/pygguf_diffusion")):
        if base and (Path(base) / "downloads" / FILE).exists():
            return Path(base) / "downloads" / FILE
    return None


def test_genuine_archive_verifies_and_extracts_only_ggml(tmp_path):
    archive = _genuine_archive()
    if archive is None:
        pytest.skip("the build did not download the pinned archive (built from DGEMMA_GGML_SOURCE_DIR)")
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == SHA
    cache = tmp_path / "cache"
    r = fetch(tmp_path, f"-DDGEMMA_GGML_SDIST={archive}", f"-DDGEMMA_GGML_CACHE_DIR={cache}")
    assert r.returncode == 0, r.stderr
    tree = Path(re.search(r"DGEMMA_GGML_DIR=(.+)", r.stdout + r.stderr).group(1).strip())
    assert (tree / "include" / "ggml.h").exists() and (tree / "include" / "gguf.h").exists()
    assert (tree.parent / ".dgemma-verified").read_text().strip() == SHA
    # only the ggml subtree: no llama.cpp sources beside it
    assert sorted(p.name for p in tree.parent.iterdir()) == [".dgemma-verified", "ggml"]
    # our edit (cmake/PatchGGML.cmake) is in, once
    mmq = tree / "src" / "ggml-cuda" / "mmq.cu"
    assert mmq.read_text().count("dgemma-patch: moe-ncols") == 1
    # a second run uses the verified cache and does not edit again
    again = fetch(tmp_path, f"-DDGEMMA_GGML_CACHE_DIR={cache}")
    assert again.returncode == 0 and "using cached ggml source" in again.stdout + again.stderr
    assert mmq.read_text().count("dgemma-patch: moe-ncols") == 1


def _patch(tmp_path: Path, tree: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "patch.cmake"
    script.write_text(f'include("{ROOT / "cmake" / "PatchGGML.cmake"}")\ndgemma_patch_ggml("{tree}")\n')
    return subprocess.run([CMAKE, "-P", str(script)], capture_output=True, text=True, timeout=60)


MMQ_BLOCK = ("    int64_t ncols_opt = ne12;\n    if (GGML_CUDA_CC_IS_RDNA3(cc) || GGML_CUDA_CC_IS_RDNA4(cc)) {\n"
             "        ncols_opt = (ne12*n_expert_used + ne02 - 1) / ne02;\n    }\n")


def test_ggml_edit_applies_once_after_its_anchor_and_stops_without_it(tmp_path):
    mmq = tmp_path / "ggml" / "src" / "ggml-cuda" / "mmq.cu"
    mmq.parent.mkdir(parents=True)
    block = MMQ_BLOCK
    mmq.write_text("head\n" + block + "    tail();\n")
    for _ in range(2):
        r = _patch(tmp_path, mmq.parents[2])
        assert r.returncode == 0, r.stderr
        text = mmq.read_text()
        assert text.count("dgemma-patch: moe-ncols") == 1
    # inserted right after ggml's own choice, before the rest, which is kept whole
    assert text.startswith("head\n" + block + "    if (GGML_CUDA_CC_IS_NVIDIA(cc)) { // dgemma-patch")
    assert text.endswith("    }\n    tail();\n") and "DGEMMA_MMQ_MOE_NCOLS" in text
    # a pinned tree without the anchor (the pin moved): a clear error, the file untouched
    mmq.write_text("something else\n")
    r = _patch(tmp_path, mmq.parents[2])
    assert r.returncode != 0 and "lacks its anchor" in r.stderr and "PatchGGML.cmake" in r.stderr
    assert mmq.read_text() == "something else\n"


def configure(tmp_path: Path, *defs: str) -> subprocess.CompletedProcess:
    return subprocess.run([CMAKE, "-S", str(ROOT), "-B", str(tmp_path / "build"), "-DDGEMMA_BUILD_PYTHON=OFF",
                           *defs], capture_output=True, text=True, timeout=600)


def fetched_tree(tmp_path: Path) -> str:
    """The pinned ggml tree, extracted from the archive the build downloaded (skips when there is none)."""
    archive = _genuine_archive()
    if archive is None:
        pytest.skip("the build did not download the pinned archive")
    r = fetch(tmp_path, f"-DDGEMMA_GGML_SDIST={archive}", f"-DDGEMMA_GGML_CACHE_DIR={tmp_path / 'cache'}")
    assert r.returncode == 0, r.stderr
    return re.search(r"DGEMMA_GGML_DIR=(.+)", r.stdout + r.stderr).group(1).strip()


def test_source_dir_option_configures_against_that_tree(tmp_path):
    tree = fetched_tree(tmp_path)
    c = configure(tmp_path, f"-DDGEMMA_GGML_SOURCE_DIR={tree}")
    assert c.returncode == 0, c.stdout[-2000:] + c.stderr[-2000:]
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert f"DGEMMA_GGML_SOURCE_DIR:PATH={tree}" in cache
    assert "downloading" not in c.stdout  # no fetch when a tree is given
    # GGML_* options pass through: our defaults only where the user said nothing
    assert "GGML_LLAMAFILE:BOOL=ON" in cache


def test_user_ggml_options_win_over_our_defaults(tmp_path):
    tree = fetched_tree(tmp_path)
    c = configure(tmp_path, f"-DDGEMMA_GGML_SOURCE_DIR={tree}", "-DGGML_LLAMAFILE=OFF", "-DGGML_NATIVE=OFF")
    assert c.returncode == 0, c.stderr[-2000:]
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert "GGML_LLAMAFILE:BOOL=OFF" in cache and "GGML_NATIVE:BOOL=OFF" in cache


def test_bad_source_dir_is_a_clear_error(tmp_path):
    c = configure(tmp_path, f"-DDGEMMA_GGML_SOURCE_DIR={tmp_path / 'nowhere'}")
    assert c.returncode != 0
    assert "error: ggml source tree not found" in c.stderr


def test_a_verified_cached_tree_without_the_edit_gets_it_on_use(tmp_path):
    """A tree verified and stamped but not edited (an interrupted configure, say) is edited when used."""
    version = re.search(r'DGEMMA_GGML_DIST_VERSION\s+"([^"]+)"', PIN).group(1)
    edits = re.search(r'DGEMMA_GGML_EDITS_VERSION\s+"([^"]+)"',
                      (ROOT / "cmake" / "PatchGGML.cmake").read_text()).group(1)
    tree = tmp_path / "cache" / f"ggml-{version}-{SHA[:12]}-{edits}"
    mmq = tree / "ggml" / "src" / "ggml-cuda" / "mmq.cu"
    mmq.parent.mkdir(parents=True)
    (tree / "ggml" / "CMakeLists.txt").write_text("# stand-in\n")
    (tree / ".dgemma-verified").write_text(SHA + "\n")
    mmq.write_text(MMQ_BLOCK)
    r = fetch(tmp_path, f"-DDGEMMA_GGML_CACHE_DIR={tmp_path / 'cache'}")
    assert r.returncode == 0, r.stderr
    assert "using cached ggml source" in r.stdout + r.stderr
    assert mmq.read_text().count("dgemma-patch: moe-ncols") == 1
