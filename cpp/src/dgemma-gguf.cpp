#include "dgemma-gguf.h"
#include "dgemma-log.h"

#include "ggml.h"
#include "gguf.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <sys/stat.h>

namespace dgemma {

namespace {

bool is_int_type(gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64:
            return true;
        default:
            return false;
    }
}

// Reads element i of an integer value stored at p with GGUF type t. u64 values above INT64_MAX are
// reported as -1 so that range checks downstream reject them.
int64_t read_int(gguf_type t, const void * p, size_t i) {
    switch (t) {
        case GGUF_TYPE_UINT8:  return ((const uint8_t  *) p)[i];
        case GGUF_TYPE_INT8:   return ((const int8_t   *) p)[i];
        case GGUF_TYPE_UINT16: return ((const uint16_t *) p)[i];
        case GGUF_TYPE_INT16:  return ((const int16_t  *) p)[i];
        case GGUF_TYPE_UINT32: return ((const uint32_t *) p)[i];
        case GGUF_TYPE_INT32:  return ((const int32_t  *) p)[i];
        case GGUF_TYPE_UINT64: {
            uint64_t v = ((const uint64_t *) p)[i];
            return v > (uint64_t) std::numeric_limits<int64_t>::max() ? -1 : (int64_t) v;
        }
        case GGUF_TYPE_INT64:  return ((const int64_t  *) p)[i];
        default: return 0;
    }
}

} // namespace

std::string shape_str(const std::vector<int64_t> & ne) {
    size_t n = ne.size();
    while (n > 1 && ne[n - 1] == 1) n--;
    std::ostringstream os;
    os << "{";
    for (size_t i = 0; i < n; i++) os << (i ? ", " : "") << ne[i];
    os << "}";
    return os.str();
}

gguf_file::gguf_file(const std::string & path, bool tensor_meta) : path_(path) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
        throw error(path + ": cannot open: " + std::strerror(errno));
    }
    if (S_ISDIR(st.st_mode)) {
        throw error(path + ": is a directory, not a GGUF file");
    }
    // a FIFO, socket or device would block the read below forever or yield no size to check offsets against
    if (!S_ISREG(st.st_mode)) {
        throw error(path + ": not a regular file (a pipe, socket or device); pass the path of a .gguf file");
    }
    file_size_ = (uint64_t) st.st_size;

    // Check the magic ourselves: ggml's message for a foreign file is terse.
    FILE * f = std::fopen(path.c_str(), "rb");
    if (!f) {
        throw error(path + ": cannot open: " + std::strerror(errno));
    }
    char magic[4] = {0, 0, 0, 0};
    size_t got = std::fread(magic, 1, 4, f);
    std::fclose(f);
    if (got < 4 || std::memcmp(magic, "GGUF", 4) != 0) {
        throw error(path + ": not a GGUF file (the file does not start with the GGUF magic); "
                    "convert a Hugging Face checkpoint with dgemma-convert first");
    }

    log_capture cap;
    gguf_init_params params = { /*no_alloc =*/ true, /*ctx =*/ tensor_meta ? &meta_ : nullptr };
    ctx_ = gguf_init_from_file(path.c_str(), params);
    if (!ctx_) {
        std::string detail = cap.text();
        throw error(path + ": cannot parse GGUF header or tensor table (file corrupt or truncated)" +
                    (detail.empty() ? std::string() : ": " + detail));
    }

    // Tensor data must lie inside the file: gguf parses without reading it.
    const uint64_t base = data_offset();
    for (int64_t i = 0; i < n_tensors(); i++) {
        const uint64_t end = base + gguf_get_tensor_offset(ctx_, i) + gguf_get_tensor_size(ctx_, i);
        if (end > file_size_) {
            std::string name = tensor_name(i);
            gguf_free(ctx_);
            ctx_ = nullptr;
            if (meta_) ggml_free(meta_);
            meta_ = nullptr;
            std::ostringstream os;
            os << path << ": file is truncated: tensor '" << name << "' ends at byte " << end
               << " but the file has " << file_size_ << " bytes; download or convert it again";
            throw error(os.str());
        }
    }
}

gguf_file::~gguf_file() {
    if (ctx_) gguf_free(ctx_);
    if (meta_) ggml_free(meta_);
}

uint32_t gguf_file::version() const { return gguf_get_version(ctx_); }
uint64_t gguf_file::data_offset() const { return gguf_get_data_offset(ctx_); }

std::string gguf_file::where(const std::string & detail) const { return path_ + ": " + detail; }

bool gguf_file::has(const std::string & key) const { return gguf_find_key(ctx_, key.c_str()) >= 0; }

int64_t gguf_file::key_id(const std::string & key) const {
    int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0) {
        throw error(where("missing required metadata key '" + key + "'"));
    }
    return id;
}

int64_t gguf_file::get_int(const std::string & key) const {
    int64_t id = key_id(key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (!is_int_type(t)) {
        throw error(where("metadata key '" + key + "' has type " + gguf_type_name(t) + ", expected an integer"));
    }
    return read_int(t, gguf_get_val_data(ctx_, id), 0);
}

double gguf_file::get_float(const std::string & key) const {
    int64_t id = key_id(key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (t == GGUF_TYPE_FLOAT32) return gguf_get_val_f32(ctx_, id);
    if (t == GGUF_TYPE_FLOAT64) return gguf_get_val_f64(ctx_, id);
    if (is_int_type(t)) return (double) read_int(t, gguf_get_val_data(ctx_, id), 0);
    throw error(where("metadata key '" + key + "' has type " + gguf_type_name(t) + ", expected a number"));
}

bool gguf_file::get_bool(const std::string & key) const {
    int64_t id = key_id(key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (t != GGUF_TYPE_BOOL) {
        throw error(where("metadata key '" + key + "' has type " + gguf_type_name(t) + ", expected bool"));
    }
    return gguf_get_val_bool(ctx_, id);
}

namespace {
// Index of the first byte that breaks UTF-8 (RFC 3629: no overlongs, surrogates or code points past
// U+10FFFF), or -1. Strings reach Python as str, where invalid bytes raised UnicodeDecodeError.
int64_t utf8_error_at(const std::string & s) {
    const auto * p = (const unsigned char *) s.data();
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        const unsigned char c = p[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
        else return (int64_t) i;
        if (i + len > n) return (int64_t) i;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return (int64_t) i;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
            return (int64_t) i;
        }
        i += len;
    }
    return -1;
}
} // namespace

void gguf_file::check_utf8(const std::string & what, const std::string & s) const {
    const int64_t at = utf8_error_at(s);
    if (at >= 0) {
        throw error(where(what + " is not valid UTF-8 (byte " + std::to_string(at) + " of " +
                          std::to_string(s.size()) + "); the file is corrupt or was not written by a GGUF tool"));
    }
}

std::string gguf_file::get_str(const std::string & key) const {
    int64_t id = key_id(key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (t != GGUF_TYPE_STRING) {
        throw error(where("metadata key '" + key + "' has type " + gguf_type_name(t) + ", expected a string"));
    }
    std::string s = gguf_get_val_str(ctx_, id);
    check_utf8("metadata key '" + key + "'", s);
    return s;
}

std::optional<int64_t> gguf_file::opt_int(const std::string & key) const {
    return has(key) ? std::optional<int64_t>(get_int(key)) : std::nullopt;
}
std::optional<double> gguf_file::opt_float(const std::string & key) const {
    return has(key) ? std::optional<double>(get_float(key)) : std::nullopt;
}
std::optional<bool> gguf_file::opt_bool(const std::string & key) const {
    return has(key) ? std::optional<bool>(get_bool(key)) : std::nullopt;
}
std::optional<std::string> gguf_file::opt_str(const std::string & key) const {
    return has(key) ? std::optional<std::string>(get_str(key)) : std::nullopt;
}

size_t gguf_file::array_size(const std::string & key) const {
    int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0 || gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY) return 0;
    return gguf_get_arr_n(ctx_, id);
}

int32_t gguf_file::find_string_in_array(const std::string & key, const std::string & value) const {
    int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0 || gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx_, id) != GGUF_TYPE_STRING) {
        return -1;
    }
    const size_t n = gguf_get_arr_n(ctx_, id);
    for (size_t i = 0; i < n && i < (size_t) std::numeric_limits<int32_t>::max(); i++) {
        if (value == gguf_get_arr_str(ctx_, id, i)) return (int32_t) i;
    }
    return -1;
}

std::vector<int64_t> gguf_file::get_int_array(const std::string & key, size_t n) const {
    int64_t id = key_id(key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (is_int_type(t)) {
        return std::vector<int64_t>(n, read_int(t, gguf_get_val_data(ctx_, id), 0));
    }
    if (t != GGUF_TYPE_ARRAY || !is_int_type(gguf_get_arr_type(ctx_, id))) {
        throw error(where("metadata key '" + key + "' must be an integer or an array of integers"));
    }
    size_t len = gguf_get_arr_n(ctx_, id);
    if (len != n) {
        throw error(where("metadata key '" + key + "' has " + std::to_string(len) + " entries, expected " +
                          std::to_string(n) + " (one per layer)"));
    }
    gguf_type et = gguf_get_arr_type(ctx_, id);
    const void * data = gguf_get_arr_data(ctx_, id);
    std::vector<int64_t> out(n);
    for (size_t i = 0; i < n; i++) out[i] = read_int(et, data, i);
    return out;
}

std::vector<bool> gguf_file::get_bool_array(const std::string & key, size_t n) const {
    int64_t id = key_id(key);
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx_, id) != GGUF_TYPE_BOOL) {
        throw error(where("metadata key '" + key + "' must be an array of bool"));
    }
    size_t len = gguf_get_arr_n(ctx_, id);
    if (len != n) {
        throw error(where("metadata key '" + key + "' has " + std::to_string(len) + " entries, expected " +
                          std::to_string(n) + " (one per layer)"));
    }
    const int8_t * data = (const int8_t *) gguf_get_arr_data(ctx_, id);
    std::vector<bool> out(n);
    for (size_t i = 0; i < n; i++) out[i] = data[i] != 0;
    return out;
}

int64_t gguf_file::n_tensors() const { return gguf_get_n_tensors(ctx_); }
int64_t gguf_file::find_tensor(const std::string & name) const { return gguf_find_tensor(ctx_, name.c_str()); }
std::string gguf_file::tensor_name(int64_t i) const { return gguf_get_tensor_name(ctx_, i); }
int gguf_file::tensor_type(int64_t i) const { return (int) gguf_get_tensor_type(ctx_, i); }

std::vector<int64_t> gguf_file::tensor_ne(int64_t i) const {
    const int64_t * ne = gguf_get_tensor_ne(ctx_, i);
    return std::vector<int64_t>(ne, ne + GGML_MAX_DIMS);
}

uint64_t gguf_file::tensor_offset(int64_t i) const { return data_offset() + gguf_get_tensor_offset(ctx_, i); }
uint64_t gguf_file::tensor_nbytes(int64_t i) const { return gguf_get_tensor_size(ctx_, i); }

} // namespace dgemma
