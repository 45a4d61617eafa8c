// Opening a GGUF and checking it against the DiffusionGemma schema before any compute exists.
#pragma once

#include "dgemma.h"
#include "dgemma-gguf.h"

#include <memory>
#include <string>

namespace dgemma {

struct checked_gguf {
    std::unique_ptr<gguf_file> file;
    model_info info;
};

// Opens `path`, reads all metadata and checks every required key and tensor (presence, type, shape,
// aliases, no unexpected tensors). Throws dgemma::error naming the file and the first problem found.
// tensor_meta: also keep ggml tensor metadata for loading (gguf_file::tensor_meta), from the same parse.
checked_gguf open_checked_gguf(const std::string & path, bool tensor_meta = false);

} // namespace dgemma
