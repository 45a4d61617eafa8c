// The DiffusionGemma GGUF schema (../shared/GGUF_SCHEMA.md): metadata key names and the tensor table.
// This is the single place that spells them; the converter's Python table mirrors it and the tests check
// both against each other through real files.
#pragma once

#include "dgemma.h"

#include <cstdint>
#include <string>
#include <vector>

namespace dgemma {

constexpr const char * ARCH_NAME = "diffusion-gemma";

// "{arch}.<suffix>"
std::string arch_key(const char * suffix);

namespace keys {
// relative to the architecture prefix
constexpr const char * BLOCK_COUNT         = "block_count";
constexpr const char * CONTEXT_LENGTH      = "context_length";
constexpr const char * EMBEDDING_LENGTH    = "embedding_length";
constexpr const char * FEED_FORWARD_LENGTH = "feed_forward_length";
constexpr const char * HEAD_COUNT          = "attention.head_count";
constexpr const char * HEAD_COUNT_KV       = "attention.head_count_kv";
constexpr const char * KEY_LENGTH          = "attention.key_length";
constexpr const char * VALUE_LENGTH        = "attention.value_length";
constexpr const char * KEY_LENGTH_SWA      = "attention.key_length_swa";
constexpr const char * VALUE_LENGTH_SWA    = "attention.value_length_swa";
constexpr const char * SLIDING_WINDOW      = "attention.sliding_window";
constexpr const char * SWA_PATTERN         = "attention.sliding_window_pattern";
constexpr const char * RMS_EPS             = "attention.layer_norm_rms_epsilon";
constexpr const char * CAUSAL              = "attention.causal";
constexpr const char * SHARED_KV_LAYERS    = "attention.shared_kv_layers";
constexpr const char * PER_LAYER_INPUT     = "embedding_length_per_layer_input";
constexpr const char * ROPE_BASE           = "rope.freq_base";
constexpr const char * ROPE_BASE_SWA       = "rope.freq_base_swa";
constexpr const char * ROPE_DIMS           = "rope.dimension_count";
constexpr const char * ROPE_DIMS_SWA       = "rope.dimension_count_swa";
constexpr const char * SOFTCAP             = "final_logit_softcapping";
constexpr const char * EXPERT_COUNT        = "expert_count";
constexpr const char * EXPERT_USED_COUNT   = "expert_used_count";
constexpr const char * EXPERT_FF_LENGTH    = "expert_feed_forward_length";
} // namespace keys

// absolute keys
constexpr const char * KEY_ARCH              = "general.architecture";
constexpr const char * KEY_NAME              = "general.name";
constexpr const char * KEY_FILE_TYPE         = "general.file_type";
constexpr const char * KEY_CANVAS_LENGTH     = "diffusion.canvas_length";
constexpr const char * KEY_EB_MAX_STEPS      = "diffusion.eb_max_steps";
constexpr const char * KEY_EB_T_MIN          = "diffusion.eb_t_min";
constexpr const char * KEY_EB_T_MAX          = "diffusion.eb_t_max";
constexpr const char * KEY_EB_ENTROPY_BOUND  = "diffusion.eb_entropy_bound";
constexpr const char * KEY_EB_STABILITY      = "diffusion.eb_stability_threshold";
constexpr const char * KEY_EB_CONFIDENCE     = "diffusion.eb_confidence_threshold";
constexpr const char * KEY_TOK_MODEL         = "tokenizer.ggml.model";
constexpr const char * KEY_TOK_TOKENS        = "tokenizer.ggml.tokens";
constexpr const char * KEY_TOK_SCORES        = "tokenizer.ggml.scores";
constexpr const char * KEY_TOK_TYPES         = "tokenizer.ggml.token_type";
constexpr const char * KEY_TOK_MERGES        = "tokenizer.ggml.merges";
constexpr const char * KEY_TOK_BOS           = "tokenizer.ggml.bos_token_id";
constexpr const char * KEY_TOK_EOS           = "tokenizer.ggml.eos_token_id";
constexpr const char * KEY_TOK_PAD           = "tokenizer.ggml.padding_token_id";
constexpr const char * KEY_TOK_ADD_BOS       = "tokenizer.ggml.add_bos_token";
constexpr const char * KEY_TOK_EOG_IDS       = "tokenizer.ggml.eog_token_ids";
constexpr const char * KEY_CHAT_TEMPLATE     = "tokenizer.chat_template";

// What a tensor is, which decides the types it may have.
enum class tensor_class {
    vector,     // norms, scales, per-expert scale, layer scalars, rope_freqs: f32 (f16/bf16 accepted)
    matrix,     // projections, embeddings, experts: any float or quantized ggml type
};

// One expected tensor: its name, its shape in ggml order (trailing dims omitted) and its class.
struct tensor_spec {
    std::string          name;
    std::vector<int64_t> ne;
    tensor_class         cls;
    std::vector<std::string> aliases;   // names accepted on load instead of `name`
};

// Global tensors.
std::vector<tensor_spec> global_tensor_specs(const hparams & hp);

// Tensors of layer il. `fused_gate_up` chooses ffn_gate_up_exps over the split ffn_gate_exps/ffn_up_exps.
std::vector<tensor_spec> layer_tensor_specs(const hparams & hp, int il, bool fused_gate_up);

// Name of the fused expert gate/up tensor of layer il (used to detect which form a file uses).
std::string fused_gate_up_name(int il);

} // namespace dgemma
