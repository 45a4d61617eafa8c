#include "dgemma-kv.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <map>

namespace dgemma {

ggml_type kv_store_type(const std::string & name, const hparams & hp, const char * which) {
    static const ggml_type allowed[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0,
                                        GGML_TYPE_Q5_1, GGML_TYPE_Q5_0, GGML_TYPE_Q4_1, GGML_TYPE_Q4_0};
    std::string names;
    for (ggml_type t : allowed) {
        names += std::string(names.empty() ? "" : ", ") + ggml_type_name(t);
        if (name != ggml_type_name(t)) continue;
        const int64_t blck = ggml_blck_size(t);
        for (int il = 0; il < hp.n_layer; il++) {
            if (hp.head_dim(il) % blck != 0) {
                throw error(std::string(which) + " " + name + ": layer " + std::to_string(il) + "'s head dim " +
                            std::to_string(hp.head_dim(il)) + " is not a multiple of its block of " +
                            std::to_string(blck) + "; use f16 or bf16");
            }
        }
        return t;
    }
    throw error(std::string(which) + ": unknown KV store type '" + name + "'; use one of " + names);
}

kv_store::kv_store(const model & m, int32_t n_ctx, int32_t ring_extra, int32_t canvas,
                   ggml_type type_k, ggml_type type_v)
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
        k_[il] = ggml_new_tensor_2d(ctx_, type_k, row, capacity(il));
        v_[il] = ggml_new_tensor_2d(ctx_, type_v, row, capacity(il));
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
        // stale slots stay finite (zero bytes are 0 in every store type): masked scores never meet NaN
        ggml_backend_buffer_clear(buf, 0);
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
