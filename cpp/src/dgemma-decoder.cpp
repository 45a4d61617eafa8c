#include "dgemma-decoder.h"
#include "dgemma-cpu-ops.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

namespace dgemma {

sc_layout self_conditioning_layout(const model & m) {
    const int64_t V = m.info.hp.n_vocab;
    sc_layout l;
    l.chunk = V;
    if (!reductions_on_cpu(m)) return l;
    l.type = m.tok_embd_t->type;
    // slices of at most 32768 entries (a slice of both operands fits the L2/L3 caches), at least 4 where
    // the vocabulary allows (so small test models run the sliced path), a multiple of 64 (the matmul
    // kernels' vector widths)
    const int64_t cap = std::min<int64_t>(32768, V / 4);
    for (int64_t k = cap - cap % 64; k >= 64; k -= 64) {
        if (V % k == 0) {
            l.chunk = k;
            break;
        }
    }
    l.n_chunks = V / l.chunk;
    return l;
}

draw_kind draw_kind_for(const draw_params & d) {
    if (d.temperature <= 0.0f) return draw_kind::greedy;
    return d.temperature == 1.0f ? draw_kind::step_softmax : draw_kind::scaled;
}

size_t set_self_conditioning(ggml_tensor * sc_state, const float * logits) {
    // the CPU path's state lives in a host buffer and each row is written in place; the generic path's is
    // F32 [V, C, 1] on its device, uploaded in one piece
    const int64_t V = sc_state->ne[0] * sc_state->ne[2], C = sc_state->ne[1];
    const bool host = sc_state->buffer && ggml_backend_buffer_is_host(sc_state->buffer);
    GGML_ASSERT(host || (sc_state->ne[2] == 1 && sc_state->type == GGML_TYPE_F32));
    std::vector<float> rows((size_t) (host ? 1 : C) * V);
    for (int64_t c = 0; c < C; c++) {
        const float * x = logits + c * V;
        float * p = rows.data() + (host ? 0 : c * V);
        const float mx = *std::max_element(x, x + V);
        double sum = 0.0;
        for (int64_t i = 0; i < V; i++) sum += (double) (p[i] = std::exp(x[i] - mx));
        const float scale = (float) (1.0 / sum);
        for (int64_t i = 0; i < V; i++) p[i] *= scale;
        if (host) store_softmax_row(sc_state, c, p);
    }
    if (!host) ggml_backend_tensor_set(sc_state, rows.data(), 0, sizeof(float) * rows.size());
    return ggml_nbytes(sc_state);
}

decoder_graph build_decoder(const graph_builder & g_in, const kv_store & kv, ggml_tensor * sc_state, int32_t C,
                            int graph_size, int32_t n_past, draw_kind dk) {
    ggml_context * ctx = g_in.ctx;
    const int32_t P = n_past >= 0 ? n_past : kv.n_past();
    decoder_graph dg;
    dg.n_past = P;
    dg.gf = ggml_new_graph_custom(ctx, graph_size, false);
    const graph_builder g{ctx, g_in.m, dg.gf};
    const hparams & hp = g.hp();
    const model & m = g.m;

    dg.tokens = g.name(ggml_new_tensor_1d(ctx, GGML_TYPE_I32, C), "dec_tokens");
    dg.pos = g.new_position_inputs(C);
    dg.pos_values = std::make_shared<position_values>(m, P, C, kv.ring(), kv.canvas_slot0());
    {
        // the sliding layers' mask depends only on the stored prefix: built once per canvas
        const int32_t R = kv.ring(), W = kv.window(), S = kv.capacity_swa();
        const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), ninf = ggml_fp32_to_fp16(-INFINITY);
        // the canvas slots R .. R+C-1: always visible; padding: never
        dg.mask_swa_values = std::make_shared<std::vector<ggml_fp16_t>>(S, ninf);
        std::vector<ggml_fp16_t> & row = *dg.mask_swa_values;
        std::fill(row.begin() + R, row.begin() + R + C, zero);
        for (int32_t s = 0; s < R; s++) {
            const int32_t ps = kv.ring_pos(s);
            // reference (DynamicCache): the decoder sees the last min(P, sw - 1) stored positions
            row[s] = (ps >= 0 && ps < P && ps >= P - W) ? zero : ninf;
        }
        dg.mask_swa_row = g.name(ggml_new_tensor_2d(ctx, GGML_TYPE_F16, S, 1), "dec_mask_swa_row");
        dg.mask_swa = g.name(ggml_repeat_4d(ctx, dg.mask_swa_row, S, C, 1, 1), "dec_mask_swa");
        // full layers: key j is visible iff j < P + C. step() makes that 1 / 0 and log() 0 / -inf (exactly,
        // on every backend); the positions are exact in f32 up to 2^24.
        const int32_t F = pad_kv(P + C);
        ggml_tensor * col = ggml_arange(ctx, 0.0f, (float) F, 1.0f);
        ggml_tensor * vis = ggml_step(ctx, ggml_scale_bias(ctx, col, -1.0f, (float) (P + C) - 0.5f));
        ggml_tensor * frow = ggml_cast(ctx, ggml_log(ctx, vis), GGML_TYPE_F16);
        dg.mask_full = g.name(ggml_repeat_4d(ctx, frow, F, C, 1, 1), "dec_mask_full");
    }
    dg.temperature = g.name(ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1), "temperature");
    dg.sc_on = g.name(ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1), "sc_on");
    dg.uniforms = g.name(ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, C), "uniforms");
    dg.draw = g.name(ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 3), "draw");
    dg.draw_scale = g.name(ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1), "draw_scale");
    for (ggml_tensor * t : {dg.tokens, dg.mask_swa_row, dg.temperature, dg.sc_on, dg.uniforms, dg.draw, dg.draw_scale}) {
        ggml_set_input(t);
    }

    // --- input embedding with self-conditioning (SPEC §5.1)
    ggml_tensor * e = ggml_scale(ctx, ggml_get_rows(ctx, m.tok_embd, dg.tokens), m.embd_scale);
    // soft = softmax(S) @ E * s, as a matmul against the transposed embedding; times 0 on a canvas's first
    // step (S is then a finite placeholder, so 0 * soft is exactly 0 and the SC MLP yields exactly 0)
    // A contraction over the vocabulary: cuBLAS would accumulate an f16 operand in half precision; F32 asked
    // keeps it in f32 (as the CPU kernels do), and f16 storage then beats bf16 (NMSE ~6e-8 against ~3e-6 for
    // peaked softmax rows, float64 reference, measured with torch's rounding).
    // the previous step's softmax, in the state's layout (sc_layout); on the CPU path in slices: n products
    // [chunk, H] x [chunk, C] over views of E^T, summed
    const int64_t H = m.tok_embd_t->ne[1], chunk = sc_state->ne[0], n_chunks = sc_state->ne[2];
    ggml_tensor * et = m.tok_embd_t;
    if (n_chunks > 1) {
        et = ggml_view_3d(ctx, m.tok_embd_t, chunk, H, n_chunks, m.tok_embd_t->nb[1],
                          (size_t) chunk * ggml_element_size(m.tok_embd_t), 0);
        ggml_set_name(et, "token_embd_t");   // the weight's name in profiles and graph dumps
    }
    ggml_tensor * soft = ggml_mul_mat(ctx, et, sc_state);                                 // [H, C, n]
    ggml_prec_set_acc(soft, GGML_PREC_F32);
    if (n_chunks > 1) soft = ggml_sum_rows(ctx, ggml_cont(ctx, ggml_permute(ctx, soft, 1, 2, 0, 3)));
    soft = ggml_reshape_2d(ctx, soft, H, C);                                              // [H, C]
    soft = ggml_mul(ctx, ggml_scale(ctx, soft, m.embd_scale), dg.sc_on);
    ggml_tensor * sc = g.mlp(g.rms(soft, m.sc_pre_norm), m.sc_gate, m.sc_up, m.sc_down);
    // the unweighted post-norm runs on every step, the first included
    ggml_tensor * x = g.name(g.rms(ggml_add(ctx, e, g.name(sc, "sc_out")), nullptr), "dec_in");

    for (int il = 0; il < hp.n_layer; il++) {
        const bool swa = hp.is_swa(il);
        const layer_weights & L = m.layers[il];
        graph_builder::qkv a = g.attn_qkv(g.rms(x, L.attn_norm), il, dg.pos);
        // canvas K/V go to full-layer slots P..P+C-1 (free space) and the sliding layers' canvas slots
        const int64_t row = a.k->ne[0] * a.k->ne[1];
        ggml_tensor * rows = swa ? dg.pos.slots_swa : dg.pos.slots_full;
        ggml_tensor * ks = ggml_set_rows(ctx, kv.k(il), ggml_reshape_2d(ctx, a.k, row, C), rows);
        ggml_tensor * vs = ggml_set_rows(ctx, kv.v(il), ggml_reshape_2d(ctx, a.v, row, C), rows);
        // full layers: every stored position and the canvas. Sliding layers: ring + canvas slots, the mask
        // shows the last sliding_window - 1 stored positions and the canvas, no per-query window. Both padded
        // to KV_PAD with the padding masked.
        const int64_t n_kv = swa ? kv.capacity_swa() : pad_kv(P + C);
        ggml_tensor * attn = g.attn_out(a.q, g.kv_view(ks, il, 0, n_kv), g.kv_view(vs, il, 0, n_kv),
                                        swa ? dg.mask_swa : dg.mask_full, il);
        x = g.layer_tail(x, attn, il, L.dec_scale);
    }

    x = g.name(g.rms(x, m.output_norm), "dec_norm");
    ggml_tensor * logits = ggml_mul_mat(ctx, m.lm_head, x);                               // tied lm_head
    ggml_prec_set_acc(logits, GGML_PREC_F32);
    // the softcap: on the CPU inside the row reductions below, which write the capped rows back in place
    // when the caller reads the logits (keep_logits) (DGEMMA_GENERIC_REDUCTIONS: the generic ops, as off
    // the CPU). The kernel's in-place write reaches dg.logits itself: the product and the kernel both run on
    // the CPU backend (reductions_on_cpu: the output layer's weights are there, and the scheduler offloads
    // nothing), so the scheduler makes no copy of the logits in between.
    const float cap = hp.logit_softcap;
    if (cap > 0.0f && !reductions_on_cpu(m)) logits = ggml_scale(ctx, ggml_tanh(ctx, ggml_scale(ctx, logits, 1.0f / cap)), cap);
    dg.logits = g.name(logits, "logits");
    ggml_set_output(dg.logits);
    ggml_build_forward_expand(dg.gf, dg.logits);
    const int64_t V = hp.n_vocab;

    // Per-row reductions so a step moves O(C) numbers to the host (SPEC §6): argmax (lowest index on
    // ties), the entropy of softmax(lp), and an inverse-CDF categorical sample against one uniform per
    // row. On the CPU one fused kernel; elsewhere ggml ops: entropy = lse - sum(p * lp) with
    // lse = max - log(p[argmax]), sample = count of cdf entries below u.
    if (reductions_on_cpu(m)) {
        // lp = logits / temperature is formed row by row inside the kernel, which also leaves softmax(lp) in
        // sc_state for the next step: every read of sc_state (the self-conditioning product) comes earlier,
        // since the logits depend on it
        dg.keep_logits = g.name(ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1), "keep_logits");
        ggml_set_input(dg.keep_logits);
        dg.reduced = g.name(row_reductions_cpu(ctx, dg.logits, &hp.logit_softcap, dg.temperature, dg.uniforms,
                                               dg.draw, dg.keep_logits, sc_state),
                            "row_reductions");
        ggml_set_output(dg.reduced);
        ggml_build_forward_expand(dg.gf, dg.reduced);
    } else {
        ggml_tensor * lp = g.name(ggml_div(ctx, dg.logits, dg.temperature), "processed_logits");
        // ggml_argmax promises a maximum, not the lowest index among equal maxima (CUDA's reduction returns
        // any): the lowest is the number of entries before the first maximum, counted exactly in floats
        ggml_tensor * any_max = ggml_argmax(ctx, lp);
        ggml_tensor * p = ggml_soft_max(ctx, lp);
        ggml_tensor * at = ggml_reshape_2d(ctx, any_max, 1, C);
        ggml_tensor * maxv = ggml_reshape_2d(ctx, ggml_get_rows(ctx, ggml_reshape_3d(ctx, lp, 1, V, C), at), 1, C);
        ggml_tensor * pmax = ggml_reshape_2d(ctx, ggml_get_rows(ctx, ggml_reshape_3d(ctx, p, 1, V, C), at), 1, C);
        ggml_tensor * lse = ggml_sub(ctx, maxv, ggml_log(ctx, pmax));
        dg.entropy = g.name(ggml_sub(ctx, lse, ggml_sum_rows(ctx, ggml_mul(ctx, p, lp))), "entropy");
        ggml_tensor * is_max = ggml_scale_bias(ctx, ggml_step(ctx, ggml_neg(ctx, ggml_sub(ctx, lp, maxv))), -1.0f, 1.0f);
        // entries from the first maximum on (the host subtracts the count from V: one pass fewer than
        // counting those before it)
        dg.argmax = g.name(ggml_sum_rows(ctx, ggml_step(ctx, ggml_cumsum(ctx, is_max))), "from_first_max");
        // the draw's own distribution: softmax(lp / draw temperature); greedy is resolved on the host
        if (dk != draw_kind::greedy) {
            ggml_tensor * pd = dk == draw_kind::step_softmax ? p : ggml_soft_max(ctx, ggml_mul(ctx, lp, dg.draw_scale));
            // u scaled by the row's own float total: a cumsum that ends short of 1 (rounding) still ends >= u
            // (the CPU kernel does the same in double), so the count never runs past the last token
            ggml_tensor * cdf = ggml_cumsum(ctx, pd);
            ggml_tensor * total = ggml_view_2d(ctx, cdf, 1, C, cdf->nb[1], (size_t) (V - 1) * ggml_element_size(cdf));
            ggml_tensor * below = ggml_step(ctx, ggml_neg(ctx, ggml_sub(ctx, cdf, ggml_mul(ctx, total, dg.uniforms))));
            dg.sample = g.name(ggml_sum_rows(ctx, below), "sample");
        }
        for (ggml_tensor * t : {dg.argmax, dg.entropy, dg.sample}) {
            if (!t) continue;
            ggml_set_output(t);
            ggml_build_forward_expand(dg.gf, t);
        }
        // written last: everything above reads this step's softmax, the next step reads it through sc_state
        ggml_build_forward_expand(dg.gf, ggml_cpy(ctx, p, sc_state));
    }
    return dg;
}

size_t fill_decoder_inputs(const decoder_graph & dg, const int32_t * canvas, int32_t C,
                           float temperature, bool sc_on, const float * uniforms, const draw_params & draw,
                           bool keep_logits) {
    size_t bytes = 0;
    bytes += set_input(dg.tokens, canvas, sizeof(int32_t) * C);
    bytes += set_position_inputs(dg.pos, *dg.pos_values);
    bytes += set_input(dg.temperature, &temperature, sizeof(float));
    const float on = sc_on ? 1.0f : 0.0f;
    bytes += set_input(dg.sc_on, &on, sizeof(float));
    std::vector<float> u(uniforms ? uniforms : nullptr, uniforms ? uniforms + C : nullptr);
    if (!uniforms) u.assign(C, 0.5f);
    bytes += set_input(dg.uniforms, u.data(), sizeof(float) * C);
    const float dv[3] = {draw.temperature, (float) draw.top_k, draw.top_p};
    bytes += set_input(dg.draw, dv, sizeof(dv));
    const float scale = draw.temperature > 0.0f ? 1.0f / draw.temperature : 1.0f;   // 0: greedy, on the host
    bytes += set_input(dg.draw_scale, &scale, sizeof(float));
    const float keep = keep_logits ? 1.0f : 0.0f;
    bytes += set_input(dg.keep_logits, &keep, sizeof(float));
    bytes += set_input(dg.mask_swa_row, dg.mask_swa_values->data(), dg.mask_swa_values->size() * sizeof(ggml_fp16_t));
    return bytes;
}

} // namespace dgemma
