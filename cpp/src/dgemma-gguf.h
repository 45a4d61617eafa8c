// Typed, checked access to a GGUF file's metadata and tensor table (ggml's gguf API underneath).
// Every accessor that can fail on user input throws dgemma::error naming the file and the key.
#pragma once

#include "dgemma.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

struct gguf_context;
struct ggml_context;

namespace dgemma {

class gguf_file {
public:
    // Opens and parses the header, metadata and tensor table; checks that every tensor's data lies inside
    // the file (a truncated download fails here, not at first use). With tensor_meta, the same parse also
    // builds ggml tensors (metadata only, no data) for every tensor, owned by this object.
    explicit gguf_file(const std::string & path, bool tensor_meta = false);
    ~gguf_file();
    gguf_file(const gguf_file &) = delete;
    gguf_file & operator=(const gguf_file &) = delete;

    const std::string & path() const { return path_; }
    uint64_t file_size() const { return file_size_; }
    uint32_t version() const;
    uint64_t data_offset() const;
    gguf_context * raw() const { return ctx_; }
    ggml_context * tensor_meta() const { return meta_; }   // null unless requested

    bool has(const std::string & key) const;

    // Scalars: integer keys accept any integer GGUF type whose value fits.
    int64_t     get_int(const std::string & key) const;
    double      get_float(const std::string & key) const;
    bool        get_bool(const std::string & key) const;
    std::string get_str(const std::string & key) const;
    // get_str's check for strings read another way: throws naming `what` unless `s` is valid UTF-8
    void check_utf8(const std::string & what, const std::string & s) const;

    std::optional<int64_t>     opt_int(const std::string & key) const;
    std::optional<double>      opt_float(const std::string & key) const;
    std::optional<bool>        opt_bool(const std::string & key) const;
    std::optional<std::string> opt_str(const std::string & key) const;

    // Arrays. get_int_array also accepts a scalar, repeated n times (published files use both forms
    // for head_count_kv).
    std::vector<int64_t> get_int_array(const std::string & key, size_t n) const;
    std::vector<bool>    get_bool_array(const std::string & key, size_t n) const;
    size_t               array_size(const std::string & key) const;   // 0 when absent or not an array
    // Index of the first entry equal to `value` in a string array, -1 when absent.
    int32_t              find_string_in_array(const std::string & key, const std::string & value) const;

    int64_t n_tensors() const;
    int64_t find_tensor(const std::string & name) const;   // -1 when absent
    std::string tensor_name(int64_t i) const;
    int         tensor_type(int64_t i) const;               // enum ggml_type
    std::vector<int64_t> tensor_ne(int64_t i) const;        // 4 entries, trailing ones included
    uint64_t    tensor_offset(int64_t i) const;             // absolute file offset
    uint64_t    tensor_nbytes(int64_t i) const;

    // "path: detail" — the prefix every error about this file carries.
    std::string where(const std::string & detail) const;

private:
    int64_t key_id(const std::string & key) const;          // throws when absent
    std::string path_;
    uint64_t file_size_ = 0;
    gguf_context * ctx_ = nullptr;
    ggml_context * meta_ = nullptr;
};

// The tokenizer arrays of an open file (dgemma::read_vocab(path) opens one).
vocab_data read_vocab(const gguf_file & f);

// A human-readable shape, ggml order: {2816, 262144}.
std::string shape_str(const std::vector<int64_t> & ne);

} // namespace dgemma
