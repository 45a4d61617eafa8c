#include "dgemma-log.h"
#include "dgemma.h"

#include "ggml.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <mutex>

namespace dgemma {

namespace {
std::mutex g_mutex;
log_callback g_cb = nullptr;
void * g_ud = nullptr;
thread_local log_capture * t_capture = nullptr;

void ggml_sink(enum ggml_log_level level, const char * text, void * /*user_data*/) {
    // GGML_LOG_LEVEL_CONT continues the previous line; treat it as info.
    int lv = (int) level;
    if (lv < LOG_DEBUG || lv > LOG_ERROR) lv = LOG_INFO;
    log_dispatch(lv, text);
}
} // namespace

void set_log_callback(log_callback cb, void * user_data) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_cb = cb;
    g_ud = user_data;
    log_install_ggml_sink();
}

void log_install_ggml_sink() {
    static std::once_flag once;
    std::call_once(once, [] { ggml_log_set(ggml_sink, nullptr); });
}

void log_dispatch(int level, const char * text) {
    if (t_capture && level >= LOG_WARN) {
        t_capture->buf_ += text;
    }
    log_callback cb;
    void * ud;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        cb = g_cb;
        ud = g_ud;
    }
    if (cb) {
        cb(level, text, ud);
    } else if (level >= LOG_WARN) {
        fputs(text, stderr);
    }
}

void log_msg(int level, const char * fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    log_dispatch(level, buf);
}

log_capture::log_capture() : prev_(t_capture) {
    log_install_ggml_sink();
    t_capture = this;
}

log_capture::~log_capture() { t_capture = prev_; }

std::string log_capture::text() const {
    std::string s = buf_;
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

} // namespace dgemma
