// dgemma — a runtime for DiffusionGemma (block text diffusion on a Gemma-4 MoE backbone) on ggml.
//
// Usage:
//
//     #include "dgemma.h"
//
//     try {
//         dgemma::model_info info = dgemma::inspect_gguf("model.gguf");      // check only, no weights read
//         auto model = dgemma::load_model("model.gguf", dgemma::model_params{});
//         dgemma::context ctx(model, dgemma::context_params{});
//         std::vector<int32_t> prompt = {2, 105, ...};
//         ctx.encode(prompt.data(), (int32_t) prompt.size());                 // prompt -> KV store
//         std::vector<int32_t> canvas(ctx.canvas_length(), 0);
//         std::vector<float> logits((size_t) canvas.size() * info.hp.n_vocab);
//         dgemma::step_params sp;                                            // first step: no self-cond.
//         ctx.decode_step(canvas.data(), sp, logits.data());                 // softcapped logits [C][V]
//     } catch (const dgemma::error & e) {
//         fprintf(stderr, "%s\n", e.what());   // names the file and the problem
//     }
//
// Contract:
// - Every failure caused by input (a missing, truncated or foreign file, a missing key, a tensor of the
//   wrong shape or type) is reported as a thrown dgemma::error whose message starts with the file name.
//   Nothing in this API aborts the process on bad input.
// - Functions are thread-safe unless stated otherwise; the log callback is process-wide.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace dgemma {

// The one exception type the engine throws for failures caused by input or the environment.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Hyper-parameters of a DiffusionGemma text model, as stored in (or defaulted for) a GGUF.
struct hparams {
    int32_t n_layer            = 0;
    int32_t n_ctx_train        = 0;    // context_length
    int32_t n_embd             = 0;    // hidden size H
    int32_t n_ff               = 0;    // dense MLP width (also the self-conditioning MLP width)
    int32_t n_head             = 0;    // query heads (all layers)
    int32_t head_dim_full      = 0;    // key/value length of full-attention layers
    int32_t head_dim_swa       = 0;    // key/value length of sliding layers
    int32_t n_rot_full         = 0;    // rope.dimension_count (partial rotation comes from rope_freqs)
    int32_t n_rot_swa          = 0;
    int32_t sliding_window     = 0;    // the config.json value; the decoder sees sliding_window - 1 cached keys
    int32_t n_expert           = 0;
    int32_t n_expert_used      = 0;
    int32_t n_ff_expert        = 0;
    int32_t n_vocab            = 0;    // rows of token_embd
    float   rms_eps            = 1e-6f;
    float   rope_base_full     = 1e6f;
    float   rope_base_swa      = 1e4f;
    float   logit_softcap      = 30.0f;

    std::vector<int32_t> n_head_kv_per_layer;
    std::vector<bool>    swa_per_layer;   // true = sliding-window layer

    bool    is_swa(int il) const { return swa_per_layer.at(il); }
    int32_t n_head_kv(int il) const { return n_head_kv_per_layer.at(il); }
    int32_t head_dim(int il) const { return is_swa(il) ? head_dim_swa : head_dim_full; }
};

// Sampler defaults stored in the GGUF (`diffusion.*`), reference defaults where a key is absent.
struct diffusion_defaults {
    int32_t canvas_length        = 256;
    int32_t max_denoising_steps  = 48;
    float   t_min                = 0.4f;
    float   t_max                = 0.8f;
    float   entropy_bound        = 0.1f;
    int32_t stability_threshold  = 1;
    float   confidence_threshold = 0.005f;
};

struct tokenizer_info {
    std::string model;                 // tokenizer.ggml.model ("gemma4")
    int32_t n_tokens       = 0;
    int32_t n_merges       = 0;
    int32_t bos_id         = -1;
    int32_t eos_id         = -1;
    int32_t pad_id         = -1;
    bool    add_bos        = true;
    bool    has_chat_template = false;
    std::vector<int32_t> eog_ids;      // end-of-generation set: eos + <turn|> + <|tool_response>, where present
};

struct layer_info {
    bool    sliding   = true;
    int32_t n_head_kv = 0;
    int32_t head_dim  = 0;
    bool    has_v     = false;         // only sliding layers have attn_v; full layers take V from K
    bool    fused_gate_up = true;      // ffn_gate_up_exps (true) or split ffn_gate_exps + ffn_up_exps
};

struct tensor_info {
    std::string          name;
    std::string          type;         // ggml type name ("f32", "q8_0", ...)
    std::vector<int64_t> shape;        // ggml order: fastest dimension first
    uint64_t             offset = 0;   // absolute offset in the file
    uint64_t             nbytes = 0;
};

struct model_info {
    std::string path;
    uint64_t    file_size   = 0;
    uint32_t    gguf_version = 0;
    std::string architecture;
    std::string name;                  // general.name, if any
    int32_t     file_type   = -1;      // general.file_type, -1 when absent
    hparams             hp;
    diffusion_defaults  diffusion;
    tokenizer_info      tokenizer;
    std::vector<layer_info>  layers;
    std::vector<tensor_info> tensors;  // in file order
    std::vector<std::string> defaulted_keys;   // optional keys that were absent and took reference defaults
};

// Open a GGUF, read its metadata and check every required key and every tensor's presence, type and shape
// against the DiffusionGemma schema. No tensor data is read. Throws dgemma::error.
model_info inspect_gguf(const std::string & path);

// ---- loading and running --------------------------------------------------------------------------------

struct model_params {
    int32_t n_gpu_layers = -1;     // layers whose weights live on the GPU (-1: all, and the globals too)
    bool    cpu_moe      = false;  // keep expert tensors on the CPU (small GPUs)
    int32_t n_cpu_moe    = 0;      // keep the expert tensors of the first n_cpu_moe layers on the CPU
    // CPU expert weights in the CPU backend's repacked layouts where it has one for their type (on AVX2:
    // q4_0, q4_K, iq4_nl, mxfp4): faster expert products and prompts, for a copy made at load (seconds per
    // GB) instead of reading the file's pages as they are first used. llama.cpp's --no-repack is false.
    bool    cpu_repack   = true;
    // llama.cpp's --override-tensor: (regular expression searched in the tensor name, device). The first
    // match wins over every rule above. Devices: "CPU", "GPU" (the device in use) or its ggml name
    // ("CUDA0", "Metal"); naming a GPU where none is in use is an error.
    std::vector<std::pair<std::string, std::string>> tensor_overrides;
    // ggml RPC servers ("host:port", each started with rpc_serve / dgemma-rpc-server): their devices join
    // the local GPU, and the GPU layers are split over all of them in order (the globals on the last).
    std::vector<std::string> rpc_servers;
    // Called while loading with the fraction done in [0, 1] (weights copied to devices, then the
    // transposed embedding built), last with 1. May throw to abort the load.
    std::function<void(float)> progress;
};

struct context_params {
    int32_t n_ctx     = 4096;      // positions the context can hold: prompt + every canvas
    int32_t n_batch   = 512;       // prompt tokens per encoder chunk (bounds compute memory)
    int32_t n_threads = 0;         // CPU threads; 0 = hardware concurrency
    // KV store element types: "f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0" (the types
    // flash attention reads on every backend). Quantized types need head dims their block divides.
    std::string type_k = "f32";
    std::string type_v = "f32";
};

class model;    // weights on backends; shared by contexts, immutable after load
class context_impl;

// A node of a computed graph, as ggml describes it (for tests of backend support rules).
struct graph_tensor_info {
    bool present = false;
    std::string name;
    std::string op;          // ggml_op_desc: "MUL_MAT", "FLASH_ATTN_EXT", "NONE" for leaves
    int type = 0;            // ggml_type
    int64_t ne[4] = {0, 0, 0, 0};
    size_t nb[4] = {0, 0, 0, 0};
    int32_t op_param0 = 0;   // op_params[0]: for MUL_MAT the required accumulator precision (10: F32)
};
struct graph_node_info {
    graph_tensor_info node;
    graph_tensor_info src[4];
};

// Per-column sums of squared input activations of every weight matrix a context's graphs multiply by,
// for importance matrices (llama.cpp's imatrix statistics): for weight W with rows of K values,
// sums[m * K + j] adds x_j^2 over every input row x that reached matrix m (m: the expert of an expert
// tensor, else 0), and counts[m] the number of those rows.
struct activation_entry {
    int64_t row_length = 0;
    std::vector<double>  sums;     // [n_mat][row_length]
    std::vector<int64_t> counts;   // [n_mat]
};
using activation_stats = std::map<std::string, activation_entry>;

// Time a context's graphs spent in one kind of node (op_profile): op as ggml names it ("MUL_MAT_ID"), and
// what it computes without its layer ("ffn_down_exps.weight" for a matrix product, else the node's name).
struct op_time {
    std::string op, what;
    int64_t count = 0;       // nodes computed
    double seconds = 0.0;
};

// Loads and checks a GGUF (as inspect_gguf) and places its weights. On the CPU the weights are used
// straight from the memory-mapped file, as on a device that can wrap host memory (Metal); others get copies
// in buffers of at most their maximum buffer size. Throws dgemma::error.
std::shared_ptr<model> load_model(const std::string & path, const model_params & params);
const model_info & get_model_info(const model & m);
// Where each weight tensor lives: (GGUF tensor name, ggml buffer name: "CPU" for the mapping, "CUDA0", ...;
// "NAME #k" where a device's weights span several buffers), in file order.
std::vector<std::pair<std::string, std::string>> get_weight_placement(const model & m);

enum class self_cond {
    none,       // first step of a canvas: no self-conditioning (the post-norm still runs)
    previous,   // this context's previous step (its softmax is kept where the output layer runs)
    given,      // logits supplied by the caller ([C][V] floats)
};

// The categorical draw of accepted positions (an extension; the defaults are the reference). The
// entropy-bound acceptance and self-conditioning always use the schedule's processed logits L / T_k; only
// the token drawn for an accepted position changes: it comes from softmax(L / (T_k * temperature))
// restricted to the top_k most likely tokens (0: all) and to the smallest set of those holding top_p of
// their probability (1: all); exactly top_k tokens are kept (ties at the k-th: the lower ids). temperature
// 0 takes the argmax, and so does any temperature below 1e-4. top_k / top_p need the CPU sampling kernel
// (the output layer on the CPU); elsewhere they are refused before anything is computed.
struct draw_params {
    float   temperature = 1.0f;
    int32_t top_k       = 0;
    float   top_p       = 1.0f;
};

struct step_params {
    self_cond   sc          = self_cond::none;
    const float * sc_logits = nullptr;   // for self_cond::given: [C][V], already divided by the temperature
    float       temperature = 1.0f;      // the step's processed logits (their softmax kept for `previous`) are logits / T
    draw_params draw;                    // the categorical sample of decode_step_reduced
};

// ---- quantization (ggml's own routines: byte-identical to llama.cpp's llama-quantize) ----------------
struct quant_type_info {
    int         id = 0;           // ggml_type (the GGUF tensor type id)
    std::string name;             // ggml's name: "q4_K", "iq2_xxs", "bf16", ...
    int64_t     block_size = 0;   // values per block: a row length must be a multiple of it
    size_t      type_size = 0;    // bytes per block
    bool        is_quantized = false;
    bool        can_quantize = false;    // ggml has an encoder (quantize_rows accepts it)
    bool        can_dequantize = false;  // ggml has a decoder to f32
    bool        needs_imatrix = false;   // ggml refuses it without an importance matrix
};
// Every type this ggml knows.
std::vector<quant_type_info> quant_types();

// Seconds of each of `repeats` runs (after a warm-up) of one ggml matrix product: a [K, M] matrix of
// `type` ("q4_K", "f16", ...) times a [K, N] f32 matrix, f32 accumulation, on the CPU backend with
// n_threads or on the GPU. 2 * K * M * N floating-point operations per run.
std::vector<double> time_matmul(const std::string & type, int64_t K, int64_t M, int64_t N, int n_threads,
                                int repeats, bool on_gpu);
// Encodes nrows rows of n_per_row floats as `type` into dst (nrows * row size bytes), the rows split over
// n_threads; imatrix: n_per_row importance weights (the mean squared activation of each column) or null.
// Returns the bytes written. Throws dgemma::error for an unknown type, a row length the type's block
// does not divide, a type that needs an importance matrix without one, or output ggml finds invalid.
size_t quantize_rows(int type, const float * src, void * dst, int64_t nrows, int64_t n_per_row,
                     const float * imatrix, int n_threads);
// Bytes of one row of n_per_row values of `type`; throws dgemma::error (naming `what`) for an unknown type
// or a row length its block does not divide.
size_t quant_row_bytes(int type, int64_t n_per_row, const char * what);
// Decodes nrows rows of `type` into floats.
void dequantize_rows(int type, const void * src, float * dst, int64_t nrows, int64_t n_per_row, int n_threads);

// Serves `device` ("" = the first local GPU, else the CPU; or a ggml device name) to RPC clients at
// endpoint "host:port" (ggml's RPC server: one client at a time). Blocks until the process is signalled;
// cache_dir ("" = none) keeps tensors clients sent, to skip resending them. Throws dgemma::error for a
// bad endpoint or device, or a build without RPC. Anyone who can reach the port can use the device and
// read what is sent: bind to a trusted network only.
void rpc_serve(const std::string & endpoint, const std::string & device, int n_threads, const std::string & cache_dir);

// GPU devices this build can place weights on, discrete or integrated, by name (empty: CPU only). Weights go
// to the first discrete GPU, else the first integrated one; loading logs which.
std::vector<std::string> gpu_devices();

// Memory a context holds, in bytes.
struct context_memory {
    size_t kv_bytes      = 0;   // the prompt KV store
    size_t sc_bytes      = 0;   // the self-conditioning state (the previous step's softmax)
    size_t compute_bytes = 0;   // the scheduler's compute buffers (largest graph so far)
    std::string device;         // where the output layer runs ("CPU", "CUDA0", ...)
};

// One sequence: the prompt KV store and the decoder state. Not thread-safe; one context per thread.
class context {
public:
    context(std::shared_ptr<model> m, const context_params & params);
    ~context();
    context(const context &) = delete;
    context & operator=(const context &) = delete;

    // Encodes tokens causally at positions n_past() .. n_past()+n-1 and appends their K/V to the store.
    void encode(const int32_t * tokens, int32_t n);

    // One denoising step over a canvas of canvas_length() tokens at positions n_past() .. n_past()+C-1.
    // The decoder reads the store and never changes what it holds for positions < n_past().
    // logits_out (nullable): [C][V] softcapped f32 logits.
    void decode_step(const int32_t * canvas, const step_params & sp, float * logits_out);

    int32_t n_past() const;
    int32_t n_ctx() const;
    int32_t canvas_length() const;
    const model_info & info() const;

    // K (after k_norm + RoPE) and V (after the unweighted norm) of layer il for the stored positions the
    // decoder can see (full layers: all; sliding layers: the last sliding_window - 1), each [n][n_kv][hd].
    void read_kv(int il, std::vector<int32_t> & positions, std::vector<float> & k, std::vector<float> & v) const;

    // Drops the stored K/V of positions >= n (multi-turn edits, regenerate).
    void truncate(int32_t n);

    // Decoder graphs built so far: one per canvas (store length), reused by every step of that canvas.
    int64_t decoder_graph_builds() const;
    // Bytes the last decoder step uploaded to the device for its inputs: O(canvas) plus one sliding-mask
    // row, whatever the stored prefix (plus n_vocab x canvas floats when the caller gave sc logits).
    size_t step_input_bytes() const;

    context_memory memory() const;
    int32_t n_threads() const;
    bool samples_on_cpu() const;   // draw restrictions (top_k / top_p) are available

    // decode_step plus the per-row reductions of the processed logits (logits / temperature), computed on
    // the device: argmax (lowest index on ties), entropy (nats), and the inverse-CDF categorical sample
    // against uniforms[i] in [0, 1). Each output holds C values; logits_out may be null.
    void decode_step_reduced(const int32_t * canvas, const step_params & sp, const float * uniforms,
                             int32_t * argmax, float * entropy, int32_t * sample, float * logits_out);

    // The nodes of the graph computed last (an encode or a decoder step).
    std::vector<graph_node_info> last_graph() const;

    // While on, every encode and decoder step adds its matrix inputs to activations() (slower: the
    // scheduler stops after each matrix product so its input can be read).
    void collect_activations(bool on);
    const activation_stats & activations() const;
    void clear_activations();

    // While on, every graph is computed one node at a time and each node's time is added to op_profile()
    // (slower than a normal step: a profile of where the time goes, not a timing).
    void profile_ops(bool on);
    std::vector<op_time> op_profile() const;   // largest total first
    void clear_op_profile();

private:
    std::unique_ptr<context_impl> impl_;
};

// ---- generation (the reference generate() loop, SPEC §6) ---------------------------------------------

struct draft_event {
    int32_t canvas_index = 0;
    int32_t step = 0;              // 1-based step within the canvas
    int32_t steps_remaining = 0;   // k: counts down from max_denoising_steps
    float   temperature = 0.0f;
    int32_t n = 0;                 // canvas length
    const int32_t * argmax = nullptr;     // the draft: argmax canvas of this step
    const uint8_t * accepted = nullptr;   // entropy-bound acceptance per position
    const float * entropy = nullptr;      // per position, nats, of the tempered distribution
    int32_t n_accepted = 0;
    float   mean_entropy = 0.0f;
};

struct commit_event {
    int32_t canvas_index = 0;
    const int32_t * tokens = nullptr;     // committed tokens of this canvas (cut after the first EOS / limit)
    int32_t n_tokens = 0;
    int32_t steps = 0;                    // denoising steps this canvas took
    bool    last = false;                 // generation ends with this canvas
};

struct generate_stats {
    int32_t prompt_tokens = 0;
    double  prompt_ms = 0.0;
    std::vector<int32_t> steps_per_canvas;
    int32_t decoder_forwards = 0;
    double  decode_ms = 0.0;              // decoder steps and sampling, excluding re-encodes
    double  ttft_ms = 0.0;                // generate() start -> first committed canvas
    double  total_ms = 0.0;
    int32_t committed_tokens = 0;         // generated tokens up to and including the first EOS
    double  tokens_per_forward = 0.0;     // returned non-pad tokens / decoder forwards
    uint64_t peak_rss_bytes = 0;
};

struct generate_params {
    // Sampler settings; unset = the GGUF's diffusion.* defaults.
    std::optional<int32_t> max_denoising_steps;
    std::optional<double>  t_min, t_max, entropy_bound, confidence_threshold;
    std::optional<int32_t> stability_threshold;
    bool adaptive_stop = true;            // false: always run every step
    draw_params draw;                     // the draw for accepted positions (defaults: the reference)
    int32_t max_new_tokens = -1;          // a real cap on returned tokens; -1 = until EOS or n_ctx
    uint64_t seed = 0;
    std::vector<int32_t> eos_ids;         // empty = the GGUF's end-of-generation set
    std::optional<int32_t> pad_id;        // for tokens_per_forward; unset = the GGUF's

    // Canvas editing, over the generated positions (position i is slot i % C of canvas i / C; positions
    // past the end are ordinary). canvas_init[i] >= 0 starts position i from that token instead of uniform
    // noise (a warm start: transformers' decoder_input_ids for the first canvas); -1 leaves it noise. The
    // noise is drawn either way, so the random stream is the cold start's. canvas_frozen[i] != 0 fixes
    // position i to canvas_init[i] (which must be a token): it is never renoised, counts as accepted, is
    // left out of the entropy-bound budget and of the stop criterion's mean entropy, its argmax is the
    // fixed token (so it is what the canvas commits, and what the stability test compares), and a
    // canvas whose positions are all fixed is committed without a decoder step. Empty: nothing fixed.
    // Rules in docs/generation-contract.md.
    std::vector<int32_t> canvas_init;
    std::vector<uint8_t> canvas_frozen;   // empty or as long as canvas_init

    std::function<void(const draft_event &)> on_draft;    // every step
    std::function<void(const commit_event &)> on_commit;  // every canvas
    std::function<bool()> should_abort;                   // checked before every step

    // Injected random draws (tests): per canvas C initial tokens; per canvas and step C sampled tokens
    // and C noise tokens, laid out [canvas][step][C] for max_denoising_steps steps.
    const int32_t * forced_init = nullptr;
    const int32_t * forced_sampled = nullptr;
    const int32_t * forced_noise = nullptr;
    int32_t forced_canvases = 0;
};

struct generate_result {
    std::vector<int32_t> tokens;          // new tokens, the first EOS included when one was generated
    std::string finish_reason;            // "stop" (EOS), "length" (max_new_tokens or n_ctx), "abort"
    generate_stats stats;
};

// Appends `prompt` to the context's stored prefix, then generates canvas after canvas. The last committed
// canvas is not re-encoded (reference); pass it with the next turn's tokens to continue the conversation.
// n_prompt may be 0 when the context already holds the whole prompt: the stored K/V are used as they
// are, so the same prompt, seed and settings give the same tokens as when that prompt was encoded.
// Invalid settings throw dgemma::error before any compute; an abort leaves the context usable.
generate_result generate(context & ctx, const int32_t * prompt, int32_t n_prompt, const generate_params & params);

// The checks generate() starts with, alone: throws dgemma::error for an invalid setting.
void check_generate_params(const context & ctx, const generate_params & params);

// ---- tokenizer data --------------------------------------------------------------------------------------

struct vocab_data {
    std::string model;                    // tokenizer.ggml.model
    std::vector<std::string> tokens;
    std::vector<int32_t> types;           // llama.cpp token types (1 normal, 3 control, 4 user-defined, 6 byte)
    std::vector<std::string> merges;
    int32_t bos_id = -1, eos_id = -1, pad_id = -1;
    bool add_bos = true;
    std::string chat_template;            // empty when absent
    std::vector<int32_t> eog_ids;
};

// Reads the tokenizer arrays of any GGUF that has them (a model or a vocabulary-only file).
vocab_data read_vocab(const std::string & path);

// The tokenizer arrays of a loaded model, from the file it already has open.
vocab_data get_model_vocab(const model & m);

// Log sink for the engine and ggml. level: 1 = debug, 2 = info, 3 = warn, 4 = error (ggml's values).
// Without a callback, warnings and errors go to stderr.
using log_callback = void (*)(int level, const char * text, void * user_data);
void set_log_callback(log_callback cb, void * user_data);

// Version of the engine and of the ggml it was built with.
const char * version();
const char * ggml_version();

} // namespace dgemma
