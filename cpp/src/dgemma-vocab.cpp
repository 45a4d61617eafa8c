#include "dgemma.h"
#include "dgemma-arch.h"
#include "dgemma-gguf.h"
#include "dgemma-hparams.h"

#include "gguf.h"

namespace dgemma {

namespace {
std::vector<std::string> string_array(const gguf_file & f, const char * key) {
    std::vector<std::string> out;
    const int64_t id = gguf_find_key(f.raw(), key);
    if (id < 0) return out;
    if (gguf_get_kv_type(f.raw(), id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(f.raw(), id) != GGUF_TYPE_STRING) {
        throw error(f.where(std::string("metadata key '") + key + "' must be an array of strings"));
    }
    const size_t n = gguf_get_arr_n(f.raw(), id);
    out.reserve(n);
    for (size_t i = 0; i < n; i++) {
        out.emplace_back(gguf_get_arr_str(f.raw(), id, i));
        f.check_utf8(std::string(key) + "[" + std::to_string(i) + "]", out.back());
    }
    return out;
}
} // namespace

vocab_data read_vocab(const std::string & path) { return read_vocab(gguf_file(path)); }

vocab_data read_vocab(const gguf_file & f) {
    vocab_data v;
    v.model = f.get_str(KEY_TOK_MODEL);
    v.tokens = string_array(f, KEY_TOK_TOKENS);
    if (v.tokens.empty()) throw error(f.where("the file has no tokenizer vocabulary"));
    v.merges = string_array(f, KEY_TOK_MERGES);
    const size_t n = v.tokens.size();
    if (f.has(KEY_TOK_TYPES)) {
        for (int64_t t : f.get_int_array(KEY_TOK_TYPES, n)) v.types.push_back((int32_t) t);
    } else {
        v.types.assign(n, 1);
    }
    const tokenizer_info ti = load_tokenizer_info(f, (int32_t) n);
    v.bos_id = ti.bos_id;
    v.eos_id = ti.eos_id;
    v.pad_id = ti.pad_id;
    v.add_bos = ti.add_bos;
    v.eog_ids = ti.eog_ids;
    v.chat_template = f.opt_str(KEY_CHAT_TEMPLATE).value_or("");
    return v;
}

} // namespace dgemma
