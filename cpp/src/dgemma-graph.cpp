#include "dgemma-graph.h"
#include "dgemma-cpu-ops.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace dgemma {

size_t set_input(ggml_tensor * t, const void * data, size_t nbytes) {
    if (!t || !t->buffer) return 0;
    ggml_backend_tensor_set(t, data, 0, nbytes);
    return nbytes;
}

position_values::position_values(const model & m, int32_t P, int32_t n, int32_t ring, int32_t swa_base) {
    slots_full.resize(n);
    slots_swa.resize(n);
    for (int32_t i = 0; i < n; i++) {
        slots_full[i] = P + i;
        slots_swa[i] = swa_base >= 0 ? swa_base + i : (P + i) % ring;
    }
    const hparams & hp = m.info.hp;
    m.rope[0].tables(P, n, hp.head_dim_swa, cos[0], sin[0]);
    m.rope[1].tables(P, n, hp.head_dim_full, cos[1], sin[1]);
}

size_t set_position_inputs(const position_inputs & pi, const position_values & pv) {
    size_t bytes = 0;
    bytes += set_input(pi.slots_full, pv.slots_full.data(), sizeof(int64_t) * pv.slots_full.size());
    bytes += set_input(pi.slots_swa, pv.slots_swa.data(), sizeof(int64_t) * pv.slots_swa.size());
    for (int kind = 0; kind < 2; kind++) {
        bytes += set_input(pi.cos[kind], pv.cos[kind].data(), sizeof(float) * pv.cos[kind].size());
        bytes += set_input(pi.sin[kind], pv.sin[kind].data(), sizeof(float) * pv.sin[kind].size());
    }
    return bytes;
}

position_inputs graph_builder::new_position_inputs(int64_t n) const {
    position_inputs pi;
    pi.slots_full = name(ggml_new_tensor_1d(ctx, GGML_TYPE_I64, n), "slots_full");
    pi.slots_swa = name(ggml_new_tensor_1d(ctx, GGML_TYPE_I64, n), "slots_swa");
    ggml_set_input(pi.slots_full);
    ggml_set_input(pi.slots_swa);
    for (int kind = 0; kind < 2; kind++) {
        const int64_t hd = kind ? hp().head_dim_full : hp().head_dim_swa;
        pi.cos[kind] = name(ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hd, 1, n), kind ? "rope_cos_full" : "rope_cos_swa");
        pi.sin[kind] = name(ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hd, 1, n), kind ? "rope_sin_full" : "rope_sin_swa");
        ggml_set_input(pi.cos[kind]);
        ggml_set_input(pi.sin[kind]);
    }
    return pi;
}

ggml_tensor * graph_builder::name(ggml_tensor * t, const char * what, int il) const {
    if (il >= 0) ggml_format_name(t, "%s-%d", what, il);
    else ggml_set_name(t, what);
    return t;
}

ggml_tensor * graph_builder::rms(ggml_tensor * x, ggml_tensor * w) const {
    ggml_tensor * y = ggml_rms_norm(ctx, x, hp().rms_eps);
    return w ? ggml_mul(ctx, y, w) : y;
}

namespace {
// Whether the CPU backend computes the product of weight w: w in a host buffer (the mapping; a GPU backend's
// pinned host memory) or in one of the CPU's repacked layouts (dgemma-cpu-repack.cpp), whose buffers are not
// host buffers (their rows are not plain rows) but are the CPU device's own.
bool computed_on_cpu(const ggml_tensor * w) {
    if (!w->buffer) return false;
    if (ggml_backend_buffer_is_host(w->buffer)) return true;
    static ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    return cpu && ggml_backend_dev_supports_buft(cpu, ggml_backend_buffer_get_type(w->buffer));
}
} // namespace

ggml_tensor * graph_builder::gelu_tanh(ggml_tensor * x, const ggml_tensor * w) const {
    // where the product w feeds runs on the CPU, one vectorised pass (ggml's CPU tanh is scalar)
    if (computed_on_cpu(w) && !cpu_fused_ops_disabled()) return gelu_tanh_cpu(ctx, x);
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    const float c = std::sqrt(2.0f / (float) M_PI);
    ggml_tensor * x3 = ggml_mul(ctx, ggml_sqr(ctx, x), x);
    ggml_tensor * inner = ggml_add(ctx, x, ggml_scale(ctx, x3, 0.044715f));
    ggml_tensor * t = ggml_tanh(ctx, ggml_scale(ctx, inner, c));
    return ggml_mul(ctx, x, ggml_scale_bias(ctx, t, 0.5f, 0.5f));
}

namespace {
// Backends whose GELU is gelu_pytorch_tanh's formula in f32 (pinned ggml: ggml-cuda/unary.cuh
// ggml_cuda_op_gelu_single, which the ROCm and MUSA builds share; ggml-metal kernels/unary.metal). ggml's CPU
// GELU reads an f16 table (ggml-cpu/vec.h, GGML_GELU_FP16), and other backends are not checked: they keep
// the composed ops. DGEMMA_GENERIC_REDUCTIONS turns this off too (A/B on a GPU); DGEMMA_FORCE_GEGLU turns it
// on everywhere (tests: the CPU then runs the wiring, at its table's precision). Both are read once.
bool exact_geglu_on(const ggml_tensor * w) {
    static const bool forced = std::getenv("DGEMMA_FORCE_GEGLU") != nullptr;
    if (forced) return true;
    // host buffers of those backends ("CUDA_Host") are computed on by the CPU
    if (!w->buffer || computed_on_cpu(w) || cpu_fused_ops_disabled()) return false;
    const char * name = ggml_backend_buft_name(ggml_backend_buffer_get_type(w->buffer));
    for (const char * prefix : {"CUDA", "ROCm", "MUSA", "MTL"}) {
        if (std::strncmp(name, prefix, std::strlen(prefix)) == 0) return true;
    }
    return false;
}
} // namespace

ggml_tensor * graph_builder::geglu(ggml_tensor * gate, ggml_tensor * up, const ggml_tensor * w) const {
    if (exact_geglu_on(w)) return ggml_geglu_split(ctx, gate, up);
    return ggml_mul(ctx, gelu_tanh(gate, w), up);
}

ggml_tensor * graph_builder::geglu_fused(ggml_tensor * gu, int64_t n, const ggml_tensor * w) const {
    GGML_ASSERT(gu->ne[0] == 2 * n);
    if (exact_geglu_on(w)) return ggml_geglu(ctx, gu);   // gelu(first half) * second half
    auto half = [&](size_t off) {
        return ggml_cont(ctx, ggml_view_3d(ctx, gu, n, gu->ne[1], gu->ne[2], gu->nb[1], gu->nb[2], off));
    };
    return ggml_mul(ctx, gelu_tanh(half(0), w), half((size_t) n * gu->nb[0]));
}

ggml_tensor * graph_builder::mlp(ggml_tensor * x, ggml_tensor * wg, ggml_tensor * wu, ggml_tensor * wd) const {
    return ggml_mul_mat(ctx, wd, geglu(ggml_mul_mat(ctx, wg, x), ggml_mul_mat(ctx, wu, x), wg));
}

ggml_tensor * graph_builder::rope(ggml_tensor * x, ggml_tensor * cos, ggml_tensor * sin, int64_t n_dims) const {
    // x * cos + swap_halves(x) * sin, with the signs and the non-rotating dims in the tables (dgemma-rope.h):
    // the products and the sum round exactly as the reference's x * cos + rotate_half(x) * sin
    const int64_t hd = x->ne[0], half = n_dims / 2;
    const size_t es = ggml_element_size(x);
    auto part = [&](int64_t off, int64_t len) {
        return ggml_view_3d(ctx, x, len, x->ne[1], x->ne[2], x->nb[1], x->nb[2], (size_t) off * es);
    };
    ggml_tensor * swapped = ggml_concat(ctx, part(half, half), part(0, half), 0);
    if (n_dims < hd) swapped = ggml_concat(ctx, swapped, part(n_dims, hd - n_dims), 0);   // times sin = 0
    return ggml_add(ctx, ggml_mul(ctx, x, cos), ggml_mul(ctx, swapped, sin));
}

graph_builder::qkv graph_builder::attn_qkv(ggml_tensor * h, int il, const position_inputs & pi) const {
    const layer_weights & L = m.layers[il];
    const int64_t T = h->ne[1], hd = hp().head_dim(il), nH = hp().n_head, nKV = hp().n_head_kv(il);
    const bool swa = hp().is_swa(il);

    ggml_tensor * q = ggml_reshape_3d(ctx, ggml_mul_mat(ctx, L.wq, h), hd, nH, T);
    ggml_tensor * kr = ggml_reshape_3d(ctx, ggml_mul_mat(ctx, L.wk, h), hd, nKV, T);
    // full layers have no V projection: V is the raw K projection (before k_norm and RoPE)
    ggml_tensor * vr = swa ? ggml_reshape_3d(ctx, ggml_mul_mat(ctx, L.wv, h), hd, nKV, T) : kr;

    q = rms(q, L.q_norm);
    ggml_tensor * k = rms(kr, L.k_norm);
    ggml_tensor * v = rms(vr, nullptr);

    // NEOX pairs (j, j + hd/2). Full layers: proportional RoPE = rotation over the whole head with the
    // frequencies of the non-rotating pairs divided by 1e30 (rope_freqs); see dgemma-rope.h.
    const int kind = swa ? 0 : 1;
    q = rope(q, pi.cos[kind], pi.sin[kind], m.rope[kind].n_dims);
    k = rope(k, pi.cos[kind], pi.sin[kind], m.rope[kind].n_dims);
    return {name(q, "q", il), name(k, "k", il), name(v, "v", il)};
}

ggml_tensor * graph_builder::kv_view(ggml_tensor * store, int il, int64_t s0, int64_t n) const {
    const int64_t hd = hp().head_dim(il), nKV = hp().n_head_kv(il);
    return ggml_view_3d(ctx, store, hd, n, nKV, store->nb[1], ggml_row_size(store->type, hd),
                        (size_t) s0 * store->nb[1]);
}

ggml_tensor * graph_builder::attn_out(ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * mask,
                                      int il) const {
    const int64_t hd = q->ne[0], nH = q->ne[1], T = q->ne[2];
    ggml_tensor * qp = ggml_permute(ctx, q, 0, 2, 1, 3);   // [hd, T, nH]
    // reference: attention scale 1.0 (q_norm/k_norm take the place of 1/sqrt(hd)); no attention softcap
    ggml_tensor * o = ggml_flash_attn_ext(ctx, qp, k, v, mask, 1.0f, 0.0f, 0.0f);
    ggml_prec_set_acc(o, GGML_PREC_F32);
    o = ggml_reshape_2d(ctx, o, hd * nH, T);               // result comes back as [hd, nH, T]
    return name(ggml_mul_mat(ctx, m.layers[il].wo, o), "attn_out", il);
}

ggml_tensor * graph_builder::moe(ggml_tensor * x, int il) const {
    const layer_weights & L = m.layers[il];
    const int64_t H = hp().n_embd, T = x->ne[1], E = hp().n_expert, K = hp().n_expert_used, EI = hp().n_ff_expert;

    // router on the unweighted norm of the raw residual, times router.scale and H^-1/2
    ggml_tensor * z = ggml_scale(ctx, ggml_mul(ctx, rms(x, nullptr), L.router_scale), 1.0f / std::sqrt((float) H));
    ggml_tensor * probs = name(ggml_soft_max(ctx, ggml_mul_mat(ctx, L.router, z)), "router_probs", il);  // [E, T]
    ggml_tensor * idx = ggml_argsort_top_k(ctx, probs, (int) K);                                             // [K, T]
    ggml_tensor * w = ggml_reshape_2d(ctx, ggml_get_rows(ctx, ggml_reshape_3d(ctx, probs, 1, E, T), idx), K, T);
    // renormalised over the top-k. The clamp never acts (the sum holds the largest of E probabilities, so it
    // is >= 1/E); with it, and expanded here first, softmax .. div .. reshape come out in exactly the order
    // ggml-cuda fuses into one routing kernel (ggml_cuda_topk_moe_fusion in the pinned source)
    w = ggml_div(ctx, w, ggml_clamp(ctx, ggml_sum_rows(ctx, w), 0.5f / (float) E, INFINITY));
    w = ggml_reshape_3d(ctx, w, 1, K, T);
    if (gf) ggml_build_forward_expand(gf, w);
    // per_expert_scale applies after the renormalisation
    ggml_tensor * idx_flat = ggml_reshape_1d(ctx, ggml_cont(ctx, idx), K * T);
    ggml_tensor * s = ggml_get_rows(ctx, ggml_reshape_2d(ctx, L.exp_scale, 1, E), idx_flat);   // [1, K*T]
    w = name(ggml_mul(ctx, w, ggml_reshape_3d(ctx, s, 1, K, T)), "expert_weights", il);        // [1, K, T]

    ggml_tensor * xe = ggml_reshape_3d(ctx, rms(x, L.pre_ffw_norm_2), H, 1, T);
    ggml_tensor * act;                                                             // [EI, K, T]
    if (L.exp_gate_up) {
        act = geglu_fused(ggml_mul_mat_id(ctx, L.exp_gate_up, xe, idx), EI, L.exp_gate_up);   // of [2EI, K, T]
    } else {
        act = geglu(ggml_mul_mat_id(ctx, L.exp_gate, xe, idx), ggml_mul_mat_id(ctx, L.exp_up, xe, idx), L.exp_gate);
    }
    ggml_tensor * y = ggml_mul_mat_id(ctx, L.exp_down, act, idx);                  // [H, K, T]
    y = ggml_mul(ctx, y, w);
    ggml_tensor * sum = nullptr;
    for (int64_t k = 0; k < K; k++) {
        ggml_tensor * yk = ggml_view_2d(ctx, y, H, T, y->nb[2], (size_t) k * y->nb[1]);
        sum = sum ? ggml_add(ctx, sum, yk) : yk;
    }
    if (K == 1) sum = ggml_cont(ctx, sum);
    return name(sum, "moe_out", il);
}

ggml_tensor * graph_builder::ffn_block(ggml_tensor * x, int il) const {
    const layer_weights & L = m.layers[il];
    ggml_tensor * h1 = rms(mlp(rms(x, L.ffn_norm), L.ffn_gate, L.ffn_up, L.ffn_down), L.post_ffw_norm_1);
    ggml_tensor * h2 = rms(moe(x, il), L.post_ffw_norm_2);
    return ggml_add(ctx, x, rms(ggml_add(ctx, name(h1, "mlp_out", il), h2), L.post_ffw_norm));
}

ggml_tensor * graph_builder::layer_tail(ggml_tensor * x, ggml_tensor * attn, int il, ggml_tensor * layer_scale) const {
    x = ggml_add(ctx, x, rms(attn, m.layers[il].post_attn_norm));
    x = ffn_block(x, il);
    // the layer scalar multiplies the whole residual stream, after the residual add
    return name(ggml_mul(ctx, x, layer_scale), "l_out", il);
}

} // namespace dgemma
