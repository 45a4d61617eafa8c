#include "dgemma-model.h"
#include "dgemma-cpu-ops.h"
#include "dgemma-log.h"
#include "dgemma-rpc.h"

#include "ggml-alloc.h"
#include "ggml-cpu.h"
#include "gguf.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>

#if !defined(_WIN32)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace dgemma {

ggml_backend_dev_t gpu_device() {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
    return dev ? dev : ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_IGPU);
}

namespace {

// reference: the embedding scale sqrt(H) is stored in f32 and cast to the weight dtype before use
// (bf16: sqrt(2816) = 53.066 -> 53.0; f16 -> 53.0625). Quantized files come from bf16 checkpoints.
float embd_scale_for(ggml_type t, int n_embd) {
    const float s = std::sqrt((float) n_embd);
    switch (t) {
        case GGML_TYPE_F32: return s;
        case GGML_TYPE_F16: return ggml_fp16_to_fp32(ggml_fp32_to_fp16(s));
        default:            return ggml_bf16_to_fp32(ggml_fp32_to_bf16(s));
    }
}

bool is_expert_tensor(const std::string & name) {
    return name.find("_exps.") != std::string::npos;
}

int layer_of(const std::string & name) {
    if (name.rfind("blk.", 0) != 0) return -1;
    return std::atoi(name.c_str() + 4);
}

} // namespace

model::model(const std::string & path, const model_params & p) : params(p) {
    try {
        load(path);
    } catch (...) {
        release();   // a failed (or interrupted) load leaves nothing allocated behind
        throw;
    }
    params.progress = nullptr;   // the callback may refer to the caller's frame
}

void model::load(const std::string & path) {
    checked_gguf checked = open_checked_gguf(path, /*tensor_meta =*/ true);
    info = checked.info;
    file_ = std::move(checked.file);

    backend_cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
    if (!backend_cpu) throw error("cannot initialise the CPU backend");
    open_devices();
    const int n_layer = info.hp.n_layer;
    backend_globals = layer_backend(-1);

    map_file(path);
    place_weights();

    tok_embd    = get("token_embd.weight");
    {
        // the CPU's buffers are "CPU", "CPU_Mapped", "CPU_REPACK"; a GPU's host buffers ("CUDA_Host") and
        // mapped ones ("MTL0_Mapped") are not, and the scheduler runs their products on the GPU
        const std::string buf = ggml_backend_buffer_name(tok_embd->buffer);
        fused_cpu_reductions = backend_globals == backend_cpu && buf.rfind("CPU", 0) == 0 && !cpu_fused_ops_disabled();
    }
    output_norm = get("output_norm.weight");
    rope_freqs  = get("rope_freqs.weight");
    sc_pre_norm = get("self_cond_pre_norm.weight", false);
    if (!sc_pre_norm) sc_pre_norm = get("self_cond_norm.weight");
    sc_gate = get("self_cond_gate.weight");
    sc_up   = get("self_cond_up.weight");
    sc_down = get("self_cond_down.weight");
    embd_scale = embd_scale_for(tok_embd->type, info.hp.n_embd);

    layers.resize(n_layer);
    for (int il = 0; il < n_layer; il++) {
        auto n = [il](const char * s) { return "blk." + std::to_string(il) + "." + s; };
        layer_weights & L = layers[il];
        L.attn_norm = get(n("attn_norm.weight"));
        L.wq = get(n("attn_q.weight"));
        L.wk = get(n("attn_k.weight"));
        L.wv = info.hp.is_swa(il) ? get(n("attn_v.weight")) : nullptr;
        L.wo = get(n("attn_output.weight"));
        L.q_norm = get(n("attn_q_norm.weight"));
        L.k_norm = get(n("attn_k_norm.weight"));
        L.post_attn_norm = get(n("post_attention_norm.weight"));
        L.ffn_norm = get(n("ffn_norm.weight"));
        L.ffn_gate = get(n("ffn_gate.weight"));
        L.ffn_up = get(n("ffn_up.weight"));
        L.ffn_down = get(n("ffn_down.weight"));
        L.post_ffw_norm_1 = get(n("post_ffw_norm_1.weight"));
        L.router = get(n("ffn_gate_inp.weight"));
        L.router_scale = get(n("ffn_gate_inp.scale"));
        L.pre_ffw_norm_2 = get(n("pre_ffw_norm_2.weight"));
        if (info.layers[il].fused_gate_up) {
            L.exp_gate_up = get(n("ffn_gate_up_exps.weight"));
        } else {
            L.exp_gate = get(n("ffn_gate_exps.weight"));
            L.exp_up = get(n("ffn_up_exps.weight"));
        }
        L.exp_down = get(n("ffn_down_exps.weight"));
        L.exp_scale = get(n("ffn_down_exps.scale"));
        L.post_ffw_norm_2 = get(n("post_ffw_norm_2.weight"));
        L.post_ffw_norm = get(n("post_ffw_norm.weight"));
        L.dec_scale = get(n("layer_output_scale.weight"));
        L.enc_scale = get(n("enc_layer_output_scale.weight"));
        L.backend = layer_backend(il);
    }
    make_vocab_copies();
    make_rope_freqs();
    report_progress(1.0f);
    std::string where = "CPU";
    for (ggml_backend_t g : gpus) where += std::string(", ") + ggml_backend_name(g);
    log_msg(LOG_INFO, "%s: loaded %zu tensors (%s)\n", path.c_str(), info.tensors.size(), where.c_str());
}

void model::open_devices() {
    if (params.n_gpu_layers == 0) {
        if (!params.rpc_servers.empty()) log_msg(LOG_WARN, "n_gpu_layers 0: the RPC servers are not used\n");
        return;
    }
    std::vector<ggml_backend_dev_t> devs;
    // a discrete GPU, else an integrated one (DGX Spark, Jetson, Ryzen AI): both run the same kernels
    if (ggml_backend_dev_t dev = gpu_device()) devs.push_back(dev);
    for (ggml_backend_dev_t dev : rpc_devices(params.rpc_servers)) devs.push_back(dev);
    for (ggml_backend_dev_t dev : devs) {
        ggml_backend_t b = ggml_backend_dev_init(dev, nullptr);
        if (!b) throw error(std::string("cannot initialise the backend of device ") + ggml_backend_dev_name(dev));
        gpus.push_back(b);
        const bool remote = std::strcmp(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev)), "RPC") == 0;
        log_msg(LOG_INFO, "using %s %s (%s)\n",
                remote ? "RPC device" : ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_IGPU ? "integrated GPU" : "GPU",
                ggml_backend_dev_name(dev), ggml_backend_dev_description(dev));
    }
}

void model::report_progress(float f) const {
    if (params.progress) params.progress(f);
}

void model::make_rope_freqs() {
    const hparams & hp = info.hp;
    std::vector<float> ff((size_t) ggml_nelements(rope_freqs));
    std::vector<uint8_t> raw(ggml_nbytes(rope_freqs));
    ggml_backend_tensor_get(rope_freqs, raw.data(), 0, raw.size());
    if (rope_freqs->type == GGML_TYPE_F32) std::memcpy(ff.data(), raw.data(), raw.size());
    else ggml_get_type_traits(rope_freqs->type)->to_float(raw.data(), ff.data(), (int64_t) ff.size());
    if ((int64_t) ff.size() < hp.n_rot_full / 2) {
        throw error(info.path + ": rope_freqs.weight has " + std::to_string(ff.size()) + " values, the full layers rotate " +
                    std::to_string(hp.n_rot_full / 2) + " pairs");
    }
    rope[0] = rope_table(hp.n_rot_swa, hp.rope_base_swa, nullptr);
    rope[1] = rope_table(hp.n_rot_full, hp.rope_base_full, ff.data());
}

model::~model() { release(); }

void model::release() {
    for (ggml_backend_buffer_t b : bufs_) ggml_backend_buffer_free(b);
    bufs_.clear();
    for (ggml_context * c : ctx_extra_) ggml_free(c);
    ctx_extra_.clear();
#if !defined(_WIN32)
    if (map_) munmap(map_, map_size_);
#else
    free(map_);
#endif
    map_ = nullptr;
    for (ggml_backend_t g : gpus) ggml_backend_free(g);
    gpus.clear();
    if (backend_cpu) ggml_backend_free(backend_cpu);
    backend_cpu = nullptr;
    params.progress = nullptr;
}

std::vector<ggml_backend_t> model::backends() const {
    std::vector<ggml_backend_t> v = gpus;
    v.push_back(backend_cpu);
    return v;
}

void model::map_file(const std::string & path) {
    map_size_ = (size_t) file_->file_size();
#if !defined(_WIN32)
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) throw error(path + ": cannot open for mapping: " + std::strerror(errno));
    map_ = mmap(nullptr, map_size_, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map_ == MAP_FAILED) {
        map_ = nullptr;
        throw error(path + ": cannot memory-map the file: " + std::strerror(errno));
    }
#else
    map_ = malloc(map_size_);
    std::ifstream in(path, std::ios::binary);
    if (!map_ || !in.read((char *) map_, (std::streamsize) map_size_)) throw error(path + ": cannot read the file");
#endif
}

// The placement policy, in one place: n_gpu_layers < 0 or >= n_layer puts every layer and the global
// tensors (il = -1) on the GPUs; otherwise the last n_gpu_layers layers go there and the globals stay on
// the CPU. With several GPUs (a local one and RPC servers) the GPU layers are split into contiguous runs
// of (nearly) equal length, in device order; the globals go to the last device, which computes the
// output layer after the last layer without a copy.
ggml_backend_t model::layer_backend(int il) const {
    if (gpus.empty()) return backend_cpu;
    const int n_layer = info.hp.n_layer;
    const bool all = params.n_gpu_layers < 0 || params.n_gpu_layers >= n_layer;
    const int n_on = all ? n_layer : params.n_gpu_layers;
    if (il < 0) return all ? gpus.back() : backend_cpu;
    const int first = n_layer - n_on;
    if (il < first) return backend_cpu;
    const size_t k = (size_t) (il - first) * gpus.size() / (size_t) n_on;
    return gpus[k];
}

// Checked before any weight is placed.
std::vector<std::pair<std::regex, int>> model::compile_overrides() const {
    std::vector<std::pair<std::regex, int>> out;
    auto upper = [](std::string x) { for (char & c : x) c = (char) std::toupper((unsigned char) c); return x; };
    std::string names;
    for (ggml_backend_t g : gpus) names += std::string(", ") + ggml_backend_dev_name(ggml_backend_get_device(g));
    for (const auto & [pattern, device] : params.tensor_overrides) {
        std::regex re;
        try {
            re = std::regex(pattern);
        } catch (const std::regex_error & e) {
            throw error("tensor override '" + pattern + "=" + device + "': bad regular expression: " + e.what());
        }
        int where = upper(device) == "CPU" ? -2 : !gpus.empty() && upper(device) == "GPU" ? -1 : -3;
        for (size_t k = 0; k < gpus.size() && where == -3; k++) {
            if (upper(device) == upper(ggml_backend_dev_name(ggml_backend_get_device(gpus[k])))) where = (int) k;
        }
        if (where == -3) {
            throw error("tensor override '" + pattern + "=" + device + "': no device '" + device + "' in use; use CPU" +
                        (!gpus.empty() ? ", GPU (the layer's own)" + names
                                       : std::string(" (no GPU: a CPU build, none found, or n_gpu_layers 0)")));
        }
        out.emplace_back(std::move(re), where);
    }
    return out;
}

// CPU tensors point into the mapping (no copy), but those a repacked CPU layout runs (copied into it);
// GPU tensors are uploaded into one buffer per device.
void model::place_weights() {
    const auto overrides = compile_overrides();
    auto target = [&](const std::string & name) -> ggml_backend_t {
        const int il = layer_of(name);
        for (const auto & [re, where] : overrides) {
            if (!std::regex_search(name, re)) continue;
            if (where == -2) return backend_cpu;
            if (where >= 0) return gpus[(size_t) where];
            const ggml_backend_t own = layer_backend(il);
            return own != backend_cpu ? own : gpus.front();
        }
        if (is_expert_tensor(name) && (params.cpu_moe || il < params.n_cpu_moe)) return backend_cpu;
        return layer_backend(il);
    };

    // The mapping is read-only; ggml never writes weights.
    ggml_backend_buffer_t cpu_buf = ggml_backend_cpu_buffer_from_ptr(map_, map_size_);
    ggml_backend_buffer_set_usage(cpu_buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    bufs_.push_back(cpu_buf);

    std::vector<std::vector<ggml_tensor *>> on_gpu(gpus.size());   // per device, in file order
    std::vector<ggml_tensor *> on_cpu;
    size_t total = 0;
    for (const tensor_info & ti : info.tensors) {
        ggml_tensor * t = ggml_get_tensor(file_->tensor_meta(), ti.name.c_str());
        const ggml_backend_t b = target(ti.name);
        if (b == backend_cpu) {
            on_cpu.push_back(t);
            continue;
        }
        on_gpu[(size_t) (std::find(gpus.begin(), gpus.end(), b) - gpus.begin())].push_back(t);
        total += ggml_nbytes(t);
    }
    const repack_plan repack = plan_repack(on_cpu);
    for (ggml_tensor * t : repack.rest) {
        if (ggml_backend_tensor_alloc(cpu_buf, t, (char *) map_ + file_offset(t->name)) != GGML_STATUS_SUCCESS) {
            throw error(info.path + ": cannot place tensor '" + std::string(t->name) + "' in the mapping");
        }
    }
    total += repack.bytes;
    size_t done = 0;
    for (size_t k = 0; k < gpus.size(); k++) {
        if (on_gpu[k].empty()) continue;
        if (map_on_device(gpus[k], on_gpu[k])) {
            for (ggml_tensor * t : on_gpu[k]) done += ggml_nbytes(t);
            report_progress(0.5f * (float) done / (float) total);
            continue;
        }
        for (const auto & group : weight_buffer_groups(gpus[k], on_gpu[k])) {
            ggml_backend_buffer_type_t buft = ggml_backend_get_default_buffer_type(gpus[k]);
            size_t size = 0;
            for (ggml_tensor * t : group) size += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, t), ggml_backend_buft_get_alignment(buft));
            ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(buft, size);
            if (!buf) throw error(info.path + ": cannot allocate " + std::to_string(size >> 20) + " MiB on " +
                                  ggml_backend_name(gpus[k]) + "; lower n_gpu_layers or use cpu_moe");
            ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            bufs_.push_back(buf);
            ggml_tallocr ta = ggml_tallocr_new(buf);
            for (ggml_tensor * t : group) {
                ggml_tallocr_alloc(&ta, t);
                ggml_backend_tensor_set(t, (const char *) map_ + file_offset(t->name), 0, ggml_nbytes(t));
                done += ggml_nbytes(t);
                report_progress(0.5f * (float) done / (float) total);
            }
        }
    }
    upload_repacked(repack, [&](size_t bytes) { report_progress(0.5f * (float) (done + bytes) / (float) total); });
}

// A device that can wrap host memory (Metal and integrated GPUs on unified memory) reads the weights
// straight from the mapping: one buffer over the file range its tensors span, no copy (a copy would hold
// the model twice: the page cache and the device buffer). Metal splits such a buffer into views of its
// maximum length itself, overlapping by the largest tensor. False where the device cannot (CUDA), or
// declines this range.
bool model::map_on_device(ggml_backend_t backend, const std::vector<ggml_tensor *> & tensors) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    ggml_backend_dev_props props;
    ggml_backend_dev_get_props(dev, &props);
    if (!props.caps.buffer_from_host_ptr) return false;
    // file offsets (the mapping starts at offset 0); a tensor's extent is its allocation size on the device,
    // which ggml_backend_tensor_alloc checks against the buffer's end
    ggml_backend_buffer_type_t buft = ggml_backend_get_default_buffer_type(backend);
    size_t lo = SIZE_MAX, hi = 0, largest = 0;
    for (ggml_tensor * t : tensors) {
        const size_t off = file_offset(t->name);
        lo = std::min(lo, off);
        hi = std::max(hi, off + ggml_backend_buft_get_alloc_size(buft, t));
        largest = std::max(largest, ggml_nbytes(t));
    }
    const size_t page = (size_t) sysconf(_SC_PAGESIZE);
    lo -= lo % page;
    if (hi > GGML_PAD(map_size_, page)) return false;   // padding past the mapping's last page: copy instead
    ggml_backend_buffer_t buf = ggml_backend_dev_buffer_from_host_ptr(dev, (char *) map_ + lo, hi - lo, largest);
    if (!buf) {
        log_msg(LOG_WARN, "%s cannot map the weights' file range; copying them\n", ggml_backend_dev_name(dev));
        return false;
    }
    ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    bufs_.push_back(buf);
    for (ggml_tensor * t : tensors) {
        if (ggml_backend_tensor_alloc(buf, t, (char *) map_ + file_offset(t->name)) != GGML_STATUS_SUCCESS) {
            throw error(info.path + ": cannot place tensor '" + std::string(t->name) + "' in " +
                        ggml_backend_dev_name(dev) + "'s mapped buffer");
        }
    }
    return true;
}

// The device's weights in file order, cut into runs whose allocation fits the buffer type's maximum
// buffer size (Metal's maxBufferLength, a fraction of the machine's memory; one buffer for the experts of a
// 26B model exceeds it). DGEMMA_MAX_WEIGHT_BUFFER (bytes) lowers the maximum, for tests.
std::vector<std::vector<ggml_tensor *>> model::weight_buffer_groups(ggml_backend_t backend,
                                                                   const std::vector<ggml_tensor *> & tensors) const {
    ggml_backend_buffer_type_t buft = ggml_backend_get_default_buffer_type(backend);
    size_t max = ggml_backend_buft_get_max_size(buft);
    if (const char * cap = std::getenv("DGEMMA_MAX_WEIGHT_BUFFER")) max = std::min(max, (size_t) std::strtoull(cap, nullptr, 10));
    const size_t align = ggml_backend_buft_get_alignment(buft);
    std::vector<std::vector<ggml_tensor *>> groups(1);
    size_t used = 0;
    for (ggml_tensor * t : tensors) {
        const size_t need = GGML_PAD(ggml_backend_buft_get_alloc_size(buft, t), align);
        if (need > max) {
            throw error(info.path + ": tensor '" + std::string(t->name) + "' (" + std::to_string(need >> 20) + " MiB) is larger than " +
                        ggml_backend_buft_name(buft) + "'s largest buffer (" + std::to_string(max >> 20) +
                        " MiB); keep it on the CPU with -ot '" + std::string(t->name) + "=CPU'");
        }
        if (used + need > max && !groups.back().empty()) {
            groups.emplace_back();
            used = 0;
        }
        groups.back().push_back(t);
        used += need;
    }
    return groups;
}

uint64_t model::file_offset(const std::string & name) const {
    const int64_t id = file_->find_tensor(name);
    if (id < 0) throw error(info.path + ": tensor '" + name + "' missing after validation");
    return file_->tensor_offset(id);
}

ggml_tensor * model::get(const std::string & name, bool required) const {
    ggml_tensor * t = ggml_get_tensor(file_->tensor_meta(), name.c_str());
    if (!t && required) throw error(info.path + ": tensor '" + name + "' missing after validation");
    return t;
}

bool reductions_on_cpu(const model & m) { return m.fused_cpu_reductions; }

std::shared_ptr<model> load_model(const std::string & path, const model_params & params) {
    return std::make_shared<model>(path, params);
}

const model_info & get_model_info(const model & m) { return m.info; }

std::vector<std::pair<std::string, std::string>> get_weight_placement(const model & m) {
    // a device whose weights span several buffers (its maximum buffer size): "NAME #k", k from 0 in load order
    std::map<ggml_backend_buffer_t, int> index;
    std::map<std::string, int> count;
    for (const tensor_info & ti : m.info.tensors) {
        const ggml_tensor * t = ggml_get_tensor(m.file().tensor_meta(), ti.name.c_str());
        if (t && t->buffer && !index.count(t->buffer)) index[t->buffer] = count[ggml_backend_buffer_name(t->buffer)]++;
    }
    std::vector<std::pair<std::string, std::string>> out;
    for (const tensor_info & ti : m.info.tensors) {
        const ggml_tensor * t = ggml_get_tensor(m.file().tensor_meta(), ti.name.c_str());
        std::string where = t && t->buffer ? ggml_backend_buffer_name(t->buffer) : "";
        if (!where.empty() && count[where] > 1) where += " #" + std::to_string(index[t->buffer]);
        out.emplace_back(ti.name, where);
    }
    return out;
}

vocab_data get_model_vocab(const model & m) { return read_vocab(m.file()); }

} // namespace dgemma
