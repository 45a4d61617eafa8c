#include "dgemma-activations.h"
#include "dgemma-decoder.h"
#include "dgemma-encoder.h"
#include "dgemma-kv.h"
#include "dgemma-log.h"
#include "dgemma-model.h"
#include "dgemma-profile.h"
#include "dgemma-sampler.h"

#include "ggml-alloc.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <system_error>
#include <vector>
#include <cmath>
#include <thread>

namespace dgemma {

namespace {
constexpr int GRAPH_SIZE = 16384;

struct graph_arena {
    ggml_context * ctx = nullptr;
    void reset() {
        if (ctx) ggml_free(ctx);
        ggml_init_params ip = { ggml_tensor_overhead() * GRAPH_SIZE + ggml_graph_overhead_custom(GRAPH_SIZE, false),
                                nullptr, true };
        ctx = ggml_init(ip);
    }
    ~graph_arena() { if (ctx) ggml_free(ctx); }
};
} // namespace

class context_impl {
public:
    context_impl(std::shared_ptr<model> m, const context_params & p)
        : m_(std::move(m)), p_(p),
          kv_(*m_, check_ctx(p, *m_), std::max(p.n_batch, m_->info.diffusion.canvas_length),
              m_->info.diffusion.canvas_length, kv_store_type(p.type_k, m_->info.hp, "type_k"),
              kv_store_type(p.type_v, m_->info.hp, "type_v")) {
        n_threads_ = p_.n_threads > 0 ? p_.n_threads : (int) std::max(1u, std::thread::hardware_concurrency());
        // Backends of our own, on the model's devices: a backend instance holds per-compute state (the CPU
        // backend its thread count and work buffer, CUDA its stream), so contexts that shared the model's
        // instances raced when they computed at the same time. The weights' buffers serve any instance.
        std::vector<ggml_backend_t> backends;
        for (ggml_backend_t mb : m_->backends()) {
            ggml_backend_dev_t dev = ggml_backend_get_device(mb);
            ggml_backend_t b = ggml_backend_dev_init(dev, nullptr);
            if (!b) throw error(std::string("cannot initialise a backend on ") + ggml_backend_dev_name(dev));
            backends_.emplace_back(b);
            backends.push_back(b);
            if (mb == m_->backend_cpu) cpu_ = b;
        }
        sched_.reset(ggml_backend_sched_new(backends.data(), nullptr, (int) backends.size(), GRAPH_SIZE, false, false));
        if (!sched_) throw error("cannot create the backend scheduler");

        const int64_t C = m_->info.diffusion.canvas_length;
        ggml_init_params ip = { ggml_tensor_overhead() * 2, nullptr, true };
        sc_ctx_.reset(ggml_init(ip));
        const sc_layout lay = self_conditioning_layout(*m_);
        sc_state_ = ggml_new_tensor_3d(sc_ctx_.get(), lay.type, lay.chunk, C, lay.n_chunks);
        ggml_set_name(sc_state_, "sc_state");
        sc_buf_.reset(ggml_backend_alloc_ctx_tensors(sc_ctx_.get(), m_->backend_globals));
        if (!sc_buf_) throw error("cannot allocate the self-conditioning state (" + std::to_string(ggml_nbytes(sc_state_) >> 20) + " MiB)");
        ggml_backend_buffer_clear(sc_buf_.get(), 0);
        reserve_worst_case();
    }

    // The compute buffers for the largest graphs this context can build (a full encoder batch and a
    // decoder step at the end of the store), allocated now: running out of memory is an error here, at
    // creation, never in the middle of an answer.
    void reserve_worst_case() {
        const int32_t n_ctx = kv_.n_ctx(), C = m_->info.diffusion.canvas_length, T = std::min(p_.n_batch, n_ctx);
        graph_arena a;
        a.reset();
        graph_builder g{a.ctx, *m_};
        encoder_graph eg = build_encoder(g, kv_, T, GRAPH_SIZE, n_ctx - T);
        if (!ggml_backend_sched_reserve(sched_.get(), eg.gf)) {
            throw error("cannot allocate the encoder's compute buffers (out of memory); lower n_ctx or n_batch");
        }
        if (n_ctx >= C) {
            a.reset();
            graph_builder gd{a.ctx, *m_};
            // the scaled draw: the largest graph of the kinds
            decoder_graph dg = build_decoder(gd, kv_, sc_state_, C, GRAPH_SIZE, n_ctx - C, draw_kind::scaled);
            if (!ggml_backend_sched_reserve(sched_.get(), dg.gf)) {
                throw error("cannot allocate the decoder's compute buffers (out of memory); lower n_ctx");
            }
        }
    }

    // OpenMP's runtime ends the process (status 1) when it cannot start a team's threads (a low ulimit -u,
    // an address-space cap too small for their stacks); ggml's own pool aborts. Start as many threads once,
    // all alive together as in a compute, while an error can still be raised instead.
    static void check_threads_can_start(int32_t n) {
        std::vector<std::thread> started;
        std::string failure;
        try {
            for (int32_t i = 1; i < n; i++) started.emplace_back([] {});
        } catch (const std::system_error & e) {
            failure = e.what();
        }
        for (auto & t : started) t.join();
        if (!failure.empty()) {
            throw error("n_threads " + std::to_string(n) + ": this process cannot start that many threads (only " +
                        std::to_string(started.size() + 1) + ": " + failure + "); use fewer");
        }
    }

    // Validates the parameters before the KV store is sized from them; returns n_ctx.
    static int32_t check_ctx(const context_params & p, const model & m) {
        if (p.n_ctx < 1) throw error("n_ctx must be >= 1, got " + std::to_string(p.n_ctx));
        // the decoder's masks compute positions in the graph as float32 (exact up to 2^24), and the stores
        // are padded in int32 arithmetic: past this the graph would read the wrong keys, or a view overflow
        constexpr int32_t MAX_N_CTX = 1 << 24;
        if (p.n_ctx > MAX_N_CTX) {
            throw error("n_ctx must be <= " + std::to_string(MAX_N_CTX) + " (positions are float32 in the decoder's "
                        "masks), got " + std::to_string(p.n_ctx));
        }
        // checked before anything is allocated: ggml's thread pool holds at most GGML_MAX_N_THREADS
        if (p.n_threads > GGML_MAX_N_THREADS) {
            throw error("n_threads must be <= " + std::to_string(GGML_MAX_N_THREADS) + ", got " +
                        std::to_string(p.n_threads));
        }
        if (p.n_batch < 1) throw error("n_batch must be >= 1, got " + std::to_string(p.n_batch));
        check_threads_can_start(p.n_threads);
        if (p.n_ctx > m.info.hp.n_ctx_train) {
            log_msg(LOG_WARN, "n_ctx %d exceeds the model's context_length %d\n", p.n_ctx, m.info.hp.n_ctx_train);
        }
        return p.n_ctx;
    }

    void encode(const int32_t * tokens, int32_t n) {
        if (n < 0) throw error("encode: negative token count");
        check_tokens(tokens, n, "encode");
        if (kv_.n_past() + n > kv_.n_ctx()) {
            throw error("encode: " + std::to_string(n) + " tokens after " + std::to_string(kv_.n_past()) +
                        " stored exceed n_ctx " + std::to_string(kv_.n_ctx()) + "; create the context with a larger n_ctx");
        }
        for (int32_t i0 = 0; i0 < n; i0 += p_.n_batch) {
            const int32_t T = std::min(p_.n_batch, n - i0);
            arena_.reset();
            graph_builder g{arena_.ctx, *m_};
            encoder_graph eg = build_encoder(g, kv_, T, GRAPH_SIZE);
            dec_graph_n_past_ = -1;   // the scheduler's allocation now belongs to this graph
            alloc(eg.gf);
            fill_encoder_inputs(eg, kv_, tokens + i0, T, m_->info.hp.sliding_window);
            compute(eg.gf);
            kv_.commit(kv_.n_past(), T);
        }
    }

    void decode_step(const int32_t * canvas, const step_params & sp, float * logits_out) {
        decode_step_reduced(canvas, sp, nullptr, nullptr, nullptr, nullptr, logits_out);
    }

    void decode_step_reduced(const int32_t * canvas, const step_params & sp, const float * uniforms,
                             int32_t * argmax, float * entropy, int32_t * sample, float * logits_out) {
        const int32_t C = m_->info.diffusion.canvas_length;
        const int64_t V = m_->info.hp.n_vocab;
        check_tokens(canvas, C, "decode_step");
        if (!(sp.temperature > 0.0f) || !std::isfinite(sp.temperature)) {
            throw error("decode_step: temperature must be a finite number > 0, got " + std::to_string(sp.temperature));
        }
        if (kv_.n_past() + C > kv_.n_ctx()) {
            throw error("decode_step: a canvas of " + std::to_string(C) + " after " + std::to_string(kv_.n_past()) +
                        " stored positions exceeds n_ctx " + std::to_string(kv_.n_ctx()) + "; use a larger n_ctx");
        }
        if (sp.sc == self_cond::given && !sp.sc_logits) throw error("decode_step: self_cond::given without logits");
        const draw_params draw = check_draw_params(sp.draw, (int32_t) V, reductions_on_cpu(*m_));
        if (dec_graph_n_past_ != kv_.n_past()) have_previous_ = false;   // a new canvas
        if (sp.sc == self_cond::previous && !have_previous_) {
            throw error("decode_step: no previous step to self-condition on");
        }
        // built and allocated once per canvas (per store length), reused for every step of it; rebuilt for
        // another draw kind only when a sample is asked for (any kind gives the argmax, entropy and logits).
        // The CPU kernel serves every kind with one graph.
        const draw_kind dk = reductions_on_cpu(*m_) ? draw_kind::scaled : draw_kind_for(draw);
        if (dec_graph_n_past_ != kv_.n_past() || (sample && dec_graph_draw_ != dk)) {
            dec_arena_.reset();
            graph_builder g{dec_arena_.ctx, *m_};
            dec_ = build_decoder(g, kv_, sc_state_, C, GRAPH_SIZE, -1, dk);
            alloc(dec_.gf);
            dec_graph_n_past_ = kv_.n_past();
            dec_graph_draw_ = dk;
            ++dec_builds_;
        }
        step_input_bytes_ = 0;
        if (sp.sc == self_cond::given) {
            step_input_bytes_ += set_self_conditioning(sc_state_, sp.sc_logits);
        }
        // Without self-conditioning the step multiplies the state's product by 0, which is exactly 0 only
        // when sc_state is finite. A step's own softmax is; the softmax of logits a caller gave (an inf among
        // them) or a step that failed half-way may not be: clear those once, not every canvas (n_vocab x
        // canvas values, 268 MB at the real shape in f32).
        if (sp.sc == self_cond::none && !sc_finite_) {
            ggml_backend_tensor_memset(sc_state_, 0, 0, ggml_nbytes(sc_state_));
            sc_finite_ = true;
        }
        step_input_bytes_ += fill_decoder_inputs(dec_, canvas, C, sp.temperature, sp.sc != self_cond::none, uniforms, draw,
                                                 logits_out != nullptr);
        sc_finite_ = false;
        compute(dec_.gf);
        sc_finite_ = sp.sc != self_cond::given;
        have_previous_ = true;
        if (logits_out) ggml_backend_tensor_get(dec_.logits, logits_out, 0, sizeof(float) * V * C);
        if (dec_.reduced && (argmax || entropy || sample)) {
            std::vector<float> red((size_t) 3 * C);
            ggml_backend_tensor_get(dec_.reduced, red.data(), 0, sizeof(float) * red.size());
            for (int32_t i = 0; i < C; i++) {
                if (argmax) argmax[i] = (int32_t) red[(size_t) 3 * i + 0];
                if (entropy) entropy[i] = red[(size_t) 3 * i + 1];
                if (sample) sample[i] = (int32_t) red[(size_t) 3 * i + 2];
            }
        } else if (!dec_.reduced) {
            // argmax and sample come back as exact float counts
            std::vector<float> am(C);
            if (argmax || (sample && draw.temperature <= 0.0f)) {
                ggml_backend_tensor_get(dec_.argmax, am.data(), 0, sizeof(float) * C);
                for (float & a : am) a = (float) V - a;   // exact: counts up to 2^24
            }
            if (argmax) for (int32_t i = 0; i < C; i++) argmax[i] = (int32_t) am[i];
            if (entropy) ggml_backend_tensor_get(dec_.entropy, entropy, 0, sizeof(float) * C);
            if (sample && !dec_.sample) {   // greedy: the argmax is drawn
                for (int32_t i = 0; i < C; i++) sample[i] = (int32_t) am[i];
            } else if (sample) {
                std::vector<float> cnt(C);
                ggml_backend_tensor_get(dec_.sample, cnt.data(), 0, sizeof(float) * C);
                for (int32_t i = 0; i < C; i++) sample[i] = std::min((int32_t) cnt[i], (int32_t) V - 1);
            }
        }
    }

    void read_kv(int il, std::vector<int32_t> & positions, std::vector<float> & k, std::vector<float> & v) const {
        const hparams & hp = m_->info.hp;
        if (il < 0 || il >= hp.n_layer) throw error("read_kv: layer " + std::to_string(il) + " out of range");
        const int32_t P = kv_.n_past();
        const int32_t first = hp.is_swa(il) ? std::max(0, P - kv_.window()) : 0;
        const int64_t row = (int64_t) hp.head_dim(il) * hp.n_head_kv(il);
        positions.clear();
        k.assign((size_t) (P - first) * row, 0.0f);
        v.assign((size_t) (P - first) * row, 0.0f);
        std::vector<uint8_t> raw;
        auto get_row = [&](ggml_tensor * store, int32_t slot, float * out) {
            const size_t nb = ggml_row_size(store->type, row);
            raw.resize(nb);
            ggml_backend_tensor_get(store, raw.data(), (size_t) slot * store->nb[1], nb);
            if (store->type == GGML_TYPE_F32) std::copy_n((const float *) raw.data(), row, out);
            else ggml_get_type_traits(store->type)->to_float(raw.data(), out, row);
        };
        for (int32_t p = first; p < P; p++) {
            const size_t i = (size_t) (p - first);
            get_row(kv_.k(il), kv_.slot(il, p), &k[i * row]);
            get_row(kv_.v(il), kv_.slot(il, p), &v[i * row]);
            positions.push_back(p);
        }
    }

    void truncate(int32_t n) { kv_.truncate(n); }

    context_memory memory() const {
        context_memory mem;
        mem.kv_bytes = kv_.nbytes();
        mem.sc_bytes = ggml_backend_buffer_get_size(sc_buf_.get());
        for (const auto & b : backends_) mem.compute_bytes += ggml_backend_sched_get_buffer_size(sched_.get(), b.get());
        mem.device = ggml_backend_name(m_->backend_globals);
        return mem;
    }
    int32_t n_threads() const { return n_threads_; }
    bool samples_on_cpu() const { return reductions_on_cpu(*m_); }
    int64_t decoder_graph_builds() const { return dec_builds_; }
    size_t step_input_bytes() const { return step_input_bytes_; }

    const model_info & info() const { return m_->info; }
    std::vector<graph_node_info> last_graph() const {
        std::vector<graph_node_info> out;
        if (!last_gf_) return out;
        auto describe = [](const ggml_tensor * t) {
            graph_tensor_info d;
            if (!t) return d;
            d.present = true;
            d.name = ggml_get_name(t);
            d.op = ggml_op_desc(t);
            d.type = t->type;
            for (int i = 0; i < 4; i++) { d.ne[i] = t->ne[i]; d.nb[i] = t->nb[i]; }
            d.op_param0 = t->op_params[0];
            return d;
        };
        for (int i = 0; i < ggml_graph_n_nodes(last_gf_); i++) {
            ggml_tensor * t = ggml_graph_node(last_gf_, i);
            graph_node_info n;
            n.node = describe(t);
            for (int j = 0; j < 4; j++) n.src[j] = describe(t->src[j]);
            out.push_back(std::move(n));
        }
        return out;
    }
    void collect_activations(bool on) { collecting_ = on; }
    void profile_ops(bool on) { profiling_ = on; }
    std::vector<op_time> op_profile() const {
        std::vector<op_time> out;
        for (const auto & [key, e] : profiler_.times) out.push_back(e);
        std::sort(out.begin(), out.end(), [](const op_time & a, const op_time & b) { return a.seconds > b.seconds; });
        return out;
    }
    void clear_op_profile() { profiler_.times.clear(); }
    const activation_stats & activations() const { return activations_; }
    void clear_activations() { activations_.clear(); }
    int32_t n_past() const { return kv_.n_past(); }
    int32_t n_ctx() const { return kv_.n_ctx(); }

private:
    void check_tokens(const int32_t * t, int32_t n, const char * what) const {
        const int32_t V = m_->info.hp.n_vocab;
        if (n > 0 && !t) throw error(std::string(what) + ": null token array");
        for (int32_t i = 0; i < n; i++) {
            if (t[i] < 0 || t[i] >= V) {
                throw error(std::string(what) + ": token id " + std::to_string(t[i]) + " at index " +
                            std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
            }
        }
    }

    void alloc(ggml_cgraph * gf) {
        ggml_backend_sched_reset(sched_.get());
        if (!ggml_backend_sched_alloc_graph(sched_.get(), gf)) throw error("cannot allocate the compute graph (out of memory?)");
        if (!m_->gpus.empty()) report_placement(gf);
    }

    // With a GPU, a node the GPU backend does not support silently runs on the CPU (and its inputs are
    // copied across every step). Logged at debug level, and on stderr with DGEMMA_SCHED_REPORT set.
    void report_placement(ggml_cgraph * gf) const {
        static const bool to_stderr = std::getenv("DGEMMA_SCHED_REPORT") != nullptr;
        std::map<std::string, int> on_cpu;
        const int n = ggml_graph_n_nodes(gf);
        for (int i = 0; i < n; i++) {
            ggml_tensor * t = ggml_graph_node(gf, i);
            if (ggml_backend_sched_get_tensor_backend(sched_.get(), t) == cpu_) on_cpu[ggml_op_desc(t)]++;
        }
        std::string ops;
        for (const auto & [op, c] : on_cpu) ops += " " + op + "x" + std::to_string(c);
        const int splits = ggml_backend_sched_get_n_splits(sched_.get());
        log_msg(LOG_DEBUG, "graph: %d nodes, %d splits, on the CPU:%s", n, splits, ops.empty() ? " none" : ops.c_str());
        if (to_stderr) fprintf(stderr, "dgemma sched: %d nodes, %d splits, on the CPU:%s\n", n, splits,
                               ops.empty() ? " none" : ops.c_str());
    }

    // The scheduler's eval callback: the activation collector and the profiler, whichever are on.
    static bool observe(ggml_tensor * t, bool ask, void * user_data) {
        auto * self = static_cast<context_impl *>(user_data);
        bool want = false;
        if (self->collecting_) want = observe_activations(t, ask, &self->activations_) || want;
        if (self->profiling_) want = observe_timing(t, ask, &self->profiler_) || want;
        return ask ? want : true;
    }

    void compute(ggml_cgraph * gf) {
        last_gf_ = gf;
        ggml_backend_cpu_set_n_threads(cpu_, n_threads_);
        if (profiling_) profiler_.start();
        ggml_backend_sched_set_eval_callback(sched_.get(), collecting_ || profiling_ ? observe : nullptr, this);
        if (ggml_backend_sched_graph_compute(sched_.get(), gf) != GGML_STATUS_SUCCESS) throw error("graph computation failed");
    }

    std::shared_ptr<model> m_;
    context_params p_;
    kv_store kv_;
    int n_threads_ = 1;
    struct free_backend { void operator()(ggml_backend_t b) const { ggml_backend_free(b); } };
    struct free_sched { void operator()(ggml_backend_sched_t s) const { ggml_backend_sched_free(s); } };
    struct free_ctx { void operator()(ggml_context * c) const { ggml_free(c); } };
    struct free_buffer { void operator()(ggml_backend_buffer_t b) const { ggml_backend_buffer_free(b); } };
    // declared before sched_: destroyed after it (members go in reverse order), also when the constructor throws
    std::vector<std::unique_ptr<ggml_backend, free_backend>> backends_;
    ggml_backend_t cpu_ = nullptr;
    std::unique_ptr<ggml_backend_sched, free_sched> sched_;
    std::unique_ptr<ggml_context, free_ctx> sc_ctx_;
    ggml_tensor * sc_state_ = nullptr;
    std::unique_ptr<ggml_backend_buffer, free_buffer> sc_buf_;
    graph_arena arena_, dec_arena_;
    decoder_graph dec_;
    int32_t dec_graph_n_past_ = -1;
    draw_kind dec_graph_draw_ = draw_kind::scaled;
    bool have_previous_ = false;     // sc_state holds the softmax of this canvas's previous step
    bool sc_finite_ = false;         // sc_state is known finite (zeroed, or written by a step of our own)
    int64_t dec_builds_ = 0;         // decoder graphs built so far (graph reuse is observable)
    size_t step_input_bytes_ = 0;    // host -> device bytes of the last decoder step's inputs
    bool collecting_ = false;        // imatrix statistics: the scheduler's eval callback adds to activations_
    bool profiling_ = false;         // per-op times: the eval callback adds to profiler_
    op_profiler profiler_;
    ggml_cgraph * last_gf_ = nullptr;  // lives in arena_ / dec_arena_ until the next graph of its kind
    activation_stats activations_;
};

context::context(std::shared_ptr<model> m, const context_params & params)
    : impl_(std::make_unique<context_impl>(std::move(m), params)) {}
context::~context() = default;
void context::encode(const int32_t * tokens, int32_t n) { impl_->encode(tokens, n); }
void context::decode_step(const int32_t * canvas, const step_params & sp, float * logits_out) {
    impl_->decode_step(canvas, sp, logits_out);
}
void context::decode_step_reduced(const int32_t * canvas, const step_params & sp, const float * uniforms,
                                  int32_t * argmax, float * entropy, int32_t * sample, float * logits_out) {
    impl_->decode_step_reduced(canvas, sp, uniforms, argmax, entropy, sample, logits_out);
}
int32_t context::n_past() const { return impl_->n_past(); }
int32_t context::n_ctx() const { return impl_->n_ctx(); }
int32_t context::canvas_length() const { return impl_->info().diffusion.canvas_length; }
const model_info & context::info() const { return impl_->info(); }
void context::read_kv(int il, std::vector<int32_t> & positions, std::vector<float> & k, std::vector<float> & v) const {
    impl_->read_kv(il, positions, k, v);
}
void context::truncate(int32_t n) { impl_->truncate(n); }
int64_t context::decoder_graph_builds() const { return impl_->decoder_graph_builds(); }
size_t context::step_input_bytes() const { return impl_->step_input_bytes(); }
context_memory context::memory() const { return impl_->memory(); }
int32_t context::n_threads() const { return impl_->n_threads(); }
bool context::samples_on_cpu() const { return impl_->samples_on_cpu(); }
void context::collect_activations(bool on) { impl_->collect_activations(on); }
std::vector<graph_node_info> context::last_graph() const { return impl_->last_graph(); }
const activation_stats & context::activations() const { return impl_->activations(); }
void context::clear_activations() { impl_->clear_activations(); }
void context::profile_ops(bool on) { impl_->profile_ops(on); }
std::vector<op_time> context::op_profile() const { return impl_->op_profile(); }
void context::clear_op_profile() { impl_->clear_op_profile(); }

std::vector<std::string> gpu_devices() {
    std::vector<std::string> names;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        const auto t = ggml_backend_dev_type(d);
        if (t == GGML_BACKEND_DEVICE_TYPE_GPU || t == GGML_BACKEND_DEVICE_TYPE_IGPU) names.push_back(ggml_backend_dev_name(d));
    }
    return names;
}

} // namespace dgemma
