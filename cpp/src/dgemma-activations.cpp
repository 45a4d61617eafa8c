#include "dgemma-activations.h"

#include "ggml-backend.h"

#include <cstring>
#include <string>
#include <vector>

namespace dgemma {

namespace {

const ggml_tensor * base_of(const ggml_tensor * t) {
    while (t->view_src) t = t->view_src;
    return t;
}

bool is_model_weight(const ggml_tensor * w) {
    const std::string name = ggml_get_name(base_of(w));
    return name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
}

// The tensor's bytes on the host (its backend may be a GPU).
std::vector<char> host_copy(const ggml_tensor * t) {
    std::vector<char> buf(ggml_nbytes(t));
    if (t->buffer && !ggml_backend_buffer_is_host(t->buffer)) {
        ggml_backend_tensor_get(t, buf.data(), 0, buf.size());
    } else {
        std::memcpy(buf.data(), t->data, buf.size());
    }
    return buf;
}

activation_entry & entry_for(activation_stats & st, const ggml_tensor * w, int64_t n_mat) {
    activation_entry & e = st[ggml_get_name(base_of(w))];
    if (e.sums.empty()) {
        e.row_length = w->ne[0];
        e.sums.assign((size_t) (n_mat * w->ne[0]), 0.0);
        e.counts.assign((size_t) n_mat, 0);
    }
    return e;
}

void add_row(activation_entry & e, int64_t m, const char * row) {
    const float * x = (const float *) row;
    double * s = e.sums.data() + m * e.row_length;
    for (int64_t j = 0; j < e.row_length; j++) s[j] += (double) x[j] * x[j];
    e.counts[(size_t) m]++;
}

} // namespace

bool observe_activations(ggml_tensor * t, bool ask, void * user_data) {
    const bool wanted = (t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_MUL_MAT_ID) && is_model_weight(t->src[0]) &&
                        t->src[1]->type == GGML_TYPE_F32;
    if (ask) return wanted;
    if (!wanted) return true;
    auto & st = *static_cast<activation_stats *>(user_data);
    const ggml_tensor * w = t->src[0];
    const ggml_tensor * x = t->src[1];
    const std::vector<char> xb = host_copy(x);
    if (t->op == GGML_OP_MUL_MAT) {
        activation_entry & e = entry_for(st, w, 1);
        for (int64_t i3 = 0; i3 < x->ne[3]; i3++)
            for (int64_t i2 = 0; i2 < x->ne[2]; i2++)
                for (int64_t i1 = 0; i1 < x->ne[1]; i1++)
                    add_row(e, 0, xb.data() + i1 * x->nb[1] + i2 * x->nb[2] + i3 * x->nb[3]);
        return true;
    }
    // MUL_MAT_ID: x [K, 1 or n_used, T], ids [n_used, T]; row (k % ne1, t) goes to expert ids[k, t]
    const ggml_tensor * ids = t->src[2];
    const std::vector<char> ib = host_copy(ids);
    activation_entry & e = entry_for(st, w, w->ne[2]);
    for (int64_t tok = 0; tok < ids->ne[1]; tok++) {
        for (int64_t k = 0; k < ids->ne[0]; k++) {
            const int32_t ex = *(const int32_t *) (ib.data() + k * ids->nb[0] + tok * ids->nb[1]);
            if (ex < 0 || ex >= w->ne[2]) continue;
            add_row(e, ex, xb.data() + (k % x->ne[1]) * x->nb[1] + tok * x->nb[2]);
        }
    }
    return true;
}

} // namespace dgemma
