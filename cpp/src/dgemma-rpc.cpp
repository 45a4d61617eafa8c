// ggml's RPC backend, both sides: devices of remote servers for a model (client), and serving this
// machine's device to others (rpc_serve). The protocol and transport are ggml's own (ggml-rpc.h).
#include "dgemma.h"
#include "dgemma-model.h"
#include "dgemma-rpc.h"

#include "ggml-backend.h"
#ifdef GGML_USE_RPC
#include "ggml-rpc.h"
#endif

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <string>

#if !defined(_WIN32)
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

namespace dgemma {

namespace {

// "host:port" -> (host, port); IPv6 hosts in brackets ("[::1]:50052"). Throws for anything else.
std::pair<std::string, int> split_endpoint(const std::string & ep) {
    const size_t colon = ep.rfind(':');
    auto bad = [&](const std::string & why) {
        return error("RPC server '" + ep + "': " + why + "; write it as HOST:PORT (e.g. 192.168.1.7:50052)");
    };
    if (colon == std::string::npos || colon == 0) throw bad("no host:port");
    std::string host = ep.substr(0, colon), port_s = ep.substr(colon + 1);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (port_s.empty() || port_s.size() > 5 || port_s.find_first_not_of("0123456789") != std::string::npos) {
        throw bad("the port is not a number");
    }
    const int port = std::stoi(port_s);
    if (port < 1 || port > 65535) throw bad("the port must be in 1..65535");
    return {host, port};
}

// A TCP connection to host:port within timeout_ms, closed again; an empty string, or why it failed.
std::string probe(const std::string & host, int port, int timeout_ms) {
#if defined(_WIN32)
    (void) host; (void) port; (void) timeout_ms;
    return "";   // not probed on Windows: ggml's client reports (and aborts) itself
#else
    addrinfo hints {};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * res = nullptr;
    const int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0) return std::string("cannot resolve the host: ") + gai_strerror(rc);
    std::string why = "no address to connect to";
    for (addrinfo * a = res; a; a = a->ai_next) {
        const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) { why = std::strerror(errno); continue; }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        int r = connect(fd, a->ai_addr, a->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            pollfd p { fd, POLLOUT, 0 };
            r = poll(&p, 1, timeout_ms);
            if (r == 0) { why = "no answer within " + std::to_string(timeout_ms / 1000) + " s"; close(fd); continue; }
            int err = 0;
            socklen_t len = sizeof(err);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            r = err ? -1 : 0;
            errno = err;
        }
        if (r == 0) { close(fd); freeaddrinfo(res); return ""; }
        why = std::strerror(errno);
        close(fd);
    }
    freeaddrinfo(res);
    return why;
#endif
}

} // namespace

std::vector<ggml_backend_dev_t> rpc_devices(const std::vector<std::string> & endpoints) {
    std::vector<ggml_backend_dev_t> out;
    if (endpoints.empty()) return out;
#ifndef GGML_USE_RPC
    throw error("this build has no RPC backend (configure with -DGGML_RPC=ON) for the RPC servers given");
#else
    for (const std::string & ep : endpoints) {
        const auto [host, port] = split_endpoint(ep);
        const std::string why = probe(host, port, 5000);
        if (!why.empty()) {
            throw error("RPC server " + ep + ": cannot connect (" + why + "); start `dgemma-rpc-server --host HOST "
                        "--port " + std::to_string(port) + "` on that machine, or check the address");
        }
        ggml_backend_reg_t reg = ggml_backend_rpc_add_server(ep.c_str());
        if (!reg || ggml_backend_reg_dev_count(reg) == 0) throw error("RPC server " + ep + " offers no device");
        for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); i++) out.push_back(ggml_backend_reg_dev_get(reg, i));
    }
    return out;
#endif
}

void rpc_serve(const std::string & endpoint, const std::string & device, int n_threads, const std::string & cache_dir) {
#ifndef GGML_USE_RPC
    (void) endpoint; (void) device; (void) n_threads; (void) cache_dir;
    throw error("this build has no RPC backend (configure with -DGGML_RPC=ON)");
#else
    split_endpoint(endpoint);   // the syntax, before ggml (which only prints a complaint)
    ggml_backend_dev_t dev = nullptr;
    if (device.empty()) {
        // the device a model here would use (RPC servers a client adds are not in the global registry)
        dev = gpu_device();
        if (!dev) dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    } else {
        dev = ggml_backend_dev_by_name(device.c_str());
        if (!dev) {
            std::string names;
            for (size_t i = 0; i < ggml_backend_dev_count(); i++) names += std::string(i ? ", " : "") + ggml_backend_dev_name(ggml_backend_dev_get(i));
            throw error("rpc_serve: no device '" + device + "' here; devices: " + names);
        }
    }
    if (n_threads <= 0) n_threads = (int) std::max(1u, std::thread::hardware_concurrency());
    // blocks: serves one client at a time until the process ends (or accept() fails: a signal)
    ggml_backend_rpc_start_server(endpoint.c_str(), cache_dir.empty() ? nullptr : cache_dir.c_str(),
                                  (size_t) n_threads, 1, &dev);
#endif
}

} // namespace dgemma
