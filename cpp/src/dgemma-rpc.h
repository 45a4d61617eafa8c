// ggml's RPC backend: the client side (devices of remote servers) for model loading.
#pragma once

#include "ggml-backend.h"

#include <string>
#include <vector>

namespace dgemma {

// The devices of the RPC servers at these endpoints ("host:port"), in order. Each endpoint is first
// checked here (its syntax, then a TCP connection with a timeout): ggml's client aborts the process on a
// server it cannot reach, so that must be a clear dgemma::error before ggml ever sees the endpoint.
// Throws for a build without RPC too.
std::vector<ggml_backend_dev_t> rpc_devices(const std::vector<std::string> & endpoints);

} // namespace dgemma
