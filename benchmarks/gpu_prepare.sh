#!/usr/bin/env bash
# Run HERE (a machine with the package index) before benchmarks/gpu_check.sh on a GPU machine without one:
# puts into .gpu/ (git-ignored) what the GPU machine cannot fetch — the pinned ggml source the build
# already verified and cached (CPU, CUDA and RPC backends only: 9 MB), and the wheels its image lacks
# (transformers 5.24.0 for the reference tests, gguf). Carry `.gpu` with the run.
#
#   bash benchmarks/gpu_prepare.sh [--prebuilt BUILD_DIR]
#
# --prebuilt also carries a module already built with CUDA for the GPU machine's Python (3.12 there), which
# gpu_check.sh then uses instead of spending ~250 s of device time on the build. Build it here with a
# CUDA 13 nvcc (the driver there is CUDA 13.0), for example:
#   cmake -S . -B build/gpu312 -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_GRAPHS=ON \
#     -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DDGEMMA_BUILD_PYTHON=ON \
#     -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=<a python3.12> -Dpybind11_DIR=$(python3 -m pybind11 --cmakedir)
#   ninja -C build/gpu312 _core
# (GGML_NATIVE=OFF: the module runs on another CPU. Linking needs cuBLAS and a libcuda.so, a stub will do:
# the driver's own is loaded there.)
set -euo pipefail
cd "$(dirname "$0")/.."
prebuilt=""
[ "${1:-}" = "--prebuilt" ] && prebuilt=${2:?--prebuilt needs the build directory}
ggml=$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/pygguf_diffusion/ggml-*/ggml 2>/dev/null | head -1)
[ -n "$ggml" ] || { echo "error: no cached ggml source: build the project once here (pip install .) first" >&2; exit 1; }
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
# the source travels compressed too (9 MB -> ~1.5 MB); gpu_check.sh unpacks it only when it must build
tar -C .gpu -cJf .gpu/ggml.tar.xz ggml && rm -rf .gpu/ggml
du -sh .gpu
