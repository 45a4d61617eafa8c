// Model weights: the checked GGUF, its tensors placed on backends, per-layer pointers, and derived
// tensors (the vocabulary copies: the transposed embedding used by self-conditioning, an F16 output layer).
#pragma once

#include "dgemma.h"
#include "dgemma-loader.h"
#include "dgemma-rope.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <vector>

namespace dgemma {

// The device weights go to: the first discrete GPU, else the first integrated GPU, else none.
ggml_backend_dev_t gpu_device();

struct layer_weights {
    ggml_tensor * attn_norm = nullptr;
    ggml_tensor * wq = nullptr, * wk = nullptr, * wv = nullptr, * wo = nullptr;   // wv null on full layers
    ggml_tensor * q_norm = nullptr, * k_norm = nullptr;
    ggml_tensor * post_attn_norm = nullptr;
    ggml_tensor * ffn_norm = nullptr;
    ggml_tensor * ffn_gate = nullptr, * ffn_up = nullptr, * ffn_down = nullptr;
    ggml_tensor * post_ffw_norm_1 = nullptr;
    ggml_tensor * router = nullptr, * router_scale = nullptr;
    ggml_tensor * pre_ffw_norm_2 = nullptr;
    ggml_tensor * exp_gate_up = nullptr;                   // fused [H, 2*EI, E], or
    ggml_tensor * exp_gate = nullptr, * exp_up = nullptr;  // split [H, EI, E] each
    ggml_tensor * exp_down = nullptr, * exp_scale = nullptr;
    ggml_tensor * post_ffw_norm_2 = nullptr;
    ggml_tensor * post_ffw_norm = nullptr;
    ggml_tensor * dec_scale = nullptr, * enc_scale = nullptr;
    ggml_backend_t backend = nullptr;                      // where this layer's weights live
};

// CPU weights to copy into the CPU backend's repacked layouts (one group per buffer type), and the rest.
struct repack_plan {
    std::vector<std::pair<ggml_backend_buffer_type_t, std::vector<ggml_tensor *>>> groups;
    std::vector<ggml_tensor *> rest;
    size_t bytes = 0;   // of the grouped tensors
};

class model {
public:
    model(const std::string & path, const model_params & params);
    ~model();
    model(const model &) = delete;
    model & operator=(const model &) = delete;

    model_info info;
    model_params params;

    ggml_tensor * tok_embd = nullptr;
    ggml_tensor * tok_embd_t = nullptr;     // [V, H]: embedding transposed, for the soft embedding
    ggml_tensor * lm_head = nullptr;        // the tied output layer: tok_embd, or its F16 copy (make_vocab_copies)
    ggml_tensor * output_norm = nullptr;
    ggml_tensor * rope_freqs = nullptr;
    ggml_tensor * sc_pre_norm = nullptr, * sc_gate = nullptr, * sc_up = nullptr, * sc_down = nullptr;
    std::vector<layer_weights> layers;

    float embd_scale = 0.0f;                // sqrt(H) rounded to the embedding's dtype (reference)
    bool fused_cpu_reductions = false;      // reductions_on_cpu, decided once the weights are placed
    rope_table rope[2];                      // RoPE frequencies: [0] sliding layers, [1] full layers

    ggml_backend_t backend_cpu = nullptr;
    // The GPU-class devices in use, in layer order: the local GPU, then every device of each RPC server
    // (model_params.rpc_servers). Empty when everything runs on the CPU.
    std::vector<ggml_backend_t> gpus;
    ggml_backend_t backend_globals = nullptr;

    // All backends, the GPUs first and the CPU last (the scheduler's priority order).
    std::vector<ggml_backend_t> backends() const;

    const gguf_file & file() const { return *file_; }

private:
    void load(const std::string & path);
    void release();                    // frees everything load() acquired (also after a failed load)
    void map_file(const std::string & path);
    void place_weights();
    // dgemma-cpu-repack.cpp: CPU weights in the CPU backend's repacked layouts
    repack_plan plan_repack(const std::vector<ggml_tensor *> & cpu_tensors) const;
    void upload_repacked(const repack_plan & plan, const std::function<void(size_t)> & progress);
    bool map_on_device(ggml_backend_t backend, const std::vector<ggml_tensor *> & tensors);
    std::vector<std::vector<ggml_tensor *>> weight_buffer_groups(ggml_backend_t backend,
                                                                 const std::vector<ggml_tensor *> & tensors) const;
    void open_devices();
    // Where layer il's weights go (il = -1: the global tensors): its GPU, or the CPU.
    ggml_backend_t layer_backend(int il) const;
    // The tensor overrides, compiled: (pattern, device index: -2 the CPU, -1 the tensor's layer's GPU).
    std::vector<std::pair<std::regex, int>> compile_overrides() const;
    // tok_embd_t, and lm_head where a copy of another type runs faster (dgemma-vocab-copies.cpp)
    void make_vocab_copies();
    ggml_tensor * new_derived(ggml_type type, int64_t ne0, int64_t ne1, const char * name);
    void make_rope_freqs();
    void report_progress(float fraction) const;
    ggml_tensor * get(const std::string & name, bool required = true) const;
    uint64_t file_offset(const std::string & name) const;   // absolute offset of a tensor's data

    std::unique_ptr<gguf_file> file_;       // also owns the weights' tensor metadata
    std::vector<ggml_context *> ctx_extra_; // derived tensors (new_derived)
    std::vector<ggml_backend_buffer_t> bufs_;
    void * map_ = nullptr;
    size_t map_size_ = 0;
};

// Whether the output layer's vocabulary-wide work takes the fused CPU kernels: the per-row reductions
// (and the draw restrictions top_k / top_p), the self-conditioning state as probabilities (sc_layout) and
// the vocabulary copies' CPU types (dgemma-vocab-copies.cpp). True when the global tensors and the
// embedding's own buffer are on the CPU (a tensor override can put token_embd on a GPU while the globals
// stay: the output product then runs there) and DGEMMA_GENERIC_REDUCTIONS is unset (tests, debugging: the
// backend-independent ops a GPU runs).
bool reductions_on_cpu(const model & m);

} // namespace dgemma
