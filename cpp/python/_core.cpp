// pybind11 module pygguf_diffusion._core: a thin layer over cpp/include/dgemma.h.
// dgemma::error becomes pygguf_diffusion._core.EngineError with the message intact; no C++ exception
// crosses into Python untranslated (pybind11 maps the rest to RuntimeError).
#include "dgemma.h"
#include "../src/dgemma-sampler.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>
#include <unordered_set>

namespace py = pybind11;

namespace {

// A context is not thread-safe, and Python reaches one from two threads (a stream's engine thread and
// its caller). Every call that computes with or changes the store holds this for its duration; a second
// one meanwhile is refused with EngineError instead of racing the first (which corrupted the store).
class context_in_use {
public:
    context_in_use(const dgemma::context & c, const char * what) : c_(&c) {
        std::lock_guard<std::mutex> lock(mutex());
        if (!held().insert(c_).second) {
            throw dgemma::error(std::string(what) + ": the context is in use by another call (a generation "
                                "still running on another thread?); wait for it to return");
        }
    }
    ~context_in_use() {
        std::lock_guard<std::mutex> lock(mutex());
        held().erase(c_);
    }
    context_in_use(const context_in_use &) = delete;
    context_in_use & operator=(const context_in_use &) = delete;

private:
    static std::mutex & mutex() { static std::mutex m; return m; }
    static std::unordered_set<const dgemma::context *> & held() { static std::unordered_set<const dgemma::context *> s; return s; }
    const dgemma::context * c_;
};

py::object g_log_sink;

// dgemma::model is opaque in the public header; Python holds it through this handle.
struct model_handle {
    std::shared_ptr<dgemma::model> m;
};   // a Python callable (level:int, text:str), or None

void log_to_python(int level, const char * text, void *) {
    py::gil_scoped_acquire gil;
    if (g_log_sink.is_none()) return;
    try {
        g_log_sink(level, py::str(text));
    } catch (py::error_already_set & e) {
        e.discard_as_unraisable("pygguf_diffusion log callback");
    }
}

py::dict to_dict(const dgemma::model_info & m) {
    py::dict hp;
    const dgemma::hparams & h = m.hp;
    hp["n_layer"] = h.n_layer;
    hp["n_ctx_train"] = h.n_ctx_train;
    hp["n_embd"] = h.n_embd;
    hp["n_ff"] = h.n_ff;
    hp["n_head"] = h.n_head;
    hp["head_dim_full"] = h.head_dim_full;
    hp["head_dim_swa"] = h.head_dim_swa;
    hp["n_rot_full"] = h.n_rot_full;
    hp["n_rot_swa"] = h.n_rot_swa;
    hp["sliding_window"] = h.sliding_window;
    hp["n_expert"] = h.n_expert;
    hp["n_expert_used"] = h.n_expert_used;
    hp["n_ff_expert"] = h.n_ff_expert;
    hp["n_vocab"] = h.n_vocab;
    hp["rms_eps"] = h.rms_eps;
    hp["rope_base_full"] = h.rope_base_full;
    hp["rope_base_swa"] = h.rope_base_swa;
    hp["logit_softcap"] = h.logit_softcap;

    py::dict dd;
    dd["canvas_length"] = m.diffusion.canvas_length;
    dd["max_denoising_steps"] = m.diffusion.max_denoising_steps;
    dd["t_min"] = m.diffusion.t_min;
    dd["t_max"] = m.diffusion.t_max;
    dd["entropy_bound"] = m.diffusion.entropy_bound;
    dd["stability_threshold"] = m.diffusion.stability_threshold;
    dd["confidence_threshold"] = m.diffusion.confidence_threshold;

    py::dict tok;
    tok["model"] = m.tokenizer.model;
    tok["n_tokens"] = m.tokenizer.n_tokens;
    tok["n_merges"] = m.tokenizer.n_merges;
    tok["bos_id"] = m.tokenizer.bos_id;
    tok["eos_id"] = m.tokenizer.eos_id;
    tok["pad_id"] = m.tokenizer.pad_id;
    tok["add_bos"] = m.tokenizer.add_bos;
    tok["has_chat_template"] = m.tokenizer.has_chat_template;
    tok["eog_ids"] = m.tokenizer.eog_ids;

    py::list layers;
    for (const auto & l : m.layers) {
        py::dict d;
        d["sliding"] = l.sliding;
        d["n_head_kv"] = l.n_head_kv;
        d["head_dim"] = l.head_dim;
        d["has_v"] = l.has_v;
        d["fused_gate_up"] = l.fused_gate_up;
        layers.append(d);
    }
    py::list tensors;
    for (const auto & t : m.tensors) {
        py::dict d;
        d["name"] = t.name;
        d["type"] = t.type;
        d["shape"] = py::tuple(py::cast(t.shape));
        d["offset"] = t.offset;
        d["nbytes"] = t.nbytes;
        tensors.append(d);
    }

    py::dict out;
    out["path"] = m.path;
    out["file_size"] = m.file_size;
    out["gguf_version"] = m.gguf_version;
    out["architecture"] = m.architecture;
    out["name"] = m.name;
    out["file_type"] = m.file_type;
    out["hparams"] = hp;
    out["diffusion"] = dd;
    out["tokenizer"] = tok;
    out["layers"] = layers;
    out["tensors"] = tensors;
    out["defaulted_keys"] = m.defaulted_keys;
    return out;
}

py::dict vocab_dict(const dgemma::vocab_data & v) {
    py::dict d;
    d["model"] = v.model;
    py::list toks(v.tokens.size());
    for (size_t i = 0; i < v.tokens.size(); i++) {
        // token texts are UTF-8 in every file we know; keep invalid bytes visible instead of failing
        PyObject * s = PyUnicode_DecodeUTF8(v.tokens[i].data(), (Py_ssize_t) v.tokens[i].size(), "surrogateescape");
        if (!s) throw py::error_already_set();
        toks[i] = py::reinterpret_steal<py::object>(s);
    }
    d["tokens"] = toks;
    d["types"] = v.types;
    d["merges"] = v.merges;
    d["bos_id"] = v.bos_id;
    d["eos_id"] = v.eos_id;
    d["pad_id"] = v.pad_id;
    d["add_bos"] = v.add_bos;
    d["chat_template"] = v.chat_template;
    d["eog_ids"] = v.eog_ids;
    return d;
}

using i32_array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::dict stats_dict(const dgemma::generate_stats & st) {
    py::dict d;
    d["prompt_tokens"] = st.prompt_tokens;
    d["prompt_ms"] = st.prompt_ms;
    d["steps_per_canvas"] = st.steps_per_canvas;
    d["decoder_forwards"] = st.decoder_forwards;
    d["decode_ms"] = st.decode_ms;
    d["ttft_ms"] = st.ttft_ms;
    d["total_ms"] = st.total_ms;
    d["committed_tokens"] = st.committed_tokens;
    d["tokens_per_forward"] = st.tokens_per_forward;
    d["peak_rss_bytes"] = st.peak_rss_bytes;
    return d;
}

dgemma::generate_params make_params(int max_new_tokens, std::optional<int> steps, std::optional<double> t_min,
                                    std::optional<double> t_max, std::optional<double> entropy_bound,
                                    std::optional<int> stability, std::optional<double> confidence, bool adaptive_stop,
                                    uint64_t seed, const std::optional<std::vector<int32_t>> & eos_ids,
                                    const dgemma::draw_params & draw) {
    dgemma::generate_params p;
    p.draw = draw;
    p.max_new_tokens = max_new_tokens;
    p.max_denoising_steps = steps;
    p.t_min = t_min;
    p.t_max = t_max;
    p.entropy_bound = entropy_bound;
    p.stability_threshold = stability;
    p.confidence_threshold = confidence;
    p.adaptive_stop = adaptive_stop;
    p.seed = seed;
    if (eos_ids) p.eos_ids = *eos_ids;
    return p;
}

py::dict py_generate(dgemma::context & c, i32_array prompt, int max_new_tokens, std::optional<int> steps,
                     std::optional<double> t_min, std::optional<double> t_max, std::optional<double> entropy_bound,
                     std::optional<int> stability, std::optional<double> confidence, bool adaptive_stop,
                     uint64_t seed, std::optional<std::vector<int32_t>> eos_ids, py::object on_draft,
                     py::object on_commit, py::object should_abort, py::object forced, float temperature,
                     int top_k, float top_p, std::optional<std::vector<int32_t>> canvas_init,
                     std::optional<std::vector<uint8_t>> canvas_frozen) {
    if (prompt.ndim() != 1) throw py::value_error("generate: prompt must be a 1-D array of token ids");
    dgemma::generate_params p = make_params(max_new_tokens, steps, t_min, t_max, entropy_bound, stability, confidence,
                                            adaptive_stop, seed, eos_ids, dgemma::draw_params{temperature, top_k, top_p});
    if (canvas_init) p.canvas_init = std::move(*canvas_init);
    if (canvas_frozen) p.canvas_frozen = std::move(*canvas_frozen);
    // Python errors raised inside callbacks (KeyboardInterrupt included) abort the loop and are re-raised
    // once the engine has returned.
    std::unique_ptr<py::error_already_set> pending;
    auto guard = [&](auto && fn) {
        py::gil_scoped_acquire gil;
        if (pending) return;
        try {
            fn();
        } catch (py::error_already_set & e) {
            pending = std::make_unique<py::error_already_set>(std::move(e));
        }
    };
    if (!on_draft.is_none()) {
        p.on_draft = [&](const dgemma::draft_event & ev) {
            guard([&] {
                py::dict d;
                d["canvas_index"] = ev.canvas_index;
                d["step"] = ev.step;
                d["steps_remaining"] = ev.steps_remaining;
                d["temperature"] = ev.temperature;
                d["argmax"] = py::array_t<int32_t>(ev.n, ev.argmax);
                d["accepted"] = py::array_t<bool>(ev.n, reinterpret_cast<const bool *>(ev.accepted));
                d["n_accepted"] = ev.n_accepted;
                d["entropy"] = py::array_t<float>(ev.n, ev.entropy);
                d["mean_entropy"] = ev.mean_entropy;
                on_draft(d);
            });
        };
    }
    if (!on_commit.is_none()) {
        p.on_commit = [&](const dgemma::commit_event & ev) {
            guard([&] {
                py::dict d;
                d["canvas_index"] = ev.canvas_index;
                d["tokens"] = py::array_t<int32_t>(ev.n_tokens, ev.tokens);
                d["steps"] = ev.steps;
                d["last"] = ev.last;
                on_commit(d);
            });
        };
    }
    p.should_abort = [&]() {
        bool stop = false;
        guard([&] {
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            if (!should_abort.is_none() && should_abort().cast<bool>()) stop = true;
        });
        return stop || pending != nullptr;
    };
    i32_array f_init, f_sampled, f_noise;
    if (!forced.is_none()) {
        py::dict fd = forced.cast<py::dict>();
        f_init = i32_array::ensure(fd["init"]);
        f_sampled = i32_array::ensure(fd["sampled"]);
        f_noise = i32_array::ensure(fd["noise"]);
        const int64_t C = c.canvas_length();
        if (!f_init || !f_sampled || !f_noise || f_init.ndim() != 2 || f_init.shape(1) != C ||
            f_sampled.ndim() != 3 || f_noise.ndim() != 3 || f_sampled.shape(0) != f_init.shape(0) ||
            f_noise.shape(0) != f_init.shape(0) || f_sampled.shape(2) != C || f_noise.shape(2) != C ||
            f_sampled.shape(1) != f_noise.shape(1)) {
            throw py::value_error("forced draws: init [n, C], sampled and noise [n, steps, C] int32 arrays");
        }
        const int64_t n_steps = steps.value_or(c.info().diffusion.max_denoising_steps);
        if (f_sampled.shape(1) != n_steps) throw py::value_error("forced draws: need one row per denoising step");
        p.forced_init = f_init.data();
        p.forced_sampled = f_sampled.data();
        p.forced_noise = f_noise.data();
        p.forced_canvases = (int32_t) f_init.shape(0);
    }
    std::vector<int32_t> toks(prompt.data(), prompt.data() + prompt.size());
    dgemma::generate_result r;
    {
        context_in_use busy(c, "generate");
        py::gil_scoped_release release;
        r = dgemma::generate(c, toks.data(), (int32_t) toks.size(), p);
    }
    if (pending) throw std::move(*pending);
    py::dict out;
    out["tokens"] = r.tokens;
    out["finish_reason"] = r.finish_reason;
    out["stats"] = stats_dict(r.stats);
    return out;
}

} // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pygguf_diffusion engine (C++ on ggml)";
    py::register_exception<dgemma::error>(m, "EngineError", PyExc_RuntimeError);

    g_log_sink = py::none();
    m.def("set_log_sink", [](py::object sink) {
        g_log_sink = sink;
        dgemma::set_log_callback(sink.is_none() ? nullptr : log_to_python, nullptr);
    }, py::arg("sink"), "Route engine and ggml log lines to sink(level, text); None restores stderr.");

    m.def("inspect_gguf", [](const std::string & path) {
        dgemma::model_info info;
        {
            py::gil_scoped_release release;
            info = dgemma::inspect_gguf(path);
        }
        return to_dict(info);
    }, py::arg("path"), "Open a GGUF, check it against the DiffusionGemma schema, return its description.");

    py::class_<model_handle>(m, "Model")
        .def(py::init([](const std::string & path, int n_gpu_layers, bool cpu_moe, py::object progress,
                         int n_cpu_moe, std::vector<std::pair<std::string, std::string>> tensor_overrides,
                         std::vector<std::string> rpc_servers, bool cpu_repack) {
                 dgemma::model_params p;
                 p.cpu_repack = cpu_repack;
                 p.rpc_servers = std::move(rpc_servers);
                 p.n_gpu_layers = n_gpu_layers;
                 p.cpu_moe = cpu_moe;
                 p.n_cpu_moe = n_cpu_moe;
                 p.tensor_overrides = std::move(tensor_overrides);
                 std::unique_ptr<py::error_already_set> pending;
                 if (!progress.is_none()) {
                     // a Python error (Ctrl-C included) aborts the load and is re-raised here
                     p.progress = [&](float f) {
                         py::gil_scoped_acquire gil;
                         try {
                             progress(f);
                         } catch (py::error_already_set & e) {
                             pending = std::make_unique<py::error_already_set>(std::move(e));
                             throw dgemma::error("model loading interrupted");
                         }
                     };
                 }
                 std::shared_ptr<dgemma::model> m;
                 try {
                     py::gil_scoped_release release;
                     m = dgemma::load_model(path, p);
                 } catch (const dgemma::error &) {
                     if (pending) throw std::move(*pending);
                     throw;
                 }
                 return model_handle{m};
             }), py::arg("path"), py::arg("n_gpu_layers") = -1, py::arg("cpu_moe") = false,
             py::arg("progress") = py::none(), py::arg("n_cpu_moe") = 0,
             py::arg("tensor_overrides") = std::vector<std::pair<std::string, std::string>>{},
             py::arg("rpc_servers") = std::vector<std::string>{}, py::arg("cpu_repack") = true,
             "progress: called with the fraction loaded in [0, 1]. n_cpu_moe: the experts of the first N layers stay "
             "on the CPU. tensor_overrides: [(regex, device)], the first match wins (llama.cpp's -ot). rpc_servers: "
             "[\"host:port\"] of ggml RPC servers whose devices take GPU layers. cpu_repack: CPU expert weights "
             "in the CPU backend's repacked layouts (a copy made at load).")
        .def("placement", [](const model_handle & h) {
                 py::dict d;
                 for (const auto & [name, buf] : dgemma::get_weight_placement(*h.m)) d[py::str(name)] = buf;
                 return d;
             }, "GGUF tensor name -> the ggml buffer holding it (CPU: the file mapping).")
        .def("info", [](const model_handle & h) { return to_dict(dgemma::get_model_info(*h.m)); })
        .def("vocab", [](const model_handle & h) { return vocab_dict(dgemma::get_model_vocab(*h.m)); },
             "The tokenizer arrays, read from the already-open file.");

    py::class_<dgemma::context>(m, "Context")
        .def(py::init([](const model_handle & h, int n_ctx, int n_batch, int n_threads, std::string type_k,
                         std::string type_v) {
                 dgemma::context_params p;
                 p.n_ctx = n_ctx;
                 p.n_batch = n_batch;
                 p.n_threads = n_threads;
                 p.type_k = std::move(type_k);
                 p.type_v = std::move(type_v);
                 py::gil_scoped_release release;
                 return std::make_unique<dgemma::context>(h.m, p);
             }), py::arg("model"), py::arg("n_ctx") = 4096, py::arg("n_batch") = 512, py::arg("n_threads") = 0,
             py::arg("type_k") = "f32", py::arg("type_v") = "f32")
        .def("encode", [](dgemma::context & c, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens) {
                 if (tokens.ndim() != 1) throw py::value_error("encode: tokens must be a 1-D array of token ids");
                 std::vector<int32_t> t(tokens.data(), tokens.data() + tokens.size());
                 context_in_use busy(c, "encode");
                 py::gil_scoped_release release;
                 c.encode(t.data(), (int32_t) t.size());
             }, py::arg("tokens"), "Encode tokens at the next positions and append their K/V to the store.")
        .def("decode_step", [](dgemma::context & c, py::array_t<int32_t, py::array::c_style | py::array::forcecast> canvas,
                               py::object sc, float temperature, bool return_logits) -> py::object {
                 const int64_t C = c.canvas_length(), V = c.info().hp.n_vocab;
                 if (canvas.ndim() != 1 || canvas.size() != C) {
                     throw py::value_error("decode_step: canvas must be a 1-D array of " + std::to_string(C) + " token ids");
                 }
                 dgemma::step_params sp;
                 sp.temperature = temperature;
                 py::array_t<float, py::array::c_style | py::array::forcecast> given;
                 if (sc.is_none()) {
                     sp.sc = dgemma::self_cond::none;
                 } else if (py::isinstance<py::str>(sc)) {
                     const std::string s = sc.cast<std::string>();
                     if (s == "previous") sp.sc = dgemma::self_cond::previous;
                     else if (s == "none") sp.sc = dgemma::self_cond::none;
                     else throw py::value_error("decode_step: sc must be None, 'none', 'previous' or a [C, V] array");
                 } else {
                     given = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(sc);
                     if (!given || given.ndim() != 2 || given.shape(0) != C || given.shape(1) != V) {
                         throw py::value_error("decode_step: self-conditioning logits must have shape (" +
                                               std::to_string(C) + ", " + std::to_string(V) + ")");
                     }
                     sp.sc = dgemma::self_cond::given;
                     sp.sc_logits = given.data();
                 }
                 std::vector<int32_t> cv(canvas.data(), canvas.data() + C);
                 py::array_t<float> out;
                 float * dst = nullptr;
                 if (return_logits) {
                     out = py::array_t<float>({C, V});
                     dst = out.mutable_data();
                 }
                 {
                     context_in_use busy(c, "decode_step");
                     py::gil_scoped_release release;
                     c.decode_step(cv.data(), sp, dst);
                 }
                 return return_logits ? py::object(out) : py::object(py::none());
             }, py::arg("canvas"), py::arg("sc") = py::none(), py::arg("temperature") = 1.0f,
             py::arg("return_logits") = true,
             "One denoising step; returns the softcapped logits [C, V]. sc: None (first step), 'previous' "
             "(this context's previous step, kept on the device) or given processed logits [C, V].")
        .def("decode_step_reduced", [](dgemma::context & c, i32_array canvas, f32_array uniforms, bool sc_previous,
                                       float temperature, float draw_temperature, int top_k, float top_p) {
                 const int64_t C = c.canvas_length();
                 if (canvas.ndim() != 1 || canvas.size() != C || uniforms.ndim() != 1 || uniforms.size() != C) {
                     throw py::value_error("decode_step_reduced: canvas and uniforms must be 1-D arrays of " +
                                           std::to_string(C) + " values");
                 }
                 dgemma::step_params sp;
                 sp.sc = sc_previous ? dgemma::self_cond::previous : dgemma::self_cond::none;
                 sp.temperature = temperature;
                 sp.draw = dgemma::draw_params{draw_temperature, top_k, top_p};
                 std::vector<int32_t> cv(canvas.data(), canvas.data() + C), am(C), smp(C);
                 std::vector<float> u(uniforms.data(), uniforms.data() + C), ent(C);
                 {
                     context_in_use busy(c, "decode_step_reduced");
                     py::gil_scoped_release release;
                     c.decode_step_reduced(cv.data(), sp, u.data(), am.data(), ent.data(), smp.data(), nullptr);
                 }
                 return py::make_tuple(py::array_t<int32_t>(C, am.data()), py::array_t<float>(C, ent.data()),
                                       py::array_t<int32_t>(C, smp.data()));
             }, py::arg("canvas"), py::arg("uniforms"), py::arg("sc_previous") = false, py::arg("temperature") = 1.0f,
             py::arg("draw_temperature") = 1.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
             "One step's per-row reductions of logits / temperature: (argmax, entropy, sample) for the given "
             "uniforms and draw settings.")
        .def("read_kv", [](const dgemma::context & c, int il) {
                 std::vector<int32_t> pos;
                 std::vector<float> k, v;
                 {
                     context_in_use busy(c, "read_kv");
                     c.read_kv(il, pos, k, v);
                 }
                 const auto & hp = c.info().hp;
                 const int64_t n = (int64_t) pos.size(), nkv = hp.n_head_kv(il), hd = hp.head_dim(il);
                 py::array_t<float> K({n, nkv, hd}), Vv({n, nkv, hd});
                 std::copy(k.begin(), k.end(), K.mutable_data());
                 std::copy(v.begin(), v.end(), Vv.mutable_data());
                 return py::make_tuple(py::array_t<int32_t>(n, pos.data()), K, Vv);
             }, py::arg("layer"), "(positions, K, V) of a layer as the decoder sees them; K, V: [n, n_kv, hd].")
        .def("last_graph", [](const dgemma::context & c) {
                 auto tensor = [](const dgemma::graph_tensor_info & t) -> py::object {
                     if (!t.present) return py::none();
                     py::dict d;
                     d["name"] = t.name;
                     d["op"] = t.op;
                     d["type"] = t.type;
                     d["ne"] = py::make_tuple(t.ne[0], t.ne[1], t.ne[2], t.ne[3]);
                     d["nb"] = py::make_tuple(t.nb[0], t.nb[1], t.nb[2], t.nb[3]);
                     d["op_param0"] = t.op_param0;
                     return std::move(d);
                 };
                 py::list out;
                 for (const auto & n : c.last_graph()) {
                     py::dict d = tensor(n.node);
                     py::list src;
                     for (const auto & s : n.src) src.append(tensor(s));
                     d["src"] = src;
                     out.append(d);
                 }
                 return out;
             }, "The nodes of the last computed graph: name, op, type, ne, nb and src (dicts or None).")
        .def("collect_activations", &dgemma::context::collect_activations, py::arg("on"),
             "While on, encodes and decoder steps add their matrix inputs to activations() (imatrix).")
        .def("clear_activations", &dgemma::context::clear_activations)
        .def("activations", [](const dgemma::context & c) {
                 py::dict out;
                 for (const auto & [name, e] : c.activations()) {
                     const auto n_mat = (py::ssize_t) e.counts.size();
                     py::array_t<double> sums({n_mat, (py::ssize_t) e.row_length});
                     std::copy(e.sums.begin(), e.sums.end(), sums.mutable_data());
                     py::array_t<int64_t> counts(n_mat);
                     std::copy(e.counts.begin(), e.counts.end(), counts.mutable_data());
                     out[py::str(name)] = py::make_tuple(sums, counts);
                 }
                 return out;
             }, "weight name -> (sums of squared inputs [n_mat, row length], input rows per matrix [n_mat])")
        .def("profile_ops", &dgemma::context::profile_ops, py::arg("on"),
             "While on, graphs run one node at a time and each node's time goes to op_profile() (slower).")
        .def("op_profile", [](const dgemma::context & c) {
                 py::list out;
                 for (const dgemma::op_time & e : c.op_profile()) {
                     py::dict d;
                     d["op"] = e.op;
                     d["what"] = e.what;
                     d["count"] = e.count;
                     d["seconds"] = e.seconds;
                     out.append(d);
                 }
                 return out;
             }, "[{op, what, count, seconds}], largest total first.")
        .def("clear_op_profile", &dgemma::context::clear_op_profile)
        .def("truncate", [](dgemma::context & c, int32_t n) {
                 context_in_use busy(c, "truncate");
                 c.truncate(n);
             }, py::arg("n"), "Drop the stored K/V of positions >= n.")
        .def_property_readonly("n_past", &dgemma::context::n_past)
        .def_property_readonly("n_ctx", &dgemma::context::n_ctx)
        .def_property_readonly("canvas_length", &dgemma::context::canvas_length)
        .def_property_readonly("decoder_graph_builds", &dgemma::context::decoder_graph_builds)
        .def_property_readonly("step_input_bytes", &dgemma::context::step_input_bytes)
        .def_property_readonly("n_threads", &dgemma::context::n_threads)
        .def("memory", [](const dgemma::context & c) {
                 const dgemma::context_memory mem = c.memory();
                 py::dict d;
                 d["kv_bytes"] = mem.kv_bytes;
                 d["sc_bytes"] = mem.sc_bytes;
                 d["compute_bytes"] = mem.compute_bytes;
                 d["device"] = mem.device;
                 return d;
             }, "Bytes held: KV store, self-conditioning state, compute buffers; the output layer's device.");
    m.def("time_matmul", [](const std::string & type, int64_t K, int64_t M, int64_t N, int n_threads, int repeats,
                            bool on_gpu) {
              py::gil_scoped_release release;
              return dgemma::time_matmul(type, K, M, N, n_threads, repeats, on_gpu);
          }, py::arg("type"), py::arg("K"), py::arg("M"), py::arg("N"), py::arg("n_threads") = 1,
          py::arg("repeats") = 5, py::arg("on_gpu") = false,
          "Seconds per run of a [K, M] `type` x [K, N] f32 matrix product (2*K*M*N flops), after a warm-up.");
    m.def("rpc_serve", [](const std::string & endpoint, const std::string & device, int n_threads,
                          const std::string & cache_dir) {
              py::gil_scoped_release release;
              dgemma::rpc_serve(endpoint, device, n_threads, cache_dir);
          }, py::arg("endpoint"), py::arg("device") = "", py::arg("n_threads") = 0, py::arg("cache_dir") = "",
          "Serve a device to ggml RPC clients at endpoint 'host:port' (blocks; a signal ends it).");
    m.def("gpu_backends", &dgemma::gpu_devices, "Names of the GPU devices this build can use (empty: CPU only).");

    m.def("generate", &py_generate, py::arg("context"), py::arg("prompt"), py::arg("max_new_tokens") = -1,
          py::arg("max_denoising_steps") = py::none(), py::arg("t_min") = py::none(), py::arg("t_max") = py::none(),
          py::arg("entropy_bound") = py::none(), py::arg("stability_threshold") = py::none(),
          py::arg("confidence_threshold") = py::none(), py::arg("adaptive_stop") = true, py::arg("seed") = 0,
          py::arg("eos_ids") = py::none(), py::arg("on_draft") = py::none(), py::arg("on_commit") = py::none(),
          py::arg("should_abort") = py::none(), py::arg("forced") = py::none(), py::arg("temperature") = 1.0f,
          py::arg("top_k") = 0, py::arg("top_p") = 1.0f, py::arg("canvas_init") = py::none(),
          py::arg("canvas_frozen") = py::none(),
          "Run the reference generate() loop. Callbacks receive dicts; Ctrl-C or an exception in a callback "
          "stops generation after the current step and is re-raised; the context stays usable. canvas_init "
          "(token per generated position, -1 = noise) warm-starts canvases; canvas_frozen (0/1 per position) "
          "fixes positions to their canvas_init token.");

    m.def("check_generate", [](const dgemma::context & c, int max_new_tokens, std::optional<int> steps,
                               std::optional<double> t_min, std::optional<double> t_max,
                               std::optional<double> entropy_bound, std::optional<int> stability,
                               std::optional<double> confidence, std::optional<std::vector<int32_t>> eos_ids,
                               float temperature, int top_k, float top_p) {
        dgemma::check_generate_params(c, make_params(max_new_tokens, steps, t_min, t_max, entropy_bound, stability,
                                                     confidence, true, 0, eos_ids,
                                                     dgemma::draw_params{temperature, top_k, top_p}));
    }, py::arg("context"), py::arg("max_new_tokens") = -1, py::arg("max_denoising_steps") = py::none(),
       py::arg("t_min") = py::none(), py::arg("t_max") = py::none(), py::arg("entropy_bound") = py::none(),
       py::arg("stability_threshold") = py::none(), py::arg("confidence_threshold") = py::none(),
       py::arg("eos_ids") = py::none(), py::arg("temperature") = 1.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
       "Validate generation settings without running anything.");

    m.def("schedule_temperature", &dgemma::schedule_temperature, py::arg("t_min"), py::arg("t_max"),
          py::arg("k"), py::arg("n_steps"), "The reference temperature at k steps remaining (float32 math).");
    m.def("accept_by_entropy", [](py::array_t<float, py::array::c_style | py::array::forcecast> entropy, float bound) {
        std::vector<uint8_t> acc;
        dgemma::accept_by_entropy(entropy.data(), (int) entropy.size(), bound, acc);
        py::array_t<bool> out((py::ssize_t) acc.size());
        std::copy(acc.begin(), acc.end(), reinterpret_cast<uint8_t *>(out.mutable_data()));
        return out;
    }, py::arg("entropy"), py::arg("bound"), "Entropy-bound acceptance mask (reference accept_canvas).");

    m.def("read_vocab", [](const std::string & path) {
        dgemma::vocab_data v;
        {
            py::gil_scoped_release release;
            v = dgemma::read_vocab(path);
        }
        return vocab_dict(v);
    }, py::arg("path"), "The tokenizer arrays of a GGUF (a model or a vocabulary-only file).");

    // ---- quantization ----------------------------------------------------------------------------------
    m.def("quant_types", []() {
        py::list out;
        for (const auto & q : dgemma::quant_types()) {
            py::dict d;
            d["id"] = q.id;
            d["name"] = q.name;
            d["block_size"] = q.block_size;
            d["type_size"] = q.type_size;
            d["is_quantized"] = q.is_quantized;
            d["can_quantize"] = q.can_quantize;
            d["can_dequantize"] = q.can_dequantize;
            d["needs_imatrix"] = q.needs_imatrix;
            out.append(d);
        }
        return out;
    }, "Every ggml type this build knows, with its block geometry and what ggml can do with it.");
    m.def("quantize", [](int type, py::array_t<float, py::array::c_style | py::array::forcecast> rows,
                         std::optional<py::array_t<float, py::array::c_style | py::array::forcecast>> imatrix,
                         int n_threads) {
        if (rows.ndim() != 2) throw dgemma::error("quantize: rows must be a 2-D array (rows, values per row)");
        const int64_t nrows = rows.shape(0), n_per_row = rows.shape(1);
        const float * im = nullptr;
        if (imatrix) {
            if (imatrix->ndim() != 1 || imatrix->shape(0) != n_per_row) {
                throw dgemma::error("quantize: the importance matrix row has " + std::to_string(imatrix->size()) +
                                    " values; the tensor's rows have " + std::to_string(n_per_row));
            }
            im = imatrix->data();
        }
        if (n_threads < 1 || n_threads > 512) throw dgemma::error("quantize: n_threads must be in [1, 512]");
        // the row size (and the checks) first, so a bad type or shape fails before allocating
        const size_t row_size = dgemma::quant_row_bytes(type, n_per_row, "quantize");
        py::array_t<uint8_t> out((py::ssize_t) (row_size * (size_t) nrows));
        {
            py::gil_scoped_release release;
            dgemma::quantize_rows(type, rows.data(), out.mutable_data(), nrows, n_per_row, im, n_threads);
        }
        return out;
    }, py::arg("type"), py::arg("rows"), py::arg("imatrix") = py::none(), py::arg("n_threads") = 1,
       "Encode float rows as ggml type `type` (an id) with ggml's quantizer; returns the bytes (uint8 array).");
    m.def("dequantize", [](int type, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> data,
                           int64_t nrows, int64_t n_per_row, int n_threads) {
        const size_t row_size = dgemma::quant_row_bytes(type, n_per_row, "dequantize");
        if (nrows < 0 || (size_t) data.size() != row_size * (size_t) nrows) {
            throw dgemma::error("dequantize: " + std::to_string(data.size()) + " bytes do not hold " +
                                std::to_string(nrows) + " rows of " + std::to_string(n_per_row) +
                                " values of type id " + std::to_string(type));
        }
        if (n_threads < 1 || n_threads > 512) throw dgemma::error("dequantize: n_threads must be in [1, 512]");
        py::array_t<float> out({(py::ssize_t) nrows, (py::ssize_t) n_per_row});
        {
            py::gil_scoped_release release;
            dgemma::dequantize_rows(type, data.data(), out.mutable_data(), nrows, n_per_row, n_threads);
        }
        return out;
    }, py::arg("type"), py::arg("data"), py::arg("nrows"), py::arg("n_per_row"), py::arg("n_threads") = 1,
       "Decode rows of ggml type `type` (an id) into a float32 array (nrows, n_per_row).");

    m.def("version", &dgemma::version);
    m.def("ggml_version", &dgemma::ggml_version);

    // Drop the Python callable before the interpreter finalizes.
    py::module_::import("atexit").attr("register")(py::cpp_function([]() {
        dgemma::set_log_callback(nullptr, nullptr);
        g_log_sink = py::none();
    }));
}
