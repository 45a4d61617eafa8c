// Compiled with -ffast-math -fopenmp-simd (see CMakeLists.txt) so that the tanhf loop below maps onto
// glibc's vectorised libmvec (<= 4 ulp). Keep this file free of anything that relies on IEEE corner cases.
#include "dgemma-cpu-ops.h"

#include <cmath>
#include <cstring>
#include <vector>

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

void reduce_rows(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * lp = dst->src[0];
    const ggml_tensor * u = dst->src[1];
    const int64_t V = lp->ne[0], C = lp->ne[1];
    const int64_t per = (C + nth - 1) / nth;
    const int64_t r0 = per * ith, r1 = r0 + per < C ? r0 + per : C;
    std::vector<float> e((size_t) V);
    for (int64_t r = r0; r < r1; r++) {
        const float * x = (const float *) ((const char *) lp->data + r * lp->nb[1]);
        float mx = x[0];
        int64_t am = 0;
        for (int64_t i = 1; i < V; i++) {
            if (x[i] > mx) { mx = x[i]; am = i; }
        }
#pragma omp simd
        for (int64_t i = 0; i < V; i++) e[(size_t) i] = expf(x[i] - mx);
        double sum = 0.0, sum_ex = 0.0;
        for (int64_t i = 0; i < V; i++) {
            sum += e[(size_t) i];
            sum_ex += (double) e[(size_t) i] * x[i];
        }
        const double lse = mx + std::log(sum);
        const double entropy = lse - sum_ex / sum;
        const double target = (double) *(const float *) ((const char *) u->data + r * u->nb[1]) * sum;
        double cdf = 0.0;
        int64_t below = 0;
        while (below < V && (cdf += e[(size_t) below]) < target) below++;
        float * out = (float *) ((char *) dst->data + r * dst->nb[1]);
        out[0] = (float) am;
        out[1] = (float) entropy;
        out[2] = (float) (below < V ? below : V - 1);
    }
}

} // namespace

ggml_tensor * row_reductions_cpu(ggml_context * ctx, ggml_tensor * lp, ggml_tensor * uniforms) {
    ggml_tensor * args[2] = {lp, uniforms};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, 3, lp->ne[1], 1, 1, args, 2, reduce_rows, GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * softcap_cpu_inplace(ggml_context * ctx, ggml_tensor * x, const float * cap) {
    return ggml_map_custom1_inplace(ctx, x, softcap_rows, GGML_N_TASKS_MAX, const_cast<float *>(cap));
}

} // namespace dgemma
