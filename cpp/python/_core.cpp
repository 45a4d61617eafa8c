// pybind11 module pygguf_diffusion._core: a thin layer over cpp/include/dgemma.h.
// dgemma::error becomes pygguf_diffusion._core.EngineError with the message intact; no C++ exception
// crosses into Python untranslated (pybind11 maps the rest to RuntimeError).
#include "dgemma.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

namespace {

py::object g_log_sink;   // a Python callable (level:int, text:str), or None

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

    m.def("version", &dgemma::version);
    m.def("ggml_version", &dgemma::ggml_version);

    // Drop the Python callable before the interpreter finalizes.
    py::module_::import("atexit").attr("register")(py::cpp_function([]() {
        dgemma::set_log_callback(nullptr, nullptr);
        g_log_sink = py::none();
    }));
}
