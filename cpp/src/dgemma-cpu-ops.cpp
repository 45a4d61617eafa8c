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

// A row is walked in blocks of this many entries: each pass over a block finds it in L1.
constexpr int64_t ROW_BLOCK = 2048;
// The sample's inverse CDF skips blocks of this many entries by their sums (a divisor of ROW_BLOCK).
constexpr int64_t CDF_BLOCK = 256;

// The count of leading entries whose running sum (double) stays below target, V - 1 at most. Blocks whose
// sum (bsum[k] for entries [k * CDF_BLOCK, (k + 1) * CDF_BLOCK)) leaves the running total below target are
// skipped whole; the block that crosses is walked.
int64_t count_below(const float * e, int64_t V, const std::vector<double> & bsum, double target) {
    double cdf = 0.0;
    int64_t i = 0;
    for (; i + CDF_BLOCK <= V; i += CDF_BLOCK) {
        const double bs = bsum[(size_t) (i / CDF_BLOCK)];
        if (cdf + bs >= target) break;
        cdf += bs;
    }
    while (i < V && (cdf += e[i]) < target) i++;
    return i < V ? i : V - 1;
}

// One canvas row, in three passes over its blocks:
//   1. the logits' softcap (written back in place when the caller keeps the logits, else into lp), the
//      processed row lp = capped logits / temperature and the first maximum;
//   2. e = exp(lp - max), the sums of e and e * lp (double), and per-CDF_BLOCK sums for the draw;
//   3. after the draw: softmax = e / sum, stored in the self-conditioning state's type.
// Pass 1 is the one that reads the row from memory; the later passes find it in L2.
struct row_reducer {
    int64_t V;
    float cap, inv_cap, inv_t;
    std::vector<float> e, lp, w;
    std::vector<int32_t> idx;
    std::vector<double> bsum;

    row_reducer(int64_t V, float cap, float inv_t, bool restricted)
        : V(V), cap(cap), inv_cap(cap > 0.0f ? 1.0f / cap : 0.0f), inv_t(inv_t), e((size_t) V),
          lp((size_t) V), bsum((size_t) (V / CDF_BLOCK)) {
        if (restricted) {
            w.resize((size_t) V);
            idx.resize((size_t) V);
        }
    }

    // passes 1 and 2 over `row` (capped in place when keep, else into lp); returns the processed row
    const float * scan(float * row, bool keep, float & mx, int64_t & am, double & sum, double & sum_ex) {
        float * capped = cap > 0.0f && !keep ? lp.data() : row;   // where the capped logits go
        const float * x = inv_t != 1.0f ? lp.data() : capped;
        float m = 0.0f;
        for (int64_t b = 0; b < V; b += ROW_BLOCK) {
            const int64_t n = std::min(ROW_BLOCK, V - b);
            const float * xb = row + b;
            float * cb = capped + b;
            if (cap > 0.0f) {
                const float c = cap, inv = inv_cap;
#pragma omp simd
                for (int64_t i = 0; i < n; i++) cb[i] = c * tanhf(xb[i] * inv);
            }
            if (inv_t != 1.0f) {
                float * lb = lp.data() + b;
                const float it = inv_t;
#pragma omp simd
                for (int64_t i = 0; i < n; i++) lb[i] = cb[i] * it;
            }
            const float * pb = x + b;
            float bm = b == 0 ? pb[0] : m;   // seeded from the processed row: no infinities under -ffast-math
#pragma omp simd reduction(max : bm)
            for (int64_t i = 0; i < n; i++) bm = pb[i] > bm ? pb[i] : bm;
            m = bm;
        }
        mx = m;
        // pass 2, which also finds the first CDF_BLOCK holding the maximum (counted, so it vectorises); the
        // argmax is then the first equal entry in that block: the lowest index on ties
        am = -1;
        sum = 0.0;
        sum_ex = 0.0;
        float * ep = e.data();
        for (int64_t b = 0; b < V; b += ROW_BLOCK) {
            const int64_t n = std::min(ROW_BLOCK, V - b);
            const float * xb = x + b;
            float * eb = ep + b;
#pragma omp simd
            for (int64_t i = 0; i < n; i++) eb[i] = expf(xb[i] - m);
            for (int64_t s = 0; s < n; s += CDF_BLOCK) {
                const int64_t k = std::min(CDF_BLOCK, n - s);
                double bs = 0.0, bx = 0.0;
                float hits = 0.0f;
#pragma omp simd reduction(+ : bs, bx, hits)
                for (int64_t i = s; i < s + k; i++) {
                    bs += eb[i];
                    bx += (double) eb[i] * xb[i];
                    hits += xb[i] == m ? 1.0f : 0.0f;
                }
                if (k == CDF_BLOCK) bsum[(size_t) ((b + s) / CDF_BLOCK)] = bs;
                sum += bs;
                sum_ex += bx;
                if (am < 0 && hits > 0.0f) {
                    int64_t i = s;
                    while (i < s + k - 1 && xb[i] != m) i++;
                    am = b + i;
                }
            }
        }
        if (am < 0) am = 0;   // only a row holding NaN finds no entry equal to its maximum
        return x;
    }

    // pass 3: softmax as ggml's soft_max scales it (by the float reciprocal of the double sum), stored
    void store(ggml_tensor * probs, int64_t r, double sum) {
        const float scale = (float) (1.0 / sum);
        float * ep = e.data();
        for (int64_t b = 0; b < V; b += ROW_BLOCK) {
            const int64_t n = std::min(ROW_BLOCK, V - b);
            float * eb = ep + b;
#pragma omp simd
            for (int64_t i = 0; i < n; i++) eb[i] *= scale;
            store_softmax_span(probs, r, b, eb, n);
        }
    }
};

void reduce_rows(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * logits = dst->src[0];
    const float inv_t = 1.0f / *(const float *) dst->src[1]->data;
    const ggml_tensor * u = dst->src[2];
    const float * draw = (const float *) dst->src[3]->data;   // temperature, top_k, top_p
    ggml_tensor * probs = dst->src[4];
    const float cap = userdata ? *(const float *) userdata : 0.0f;
    const bool keep = *(const float *) dst->src[5]->data != 0.0f;
    const float tau = draw[0], top_p = draw[2];
    const int64_t top_k = (int64_t) draw[1];
    const int64_t V = logits->ne[0], C = logits->ne[1];
    const bool restricted = tau != 1.0f || (top_k > 0 && top_k < V) || top_p < 1.0f;
    int64_t r0, r1;
    thread_rows(C, ith, nth, r0, r1);
    if (r0 >= r1) return;
    row_reducer rr(V, cap, inv_t, restricted);
    for (int64_t r = r0; r < r1; r++) {
        float * row = (float *) ((char *) logits->data + r * logits->nb[1]);
        float mx;
        int64_t am;
        double sum, sum_ex;
        const float * x = rr.scan(row, keep, mx, am, sum, sum_ex);
        const double lse = mx + std::log(sum);
        const double entropy = lse - sum_ex / sum;
        const double ur = (double) *(const float *) ((const char *) u->data + r * u->nb[1]);
        int64_t sample;
        if (tau <= 0.0f) {
            sample = am;   // greedy: the argmax is drawn
        } else if (restricted) {
            sample = restricted_draw(x, V, mx, tau, top_k, top_p, ur, rr.e, rr.w, rr.idx);
        } else {
            sample = count_below(rr.e.data(), V, rr.bsum, ur * sum);
        }
        float * out = (float *) ((char *) dst->data + r * dst->nb[1]);
        out[0] = (float) am;
        out[1] = (float) entropy;
        out[2] = (float) sample;
        rr.store(probs, r, sum);
    }
}

} // namespace

ggml_tensor * row_reductions_cpu(ggml_context * ctx, ggml_tensor * logits, const float * softcap,
                                 ggml_tensor * temperature, ggml_tensor * uniforms, ggml_tensor * draw,
                                 ggml_tensor * keep_logits, ggml_tensor * probs) {
    GGML_ASSERT(keep_logits && ggml_nelements(keep_logits) == 1);
    GGML_ASSERT(probs->ne[0] * probs->ne[2] == logits->ne[0] && probs->ne[1] == logits->ne[1]);
    GGML_ASSERT(ggml_is_contiguous_rows(logits));
    ggml_tensor * args[6] = {logits, temperature, uniforms, draw, probs, keep_logits};
    const bool capped = softcap && *softcap > 0.0f;
    return ggml_custom_4d(ctx, GGML_TYPE_F32, 3, logits->ne[1], 1, 1, args, 6, reduce_rows, GGML_N_TASKS_MAX,
                          capped ? const_cast<float *>(softcap) : nullptr);
}

void store_softmax_span(ggml_tensor * probs, int64_t r, int64_t i0, const float * p, int64_t n) {
    const int64_t K = probs->ne[0];
    const ggml_from_float_t convert = ggml_get_type_traits_cpu(probs->type)->from_float;   // f32, f16, bf16
    while (n > 0) {   // split where a span crosses from one slice of the layout into the next
        const int64_t j = i0 / K, off = i0 % K, k = std::min(n, K - off);
        char * dst = (char *) probs->data + r * probs->nb[1] + j * probs->nb[2];
        convert(p, dst + off * (int64_t) ggml_type_size(probs->type), k);
        i0 += k;
        p += k;
        n -= k;
    }
}

void store_softmax_row(ggml_tensor * probs, int64_t r, const float * p) {
    store_softmax_span(probs, r, 0, p, probs->ne[0] * probs->ne[2]);
}

bool cpu_fused_ops_disabled() {
    static const bool disabled = std::getenv("DGEMMA_GENERIC_REDUCTIONS") != nullptr;
    return disabled;
}

ggml_tensor * gelu_tanh_cpu(ggml_context * ctx, ggml_tensor * x) {
    return ggml_map_custom1(ctx, x, gelu_rows, GGML_N_TASKS_MAX, nullptr);
}

} // namespace dgemma
