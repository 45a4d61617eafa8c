#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the engine: builds _core (our code and ggml) with
# -fsanitize=address,undefined into build/asan, then runs the engine-facing tests against it with the
# sanitizer runtime preloaded into Python (which is not instrumented). Any report fails the run
# (halt_on_error; tools/ubsan.supp lists the benign reports in ggml's own code). Leak checking is off:
# CPython itself does not free everything at exit. The GGUF fuzz test is not in the list: its workers cap
# their address space, which ASan's shadow memory reservation cannot live under.
#
#   bash tools/sanitize.sh [pytest args...]      (default: the engine-facing test files below)
#
# About 4 minutes to build on 2 cores (cached in build/asan afterwards); the tests run 2-4x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/asan
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer"
if [ ! -f "$B/build.ninja" ]; then
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDGEMMA_BUILD_PYTHON=ON -DGGML_OPENMP=OFF \
    -DCMAKE_C_FLAGS="$SAN" -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null
fi
ninja -C "$B" _core
SITE=$B/site/pygguf_diffusion
rm -rf "$B/site" && mkdir -p "$SITE"
# the package's Python files with the sanitized extension beside them
cp -r src/pygguf_diffusion/. "$SITE/"
rm -f "$SITE"/_core*.so
cp "$B"/_core*.so "$SITE/"
ASAN_LIB=$(${CC:-gcc} -print-file-name=libasan.so)
UBSAN_LIB=$(${CC:-gcc} -print-file-name=libubsan.so)
TESTS=(tests/test_engine_api.py tests/test_loader.py tests/test_inspect_errors.py tests/test_parity.py
       tests/test_long_context.py tests/test_backend_rules.py tests/test_kv_types.py tests/test_bench.py
       tests/test_quantize.py tests/test_published_layouts.py tests/test_sampler.py tests/test_threads.py
       tests/test_generate.py tests/test_imatrix.py tests/test_engine_thread.py tests/test_canvas_editing.py
       tests/test_rpc.py tests/test_self_conditioning_state.py)
[ $# -gt 0 ] && TESTS=("$@")
export PYTHONPATH=$PWD/$B/site
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
# reports go to files: pytest captures the test process's stderr, and an aborting process takes that with it
R=$PWD/$B/reports
rm -rf "$R" && mkdir -p "$R"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:log_path=$R/asan
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$R/ubsan:suppressions=$PWD/tools/ubsan.supp
python3 -c "import pygguf_diffusion._core as c, sys; assert 'asan' in c.__file__, c.__file__; print('sanitized _core:', c.__file__)"
rc=0
# the q2_k accuracy test scores 6000 generations: engine paths the other tests already cover, at ASan's speed
python3 -m pytest -q -p no:cacheprovider -o addopts="--strict-markers" "${TESTS[@]}" \
  --deselect tests/test_imatrix.py::test_the_matrix_raises_q2_k_task_accuracy || rc=$?
if ls "$R"/* >/dev/null 2>&1; then
  echo "sanitizer reports:"; cat "$R"/*; exit 1
fi
exit $rc
