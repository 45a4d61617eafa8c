// Hyper-parameters, sampler defaults and tokenizer facts read from GGUF metadata, with validation.
#pragma once

#include "dgemma.h"
#include "dgemma-gguf.h"

#include <string>
#include <vector>

namespace dgemma {

// Reads and validates the architecture's hyper-parameters. n_vocab must already be known (it comes from
// the token_embd tensor). Optional keys that are absent take the reference defaults and are recorded in
// `defaulted`.
hparams load_hparams(const gguf_file & f, int32_t n_vocab, std::vector<std::string> & defaulted);

diffusion_defaults load_diffusion_defaults(const gguf_file & f, std::vector<std::string> & defaulted);

tokenizer_info load_tokenizer_info(const gguf_file & f, int32_t n_vocab);

} // namespace dgemma
