#!/usr/bin/env bash
# Run HERE (a machine with the package index) before benchmarks/gpu_check.sh on a GPU machine without one:
# puts into .gpu/ (git-ignored) what the GPU machine cannot fetch — the pinned ggml source the build
# already verified and cached (CPU and CUDA backends only: 9 MB), and the wheels its image lacks
# (transformers 5.24.0 for the reference tests, gguf). Carry `.gpu` with the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ggml=$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/pygguf_diffusion/ggml-*/ggml 2>/dev/null | head -1)
[ -n "$ggml" ] || { echo "error: no cached ggml source: build the project once here (pip install .) first" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/ggml/src .gpu/whl
cp -r "$ggml"/CMakeLists.txt "$ggml"/cmake "$ggml"/include .gpu/ggml/
for f in "$ggml"/src/*; do
  case "$(basename "$f")" in
    ggml-*) [ -d "$f" ] && { case "$(basename "$f")" in ggml-cpu|ggml-cuda) ;; *) continue ;; esac; } ;;
  esac
  cp -r "$f" .gpu/ggml/src/
done
# ggml's CMake adds every backend directory it has an option for only when that option is ON: the ones left
# out above are never entered (GGML_VULKAN etc. stay OFF)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl transformers==5.24.0 gguf==0.19.0
du -sh .gpu
