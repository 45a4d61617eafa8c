#include "dgemma-encoder.h"

#include <cmath>
#include <vector>

namespace dgemma {

encoder_graph build_encoder(const graph_builder & g_in, const kv_store & kv, int32_t T, int graph_size,
                            int32_t n_past) {
    ggml_context * ctx = g_in.ctx;
    const int32_t P = n_past >= 0 ? n_past : kv.n_past();
    encoder_graph eg;
    eg.gf = ggml_new_graph_custom(ctx, graph_size, false);
    const graph_builder g{ctx, g_in.m, eg.gf};
    const hparams & hp = g.hp();

    eg.tokens = g.name(ggml_new_tensor_1d(ctx, GGML_TYPE_I32, T), "enc_tokens");
    eg.pos = g.new_position_inputs(T);
    // K/V lengths padded to KV_PAD, the padding masked (dgemma-kv.h): the sliding view's padding slots are
    // the decoder's canvas slots (and beyond), never visible to the encoder
    eg.mask_full = g.name(ggml_new_tensor_2d(ctx, GGML_TYPE_F16, pad_kv(P + T), T), "enc_mask_full");
    eg.mask_swa = g.name(ggml_new_tensor_2d(ctx, GGML_TYPE_F16, pad_kv(kv.ring()), T), "enc_mask_swa");
    for (ggml_tensor * t : {eg.tokens, eg.mask_full, eg.mask_swa}) {
        ggml_set_input(t);
    }

    // reference: the encoder has no input norm; embeddings scaled by sqrt(H) in the weight dtype
    ggml_tensor * x = ggml_scale(ctx, ggml_get_rows(ctx, g.m.tok_embd, eg.tokens), g.m.embd_scale);
    g.name(x, "enc_embd");
    for (int il = 0; il < hp.n_layer; il++) {
        const bool swa = hp.is_swa(il);
        const layer_weights & L = g.m.layers[il];
        ggml_tensor * h = g.rms(x, L.attn_norm);
        graph_builder::qkv a = g.attn_qkv(h, il, eg.pos);

        // write this chunk's K/V first, then attend through the written store (the view depends on it)
        ggml_tensor * rows = swa ? eg.pos.slots_swa : eg.pos.slots_full;
        const int64_t row = a.k->ne[0] * a.k->ne[1];
        ggml_tensor * ks = ggml_set_rows(ctx, kv.k(il), ggml_reshape_2d(ctx, a.k, row, T), rows);
        ggml_tensor * vs = ggml_set_rows(ctx, kv.v(il), ggml_reshape_2d(ctx, a.v, row, T), rows);
        if (il == hp.n_layer - 1) {
            // the last layer's output is discarded (only the KV store matters): stop after its K/V
            ggml_build_forward_expand(eg.gf, ks);
            ggml_build_forward_expand(eg.gf, vs);
            break;
        }
        const int64_t n_kv = swa ? pad_kv(kv.ring()) : pad_kv(P + T);
        ggml_tensor * attn = g.attn_out(a.q, g.kv_view(ks, il, 0, n_kv), g.kv_view(vs, il, 0, n_kv),
                                        swa ? eg.mask_swa : eg.mask_full, il);
        x = g.layer_tail(x, attn, il, L.enc_scale);
    }
    return eg;
}

void fill_encoder_inputs(const encoder_graph & eg, const kv_store & kv, const int32_t * tokens, int32_t T,
                         int32_t sliding_window) {
    const int32_t P = kv.n_past(), R = kv.ring();
    set_input(eg.tokens, tokens, sizeof(int32_t) * T);
    set_position_inputs(eg.pos, position_values(kv.model_ref(), P, T, R));

    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), ninf = ggml_fp32_to_fp16(-INFINITY);
    if (eg.mask_full && eg.mask_full->buffer) {
        const int32_t n_kv = pad_kv(P + T);   // causal: j > P + i hides the padding too
        std::vector<ggml_fp16_t> m((size_t) n_kv * T);
        for (int32_t i = 0; i < T; i++) {
            for (int32_t j = 0; j < n_kv; j++) m[(size_t) i * n_kv + j] = j <= P + i ? zero : ninf;
        }
        set_input(eg.mask_full, m.data(), m.size() * sizeof(ggml_fp16_t));
    }
    if (eg.mask_swa && eg.mask_swa->buffer) {
        // slot s holds position ring_pos(s) (stored) or, for this chunk, P + i with (P + i) % R == s
        std::vector<int32_t> slot_pos(R);
        for (int32_t s = 0; s < R; s++) slot_pos[s] = kv.ring_pos(s);
        for (int32_t i = 0; i < T; i++) slot_pos[(P + i) % R] = P + i;
        const int32_t S = pad_kv(R);
        std::vector<ggml_fp16_t> m((size_t) S * T, ninf);
        for (int32_t i = 0; i < T; i++) {
            const int32_t p = P + i;
            for (int32_t s = 0; s < R; s++) {
                const int32_t ps = slot_pos[s];
                // reference: query p sees keys with p - sw < pos <= p
                m[(size_t) i * S + s] = (ps >= 0 && ps <= p && ps > p - sliding_window) ? zero : ninf;
            }
        }
        set_input(eg.mask_swa, m.data(), m.size() * sizeof(ggml_fp16_t));
    }
}

} // namespace dgemma
