// Weight quantization through ggml's own routines (ggml_quantize_chunk and the types' to_float), so a
// tensor quantized here is byte-identical to what llama.cpp's llama-quantize writes for the same type,
// rows and importance matrix. Rows are split over threads; each thread quantizes whole rows.
#include "dgemma.h"

#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

namespace dgemma {

namespace {

// The types ggml_quantize_chunk has an encoder for (its switch in ggml.c, pinned version).
bool has_encoder(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16:
        case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_0: case GGML_TYPE_Q5_1: case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q1_0: case GGML_TYPE_Q2_0: case GGML_TYPE_MXFP4: case GGML_TYPE_NVFP4:
        case GGML_TYPE_Q2_K: case GGML_TYPE_Q3_K: case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K: case GGML_TYPE_Q6_K:
        case GGML_TYPE_TQ1_0: case GGML_TYPE_TQ2_0:
        case GGML_TYPE_IQ2_XXS: case GGML_TYPE_IQ2_XS: case GGML_TYPE_IQ2_S: case GGML_TYPE_IQ3_XXS:
        case GGML_TYPE_IQ3_S: case GGML_TYPE_IQ1_S: case GGML_TYPE_IQ1_M: case GGML_TYPE_IQ4_NL:
        case GGML_TYPE_IQ4_XS:
            return true;
        default:
            return false;
    }
}

ggml_type checked_type(int type, const char * what) {
    if (type < 0 || type >= GGML_TYPE_COUNT || ggml_type_size((ggml_type) type) == 0) {
        throw error(std::string(what) + ": unknown ggml type id " + std::to_string(type));
    }
    return (ggml_type) type;
}

void check_rows(ggml_type t, int64_t nrows, int64_t n_per_row, const char * what) {
    if (nrows < 0 || n_per_row <= 0) {
        throw error(std::string(what) + ": bad shape: " + std::to_string(nrows) + " rows of " +
                    std::to_string(n_per_row));
    }
    const int64_t blck = ggml_blck_size(t);
    if (n_per_row % blck) {
        throw error(std::string(what) + ": a row of " + std::to_string(n_per_row) + " values does not fit " +
                    ggml_type_name(t) + ", whose blocks hold " + std::to_string(blck) +
                    " values; choose a type whose block size divides the row length");
    }
}

// Runs fn(r0, r1) over [0, nrows) split into contiguous row ranges, one per thread.
template <typename F>
void split_rows(int64_t nrows, int n_threads, F fn) {
    const int64_t n = std::max<int64_t>(1, std::min<int64_t>(n_threads, nrows));
    if (n <= 1) {
        fn(0, nrows);
        return;
    }
    std::vector<std::thread> workers;
    const int64_t per = (nrows + n - 1) / n;
    for (int64_t r0 = 0; r0 < nrows; r0 += per) {
        workers.emplace_back(fn, r0, std::min(nrows, r0 + per));
    }
    for (auto & w : workers) w.join();
}

} // namespace

size_t quant_row_bytes(int type, int64_t n_per_row, const char * what) {
    const ggml_type t = checked_type(type, what);
    check_rows(t, 0, n_per_row, what);
    return ggml_row_size(t, n_per_row);
}

std::vector<quant_type_info> quant_types() {
    std::vector<quant_type_info> out;
    for (int i = 0; i < GGML_TYPE_COUNT; i++) {
        const ggml_type t = (ggml_type) i;
        if (ggml_type_size(t) == 0 || ggml_blck_size(t) == 0) continue;   // removed ids
        const auto * tr = ggml_get_type_traits(t);
        quant_type_info q;
        q.id = i;
        q.name = ggml_type_name(t);
        q.block_size = ggml_blck_size(t);
        q.type_size = ggml_type_size(t);
        q.is_quantized = ggml_is_quantized(t);
        q.can_quantize = has_encoder(t);
        q.can_dequantize = tr->to_float != nullptr || t == GGML_TYPE_F32;
        q.needs_imatrix = ggml_quantize_requires_imatrix(t);
        out.push_back(q);
    }
    return out;
}

size_t quantize_rows(int type, const float * src, void * dst, int64_t nrows, int64_t n_per_row,
                     const float * imatrix, int n_threads) {
    const ggml_type t = checked_type(type, "quantize");
    if (!has_encoder(t)) throw error(std::string("quantize: ggml has no encoder for ") + ggml_type_name(t));
    check_rows(t, nrows, n_per_row, "quantize");
    if (ggml_quantize_requires_imatrix(t) && !imatrix) {
        throw error(std::string("quantize: ") + ggml_type_name(t) + " needs an importance matrix; make one with "
                    "dgemma-imatrix and pass --imatrix");
    }
    if (nrows == 0) return 0;
    // ggml's encoders let a NaN through silently (q8_0's block scale ignores it, the value becomes an
    // arbitrary integer): refuse non-finite input, naming where it is
    for (int64_t r = 0; r < nrows; r++) {
        const float * row = src + r * n_per_row;
        for (int64_t i = 0; i < n_per_row; i++) {
            if (!std::isfinite(row[i])) {
                throw error("quantize: value " + std::to_string(row[i]) + " at row " + std::to_string(r) +
                            ", column " + std::to_string(i) + " is not finite; the source tensor is corrupt");
            }
        }
    }
    ggml_quantize_init(t);   // lookup tables of the IQ types, built once, before the threads share them
    const size_t row_size = ggml_row_size(t, n_per_row);
    split_rows(nrows, n_threads, [&](int64_t r0, int64_t r1) {
        ggml_quantize_chunk(t, src, dst, r0 * n_per_row, r1 - r0, n_per_row, imatrix);
    });
    const size_t total = row_size * (size_t) nrows;
    if (!ggml_validate_row_data(t, dst, total)) {
        throw error(std::string("quantize: ggml produced invalid ") + ggml_type_name(t) +
                    " data (values beyond the type's range?)");
    }
    return total;
}

void dequantize_rows(int type, const void * src, float * dst, int64_t nrows, int64_t n_per_row, int n_threads) {
    const ggml_type t = checked_type(type, "dequantize");
    check_rows(t, nrows, n_per_row, "dequantize");
    const size_t row_size = ggml_row_size(t, n_per_row);
    if (t == GGML_TYPE_F32) {
        std::copy((const float *) src, (const float *) src + nrows * n_per_row, dst);
        return;
    }
    const auto * tr = ggml_get_type_traits(t);
    if (!tr->to_float) throw error(std::string("dequantize: ggml cannot convert ") + ggml_type_name(t) + " to f32");
    split_rows(nrows, n_threads, [&](int64_t r0, int64_t r1) {
        tr->to_float((const char *) src + r0 * row_size, dst + r0 * n_per_row, (r1 - r0) * n_per_row);
    });
}

} // namespace dgemma
