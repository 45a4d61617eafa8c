// The prompt KV store: per layer K (after k_norm + RoPE) and V (after the unweighted norm).
//
// Full-attention layers keep every position in slot == position (capacity n_ctx, padded to KV_PAD).
// Sliding layers keep a ring of R = (sliding_window - 1) + max(n_batch, canvas) slots, slot = pos % R,
// followed by C canvas slots (R .. R+C-1) that belong to the decoder alone. The decoder sees exactly the
// last sliding_window - 1 stored positions (reference: DynamicCache retention) plus the canvas; the
// extra ring slots give an encoder chunk room to write its own K/V before attending without evicting
// anything a query of that chunk can see, and let truncate() drop up to R - (sliding_window - 1)
// positions and still hold the window that ends at the new length.
//
// Invariant: ring_pos(s) is the position whose K/V ring slot s holds (-1: none). Only the encoder
// writes ring slots (and commit() records them); the decoder writes its canvas K/V to full-layer slots
// >= n_past (free space) and to the canvas slots, never over a stored position.
#pragma once

#include "dgemma-model.h"

#include <vector>

namespace dgemma {

// Attention reads K/V in lengths padded to a multiple of KV_PAD, with the padding masked (-inf): CUDA's
// flash attention for head dim 512 (the full layers) accepts only a mask and a KV length that is a multiple
// of 256 (FATTN_KQ_STRIDE, and its GQA kernels need it for every head dim); without them the scheduler
// silently runs those layers on the CPU. The CPU kernel skips masked positions.
constexpr int32_t KV_PAD = 256;
inline int32_t pad_kv(int32_t n) { return (n + KV_PAD - 1) / KV_PAD * KV_PAD; }

// The ggml type a KV store type name means, checked against every layer's head dim; throws error naming
// the choices otherwise.
ggml_type kv_store_type(const std::string & name, const hparams & hp, const char * which);

class kv_store {
public:
    // type_k / type_v: element types of the K and V stores (validated by kv_store_type)
    kv_store(const model & m, int32_t n_ctx, int32_t ring_extra, int32_t canvas,
             ggml_type type_k = GGML_TYPE_F32, ggml_type type_v = GGML_TYPE_F32);
    ~kv_store();
    kv_store(const kv_store &) = delete;
    kv_store & operator=(const kv_store &) = delete;

    ggml_tensor * k(int il) const { return k_[il]; }   // [hd * n_kv, capacity(il)]
    ggml_tensor * v(int il) const { return v_[il]; }
    int32_t capacity(int il) const;
    int32_t slot(int il, int32_t pos) const;          // where stored position pos lives in layer il
    int32_t canvas_slot0() const { return ring_; }    // sliding layers: first of the C canvas slots

    const model & model_ref() const { return m_; }
    int32_t n_past() const { return n_past_; }
    int32_t n_ctx() const { return n_ctx_; }
    int32_t ring() const { return ring_; }
    // ring + canvas slots, padded to KV_PAD (the padding slots are never written and always masked)
    int32_t capacity_swa() const { return pad_kv(ring_ + canvas_); }
    int32_t capacity_full() const { return pad_kv(n_ctx_); }
    int32_t window() const { return window_; }        // sliding_window - 1: stored positions a decoder sees

    // Position held by ring slot s of the sliding layers (-1 = empty).
    int32_t ring_pos(int32_t s) const { return ring_pos_[s]; }

    size_t nbytes() const;                            // all K/V buffers
    void commit(int32_t pos0, int32_t n);             // positions pos0..pos0+n-1 were written
    void truncate(int32_t n);                          // forget positions >= n

private:
    const model & m_;
    int32_t n_ctx_ = 0, ring_ = 0, canvas_ = 0, window_ = 0, n_past_ = 0;
    std::vector<int32_t> ring_pos_;
    std::vector<ggml_tensor *> k_, v_;
    ggml_context * ctx_ = nullptr;
    std::vector<ggml_backend_buffer_t> bufs_;
};

} // namespace dgemma
