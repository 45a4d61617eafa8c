#include "dgemma-hparams.h"
#include "dgemma-arch.h"
#include "dgemma-sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace dgemma {

namespace {

// Bounds on counts a file states, before anything is sized from them: far above what DiffusionGemma means
// (canvas 256, 48 steps, window 1024) yet small enough that a hostile file cannot make a context allocate
// gigabytes (the self-conditioning state is n_vocab x canvas floats) or a generation run for hours.
constexpr int64_t MAX_CANVAS_LENGTH  = 4096;
constexpr int64_t MAX_DEFAULT_STEPS  = 1024;
constexpr int64_t MAX_SLIDING_WINDOW = 1 << 20;

int32_t as_i32(const gguf_file & f, const std::string & key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) {
        throw error(f.where("metadata key '" + key + "' = " + std::to_string(v) + " is out of range [" +
                            std::to_string(lo) + ", " + std::to_string(hi) + "]"));
    }
    return (int32_t) v;
}

int32_t req_i32(const gguf_file & f, const char * suffix, int64_t lo = 1,
                int64_t hi = std::numeric_limits<int32_t>::max()) {
    const std::string key = arch_key(suffix);
    return as_i32(f, key, f.get_int(key), lo, hi);
}

float req_f32(const gguf_file & f, const char * suffix) {
    const std::string key = arch_key(suffix);
    double v = f.get_float(key);
    if (!std::isfinite(v)) throw error(f.where("metadata key '" + key + "' is not a finite number"));
    return (float) v;
}

void fail_if(bool bad, const gguf_file & f, const std::string & msg) {
    if (bad) throw error(f.where(msg));
}

} // namespace

hparams load_hparams(const gguf_file & f, int32_t n_vocab, std::vector<std::string> & defaulted) {
    hparams hp;
    hp.n_layer        = req_i32(f, keys::BLOCK_COUNT, 1, 4096);
    hp.n_ctx_train    = req_i32(f, keys::CONTEXT_LENGTH);
    hp.n_embd         = req_i32(f, keys::EMBEDDING_LENGTH);
    hp.n_ff           = req_i32(f, keys::FEED_FORWARD_LENGTH);
    hp.n_head         = req_i32(f, keys::HEAD_COUNT);
    hp.head_dim_full  = req_i32(f, keys::KEY_LENGTH);
    hp.head_dim_swa   = req_i32(f, keys::KEY_LENGTH_SWA);
    hp.sliding_window = req_i32(f, keys::SLIDING_WINDOW, 1, MAX_SLIDING_WINDOW);
    hp.n_expert       = req_i32(f, keys::EXPERT_COUNT);
    hp.n_expert_used  = req_i32(f, keys::EXPERT_USED_COUNT);
    hp.n_ff_expert    = req_i32(f, keys::EXPERT_FF_LENGTH);
    hp.rms_eps        = req_f32(f, keys::RMS_EPS);
    hp.rope_base_full = req_f32(f, keys::ROPE_BASE);
    hp.rope_base_swa  = req_f32(f, keys::ROPE_BASE_SWA);
    hp.n_vocab        = n_vocab;

    const int32_t vfull = req_i32(f, keys::VALUE_LENGTH);
    const int32_t vswa  = req_i32(f, keys::VALUE_LENGTH_SWA);
    fail_if(vfull != hp.head_dim_full, f, "attention.value_length (" + std::to_string(vfull) +
            ") differs from attention.key_length (" + std::to_string(hp.head_dim_full) +
            "); DiffusionGemma's full layers take V from K, so they must be equal");
    fail_if(vswa != hp.head_dim_swa, f, "attention.value_length_swa (" + std::to_string(vswa) +
            ") differs from attention.key_length_swa (" + std::to_string(hp.head_dim_swa) + ")");

    const std::string rope_key = arch_key(keys::ROPE_DIMS);
    if (auto v = f.opt_int(rope_key)) {
        hp.n_rot_full = as_i32(f, rope_key, *v, 2, hp.head_dim_full);
    } else {
        hp.n_rot_full = hp.head_dim_full;
        defaulted.push_back(rope_key);
    }
    const std::string rope_swa_key = arch_key(keys::ROPE_DIMS_SWA);
    if (auto v = f.opt_int(rope_swa_key)) {
        hp.n_rot_swa = as_i32(f, rope_swa_key, *v, 2, hp.head_dim_swa);
    } else {
        hp.n_rot_swa = hp.head_dim_swa;
        defaulted.push_back(rope_swa_key);
    }
    fail_if(hp.head_dim_full % 2 || hp.head_dim_swa % 2 || hp.n_rot_full % 2 || hp.n_rot_swa % 2, f,
            "head dimensions and rope dimension counts must be even (NEOX rotation pairs dims j and j+hd/2)");

    const std::string softcap_key = arch_key(keys::SOFTCAP);
    if (auto v = f.opt_float(softcap_key)) {
        fail_if(!std::isfinite(*v) || *v < 0.0, f, "final_logit_softcapping must be a finite number >= 0");
        hp.logit_softcap = (float) *v;
    } else {
        hp.logit_softcap = 30.0f;   // reference: a class attribute never serialized into config.json
        defaulted.push_back(softcap_key);
    }

    const std::string kv_key = arch_key(keys::HEAD_COUNT_KV);
    for (int64_t v : f.get_int_array(kv_key, (size_t) hp.n_layer)) {
        hp.n_head_kv_per_layer.push_back(as_i32(f, kv_key, v, 1, hp.n_head));
    }
    hp.swa_per_layer = f.get_bool_array(arch_key(keys::SWA_PATTERN), (size_t) hp.n_layer);

    for (int il = 0; il < hp.n_layer; il++) {
        fail_if(hp.n_head % hp.n_head_kv(il) != 0, f,
                "layer " + std::to_string(il) + ": head_count " + std::to_string(hp.n_head) +
                " is not a multiple of its head_count_kv " + std::to_string(hp.n_head_kv(il)));
    }
    fail_if(hp.n_expert_used > hp.n_expert, f, "expert_used_count (" + std::to_string(hp.n_expert_used) +
            ") exceeds expert_count (" + std::to_string(hp.n_expert) + ")");
    fail_if(!(hp.rms_eps > 0.0f), f, "attention.layer_norm_rms_epsilon must be > 0");
    fail_if(!(hp.rope_base_full > 0.0f) || !(hp.rope_base_swa > 0.0f), f, "rope.freq_base values must be > 0");

    if (auto v = f.opt_int(arch_key(keys::SHARED_KV_LAYERS))) {
        fail_if(*v != 0, f, "attention.shared_kv_layers = " + std::to_string(*v) +
                " is not supported (DiffusionGemma shares no KV layers)");
    }
    if (auto v = f.opt_int(arch_key(keys::PER_LAYER_INPUT))) {
        fail_if(*v != 0, f, "embedding_length_per_layer_input = " + std::to_string(*v) +
                " is not supported (DiffusionGemma has no per-layer inputs)");
    }
    return hp;
}

diffusion_defaults load_diffusion_defaults(const gguf_file & f, std::vector<std::string> & defaulted) {
    diffusion_defaults d;
    d.canvas_length = as_i32(f, KEY_CANVAS_LENGTH, f.get_int(KEY_CANVAS_LENGTH), 1, MAX_CANVAS_LENGTH);

    auto opt_i = [&](const char * key, int32_t & dst, int64_t lo, int64_t hi) {
        if (auto v = f.opt_int(key)) dst = as_i32(f, key, *v, lo, hi);
        else defaulted.push_back(key);
    };
    auto opt_f = [&](const char * key, float & dst) {
        if (auto v = f.opt_float(key)) {
            fail_if(!std::isfinite(*v), f, std::string("metadata key '") + key + "' is not a finite number");
            dst = (float) *v;
        } else {
            defaulted.push_back(key);
        }
    };
    opt_i(KEY_EB_MAX_STEPS, d.max_denoising_steps, 1, MAX_DEFAULT_STEPS);
    opt_f(KEY_EB_T_MIN, d.t_min);
    opt_f(KEY_EB_T_MAX, d.t_max);
    opt_f(KEY_EB_ENTROPY_BOUND, d.entropy_bound);
    opt_i(KEY_EB_STABILITY, d.stability_threshold, 0, MAX_DEFAULT_STEPS);
    opt_f(KEY_EB_CONFIDENCE, d.confidence_threshold);

    fail_if(d.t_min < 0.0f || d.t_max <= d.t_min, f, "diffusion.eb_t_min/eb_t_max must satisfy 0 <= t_min < t_max");
    fail_if(!(schedule_temperature(d.t_min, d.t_max, 1, d.max_denoising_steps) >= MIN_STEP_TEMPERATURE), f,
            "diffusion.eb_t_min/eb_t_max/eb_max_steps give a lowest step temperature below " +
                std::to_string(MIN_STEP_TEMPERATURE));
    fail_if(!(d.entropy_bound > 0.0f), f, "diffusion.eb_entropy_bound must be > 0");
    fail_if(!(d.confidence_threshold > 0.0f), f, "diffusion.eb_confidence_threshold must be > 0");
    return d;
}

tokenizer_info load_tokenizer_info(const gguf_file & f, int32_t n_vocab) {
    tokenizer_info t;
    t.model = f.get_str(KEY_TOK_MODEL);
    const size_t n_tok = f.array_size(KEY_TOK_TOKENS);
    fail_if(n_tok == 0, f, std::string("missing or empty '") + KEY_TOK_TOKENS + "'; the file carries no vocabulary");
    fail_if((int64_t) n_tok != n_vocab, f, "the vocabulary has " + std::to_string(n_tok) +
            " tokens but token_embd.weight has " + std::to_string(n_vocab) + " rows");
    t.n_tokens = (int32_t) n_tok;
    t.n_merges = (int32_t) f.array_size(KEY_TOK_MERGES);
    for (const char * key : {KEY_TOK_SCORES, KEY_TOK_TYPES}) {
        if (f.has(key)) {
            fail_if(f.array_size(key) != n_tok, f, std::string("'") + key + "' has " +
                    std::to_string(f.array_size(key)) + " entries, expected " + std::to_string(n_tok));
        }
    }
    auto id = [&](const char * key) -> int32_t {
        auto v = f.opt_int(key);
        if (!v) return -1;
        return as_i32(f, key, *v, 0, n_vocab - 1);
    };
    t.bos_id = id(KEY_TOK_BOS);
    t.eos_id = id(KEY_TOK_EOS);
    t.pad_id = id(KEY_TOK_PAD);
    t.add_bos = f.opt_bool(KEY_TOK_ADD_BOS).value_or(true);
    fail_if(t.add_bos && t.bos_id < 0, f, std::string("'") + KEY_TOK_BOS + "' is missing but every prompt starts "
            "with it (tokenizer.ggml.add_bos_token is true or absent); convert the file again with dgemma-convert");
    t.has_chat_template = f.has(KEY_CHAT_TEMPLATE);

    // End-of-generation set. reference: generation_config eos_token_id = [1, 106, 50] (<eos>, <turn|>,
    // <|tool_response>); files carry only eos_token_id, so the rest is found by token text.
    auto add = [&](int32_t v) {
        if (v >= 0 && std::find(t.eog_ids.begin(), t.eog_ids.end(), v) == t.eog_ids.end()) t.eog_ids.push_back(v);
    };
    add(t.eos_id);
    if (f.has(KEY_TOK_EOG_IDS)) {
        for (int64_t v : f.get_int_array(KEY_TOK_EOG_IDS, f.array_size(KEY_TOK_EOG_IDS))) {
            add(as_i32(f, KEY_TOK_EOG_IDS, v, 0, n_vocab - 1));
        }
    }
    for (const char * text : {"<turn|>", "<|tool_response>"}) {
        add(f.find_string_in_array(KEY_TOK_TOKENS, text));
    }
    return t;
}

} // namespace dgemma
