// A plain ggml matrix product, timed: the yardstick a decoder step's achieved FLOP rate is compared with
// (dgemma-bench). Weights of the given type hold a quantized random block repeated (the values do not
// change the kernels' speed); activations are f32, as in the graphs.
#include "dgemma.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace dgemma {

namespace {
ggml_type type_by_name(const std::string & name) {
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        if (ggml_type_size((ggml_type) t) != 0 && name == ggml_type_name((ggml_type) t)) return (ggml_type) t;
    }
    throw error("time_matmul: unknown type '" + name + "'");
}
} // namespace

std::vector<double> time_matmul(const std::string & type, int64_t K, int64_t M, int64_t N, int n_threads,
                                int repeats, bool on_gpu) {
    const ggml_type t = type_by_name(type);
    if (K <= 0 || M <= 0 || N <= 0 || repeats <= 0) throw error("time_matmul: sizes and repeats must be > 0");
    if (K % ggml_blck_size(t)) {
        throw error("time_matmul: K " + std::to_string(K) + " is not a multiple of " + type + "'s block");
    }
    ggml_backend_t backend = nullptr;
    if (on_gpu) {
        for (size_t i = 0; i < ggml_backend_dev_count() && !backend; i++) {
            ggml_backend_dev_t d = ggml_backend_dev_get(i);
            const auto dt = ggml_backend_dev_type(d);
            if (dt == GGML_BACKEND_DEVICE_TYPE_GPU || dt == GGML_BACKEND_DEVICE_TYPE_IGPU) backend = ggml_backend_dev_init(d, nullptr);
        }
        if (!backend) throw error("time_matmul: no GPU in this build or machine");
    } else {
        backend = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
        if (!backend) throw error("time_matmul: cannot initialise the CPU backend");
        ggml_backend_cpu_set_n_threads(backend, std::max(1, n_threads));
    }
    std::unique_ptr<ggml_backend, void (*)(ggml_backend_t)> be(backend, ggml_backend_free);

    ggml_init_params ip = { ggml_tensor_overhead() * 8 + ggml_graph_overhead(), nullptr, true };
    std::unique_ptr<ggml_context, void (*)(ggml_context *)> ctx(ggml_init(ip), ggml_free);
    ggml_tensor * w = ggml_new_tensor_2d(ctx.get(), t, K, M);
    ggml_tensor * x = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, K, N);
    ggml_tensor * y = ggml_mul_mat(ctx.get(), w, x);
    ggml_prec_set_acc(y, GGML_PREC_F32);   // as the graphs ask for their vocabulary-wide products
    ggml_cgraph * gf = ggml_new_graph(ctx.get());
    ggml_build_forward_expand(gf, y);
    std::unique_ptr<ggml_backend_buffer, void (*)(ggml_backend_buffer_t)> buf(
        ggml_backend_alloc_ctx_tensors(ctx.get(), backend), ggml_backend_buffer_free);
    if (!buf) throw error("time_matmul: out of memory for a " + std::to_string(M) + " x " + std::to_string(K) + " " + type + " matrix");

    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    {
        const int64_t rows = std::min<int64_t>(M, 64);
        std::vector<float> src((size_t) (rows * K));
        for (float & v : src) v = nd(rng);
        std::vector<uint8_t> q(ggml_row_size(t, K) * (size_t) rows);
        ggml_quantize_init(t);
        ggml_quantize_chunk(t, src.data(), q.data(), 0, rows, K, nullptr);
        for (int64_t r0 = 0; r0 < M; r0 += rows) {
            const int64_t n = std::min(rows, M - r0);
            ggml_backend_tensor_set(w, q.data(), (size_t) r0 * ggml_row_size(t, K), (size_t) n * ggml_row_size(t, K));
        }
        std::vector<float> xs((size_t) (K * N));
        for (float & v : xs) v = nd(rng);
        ggml_backend_tensor_set(x, xs.data(), 0, xs.size() * sizeof(float));
    }
    std::vector<double> secs;
    ggml_backend_graph_compute(backend, gf);   // warm-up
    for (int i = 0; i < repeats; i++) {
        const auto t0 = std::chrono::steady_clock::now();
        if (ggml_backend_graph_compute(backend, gf) != GGML_STATUS_SUCCESS) throw error("time_matmul: compute failed");
        ggml_backend_synchronize(backend);
        secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return secs;
}

} // namespace dgemma
