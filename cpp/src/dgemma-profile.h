// Per-op timing through the ggml scheduler's eval callback: asking for every node makes the scheduler
// compute one node at a time and synchronize after it, so the time between two callbacks is that
// node's (plus the scheduler's copies before it). Slower than a normal step; for profiles, not timings.
#pragma once

#include "dgemma.h"

#include "ggml.h"

#include <chrono>
#include <map>
#include <string>

namespace dgemma {

struct op_profiler {
    std::map<std::pair<std::string, std::string>, op_time> times;   // (op, what) -> totals
    std::chrono::steady_clock::time_point last;
    void start() { last = std::chrono::steady_clock::now(); }       // before each graph computes
};

// What a node computes, without its layer: a matrix product's weight ("ffn_down_exps.weight"), else the
// node's name without the "-<layer>" suffix ("" for unnamed nodes).
std::string node_what(const ggml_tensor * t);

// For ggml_backend_sched_set_eval_callback with user_data = op_profiler *.
bool observe_timing(ggml_tensor * t, bool ask, void * user_data);

} // namespace dgemma
