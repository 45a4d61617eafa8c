#include "dgemma-rope.h"

#include <cmath>

namespace dgemma {

rope_table::rope_table(int32_t n, float base, const float * freq_factors) : n_dims(n) {
    inv_freq.resize((size_t) n / 2);
    for (int32_t j = 0; j < n / 2; j++) {
        // reference: 1.0 / (base ** (f32(2j) / dim)) in f32; the power is rounded once from double
        const float e = (float) (2 * j) / (float) n;
        float f = 1.0f / (float) std::pow((double) base, (double) e);
        if (freq_factors) f /= freq_factors[j];
        inv_freq[(size_t) j] = f;
    }
}

void rope_table::tables(int32_t P, int32_t n, int32_t head_dim, std::vector<float> & cos,
                        std::vector<float> & sin) const {
    const size_t half = inv_freq.size(), hd = (size_t) head_dim;
    cos.assign(hd * (size_t) n, 1.0f);
    sin.assign(hd * (size_t) n, 0.0f);
    for (int32_t i = 0; i < n; i++) {
        const float p = (float) (P + i);
        float * c = &cos[(size_t) i * hd];
        float * s = &sin[(size_t) i * hd];
        for (size_t j = 0; j < half; j++) {
            const float a = p * inv_freq[j];   // one f32 product, as the reference
            c[j] = c[j + half] = std::cos(a);
            s[j + half] = std::sin(a);
            s[j] = -s[j + half];
        }
    }
}

} // namespace dgemma
