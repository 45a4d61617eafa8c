// pybind11 module pygguf_diffusion._core: a thin layer over cpp/include/dgemma.h.
// dgemma::error becomes pygguf_diffusion._core.EngineError with the message intact; no C++ exception
// crosses into Python untranslated (pybind11 maps the rest to RuntimeError).
#include "dgemma.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

namespace {

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
        .def(py::init([](const std::string & path, int n_gpu_layers, bool cpu_moe) {
                 dgemma::model_params p;
                 p.n_gpu_layers = n_gpu_layers;
                 p.cpu_moe = cpu_moe;
                 py::gil_scoped_release release;
                 return model_handle{dgemma::load_model(path, p)};
             }), py::arg("path"), py::arg("n_gpu_layers") = -1, py::arg("cpu_moe") = false)
        .def("info", [](const model_handle & h) { return to_dict(dgemma::get_model_info(*h.m)); });

    py::class_<dgemma::context>(m, "Context")
        .def(py::init([](const model_handle & h, int n_ctx, int n_batch, int n_threads) {
                 dgemma::context_params p;
                 p.n_ctx = n_ctx;
                 p.n_batch = n_batch;
                 p.n_threads = n_threads;
                 py::gil_scoped_release release;
                 return std::make_unique<dgemma::context>(h.m, p);
             }), py::arg("model"), py::arg("n_ctx") = 4096, py::arg("n_batch") = 512, py::arg("n_threads") = 0)
        .def("encode", [](dgemma::context & c, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens) {
                 if (tokens.ndim() != 1) throw py::value_error("encode: tokens must be a 1-D array of token ids");
                 std::vector<int32_t> t(tokens.data(), tokens.data() + tokens.size());
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
                     py::gil_scoped_release release;
                     c.decode_step(cv.data(), sp, dst);
                 }
                 return return_logits ? py::object(out) : py::object(py::none());
             }, py::arg("canvas"), py::arg("sc") = py::none(), py::arg("temperature") = 1.0f,
             py::arg("return_logits") = true,
             "One denoising step; returns the softcapped logits [C, V]. sc: None (first step), 'previous' "
             "(this context's previous step, kept on the device) or given processed logits [C, V].")
        .def("read_kv", [](const dgemma::context & c, int il) {
                 std::vector<int32_t> pos;
                 std::vector<float> k, v;
                 c.read_kv(il, pos, k, v);
                 const auto & hp = c.info().hp;
                 const int64_t n = (int64_t) pos.size(), nkv = hp.n_head_kv(il), hd = hp.head_dim(il);
                 py::array_t<float> K({n, nkv, hd}), Vv({n, nkv, hd});
                 std::copy(k.begin(), k.end(), K.mutable_data());
                 std::copy(v.begin(), v.end(), Vv.mutable_data());
                 return py::make_tuple(py::array_t<int32_t>(n, pos.data()), K, Vv);
             }, py::arg("layer"), "(positions, K, V) of a layer as the decoder sees them; K, V: [n, n_kv, hd].")
        .def("truncate", &dgemma::context::truncate, py::arg("n"))
        .def_property_readonly("n_past", &dgemma::context::n_past)
        .def_property_readonly("n_ctx", &dgemma::context::n_ctx)
        .def_property_readonly("canvas_length", &dgemma::context::canvas_length)
        .def_property_readonly("decoder_graph_builds", &dgemma::context::decoder_graph_builds);

    m.def("version", &dgemma::version);
    m.def("ggml_version", &dgemma::ggml_version);

    // Drop the Python callable before the interpreter finalizes.
    py::module_::import("atexit").attr("register")(py::cpp_function([]() {
        dgemma::set_log_callback(nullptr, nullptr);
        g_log_sink = py::none();
    }));
}
