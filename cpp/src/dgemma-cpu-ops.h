// CPU kernels ggml lacks in a fast form. Used only when the tensor they touch lives on the CPU backend.
#pragma once

#include "ggml.h"

namespace dgemma {

// y = cap * tanh(x / cap), in place. ggml's CPU tanh is a scalar libm loop (~240 ms per step over a
// 256 x 262144 logits block on 2 cores); this one lets the compiler use the vector math library.
// `cap` must outlive the graph (the model's hparams do).
ggml_tensor * softcap_cpu_inplace(ggml_context * ctx, ggml_tensor * x, const float * cap);

} // namespace dgemma
