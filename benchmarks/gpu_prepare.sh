#!/usr/bin/env bash
# Run HERE (a machine with the package index) before benchmarks/gpu_check.sh on a GPU machine without one:
# puts into .gpu/ (git-ignored) what the GPU machine cannot fetch — the pinned ggml source the build
# already verified and cached (CPU, CUDA and RPC backends only: 9 MB), and the wheels its image lacks
# (transformers 5.24.0 for the reference tests, gguf). Carry `.gpu` with the run.
#
#   bash benchmarks/gpu_prepare.sh [--prebuilt BUILD_DIR]
#
# --prebuilt also carries a module already built with CUDA for the GPU machine's Python (3.12 there), which
# gpu_check.sh then uses instead of spending ~250 s of device time on the build. How to build it here (a
# CUDA 13 nvcc, sm_90, GGML_NATIVE=OFF, Python 3.12; cuBLAS and a libcuda stub to link): docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
prebuilt=""
[ "${1:-}" = "--prebuilt" ] && prebuilt=${2:?--prebuilt needs the build directory}
# the tree the build itself uses: the pinned source, verified and with our edits (cmake/PatchGGML.cmake)
ggml=$(cmake -P cmake/fetch_ggml.cmake 2>&1 | sed -n 's/^DGEMMA_GGML_DIR=//p')
[ -n "$ggml" ] || { echo "error: cannot fetch the ggml source: run cmake -P cmake/fetch_ggml.cmake here to see why" >&2; exit 1; }
grep -q "dgemma-patch: moe-ncols" "$ggml/src/ggml-cuda/mmq.cu" || {
  echo "error: $ggml lacks this project's ggml edits: delete it and run this again" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/ggml/src .gpu/whl
cp -r "$ggml"/CMakeLists.txt "$ggml"/cmake "$ggml"/include .gpu/ggml/
for f in "$ggml"/src/*; do
  case "$(basename "$f")" in
    ggml-*) [ -d "$f" ] && { case "$(basename "$f")" in ggml-cpu|ggml-cuda|ggml-rpc) ;; *) continue ;; esac; } ;;
  esac
  cp -r "$f" .gpu/ggml/src/
done
# ggml's CMake adds every backend directory it has an option for only when that option is ON: the ones left
# out above are never entered (GGML_VULKAN etc. stay OFF)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl transformers==5.24.0 gguf==0.19.0
if [ -n "$prebuilt" ]; then
  so=$(ls "$prebuilt"/_core.cpython-3*.so 2>/dev/null | head -1)
  [ -n "$so" ] || { echo "error: --prebuilt: no _core module in $prebuilt: build it first (see above)" >&2; exit 1; }
  # xz: the device tool carries 64 MiB in all, and the sm_90 module alone is 63 MB (40 MB compressed)
  mkdir -p .gpu/prebuilt && xz -T0 -9 -c "$so" >".gpu/prebuilt/$(basename "$so").xz"
  echo "$(basename "$so"), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- cpp CMakeLists.txt || echo '+changes'), $(date -u +%FT%TZ)" >.gpu/prebuilt/BUILT
fi
# the source travels compressed too (9 MB -> 0.8 MB); gpu_check.sh unpacks it only when it must build
tar -C .gpu -cJf .gpu/ggml.tar.xz ggml && rm -rf .gpu/ggml
du -sh .gpu
