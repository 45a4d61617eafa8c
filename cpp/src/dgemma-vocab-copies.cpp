// The vocabulary-sized copies of the embedding a model derives at load: the transposed embedding the
// self-conditioning product contracts over, and, on CPUs without native bf16 (or int8) products, an F16
// output layer for a bf16 (or q8_0) embedding.
#include "dgemma-model.h"
#include "dgemma-parallel.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace dgemma {

namespace {

// Whether the CPU multiplies bf16 natively (x86 AVX512_BF16). Elsewhere ggml widens every bf16 operand as it
// loads it, two instructions per 8 values on AVX2 against one (F16C) for f16. Measured 2026-11-28 on an
// AVX2-only AMD EPYC VM, 2 threads, ggml's products: [256 x 262144] x [256 x 256] (the proxy's output layer)
// bf16 78.5 GFLOP/s, f16 97.7; [32768 x 256] x [32768 x 2048] (its self-conditioning slices) bf16 98.1, f16
// 155.4. With AVX512_BF16 it is the other way round (bf16 1.6x f16). DGEMMA_NATIVE_BF16=0/1 overrides the
// detection (tests run both choices on any host). Only x86's AVX512_BF16 counts as native: ggml's other
// native bf16 paths (POWER10 MMA, RISC-V Zvfbfwma) get the F16 copies, unmeasured there.
bool cpu_bf16_is_native() {
    if (const char * e = std::getenv("DGEMMA_NATIVE_BF16"); e && *e) return std::strcmp(e, "0") != 0;
    return ggml_cpu_has_avx512_bf16() != 0;
}

// Whether the CPU has the int8 dot-product instructions ggml's q8_0 products use (x86 AVX-VNNI or AVX512-VNNI,
// ARM dotprod or i8mm). Without them llamafile's q8_0 kernel widens and converts every 32-value block: measured
// 2026-11-28 on the AVX2-only AMD EPYC VM, 2 threads, ggml's products [256 x 262144] x [256 x 256] q8_0
// 80.3 GFLOP/s, f16 94.2; [2816 x 32768] x [2816 x 256] (the released width) q8_0 105.3, f16 144.0.
// DGEMMA_NATIVE_INT8=0/1 overrides the detection.
bool cpu_int8_dot_is_native() {
    if (const char * e = std::getenv("DGEMMA_NATIVE_INT8"); e && *e) return std::strcmp(e, "0") != 0;
    return ggml_cpu_has_avx_vnni() || ggml_cpu_has_avx512_vnni() || ggml_cpu_has_dotprod() ||
           ggml_cpu_has_matmul_int8();
}

} // namespace

ggml_tensor * model::new_derived(ggml_type type, int64_t ne0, int64_t ne1, const char * name) {
    ggml_init_params ip = { ggml_tensor_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    ctx_extra_.push_back(ctx);
    ggml_tensor * t = ggml_new_tensor_2d(ctx, type, ne0, ne1);
    ggml_set_name(t, name);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend_globals);
    if (!buf) throw error(info.path + ": cannot allocate " + name + " (" + std::to_string(ggml_nbytes(t) >> 20) + " MiB)");
    ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    bufs_.push_back(buf);
    return t;
}

// The soft embedding softmax(S) @ E contracts over the vocabulary, E's slow dimension. A transposed copy
// [V, H] turns it into an ordinary matmul over the fast dimension. Memory: V * H elements of the
// embedding's float type (1.47 GB for the released model in bf16). A quantized embedding is copied as F16,
// except below 8 bits on the CPU path where the CPU multiplies bf16 natively, where BF16 is used: its matmul
// runs 1.6x faster there (the softmax is then stored in BF16 too), and the logits error with
// self-conditioning stays that of the quantization (bundled model against f32: Q6_K 1.2e-4 with BF16,
// 1.7e-4 with F16; Q4_K_M 2.6e-4 / 2.7e-4). At q8_0 BF16 would add to it (6.4e-5 against 4.4e-5). Off the
// CPU, cuBLAS accumulates the F16 product in F32 (GGML_PREC_F32), and F16 is closer for peaked rows.
// On the CPU path without native bf16, a BF16 embedding is copied as F16 both ways (its values convert
// exactly, but for magnitudes under 2^-14, rounded to 2^-24): the output layer then reads the F16 copy, and
// ggml rounds its activations (the final norm's output) to f16 instead of bf16: closer, within f16's range
// of 65504 (post-norm hidden states are far below it). Likewise, without int8 dot products, a q8_0 embedding's
// output layer reads an F16 copy: a q8_0 value (an f16 scale times an int8) rounds to f16 within 2^-11 of
// itself, a sixteenth of the quantization's own step, and the activations round to f16 instead of q8_0.
// Memory: V * H * 2 bytes more (1.47 GB at the released shape, 5% of a q8_0 file).
void model::make_vocab_copies() {
    const int64_t H = info.hp.n_embd, V = info.hp.n_vocab;
    const bool cpu = reductions_on_cpu(*this);
    const bool native_bf16 = cpu_bf16_is_native();
    ggml_type tt = tok_embd->type;
    if (tt == GGML_TYPE_BF16 && cpu && !native_bf16) {
        tt = GGML_TYPE_F16;
    } else if (tt != GGML_TYPE_F32 && tt != GGML_TYPE_F16 && tt != GGML_TYPE_BF16) {
        const double bits = 8.0 * (double) ggml_type_size(tt) / (double) ggml_blck_size(tt);
        tt = cpu && native_bf16 && bits < 8.0 ? GGML_TYPE_BF16 : GGML_TYPE_F16;
    }
    const bool f16_head = cpu && ((tok_embd->type == GGML_TYPE_BF16 && !native_bf16) ||
                                  (tok_embd->type == GGML_TYPE_Q8_0 && !cpu_int8_dot_is_native()));

    tok_embd_t = new_derived(tt, V, H, "token_embd_t");
    // named as the weight it copies: activation statistics (imatrix) and profiles key on the name
    lm_head = f16_head ? new_derived(GGML_TYPE_F16, H, V, "token_embd.weight") : tok_embd;

    // fill host buffers in place; stage through host memory only for device buffers
    std::vector<uint8_t> staging;
    auto host_data = [&staging](ggml_tensor * t) {
        if (ggml_backend_buffer_is_host(t->buffer)) return (uint8_t *) t->data;
        staging.resize(ggml_nbytes(t));
        return staging.data();
    };
    uint8_t * dst_t = host_data(tok_embd_t);
    uint8_t * dst_h = f16_head ? (uint8_t *) lm_head->data : nullptr;   // the CPU path: a host buffer
    const auto * src_traits = ggml_get_type_traits(tok_embd->type);
    const ggml_from_float_t to_t = ggml_get_type_traits_cpu(tt)->from_float;   // f32, f16 or bf16: vectorised
    // tok_embd may live on the GPU: read it from the mapping
    const char * src = (const char *) map_ + file_offset("token_embd.weight");
    const size_t row_bytes = ggml_row_size(tok_embd->type, H);
    // blocks of `block` vocabulary rows, on every core (1.5-3 s on one core at the released shape): each
    // dequantised, its rows converted into the F16 output layer, its columns into the transposed copy
    const int64_t block = 256, n_blocks = (V + block - 1) / block;
    parallel_for(n_blocks, [&](int64_t ib) {
        const int64_t v0 = ib * block, nb = std::min(block, V - v0);
        std::vector<float> rows((size_t) nb * H), col((size_t) nb);
        for (int64_t r = 0; r < nb; r++) {
            const void * row = src + (size_t) (v0 + r) * row_bytes;
            float * out = &rows[(size_t) r * H];
            if (tok_embd->type == GGML_TYPE_F32) std::memcpy(out, row, H * sizeof(float));
            else src_traits->to_float(row, out, H);
            if (dst_h) ggml_cpu_fp32_to_fp16(out, (ggml_fp16_t *) dst_h + (size_t) (v0 + r) * H, H);
        }
        for (int64_t h = 0; h < H; h++) {
            for (int64_t r = 0; r < nb; r++) col[(size_t) r] = rows[(size_t) r * H + h];
            to_t(col.data(), dst_t + ((size_t) h * V + (size_t) v0) * ggml_type_size(tt), nb);
        }
    }, [&, last = (int64_t) 0](int64_t done) mutable {
        if (done - last < 64 && done < n_blocks) return;
        last = done;
        report_progress(0.5f + 0.5f * (float) done / (float) n_blocks);
    });
    if (!staging.empty()) ggml_backend_tensor_set(tok_embd_t, staging.data(), 0, staging.size());
}

} // namespace dgemma
