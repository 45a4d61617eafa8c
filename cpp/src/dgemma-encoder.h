// Encoder: causal prefill of a chunk of tokens (prompt or committed canvas) into the KV store.
#pragma once

#include "dgemma-graph.h"
#include "dgemma-kv.h"

namespace dgemma {

struct encoder_graph {
    ggml_cgraph * gf = nullptr;
    ggml_tensor * tokens = nullptr;     // I32 [T]
    position_inputs pos;                // store rows written (full layers; the ring) and RoPE tables
    ggml_tensor * mask_full = nullptr;  // F16 [P+T, T] causal
    ggml_tensor * mask_swa = nullptr;   // F16 [R, T]   causal window over the ring
};

// Builds the graph for T tokens at positions P..P+T-1 (P = kv.n_past()). Inputs are filled by
// fill_encoder_inputs once the graph is allocated.
// n_past: as for build_decoder.
encoder_graph build_encoder(const graph_builder & g, const kv_store & kv, int32_t T, int graph_size,
                            int32_t n_past = -1);
void fill_encoder_inputs(const encoder_graph & eg, const kv_store & kv, const int32_t * tokens, int32_t T,
                         int32_t sliding_window);

} // namespace dgemma
