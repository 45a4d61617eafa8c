// RoPE angles computed the way the reference computes them (SPEC §2), as host tables fed to the graph.
//
// ggml's rope op builds each angle as pos * theta_scale^i by repeated f32 multiplication; the error grows
// with the pair index and the position (logit NMSE 3e-6 at position 8k and 8e-6 at 32k on a tiny model
// with the real head dims). transformers computes inv_freq once and each angle as one f32 product
// f32(pos) * inv_freq[j]; the tables below do exactly that, so the rotation matches at any position.
#pragma once

#include <cstdint>
#include <vector>

namespace dgemma {

// NEOX pairing over the first n_dims of a head: pair j = (j, j + n_dims/2), j < n_dims/2; dims >= n_dims
// do not rotate. inv_freq[j] = 1 / base^(2j / n_dims), divided by freq_factors[j] when given (rope_freqs:
// 1 for rotating pairs, 1e30 for the pairs proportional RoPE leaves alone).
struct rope_table {
    int32_t n_dims = 0;
    std::vector<float> inv_freq;   // n_dims / 2

    rope_table() = default;
    rope_table(int32_t n_dims, float base, const float * freq_factors);

    // Whole-head tables for positions P .. P+n-1, laid out [n][head_dim], with a_j = f32(pos) * inv_freq[j]:
    //   cos: cos a_j on both halves of the rotating dims, 1 beyond n_dims;
    //   sin: -sin a_j on the first half, +sin a_j on the second, 0 beyond n_dims;
    // so that rope(x) = x * cos + swap_halves(x) * sin, the reference's x * cos + rotate_half(x) * sin.
    void tables(int32_t P, int32_t n, int32_t head_dim, std::vector<float> & cos, std::vector<float> & sin) const;
};

} // namespace dgemma
