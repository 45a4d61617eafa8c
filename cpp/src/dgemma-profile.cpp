#include "dgemma-profile.h"

#include <algorithm>
#include <cctype>

namespace dgemma {

std::string node_what(const ggml_tensor * t) {
    if ((t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_MUL_MAT_ID) && t->src[0]) {
        const ggml_tensor * w = t->src[0];
        while (w->view_src) w = w->view_src;
        std::string name = ggml_get_name(w);
        if (name.rfind("blk.", 0) == 0) {
            const size_t dot = name.find('.', 4);
            if (dot != std::string::npos) name = name.substr(dot + 1);
        }
        return name;
    }
    std::string name = ggml_get_name(t);
    if (name.empty() || name.rfind("node_", 0) == 0 || name.rfind("leaf_", 0) == 0) return "";
    const size_t dash = name.rfind('-');
    if (dash != std::string::npos && dash + 1 < name.size() &&
        std::all_of(name.begin() + (long) dash + 1, name.end(), [](unsigned char c) { return std::isdigit(c); })) {
        name.resize(dash);
    }
    const size_t paren = name.find(" (");   // ggml's " (view)", " (copy)", " (reshaped)" suffixes
    if (paren != std::string::npos) name.resize(paren);
    return name;
}

bool observe_timing(ggml_tensor * t, bool ask, void * user_data) {
    if (ask) return true;
    auto & p = *static_cast<op_profiler *>(user_data);
    const auto now = std::chrono::steady_clock::now();
    op_time & e = p.times[{ggml_op_desc(t), node_what(t)}];
    if (e.count == 0) {
        e.op = ggml_op_desc(t);
        e.what = node_what(t);
    }
    e.count++;
    e.seconds += std::chrono::duration<double>(now - p.last).count();
    p.last = now;
    return true;
}

} // namespace dgemma
