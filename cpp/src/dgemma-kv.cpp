#include "dgemma-kv.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <map>

namespace dgemma {

kv_store::kv_store(const model & m, int32_t n_ctx, int32_t ring_extra, int32_t canvas)
    : m_(m), n_ctx_(n_ctx), canvas_(canvas) {
    const hparams & hp = m.info.hp;
    window_ = std::max(0, hp.sliding_window - 1);
    ring_ = std::min(window_ + ring_extra, n_ctx);
    ring_pos_.assign((size_t) ring_, -1);

    const int n_layer = hp.n_layer;
    ggml_init_params ip = { ggml_tensor_overhead() * (size_t) (2 * n_layer + 2), nullptr, true };
    ctx_ = ggml_init(ip);
    k_.resize(n_layer);
    v_.resize(n_layer);
    // one context per backend would be needed to allocate per device; group tensors by backend
    std::map<ggml_backend_t, std::vector<ggml_tensor *>> by_backend;
    for (int il = 0; il < n_layer; il++) {
        const int64_t row = (int64_t) hp.head_dim(il) * hp.n_head_kv(il);
        k_[il] = ggml_new_tensor_2d(ctx_, GGML_TYPE_F32, row, capacity(il));
        v_[il] = ggml_new_tensor_2d(ctx_, GGML_TYPE_F32, row, capacity(il));
        ggml_format_name(k_[il], "kv_k_%d", il);
        ggml_format_name(v_[il], "kv_v_%d", il);
        by_backend[m.layers[il].backend].push_back(k_[il]);
        by_backend[m.layers[il].backend].push_back(v_[il]);
    }
    for (auto & [backend, tensors] : by_backend) {
        ggml_backend_buffer_type_t buft = ggml_backend_get_default_buffer_type(backend);
        size_t size = 0;
        for (ggml_tensor * t : tensors) size += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, t),
                                                         ggml_backend_buft_get_alignment(buft));
        ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(buft, size);
        if (!buf) {
            throw error("cannot allocate the KV store (" + std::to_string(size >> 20) + " MiB on " +
                        ggml_backend_name(backend) + "); lower n_ctx");
        }
        ggml_backend_buffer_clear(buf, 0);   // stale slots stay finite: masked scores never meet NaN
        ggml_tallocr ta = ggml_tallocr_new(buf);
        for (ggml_tensor * t : tensors) ggml_tallocr_alloc(&ta, t);
        bufs_.push_back(buf);
    }
}

kv_store::~kv_store() {
    for (ggml_backend_buffer_t b : bufs_) ggml_backend_buffer_free(b);
    if (ctx_) ggml_free(ctx_);
}

size_t kv_store::nbytes() const {
    size_t n = 0;
    for (ggml_backend_buffer_t b : bufs_) n += ggml_backend_buffer_get_size(b);
    return n;
}

int32_t kv_store::capacity(int il) const { return m_.info.hp.is_swa(il) ? capacity_swa() : capacity_full(); }

int32_t kv_store::slot(int il, int32_t pos) const { return m_.info.hp.is_swa(il) ? pos % ring_ : pos; }

void kv_store::commit(int32_t pos0, int32_t n) {
    for (int32_t p = pos0; p < pos0 + n; p++) ring_pos_[(size_t) (p % ring_)] = p;
    n_past_ = std::max(n_past_, pos0 + n);
}

void kv_store::truncate(int32_t n) {
    if (n >= n_past_) return;
    if (n < 0) throw error("truncate: negative position " + std::to_string(n));
    // the sliding layers must still hold the window that ends at n
    for (int32_t p = std::max(0, n - window_); p < n; p++) {
        if (ring_pos_[(size_t) (p % ring_)] != p) {
            throw error("truncate to " + std::to_string(n) + ": the sliding-window layers no longer hold position " +
                        std::to_string(p) + " (at most " + std::to_string(ring_ - window_) +
                        " positions can be dropped); encode the sequence again");
        }
    }
    for (int32_t s = 0; s < ring_; s++) if (ring_pos_[(size_t) s] >= n) ring_pos_[(size_t) s] = -1;
    n_past_ = n;
}

} // namespace dgemma
