// The canvas loop of the reference generate() (SPEC §6) over the context's public API: it knows the
// sampler and the schedule, nothing about ggml.
#include "dgemma.h"
#include "dgemma-sampler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#if !defined(_WIN32)
#include <sys/resource.h>
#endif

namespace dgemma {

namespace {

using clock_t_ = std::chrono::steady_clock;

double ms_since(clock_t_::time_point t0) {
    return std::chrono::duration<double, std::milli>(clock_t_::now() - t0).count();
}

uint64_t peak_rss() {
#if defined(_WIN32)
    return 0;   // not measured on Windows yet
#else
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
#if defined(__APPLE__)
    return (uint64_t) ru.ru_maxrss;
#else
    return (uint64_t) ru.ru_maxrss * 1024;
#endif
#endif
}

struct settings {
    int32_t steps;
    double t_min, t_max;
    float bound, confidence;
    int32_t stability;
    std::vector<int32_t> eos;
    int32_t pad;
    draw_params draw;
};

settings resolve(const context & ctx, const generate_params & p) {
    const diffusion_defaults & d = ctx.info().diffusion;
    settings s;
    s.steps = p.max_denoising_steps.value_or(d.max_denoising_steps);
    s.t_min = p.t_min.value_or(d.t_min);
    s.t_max = p.t_max.value_or(d.t_max);
    s.bound = (float) p.entropy_bound.value_or(d.entropy_bound);
    s.confidence = (float) p.confidence_threshold.value_or(d.confidence_threshold);
    s.stability = p.stability_threshold.value_or(d.stability_threshold);
    s.eos = p.eos_ids.empty() ? ctx.info().tokenizer.eog_ids : p.eos_ids;
    s.pad = p.pad_id.value_or(ctx.info().tokenizer.pad_id);

    auto bad = [](const std::string & what) { throw error("invalid generation setting: " + what); };
    if (s.steps < 1) bad("max_denoising_steps must be >= 1, got " + std::to_string(s.steps));
    if (!(s.t_min >= 0.0) || !(s.t_max > s.t_min) || !std::isfinite(s.t_max)) {
        bad("need 0 <= t_min < t_max, got t_min " + std::to_string(s.t_min) + ", t_max " + std::to_string(s.t_max));
    }
    // the lowest temperature of the schedule (k = 1) divides the logits: below the floor they overflow
    const float t_low = schedule_temperature(s.t_min, s.t_max, 1, s.steps);
    if (!(t_low >= MIN_STEP_TEMPERATURE)) {
        bad("the lowest step temperature t_min + (t_max - t_min) / max_denoising_steps is " + std::to_string(t_low) +
            "; it must be >= " + std::to_string(MIN_STEP_TEMPERATURE) + " (raise t_min or t_max)");
    }
    if (!(s.bound > 0.0f) || !std::isfinite(s.bound)) bad("entropy_bound must be > 0");
    if (!(s.confidence > 0.0f) || !std::isfinite(s.confidence)) bad("confidence_threshold must be > 0");
    if (s.stability < 0) bad("stability_threshold must be >= 0");
    if (p.max_new_tokens == 0 || p.max_new_tokens < -1) bad("max_new_tokens must be >= 1 (or -1 for no limit)");
    s.draw = check_draw_params(p.draw, ctx.info().hp.n_vocab, ctx.samples_on_cpu());
    const int32_t V = ctx.info().hp.n_vocab;
    for (int32_t e : s.eos) if (e < 0 || e >= V) bad("eos id " + std::to_string(e) + " outside the vocabulary");
    if (!p.canvas_frozen.empty() && p.canvas_frozen.size() != p.canvas_init.size()) {
        bad("canvas_frozen has " + std::to_string(p.canvas_frozen.size()) + " entries for " +
            std::to_string(p.canvas_init.size()) + " canvas_init tokens; give one per position");
    }
    for (size_t i = 0; i < p.canvas_init.size(); i++) {
        const int32_t t = p.canvas_init[i];
        const bool fixed = !p.canvas_frozen.empty() && p.canvas_frozen[i];
        if (t >= V || t < -1 || (fixed && t < 0)) {
            bad("canvas position " + std::to_string(i) + ": token " + std::to_string(t) +
                (fixed && t == -1 ? " cannot be frozen (a frozen position needs a token)" : " outside the vocabulary"));
        }
    }
    return s;
}

} // namespace

void check_generate_params(const context & ctx, const generate_params & p) { (void) resolve(ctx, p); }

generate_result generate(context & ctx, const int32_t * prompt, int32_t n_prompt, const generate_params & p) {
    const settings s = resolve(ctx, p);
    const int32_t C = ctx.canvas_length(), V = ctx.info().hp.n_vocab, N = s.steps;
    if (n_prompt < 0 || (n_prompt == 0 && ctx.n_past() == 0)) {
        throw error("generate: the prompt is empty; pass at least one token");
    }
    if (ctx.n_past() + n_prompt + C > ctx.n_ctx()) {
        throw error("generate: " + std::to_string(n_prompt) + " prompt tokens after " + std::to_string(ctx.n_past()) +
                    " stored leave no room for a canvas of " + std::to_string(C) + " in n_ctx " +
                    std::to_string(ctx.n_ctx()) + "; use a larger n_ctx");
    }
    if (p.forced_canvases > 0 && (!p.forced_init || !p.forced_sampled || !p.forced_noise)) {
        throw error("generate: forced draws need init, sampled and noise arrays");
    }

    generate_result res;
    generate_stats & st = res.stats;
    const auto t_start = clock_t_::now();
    rng r(p.seed);

    st.prompt_tokens = n_prompt;
    ctx.encode(prompt, n_prompt);
    st.prompt_ms = ms_since(t_start);

    stop_criterion stop(s.stability, s.confidence);
    std::vector<int32_t> x(C), argmax(C), sample(C), noise(C);
    std::vector<float> entropy(C), u(C);
    std::vector<uint8_t> accept;
    // canvas editing: this canvas's fixed tokens (-1: free) and the free rows' entropies, compacted
    std::vector<int32_t> fixed(C), free_rows;
    std::vector<float> free_entropy;
    std::vector<uint8_t> free_accept;
    const int64_t n_spec = (int64_t) p.canvas_init.size();
    int32_t non_pad = 0;
    auto finish = [&]() -> generate_result & {
        st.committed_tokens = (int32_t) res.tokens.size();
        st.tokens_per_forward = st.decoder_forwards ? (double) non_pad / st.decoder_forwards : 0.0;
        st.total_ms = ms_since(t_start);
        st.peak_rss_bytes = peak_rss();
        return res;
    };

    for (int32_t canvas = 0;; canvas++) {
        const bool forced = canvas < p.forced_canvases;
        for (int32_t i = 0; i < C; i++) x[i] = forced ? p.forced_init[(size_t) canvas * C + i] : r.below(V);
        free_rows.clear();
        for (int32_t i = 0; i < C; i++) {
            const int64_t pos = (int64_t) canvas * C + i;
            const int32_t init = pos < n_spec ? p.canvas_init[(size_t) pos] : -1;
            const bool frozen = pos < n_spec && !p.canvas_frozen.empty() && p.canvas_frozen[(size_t) pos];
            if (init >= 0) x[i] = init;     // after the noise draw: the random stream is the cold start's
            fixed[i] = frozen ? init : -1;
            if (!frozen) free_rows.push_back(i);
        }
        if (free_rows.empty()) argmax = x;   // no step runs: the canvas commits its fixed tokens
        stop.reset();
        int32_t steps = 0;
        const auto t_canvas = clock_t_::now();
        for (int32_t k = N; k >= 1 && !free_rows.empty(); k--) {
            if (p.should_abort && p.should_abort()) {
                res.finish_reason = "abort";
                st.decode_ms += ms_since(t_canvas);
                return finish();
            }
            const float T = schedule_temperature(s.t_min, s.t_max, k, N);
            for (float & v : u) v = r.uniform();
            step_params sp;
            sp.sc = steps == 0 ? self_cond::none : self_cond::previous;
            sp.temperature = T;
            sp.draw = s.draw;
            ctx.decode_step_reduced(x.data(), sp, u.data(), argmax.data(), entropy.data(), sample.data(), nullptr);
            steps++;
            st.decoder_forwards++;

            const size_t off = ((size_t) canvas * N + (size_t) (N - k)) * C;
            if (forced) std::copy(p.forced_sampled + off, p.forced_sampled + off + C, sample.begin());
            // the budget is spent on the free rows (all of them without canvas editing), in row order;
            // fixed rows are accepted with their own token and entropy 0
            free_entropy.resize(free_rows.size());
            for (size_t j = 0; j < free_rows.size(); j++) free_entropy[j] = entropy[free_rows[j]];
            accept_by_entropy(free_entropy.data(), (int) free_rows.size(), s.bound, free_accept);
            accept.assign(C, 1);
            for (size_t j = 0; j < free_rows.size(); j++) accept[free_rows[j]] = free_accept[j];
            for (int32_t i = 0; i < C; i++) {
                if (fixed[i] >= 0) { sample[i] = argmax[i] = fixed[i]; entropy[i] = 0.0f; }
            }
            for (int32_t i = 0; i < C; i++) noise[i] = forced ? p.forced_noise[off + i] : r.below(V);
            // accepted positions take the SAMPLED token, the others fresh noise (no freezing)
            int32_t n_acc = 0;
            for (int32_t i = 0; i < C; i++) {
                x[i] = accept[i] ? sample[i] : noise[i];
                n_acc += accept[i];
            }
            float mean_h = 0.0f;
            for (int32_t i : free_rows) mean_h += entropy[i];
            mean_h /= (float) free_rows.size();
            if (p.on_draft) {
                draft_event ev;
                ev.canvas_index = canvas;
                ev.step = steps;
                ev.steps_remaining = k;
                ev.temperature = T;
                ev.n = C;
                ev.argmax = argmax.data();
                ev.accepted = accept.data();
                ev.entropy = entropy.data();
                ev.n_accepted = n_acc;
                ev.mean_entropy = mean_h;
                p.on_draft(ev);
            }
            if (p.adaptive_stop && stop.update(argmax, mean_h)) break;
        }
        st.decode_ms += ms_since(t_canvas);
        st.steps_per_canvas.push_back(steps);

        // commit the ARGMAX of the last executed step (not the sampled canvas)
        std::vector<int32_t> committed = argmax;
        bool done = false;
        auto eos_at = std::find_if(committed.begin(), committed.end(), [&](int32_t t) {
            return std::find(s.eos.begin(), s.eos.end(), t) != s.eos.end();
        });
        if (eos_at != committed.end()) {
            committed.erase(eos_at + 1, committed.end());   // the EOS itself is kept
            res.finish_reason = "stop";
            done = true;
        }
        if (p.max_new_tokens > 0 && (int32_t) (res.tokens.size() + committed.size()) >= p.max_new_tokens) {
            committed.resize((size_t) (p.max_new_tokens - (int32_t) res.tokens.size()));
            if (!done) res.finish_reason = "length";
            done = true;
        }
        // the next canvas needs the committed one re-encoded plus room for itself
        if (!done && ctx.n_past() + 2 * C > ctx.n_ctx()) {
            res.finish_reason = "length";
            done = true;
        }
        // tokens per forward counts the returned tokens (pads excluded, as the reference does), so a
        // max_new_tokens cut counts only what the caller gets; fixed positions were not generated
        for (size_t i = 0; i < committed.size(); i++) non_pad += committed[i] != s.pad && fixed[i] < 0;
        res.tokens.insert(res.tokens.end(), committed.begin(), committed.end());
        if (canvas == 0) st.ttft_ms = ms_since(t_start);
        if (p.on_commit) {
            commit_event ev;
            ev.canvas_index = canvas;
            ev.tokens = committed.data();
            ev.n_tokens = (int32_t) committed.size();
            ev.steps = steps;
            ev.last = done;
            p.on_commit(ev);
        }
        if (done) break;
        ctx.encode(argmax.data(), C);   // re-encode the committed canvas at its own positions
    }
    return finish();
}

} // namespace dgemma
