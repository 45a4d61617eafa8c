// Compiled with -ffast-math -fopenmp-simd (see CMakeLists.txt) so that the tanhf loop below maps onto
// glibc's vectorised libmvec (<= 4 ulp). Keep this file free of anything that relies on IEEE corner cases.
#include "dgemma-cpu-ops.h"

#include <cmath>
#include <cstring>

namespace dgemma {

namespace {

void softcap_rows(ggml_tensor * dst, const ggml_tensor * a, int ith, int nth, void * userdata) {
    const float cap = *(const float *) userdata;
    const float inv = 1.0f / cap;
    const int64_t n0 = a->ne[0];
    const int64_t nr = ggml_nrows(a);
    const int64_t per = (nr + nth - 1) / nth;
    const int64_t r0 = per * ith, r1 = r0 + per < nr ? r0 + per : nr;
    for (int64_t r = r0; r < r1; r++) {
        const float * x = (const float *) ((const char *) a->data + r * a->nb[1]);
        float * y = (float *) ((char *) dst->data + r * dst->nb[1]);
#pragma omp simd
        for (int64_t i = 0; i < n0; i++) y[i] = cap * tanhf(x[i] * inv);
    }
}

} // namespace

ggml_tensor * softcap_cpu_inplace(ggml_context * ctx, ggml_tensor * x, const float * cap) {
    return ggml_map_custom1_inplace(ctx, x, softcap_rows, GGML_N_TASKS_MAX, const_cast<float *>(cap));
}

} // namespace dgemma
