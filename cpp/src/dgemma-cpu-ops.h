// CPU kernels ggml lacks in a fast form. Used only when the tensor they touch lives on the CPU backend.
#pragma once

#include "ggml.h"

namespace dgemma {

// DGEMMA_GENERIC_REDUCTIONS set: no fused CPU op is used, the graphs take the backend-independent ggml
// ops a GPU runs (tests compare the two paths, and a CPU run against a remote one bit for bit).
bool cpu_fused_ops_disabled();

// gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) in one pass with the vector tanhf
// (<= 4 ulp). ggml's CPU tanh is a scalar libm loop: the composed form cost 0.8 s of a 14.3 s step of the
// released shape on 2 cores. x may be a view (any strides); the result is contiguous.
ggml_tensor * gelu_tanh_cpu(ggml_context * ctx, ggml_tensor * x);

// Per-row reductions of the processed logits lp = logits / temperature (logits [V, C], temperature F32
// [1]) against uniforms [1, C], fused in one kernel: returns [3, C] f32 rows of (argmax, entropy,
// inverse-CDF sample index). Argmax takes the lowest index on ties; entropy = lse - sum(p * lp) with double
// accumulators; the sample is the count of cdf entries < u (the cdf summed in double).
// draw: F32 [3] = (temperature, top_k, top_p) of the categorical draw (draw_params); the defaults
// (1, 0, 1) draw from softmax(lp) itself, temperature 0 draws the argmax.
// Side effect: softmax(lp), the next step's self-conditioning input, is written into `probs` in its type
// and chunk-major layout (sc_layout in dgemma-decoder.h), converted as ggml's matmul converts its
// activations. The step's own self-conditioning product reads `probs` before (the logits depend on it).
// One pass replaces three: lp written out, softmax(lp) in the next step, and the matmul's conversion.
// softcap (null or <= 0: none): logits are first capped, cap * tanh(logits / cap), with the vector tanhf
// (<= 4 ulp; ggml's CPU tanh is a scalar libm loop), as each row is first read: no separate pass over the
// 256 MiB block (released shape) reads and writes it. keep_logits (F32 [1]) = 1: the capped rows are written
// back in place, so the graph's logits output holds them; 0: they stay in a per-thread row buffer and the
// logits keep the uncapped product (no one reads them: 256 MiB of memory writes fewer per step).
// `softcap` must outlive the graph (the model's hparams do).
ggml_tensor * row_reductions_cpu(ggml_context * ctx, ggml_tensor * logits, const float * softcap,
                                 ggml_tensor * temperature, ggml_tensor * uniforms, ggml_tensor * draw,
                                 ggml_tensor * keep_logits, ggml_tensor * probs);

// Writes one canvas row's softmax p (V floats) into a host `probs` tensor [chunk, C, n_chunks] of type
// F32, F16 or BF16: slice j of row r at (r, j), converted as ggml's matmul converts its activations.
void store_softmax_row(ggml_tensor * probs, int64_t r, const float * p);
// The same for entries [i0, i0 + n) of the row.
void store_softmax_span(ggml_tensor * probs, int64_t r, int64_t i0, const float * p, int64_t n);

} // namespace dgemma
