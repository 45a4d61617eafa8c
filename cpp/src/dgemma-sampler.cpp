#include "dgemma-sampler.h"

#include <cmath>
#include <string>

#include <algorithm>
#include <numeric>

namespace dgemma {

draw_params check_draw_params(const draw_params & d, int32_t n_vocab, bool restrictions_available) {
    auto bad = [](const std::string & what) { throw error("invalid generation setting: " + what); };
    if (!(d.temperature >= 0.0f) || !std::isfinite(d.temperature)) {
        bad("temperature must be a finite number >= 0, got " + std::to_string(d.temperature));
    }
    if (d.top_k < 0) bad("top_k must be >= 0, got " + std::to_string(d.top_k));
    if (!(d.top_p > 0.0f && d.top_p <= 1.0f)) bad("top_p must be in (0, 1], got " + std::to_string(d.top_p));
    draw_params n = d;
    if (n.temperature < 1e-4f) n.temperature = 0.0f;
    if (n.top_k >= n_vocab) n.top_k = 0;
    if (!restrictions_available && (n.top_k > 0 || n.top_p < 1.0f)) {
        bad("top_k / top_p need the CPU sampling kernel, and this model's output layer runs on a GPU backend; "
            "use temperature alone there (or n_gpu_layers below the layer count)");
    }
    return n;
}

float schedule_temperature(double t_min, double t_max, int k, int n_steps) {
    const float frac = (float) k / (float) n_steps;
    return (float) t_min + (float) (t_max - t_min) * frac;
}

void accept_by_entropy(const float * entropy, int n, float bound, std::vector<uint8_t> & accept) {
    std::vector<int> order((size_t) n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return entropy[a] < entropy[b]; });
    accept.assign((size_t) n, 0);
    float cum = 0.0f;   // reference: torch.cumsum in f32, then cumsum - current <= bound
    for (int m = 0; m < n; m++) {
        const float e = entropy[order[m]];
        cum += e;
        accept[(size_t) order[m]] = (cum - e) <= bound ? 1 : 0;
    }
}

bool stop_criterion::update(const std::vector<int32_t> & argmax, float mean_entropy) {
    bool stable = true;
    if (threshold_ > 0) {
        if ((int) history_.size() < threshold_) stable = false;   // the initial history holds -1 everywhere
        for (const auto & h : history_) stable = stable && h == argmax;
        history_.push_back(argmax);
        if ((int) history_.size() > threshold_) history_.erase(history_.begin());
    }
    return stable && mean_entropy < confidence_;
}

namespace {
uint64_t splitmix64(uint64_t & x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
} // namespace

rng::rng(uint64_t seed) {
    for (auto & s : s_) s = splitmix64(seed);
}

uint64_t rng::next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

int32_t rng::below(int32_t n) {
    // Lemire's multiply-shift with rejection
    const uint64_t bound = (uint64_t) n;
    uint64_t x = next() >> 32;
    uint64_t m = x * bound;
    uint32_t l = (uint32_t) m;
    if (l < bound) {
        const uint32_t t = (uint32_t) (-(uint32_t) bound) % (uint32_t) bound;
        while (l < t) {
            x = next() >> 32;
            m = x * bound;
            l = (uint32_t) m;
        }
    }
    return (int32_t) (m >> 32);
}

float rng::uniform() { return (float) (next() >> 40) * (1.0f / 16777216.0f); }

} // namespace dgemma
