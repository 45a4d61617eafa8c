// Compiled with -ffast-math -fopenmp-simd (see CMakeLists.txt) so that the tanhf loop below maps onto
// glibc's vectorised libmvec (<= 4 ulp). Keep this file free of anything that relies on IEEE corner cases.
#include "dgemma-cpu-ops.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace dgemma {

namespace {

// Thread ith's contiguous share [r0, r1) of nr rows.
void thread_rows(int64_t nr, int ith, int nth, int64_t & r0, int64_t & r1) {
    const int64_t per = (nr + nth - 1) / nth;
    r0 = std::min(per * ith, nr);
    r1 = std::min(r0 + per, nr);
}

// Calls fn(x_row, y_row, row length) for this thread's rows of a (any strides) and dst.
template <typename F>
void map_rows(ggml_tensor * dst, const ggml_tensor * a, int ith, int nth, F fn) {
    const int64_t n1 = a->ne[1], n2 = a->ne[2];
    int64_t r0, r1;
    thread_rows(ggml_nrows(a), ith, nth, r0, r1);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t i1 = r % n1, i2 = (r / n1) % n2, i3 = r / (n1 * n2);
        fn((const float *) ((const char *) a->data + i1 * a->nb[1] + i2 * a->nb[2] + i3 * a->nb[3]),
           (float *) ((char *) dst->data + i1 * dst->nb[1] + i2 * dst->nb[2] + i3 * dst->nb[3]), a->ne[0]);
    }
}

void softcap_rows(ggml_tensor * dst, const ggml_tensor * a, int ith, int nth, void * userdata) {
    const float cap = *(const float *) userdata;
    const float inv = 1.0f / cap;
    map_rows(dst, a, ith, nth, [cap, inv](const float * x, float * y, int64_t n) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = cap * tanhf(x[i] * inv);
    });
}

void gelu_rows(ggml_tensor * dst, const ggml_tensor * a, int ith, int nth, void * /*userdata*/) {
    map_rows(dst, a, ith, nth, [](const float * x, float * y, int64_t n) {
        const float c = 0.7978845608028654f;   // sqrt(2 / pi)
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const float v = x[i];
            y[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
        }
    });
}

// The categorical draw restricted by the draw settings (see draw_params in dgemma.h): weights
// w_i = exp((x_i - max) / tau) (w = e when tau is 1), the top_k largest, then the smallest set of those
// whose mass reaches top_p of theirs; the inverse CDF walks the kept tokens in index order, so top_k = V
// and top_p = 1 draw exactly what the unrestricted path draws.
int64_t restricted_draw(const float * x, int64_t V, float mx, float tau, int64_t top_k, float top_p, double u,
                        const std::vector<float> & e, std::vector<float> & w, std::vector<int32_t> & idx) {
    const float * wp = e.data();
    if (tau != 1.0f) {
        const float inv = 1.0f / tau;
#pragma omp simd
        for (int64_t i = 0; i < V; i++) w[(size_t) i] = expf((x[i] - mx) * inv);
        wp = w.data();
    }
    const int64_t k = top_k > 0 && top_k < V ? top_k : V;
    for (int64_t i = 0; i < V; i++) idx[(size_t) i] = (int32_t) i;
    auto heavier = [wp](int32_t a, int32_t b) { return wp[a] > wp[b] || (wp[a] == wp[b] && a < b); };
    if (k < V) std::nth_element(idx.begin(), idx.begin() + k, idx.end(), heavier);
    int64_t kept = k;
    if (top_p < 1.0f) {
        double mass = 0.0;
        for (int64_t j = 0; j < k; j++) mass += wp[idx[(size_t) j]];
        const double need = (double) top_p * mass;
        // grow a sorted head of the candidates until it holds the nucleus (nucleus sizes are usually small)
        for (int64_t m = std::min<int64_t>(k, 64);; m = std::min<int64_t>(k, 2 * m)) {
            if (m < k) std::nth_element(idx.begin(), idx.begin() + m, idx.begin() + k, heavier);
            std::sort(idx.begin(), idx.begin() + m, heavier);
            double cum = 0.0;
            int64_t j = 0;
            while (j < m && cum < need) cum += wp[idx[(size_t) j++]];
            if (cum >= need || m == k) {
                kept = std::max<int64_t>(j, 1);
                break;
            }
        }
    }
    std::sort(idx.begin(), idx.begin() + kept);
    double total = 0.0;
    for (int64_t j = 0; j < kept; j++) total += wp[idx[(size_t) j]];
    const double target = u * total;
    double cdf = 0.0;
    int64_t j = 0;
    while (j < kept - 1 && (cdf += wp[idx[(size_t) j]]) < target) j++;
    return idx[(size_t) j];
}

// The first maximum: per-lane maxima (each lane keeps its first), then the lowest index among the lanes
// that hold the overall maximum. Vectorises where the scalar compare-and-branch loop does not.
void first_max(const float * x, int64_t V, float & mx, int64_t & am) {
    constexpr int L = 16;
    mx = x[0];
    am = 0;
    if (V < 2 * L) {
        for (int64_t i = 1; i < V; i++) {
            if (x[i] > mx) { mx = x[i]; am = i; }
        }
        return;
    }
    // no infinity constants: this file is compiled with -ffast-math
    float lm[L];
    int64_t li[L];
    for (int j = 0; j < L; j++) { lm[j] = x[j]; li[j] = j; }
    int64_t i = L;
    for (; i + L <= V; i += L) {
        for (int j = 0; j < L; j++) {
            const bool gt = x[i + j] > lm[j];
            lm[j] = gt ? x[i + j] : lm[j];
            li[j] = gt ? i + j : li[j];
        }
    }
    for (int j = 0; j < L; j++) {
        if (lm[j] > mx || (lm[j] == mx && li[j] < am)) { mx = lm[j]; am = li[j]; }
    }
    for (; i < V; i++) {
        if (x[i] > mx) { mx = x[i]; am = i; }
    }
}

// The count of leading entries whose running sum (double) stays below target, V - 1 at most. Blocks whose
// sum leaves the running total below target are skipped whole; the block that crosses is walked.
int64_t count_below(const float * e, int64_t V, double target) {
    constexpr int64_t B = 256;
    double cdf = 0.0;
    int64_t i = 0;
    for (; i + B <= V; i += B) {
        double bs = 0.0;
#pragma omp simd reduction(+ : bs)
        for (int64_t j = 0; j < B; j++) bs += e[i + j];
        if (cdf + bs >= target) break;
        cdf += bs;
    }
    while (i < V && (cdf += e[i]) < target) i++;
    return i < V ? i : V - 1;
}

void reduce_rows(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * logits = dst->src[0];
    const float inv_t = 1.0f / *(const float *) dst->src[1]->data;
    const ggml_tensor * u = dst->src[2];
    const float * draw = (const float *) dst->src[3]->data;   // temperature, top_k, top_p
    ggml_tensor * probs = dst->src[4];
    const float tau = draw[0], top_p = draw[2];
    const int64_t top_k = (int64_t) draw[1];
    const int64_t V = logits->ne[0], C = logits->ne[1];
    const bool restricted = tau != 1.0f || (top_k > 0 && top_k < V) || top_p < 1.0f;
    int64_t r0, r1;
    thread_rows(C, ith, nth, r0, r1);
    std::vector<float> e((size_t) V), lp, w;
    std::vector<int32_t> idx;
    if (inv_t != 1.0f) lp.resize((size_t) V);
    if (restricted) {
        w.resize((size_t) V);
        idx.resize((size_t) V);
    }
    for (int64_t r = r0; r < r1; r++) {
        const float * x = (const float *) ((const char *) logits->data + r * logits->nb[1]);
        if (inv_t != 1.0f) {
#pragma omp simd
            for (int64_t i = 0; i < V; i++) lp[(size_t) i] = x[i] * inv_t;
            x = lp.data();
        }
        float mx;
        int64_t am;
        first_max(x, V, mx, am);
#pragma omp simd
        for (int64_t i = 0; i < V; i++) e[(size_t) i] = expf(x[i] - mx);
        double sum = 0.0, sum_ex = 0.0;
        for (int64_t i = 0; i < V; i++) {
            sum += e[(size_t) i];
            sum_ex += (double) e[(size_t) i] * x[i];
        }
        const double lse = mx + std::log(sum);
        const double entropy = lse - sum_ex / sum;
        const double ur = (double) *(const float *) ((const char *) u->data + r * u->nb[1]);
        int64_t sample;
        if (tau <= 0.0f) {
            sample = am;   // greedy: the argmax is drawn
        } else if (restricted) {
            sample = restricted_draw(x, V, mx, tau, top_k, top_p, ur, e, w, idx);
        } else {
            sample = count_below(e.data(), V, ur * sum);
        }
        float * out = (float *) ((char *) dst->data + r * dst->nb[1]);
        out[0] = (float) am;
        out[1] = (float) entropy;
        out[2] = (float) sample;
        // softmax(lp) as ggml's soft_max scales it: by the float reciprocal of the double sum
        const float scale = (float) (1.0 / sum);
#pragma omp simd
        for (int64_t i = 0; i < V; i++) e[(size_t) i] *= scale;
        store_softmax_row(probs, r, e.data());
    }
}

} // namespace

ggml_tensor * row_reductions_cpu(ggml_context * ctx, ggml_tensor * logits, ggml_tensor * temperature,
                                 ggml_tensor * uniforms, ggml_tensor * draw, ggml_tensor * probs) {
    GGML_ASSERT(probs->ne[0] * probs->ne[2] == logits->ne[0] && probs->ne[1] == logits->ne[1]);
    ggml_tensor * args[5] = {logits, temperature, uniforms, draw, probs};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, 3, logits->ne[1], 1, 1, args, 5, reduce_rows, GGML_N_TASKS_MAX, nullptr);
}

void store_softmax_row(ggml_tensor * probs, int64_t r, const float * p) {
    const int64_t K = probs->ne[0];
    for (int64_t j = 0; j < probs->ne[2]; j++) {
        char * dst = (char *) probs->data + r * probs->nb[1] + j * probs->nb[2];
        const float * src = p + j * K;
        switch (probs->type) {
            case GGML_TYPE_F32:  std::memcpy(dst, src, sizeof(float) * K); break;
            case GGML_TYPE_F16:  ggml_cpu_fp32_to_fp16(src, (ggml_fp16_t *) dst, K); break;
            default:             ggml_cpu_fp32_to_bf16(src, (ggml_bf16_t *) dst, K); break;
        }
    }
}

bool cpu_fused_ops_disabled() {
    static const bool disabled = std::getenv("DGEMMA_GENERIC_REDUCTIONS") != nullptr;
    return disabled;
}

ggml_tensor * gelu_tanh_cpu(ggml_context * ctx, ggml_tensor * x) {
    return ggml_map_custom1(ctx, x, gelu_rows, GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * softcap_cpu_inplace(ggml_context * ctx, ggml_tensor * x, const float * cap) {
    return ggml_map_custom1_inplace(ctx, x, softcap_rows, GGML_N_TASKS_MAX, const_cast<float *>(cap));
}

} // namespace dgemma
