// Decoder: one denoising step over the canvas, attending bidirectionally to the visible stored K/V and
// to the canvas itself, with self-conditioning from the previous step's processed logits.
#pragma once

#include "dgemma-graph.h"
#include "dgemma-kv.h"

#include <memory>
#include <vector>

namespace dgemma {

struct decoder_graph {
    ggml_cgraph * gf = nullptr;
    int32_t n_past = -1;                 // the store length this graph was built for
    ggml_tensor * tokens = nullptr;      // I32 [C]
    position_inputs pos;                 // canvas rows: full layers P..P+C-1, the sliding canvas slots
    std::shared_ptr<position_values> pos_values;   // fixed for every step of this canvas
    // Attention masks. Every canvas row sees the same keys, so a mask is one row repeated C times on the
    // device: a step uploads at most one row (the sliding ring's), never pad(P + C) x C values (64 MiB
    // per step at a 128k context).
    ggml_tensor * mask_swa_row = nullptr;   // F16 [pad(R + C), 1] input: the visible window + the canvas slots
    std::shared_ptr<std::vector<ggml_fp16_t>> mask_swa_values;   // its values, fixed for this canvas
    ggml_tensor * mask_swa = nullptr;    // F16 [pad(R + C), C]: the row repeated
    ggml_tensor * mask_full = nullptr;   // F16 [pad(P + C), C]: computed in the graph (no input): the stored
                                         // prefix and the canvas visible (0), the padding hidden (-inf)
    ggml_tensor * temperature = nullptr; // F32 [1]
    ggml_tensor * sc_on = nullptr;       // F32 [1]: 1 = self-conditioning from sc_state, 0 = none
    ggml_tensor * uniforms = nullptr;    // F32 [1, C]: one uniform draw per row for the categorical sample
    ggml_tensor * draw = nullptr;        // F32 [3]: draw_params (temperature, top_k, top_p), CPU kernel
    ggml_tensor * draw_scale = nullptr;  // F32 [1]: 1 / draw temperature, read by draw_kind::scaled only
    ggml_tensor * logits = nullptr;      // F32 [V, C] softcapped (on the CPU path: when keep_logits is 1)
    ggml_tensor * keep_logits = nullptr; // F32 [1], CPU path: 1 = the kernel writes the capped logits back
    // per-row reductions of the processed logits (logits / temperature), read back instead of the logits
    ggml_tensor * argmax = nullptr;      // F32 [1, C]: V minus the lowest index among the maxima (the
                                         // entries from the first maximum on), an exact count
    ggml_tensor * entropy = nullptr;     // F32 [1, C] nats, of the tempered distribution
    ggml_tensor * sample = nullptr;      // F32 [1, C] index of the inverse-CDF sample (count of cdf < u);
                                         // null for draw_kind::greedy
    ggml_tensor * reduced = nullptr;     // CPU: the three above fused, F32 [3, C] (argmax, entropy, sample)
};

// The self-conditioning state a step leaves for the next one (a persistent tensor the context owns): the
// softmax of the step's processed logits, which the next step multiplies by the transposed embedding.
// Generic path (a GPU, DGEMMA_GENERIC_REDUCTIONS): F32 [V, C, 1], the softmax the step computes for its
// entropy anyway, copied. CPU path (reductions_on_cpu): written by the step's fused row
// reductions in the transposed embedding's type (the activation type of its CPU matmul: no conversion),
// chunk-major: vocabulary entry j * chunk + k of canvas row c at (k, c, j) of [chunk, C, n_chunks]. The
// contraction over the vocabulary then runs as n_chunks products over chunk-long slices whose operands
// stay in cache, summed (1.5-2x faster than one product over 262,144 terms on a 2-core AVX-512 host).
struct sc_layout {
    ggml_type type = GGML_TYPE_F32;
    int64_t chunk = 0;        // entries per slice (V when n_chunks is 1, always on the generic path)
    int64_t n_chunks = 1;
};
// The layout a context creates its state in; the state tensor [chunk, C, n_chunks] then carries it.
sc_layout self_conditioning_layout(const model & m);
// Sets sc_state from processed logits a caller gave ([C][V] floats): their softmax (double sums) in the
// state's type and order. Returns the bytes written.
size_t set_self_conditioning(ggml_tensor * sc_state, const float * logits);

// What the generic path's categorical draw samples from (the CPU kernel handles every case itself):
// nothing (greedy: the host takes the argmax), the step's own softmax (draw temperature 1, the default:
// softmax(lp * 1) is that softmax bit for bit), or softmax(lp * draw_scale). A graph is built for one kind;
// each dropped vocabulary-wide pass is 268 MB read and written per step at the released shape.
enum class draw_kind { greedy, step_softmax, scaled };
draw_kind draw_kind_for(const draw_params & d);

// sc_state: the state above; the graph reads it for self-conditioning and overwrites it for the next step.
// n_past: the stored prefix the graph is shaped for (-1: kv.n_past(); larger only to reserve buffers).
decoder_graph build_decoder(const graph_builder & g, const kv_store & kv, ggml_tensor * sc_state, int32_t C,
                            int graph_size, int32_t n_past = -1, draw_kind dk = draw_kind::scaled);
// Uploads a step's inputs; returns the bytes uploaded (O(C) plus one sliding-mask row).
// keep_logits: the caller reads dg.logits after this step (on the CPU path the row reductions then write
// the softcapped rows back; otherwise they hold the uncapped product and the step writes 4 V C bytes less)
size_t fill_decoder_inputs(const decoder_graph & dg, const int32_t * canvas, int32_t C,
                           float temperature, bool sc_on, const float * uniforms, const draw_params & draw,
                           bool keep_logits);

} // namespace dgemma
