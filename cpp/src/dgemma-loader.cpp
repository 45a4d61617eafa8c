#include "dgemma-loader.h"
#include "dgemma-arch.h"
#include "dgemma-hparams.h"
#include "dgemma-log.h"

#include "ggml.h"
#include "ggml-cpu.h"

#include <limits>
#include <set>
#include <sstream>

namespace dgemma {

namespace {

// What the graphs can compute, asked of ggml rather than listed: norms, scales and rope_freqs feed
// element-wise ops that take f32 only (an f16 norm passed here once and aborted inside ggml at the first
// step); a matrix needs a CPU dot product, the kernel every backend falls back to (q8_1 and q8_K are
// only the activations' side of a dot product: they have none, and segfaulted at the first step).
bool type_allowed(tensor_class cls, ggml_type t) {
    if (t < 0 || t >= GGML_TYPE_COUNT) return false;
    switch (cls) {
        case tensor_class::vector:
            return t == GGML_TYPE_F32;
        case tensor_class::matrix:
            switch (t) {
                case GGML_TYPE_I8: case GGML_TYPE_I16: case GGML_TYPE_I32: case GGML_TYPE_I64: case GGML_TYPE_F64:
                    return false;
                default:
                    return ggml_blck_size(t) > 0 && ggml_type_size(t) > 0 &&
                           ggml_get_type_traits_cpu(t)->vec_dot != nullptr;
            }
    }
    return false;
}

std::vector<int64_t> padded(std::vector<int64_t> ne) {
    ne.resize(GGML_MAX_DIMS, 1);
    return ne;
}

// Finds spec's tensor (or an alias); checks type and shape; records it as used.
void check_tensor(const gguf_file & f, const tensor_spec & spec, std::set<int64_t> & used) {
    int64_t id = f.find_tensor(spec.name);
    for (size_t a = 0; id < 0 && a < spec.aliases.size(); a++) id = f.find_tensor(spec.aliases[a]);
    if (id < 0) {
        throw error(f.where("missing tensor '" + spec.name + "'; the file is incomplete or not a DiffusionGemma "
                            "model (convert it again with dgemma-convert)"));
    }
    const std::string name = f.tensor_name(id);
    const std::vector<int64_t> ne = f.tensor_ne(id);
    if (ne != padded(spec.ne)) {
        throw error(f.where("tensor '" + name + "' has shape " + shape_str(ne) + ", expected " +
                            shape_str(spec.ne) + " from the metadata"));
    }
    const ggml_type t = (ggml_type) f.tensor_type(id);
    if (!type_allowed(spec.cls, t)) {
        throw error(f.where(std::string("tensor '") + name + "' has type " + ggml_type_name(t) + ", which is not " +
                            (spec.cls == tensor_class::vector
                                 ? "allowed for norms, scales and rope_freqs (they must be f32; convert the "
                                   "file again with dgemma-convert)"
                                 : "a weight type with a CPU dot product (f32, f16, bf16 or a quantized type "
                                   "such as q8_0, q4_K, iq4_xs; q8_1 and q8_K are activation-only)")));
    }
    used.insert(id);
}

} // namespace

checked_gguf open_checked_gguf(const std::string & path, bool tensor_meta) {
    checked_gguf out;
    out.file = std::make_unique<gguf_file>(path, tensor_meta);
    const gguf_file & f = *out.file;
    model_info & info = out.info;

    info.path = path;
    info.file_size = f.file_size();
    info.gguf_version = f.version();
    info.architecture = f.get_str(KEY_ARCH);
    if (info.architecture != ARCH_NAME) {
        throw error(f.where("general.architecture is '" + info.architecture + "', expected '" + ARCH_NAME +
                            "'; this runtime only runs DiffusionGemma models"));
    }
    info.name = f.opt_str(KEY_NAME).value_or("");
    info.file_type = (int32_t) f.opt_int(KEY_FILE_TYPE).value_or(-1);

    const int64_t emb = f.find_tensor("token_embd.weight");
    if (emb < 0) {
        throw error(f.where("missing tensor 'token_embd.weight'; the file is incomplete or not a DiffusionGemma model"));
    }
    const int64_t n_vocab = f.tensor_ne(emb)[1];
    if (n_vocab < 1 || n_vocab > std::numeric_limits<int32_t>::max()) {
        throw error(f.where("token_embd.weight has an invalid vocabulary size " + std::to_string(n_vocab)));
    }

    info.hp = load_hparams(f, (int32_t) n_vocab, info.defaulted_keys);
    info.diffusion = load_diffusion_defaults(f, info.defaulted_keys);
    info.tokenizer = load_tokenizer_info(f, (int32_t) n_vocab);
    const hparams & hp = info.hp;

    std::set<int64_t> used;
    for (const tensor_spec & spec : global_tensor_specs(hp)) check_tensor(f, spec, used);
    for (int il = 0; il < hp.n_layer; il++) {
        layer_info li;
        li.sliding = hp.is_swa(il);
        li.n_head_kv = hp.n_head_kv(il);
        li.head_dim = hp.head_dim(il);
        li.has_v = li.sliding;
        li.fused_gate_up = f.find_tensor(fused_gate_up_name(il)) >= 0;
        if (!li.fused_gate_up && f.find_tensor("blk." + std::to_string(il) + ".ffn_gate_exps.weight") < 0) {
            throw error(f.where("missing tensor '" + fused_gate_up_name(il) + "' (nor the split ffn_gate_exps/"
                                "ffn_up_exps form); the file is incomplete or not a DiffusionGemma model"));
        }
        for (const tensor_spec & spec : layer_tensor_specs(hp, il, li.fused_gate_up)) check_tensor(f, spec, used);
        info.layers.push_back(li);
    }

    if ((int64_t) used.size() != f.n_tensors()) {
        std::ostringstream os;
        int shown = 0;
        for (int64_t i = 0; i < f.n_tensors(); i++) {
            if (used.count(i)) continue;
            if (shown++ < 5) os << (shown > 1 ? ", " : "") << "'" << f.tensor_name(i) << "'";
        }
        const int64_t extra = f.n_tensors() - (int64_t) used.size();
        if (extra > 5) os << " and " << (extra - 5) << " more";
        throw error(f.where("unexpected tensor(s) " + os.str() +
                            " (a full-attention layer with attn_v, a layer beyond block_count, or a file of "
                            "another architecture)"));
    }

    for (int64_t i = 0; i < f.n_tensors(); i++) {
        tensor_info ti;
        ti.name = f.tensor_name(i);
        ti.type = ggml_type_name((ggml_type) f.tensor_type(i));
        std::vector<int64_t> ne = f.tensor_ne(i);
        size_t n = ne.size();
        while (n > 1 && ne[n - 1] == 1) n--;
        ti.shape.assign(ne.begin(), ne.begin() + n);
        ti.offset = f.tensor_offset(i);
        ti.nbytes = f.tensor_nbytes(i);
        info.tensors.push_back(std::move(ti));
    }
    for (const std::string & k : info.defaulted_keys) {
        log_msg(LOG_DEBUG, "%s: optional key '%s' absent, using the reference default\n", path.c_str(), k.c_str());
    }
    return out;
}

model_info inspect_gguf(const std::string & path) { return open_checked_gguf(path).info; }

} // namespace dgemma
