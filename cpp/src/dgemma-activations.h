// The ggml scheduler's eval callback that accumulates imatrix statistics (see activation_stats).
#pragma once

#include "dgemma.h"

#include "ggml.h"

namespace dgemma {

// For ggml_backend_sched_set_eval_callback with user_data = activation_stats *: asks for every
// MUL_MAT / MUL_MAT_ID whose weight is a model tensor ("*.weight"), then adds its f32 input rows.
bool observe_activations(ggml_tensor * t, bool ask, void * user_data);

} // namespace dgemma
