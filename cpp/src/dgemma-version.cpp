#include "dgemma.h"

#include "ggml.h"

#ifndef DGEMMA_VERSION
#define DGEMMA_VERSION "0.0.0"
#endif

namespace dgemma {

const char * version() { return DGEMMA_VERSION; }
const char * ggml_version() { return ::ggml_version(); }

} // namespace dgemma
