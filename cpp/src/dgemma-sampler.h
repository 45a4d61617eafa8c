// The entropy-bound sampler of the reference (SPEC.md §6) as plain functions over per-row numbers: no
// ggml, no model. The generation loop feeds it the decoder's per-row reductions.
#pragma once

#include "dgemma.h"

#include <cstdint>
#include <vector>

namespace dgemma {

// Throws dgemma::error ("invalid generation setting: ...") for a draw outside its domain or one this
// context cannot compute; returns it normalised: temperatures below 1e-4 become 0 (greedy: 1 / T would
// overflow the kernels' arithmetic), top_k >= n_vocab becomes 0 (no restriction).
draw_params check_draw_params(const draw_params & d, int32_t n_vocab, bool restrictions_available);

// reference: T = t_min + (t_max - t_min) * (k / N) evaluated in float32 with k counting DOWN from N to 1
// (cur_step is an int32 tensor: k / N is f32, the double (t_max - t_min) is rounded to f32, then f32 ops).
float schedule_temperature(double t_min, double t_max, int k, int n_steps);

// The lowest step temperature (k = 1) a schedule may reach: the logits are divided by it, and below this
// the tempered logits of a softcapped model approach float32's range (1e-38 makes them inf, then NaN).
constexpr double MIN_STEP_TEMPERATURE = 1e-4;

// Accept the lowest-entropy rows while (cumulative entropy - own entropy) <= bound, rows sorted ascending
// (the lowest-entropy row is always accepted). accept[i] = 1 for accepted rows.
void accept_by_entropy(const float * entropy, int n, float bound, std::vector<uint8_t> & accept);

// Stable-and-confident early stop: the argmax canvas equals each of the previous `threshold` argmax
// canvases (threshold 0: always stable) and the mean entropy is below `confidence`.
class stop_criterion {
public:
    stop_criterion(int threshold, float confidence) : threshold_(threshold), confidence_(confidence) {}
    void reset() { history_.clear(); }
    bool update(const std::vector<int32_t> & argmax, float mean_entropy);
private:
    int threshold_;
    float confidence_;
    std::vector<std::vector<int32_t>> history_;   // oldest first; starts as "all -1" (never equal)
};

// Deterministic, portable RNG (xoshiro256** seeded by splitmix64): the same seed gives the same draws on
// every platform and compiler.
class rng {
public:
    explicit rng(uint64_t seed);
    uint64_t next();
    int32_t below(int32_t n);   // uniform in [0, n), unbiased
    float uniform();            // uniform in [0, 1), 24-bit resolution
private:
    uint64_t s_[4];
};

} // namespace dgemma
