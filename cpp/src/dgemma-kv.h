// The prompt KV store: per layer K (after k_norm + RoPE) and V (after the unweighted norm).
//
// Full-attention layers keep every position in slot == position (capacity n_ctx).
// Sliding layers keep a ring of R = (sliding_window - 1) + max(n_batch, canvas) slots, slot = pos % R:
// the decoder sees exactly the last sliding_window - 1 stored positions (reference: DynamicCache
// retention), and the extra slots give an encoder chunk (or a canvas) room to write its own K/V before
// attending, without evicting anything a query of that chunk can see.
//
// Invariant: slots of positions >= n_past are free space. The decoder writes its canvas K/V there to
// attend to them and never touches a stored position; the encoder overwrites them when it commits.
#pragma once

#include "dgemma-model.h"

#include <vector>

namespace dgemma {

class kv_store {
public:
    kv_store(const model & m, int32_t n_ctx, int32_t ring_extra);
    ~kv_store();
    kv_store(const kv_store &) = delete;
    kv_store & operator=(const kv_store &) = delete;

    ggml_tensor * k(int il) const { return k_[il]; }   // [hd * n_kv, capacity(il)]
    ggml_tensor * v(int il) const { return v_[il]; }
    int32_t capacity(int il) const;
    int32_t slot(int il, int32_t pos) const;          // where position pos lives in layer il

    int32_t n_past() const { return n_past_; }
    int32_t n_ctx() const { return n_ctx_; }
    int32_t ring() const { return ring_; }
    int32_t window() const { return window_; }        // sliding_window - 1: stored positions a decoder sees

    // Position held by ring slot s of the sliding layers (-1 = empty).
    int32_t ring_pos(int32_t s) const { return ring_pos_[s]; }

    void commit(int32_t pos0, int32_t n);             // positions pos0..pos0+n-1 were written
    void truncate(int32_t n);                          // forget positions >= n

private:
    const model & m_;
    int32_t n_ctx_ = 0, ring_ = 0, window_ = 0, n_past_ = 0;
    std::vector<int32_t> ring_pos_;
    std::vector<ggml_tensor *> k_, v_;
    ggml_context * ctx_ = nullptr;
    std::vector<ggml_backend_buffer_t> bufs_;
};

} // namespace dgemma
