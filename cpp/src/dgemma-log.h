// Process-wide log routing for the engine and ggml, and a scoped capture of ggml's error lines so that a
// failure inside ggml (e.g. gguf parsing) can be reported in the exception text instead of only on stderr.
#pragma once

#include <string>

namespace dgemma {

enum log_level { LOG_DEBUG = 1, LOG_INFO = 2, LOG_WARN = 3, LOG_ERROR = 4 };

void log_msg(int level, const char * fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

// Installs dgemma's sink into ggml (idempotent).
void log_install_ggml_sink();

// While alive on a thread, collects the warning/error text ggml logs on that thread.
class log_capture {
public:
    log_capture();
    ~log_capture();
    log_capture(const log_capture &) = delete;
    log_capture & operator=(const log_capture &) = delete;
    std::string text() const;   // collected lines, trimmed; empty when none
private:
    log_capture * prev_;
    std::string buf_;
    friend void log_dispatch(int level, const char * text);
};

void log_dispatch(int level, const char * text);

} // namespace dgemma
