// CPU expert weights in the CPU backend's repacked layouts ("extra" buffer types: CPU_REPACK, and AMX or
// KleidiAI where ggml was built with them). The repacked kernels multiply several interleaved weight rows at
// once (on AVX2: q4_0, q4_K, iq4_nl and mxfp4 rows in groups of 8); ggml converts a tensor's layout when it
// is uploaded into such a buffer, so a repacked tensor is a copy, not the mapping.
#include "dgemma-model.h"
#include "dgemma-log.h"
#include "dgemma-parallel.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#if !defined(_WIN32)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace dgemma {

namespace {

// The expert tensors: they only ever enter the graphs as MUL_MAT_ID's first operand (a repacked tensor holds
// no ordinary rows: GET_ROWS, views and copies of it would read garbage), and their products are where the
// repacked kernels win. Measured 2026-11-28 on an AVX2-only AMD EPYC VM, 2 threads, the released widths in
// Q4_K_M with 6 layers, per-op profile, three alternating runs each: ffn_gate_up_exps (q4_K) 1078-1114 ms
// per step plain against 882-983 repacked, prompt encoding 74-80 tok/s against 97-103; but the dense q4_K
// products over the 256-token canvas ran slower repacked (attn_q 209-213 ms against 245-288, attn_output
// 222-225 against 240-252, ffn_gate and ffn_up 104-106 against 110-119), so they stay in the mapping.
bool repack_candidate(const std::string & name) {
    static const char * const suffixes[] = {
        "ffn_gate_up_exps.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight",
    };
    for (const char * s : suffixes) {
        const size_t n = std::strlen(s);
        if (name.size() >= n && name.compare(name.size() - n, n, s) == 0) return true;
    }
    return false;
}

// Whether the CPU device runs MUL_MAT_ID, the product the graphs make of expert tensor w ([K, N, E]), with w
// in `probe`, an empty buffer of the candidate type: the buffer type's own rule (its type, row count and the
// CPU's features) decides, as llama.cpp asks it. A file with one expert (w 2-D to ggml) is refused by it.
bool runs_repacked(ggml_backend_dev_t cpu, ggml_backend_buffer_t probe, const ggml_tensor * w) {
    ggml_init_params ip = { 8 * ggml_tensor_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * wt = ggml_new_tensor_3d(ctx, w->type, w->ne[0], w->ne[1], w->ne[2]);
    wt->buffer = probe;
    const int64_t n_used = std::min<int64_t>(2, w->ne[2]);
    ggml_tensor * b = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, w->ne[0], n_used, 8);
    ggml_tensor * ids = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, n_used, 8);
    const bool ok = ggml_backend_dev_supports_op(cpu, ggml_mul_mat_id(ctx, wt, b, ids));
    ggml_free(ctx);
    return ok;
}

} // namespace

// Which CPU weights a repacked layout runs, grouped by its buffer type; the rest stay in the mapping
// (all of them with params.cpu_repack false).
repack_plan model::plan_repack(const std::vector<ggml_tensor *> & cpu_tensors) const {
    repack_plan plan;
    plan.rest = cpu_tensors;
    if (!params.cpu_repack) return plan;
    ggml_backend_dev_t cpu = ggml_backend_get_device(backend_cpu);
    auto get_extra = (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(
        ggml_backend_dev_backend_reg(cpu), "ggml_backend_dev_get_extra_bufts");
    if (!get_extra) return plan;
    std::vector<ggml_backend_buffer_type_t> extra;
    for (ggml_backend_buffer_type_t * p = get_extra(cpu); p && *p; p++) extra.push_back(*p);
    if (extra.empty()) return plan;

    std::vector<ggml_backend_buffer_t> probes;
    for (ggml_backend_buffer_type_t buft : extra) probes.push_back(ggml_backend_buft_alloc_buffer(buft, 0));
    std::vector<std::vector<ggml_tensor *>> taken(extra.size());
    plan.rest.clear();
    for (ggml_tensor * t : cpu_tensors) {
        size_t k = repack_candidate(t->name) ? 0 : extra.size();
        while (k < extra.size() && !(probes[k] && runs_repacked(cpu, probes[k], t))) k++;
        if (k < extra.size()) {
            taken[k].push_back(t);
            plan.bytes += ggml_nbytes(t);
        } else {
            plan.rest.push_back(t);
        }
    }
    for (ggml_backend_buffer_t p : probes) if (p) ggml_backend_buffer_free(p);
    for (size_t k = 0; k < extra.size(); k++) {
        if (!taken[k].empty()) plan.groups.emplace_back(extra[k], std::move(taken[k]));
    }
    return plan;
}

// Copies the planned weights into buffers of their layouts (ggml converts a tensor as it is set), on every
// core: several GB at the released shape. The mapping's pages of a repacked tensor are released once it is
// copied, so the process holds it once. progress(bytes copied so far) runs on the calling thread.
void model::upload_repacked(const repack_plan & plan, const std::function<void(size_t)> & progress) {
    size_t done = 0;
    for (const auto & [buft, group] : plan.groups) {
        const size_t align = ggml_backend_buft_get_alignment(buft);
        size_t size = 0;
        for (ggml_tensor * t : group) size += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, t), align);
        ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(buft, size);
        if (!buf) {
            throw error(info.path + ": cannot allocate " + std::to_string(size >> 20) + " MiB for the " +
                        ggml_backend_buft_name(buft) + " weights; free memory, or load without repacking "
                        "(cpu_repack=False, --no-repack) to read them from the file's mapping");
        }
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        bufs_.push_back(buf);
        ggml_tallocr ta = ggml_tallocr_new(buf);
        for (ggml_tensor * t : group) ggml_tallocr_alloc(&ta, t);
        std::vector<size_t> upto(group.size());   // bytes of group[0..i]
        for (size_t i = 0; i < group.size(); i++) upto[i] = (i ? upto[i - 1] : 0) + ggml_nbytes(group[i]);
        parallel_for((int64_t) group.size(), [&](int64_t i) {
            ggml_tensor * t = group[(size_t) i];
            const size_t off = file_offset(t->name), n = ggml_nbytes(t);
            ggml_backend_tensor_set(t, (const char *) map_ + off, 0, n);
#if !defined(_WIN32)
            // whole pages inside the tensor: its neighbours may still be read from the mapping
            const size_t page = (size_t) sysconf(_SC_PAGESIZE);
            const size_t lo = GGML_PAD(off, page), hi = (off + n) / page * page;
            if (hi > lo) madvise((char *) map_ + lo, hi - lo, MADV_DONTNEED);
#endif
        }, [&](int64_t n_done) { if (progress) progress(done + upto[(size_t) n_done - 1]); });
        done += upto.back();
        log_msg(LOG_INFO, "%zu weight tensors (%zu MiB) repacked into %s\n", group.size(), size >> 20,
                ggml_backend_buft_name(buft));
    }
}

} // namespace dgemma
