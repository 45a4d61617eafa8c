// Load-time work split over the machine's cores: fn(i) for i in [0, n), items taken in order by
// hardware_concurrency threads, the calling thread among them.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dgemma {

// progress(done) runs on the calling thread only (it may call back into Python), after each item that
// thread finishes. The first exception (from fn or progress) stops the taking of new items and is
// rethrown once every thread has stopped.
template <typename F>
void parallel_for(int64_t n, F fn, const std::function<void(int64_t)> & progress = {}) {
    const int64_t nt = std::min<int64_t>(n, std::max(1u, std::thread::hardware_concurrency()));
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<bool> stop{false};
    std::exception_ptr err;
    std::mutex mu;
    auto fail = [&]() {
        std::lock_guard<std::mutex> lock(mu);
        if (!err) err = std::current_exception();
        stop = true;
    };
    auto work = [&](bool caller) {
        while (!stop) {
            const int64_t i = next++;
            if (i >= n) break;
            try {
                fn(i);
            } catch (...) {
                fail();
                break;
            }
            const int64_t d = ++done;
            if (caller && progress) {
                try {
                    progress(d);
                } catch (...) {
                    fail();
                }
            }
        }
    };
    std::vector<std::thread> threads;
    for (int64_t k = 1; k < nt; k++) threads.emplace_back(work, false);
    work(true);
    for (std::thread & t : threads) t.join();
    if (err) std::rethrow_exception(err);
}

} // namespace dgemma
