// Graph builders shared by the encoder and the decoder (SPEC.md §2-§3). They know the model's math and
// ggml, nothing about the KV store's policy or the sampler. Intermediates are named "<what>-<layer>" so a
// debug dump can be compared with the reference layer by layer.
#pragma once

#include "dgemma-model.h"

#include <vector>

namespace dgemma {

// Per-chunk position inputs: the store rows a chunk writes and its RoPE tables, per layer kind
// (index 0: sliding layers, 1: full layers).
struct position_inputs {
    ggml_tensor * slots_full = nullptr;        // I64 [n]
    ggml_tensor * slots_swa = nullptr;         // I64 [n]
    ggml_tensor * cos[2] = {}, * sin[2] = {};  // F32 [head_dim, 1, n] (dgemma-rope.h)
};

// Host values for position_inputs: positions P..P+n-1 written to slot = position on full layers and, on
// sliding layers, position % ring (the encoder) or swa_base + i (the decoder's canvas slots).
struct position_values {
    std::vector<int64_t> slots_full, slots_swa;
    std::vector<float> cos[2], sin[2];
    position_values(const model & m, int32_t P, int32_t n, int32_t ring, int32_t swa_base = -1);
};
// Returns the bytes uploaded.
size_t set_position_inputs(const position_inputs & pi, const position_values & pv);

struct graph_builder {
    ggml_context * ctx;
    const model & m;
    // the graph being built, where a builder expands a part early so that its nodes come out in the order a
    // backend fuses (null: no such hints)
    ggml_cgraph * gf = nullptr;

    const hparams & hp() const { return m.info.hp; }
    ggml_tensor * name(ggml_tensor * t, const char * what, int il = -1) const;

    // rms(x; w) over dim 0 (w null: the unweighted norm)
    ggml_tensor * rms(ggml_tensor * x, ggml_tensor * w) const;
    // gelu_pytorch_tanh of x, the output of a product with weight w: composed from exact ops (ggml_gelu on
    // the CPU reads an f16 table, ~1e-2 logit error), or one vectorised CPU kernel where w lives on the CPU
    ggml_tensor * gelu_tanh(ggml_tensor * x, const ggml_tensor * w) const;
    // gelu_tanh(gate) * up. Where w (the gate's weight) lives on CUDA/ROCm/MUSA or Metal, whose GELU is the
    // exact tanh formula in f32, ggml's GEGLU: one kernel instead of nine
    ggml_tensor * geglu(ggml_tensor * gate, ggml_tensor * up, const ggml_tensor * w) const;
    // the same for a fused projection gu = [gate | up] along dim 0 (n each)
    ggml_tensor * geglu_fused(ggml_tensor * gu, int64_t n, const ggml_tensor * w) const;
    // (gelu(x Wg) * (x Wu)) Wd
    ggml_tensor * mlp(ggml_tensor * x, ggml_tensor * wg, ggml_tensor * wu, ggml_tensor * wd) const;

    // Inputs for n positions (uploaded with set_position_inputs once allocated).
    position_inputs new_position_inputs(int64_t n) const;

    // NEOX rotation of the first n_dims of each head of x [hd, nH, T] by the tables [hd, 1, T].
    ggml_tensor * rope(ggml_tensor * x, ggml_tensor * cos, ggml_tensor * sin, int64_t n_dims) const;

    struct qkv { ggml_tensor * q, * k, * v; };   // q [hd, nH, T]; k, v [hd, nKV, T]
    // Projections, q/k norms, RoPE on q and k, the unweighted norm on v (full layers: v = raw k projection).
    qkv attn_qkv(ggml_tensor * h, int il, const position_inputs & pi) const;

    // softmax(q K^T + mask) V with scale 1.0, K/V given as [hd, n_kv, nKV] views; returns o_proj output [H, T].
    ggml_tensor * attn_out(ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * mask, int il) const;

    // The feed-forward block: dense MLP and MoE in parallel from the residual x; returns the new residual.
    ggml_tensor * ffn_block(ggml_tensor * x, int il) const;
    ggml_tensor * moe(ggml_tensor * x, int il) const;

    // x + rms(attn; post_attention_norm), then the FFN block, then the side's layer scalar.
    ggml_tensor * layer_tail(ggml_tensor * x, ggml_tensor * attn, int il, ggml_tensor * layer_scale) const;

    // A K or V store [hd*nKV, cap] seen as [hd, n, nKV] over slots s0 .. s0+n-1.
    ggml_tensor * kv_view(ggml_tensor * store, int il, int64_t s0, int64_t n) const;
};

// Uploads an input if the scheduler allocated it (inputs no output depends on are never allocated);
// returns the bytes uploaded.
size_t set_input(ggml_tensor * t, const void * data, size_t nbytes);


} // namespace dgemma
