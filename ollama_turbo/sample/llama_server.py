"""The miniature llama-server (C++) and the miniature llama.cpp CMake project."""

from __future__ import annotations

from .llama_headers import Flavour


def health_json(fl: Flavour) -> str:
    """The C++ string literal returned by /health; b110 reworded it (compat patches touch it)."""
    if fl.build >= 110:
        return r'"{\"status\":\"ok\",\"slots\":\"ready\"}"'
    return r'"{\"status\":\"ok\"}"'


def server_cpp(fl: Flavour) -> str:
    kv_unified = "    cparams.kv_unified = params.kv_unified;\n" if fl.build >= 110 else ""
    return r"""// Miniature llama-server (ollama-turbo sample world).
//
// Accepts llama-server's flags (common/arg.cpp), loads the model, sizes the KV cache and
// serves /health, /props, /tokenize and /completion (plain JSON or server-sent events).

#include "arg.h"
#include "llama.h"

#include <arpa/inet.h>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

static std::string health_json() {
    return HEALTH_LITERAL;
}

static std::string json_escape(const std::string & s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '"':  out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if ((unsigned char) c < 0x20) {
                    char buf[8];
                    snprintf(buf, sizeof(buf), "\\u%04x", c);
                    out += buf;
                } else {
                    out += c;
                }
        }
    }
    return out;
}

// Finds "key": in a flat JSON object and returns the position after the colon, or npos.
static size_t json_find(const std::string & body, const std::string & key) {
    const std::string needle = "\"" + key + "\"";
    size_t p = body.find(needle);
    if (p == std::string::npos) return p;
    p = body.find(':', p + needle.size());
    if (p == std::string::npos) return p;
    p++;
    while (p < body.size() && (body[p] == ' ' || body[p] == '\n' || body[p] == '\t')) p++;
    return p;
}

static std::string json_string(const std::string & body, const std::string & key) {
    size_t p = json_find(body, key);
    if (p == std::string::npos || body[p] != '"') return "";
    std::string out;
    for (p++; p < body.size() && body[p] != '"'; p++) {
        if (body[p] == '\\' && p + 1 < body.size()) {
            char e = body[++p];
            switch (e) {
                case 'n': out += '\n'; break;
                case 't': out += '\t'; break;
                case 'r': out += '\r'; break;
                case 'u': out += '?'; p += 4; break;
                default: out += e;
            }
        } else {
            out += body[p];
        }
    }
    return out;
}

static long json_int(const std::string & body, const std::string & key, long def) {
    size_t p = json_find(body, key);
    if (p == std::string::npos) return def;
    return strtol(body.c_str() + p, nullptr, 10);
}

static bool json_bool(const std::string & body, const std::string & key) {
    size_t p = json_find(body, key);
    return p != std::string::npos && body.compare(p, 4, "true") == 0;
}

static void send_all(int fd, const std::string & data) {
    size_t off = 0;
    while (off < data.size()) {
        ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return;
        off += (size_t) n;
    }
}

static void respond(int fd, int status, const std::string & body) {
    const char * reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request";
    std::string head = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
        "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    send_all(fd, head + body);
}

struct stream_state {
    int fd;
    bool ok;
};

static bool on_piece(const char * piece, void * user_data) {
    auto * st = (stream_state *) user_data;
    std::string chunk = "data: {\"content\":\"" + json_escape(piece) + "\",\"stop\":false}\n\n";
    ssize_t n = send(st->fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
    st->ok = n == (ssize_t) chunk.size();
    return st->ok;
}

// Like llama-server at -lv 4, the log echoes generated text; a token can end mid-character, so the
// line carries the first two bytes of a three-byte UTF-8 sequence: logs are bytes, not text.
static void log_generated(const char * text, const llama_perf_context_data & perf) {
    fprintf(stderr, "slot print_timing: generated %d tokens: %s\xe2\x82 <- a cut character\n", perf.n_eval, text);
}

static std::string timings_json(const llama_perf_context_data & perf) {
    char buf[512];
    snprintf(buf, sizeof(buf),
        "{\"prompt_n\":%d,\"prompt_ms\":%.3f,\"prompt_per_second\":%.3f,"
        "\"predicted_n\":%d,\"predicted_ms\":%.3f,\"predicted_per_second\":%.3f}",
        perf.n_p_eval, perf.t_p_eval_ms,
        perf.t_p_eval_ms > 0 ? perf.n_p_eval * 1e3 / perf.t_p_eval_ms : 0.0,
        perf.n_eval, perf.t_eval_ms,
        perf.t_eval_ms > 0 ? perf.n_eval * 1e3 / perf.t_eval_ms : 0.0);
    return buf;
}

static void handle(int fd, llama_context * ctx, const common_params & params) {
    std::string req;
    char buf[8192];
    size_t header_end = std::string::npos;
    while (header_end == std::string::npos) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) return;
        req.append(buf, (size_t) n);
        header_end = req.find("\r\n\r\n");
    }
    std::string head = req.substr(0, header_end);
    std::string body = req.substr(header_end + 4);
    size_t content_length = 0;
    for (const char * name : {"Content-Length:", "content-length:"}) {
        size_t p = head.find(name);
        if (p != std::string::npos) content_length = strtoul(head.c_str() + p + strlen(name), nullptr, 10);
    }
    while (body.size() < content_length) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) break;
        body.append(buf, (size_t) n);
    }
    const std::string method = head.substr(0, head.find(' '));
    const size_t path_start = head.find(' ') + 1;
    const std::string path = head.substr(path_start, head.find(' ', path_start) - path_start);

    if (path == "/health") {
        respond(fd, 200, health_json());
    } else if (path == "/props") {
        respond(fd, 200, "{\"default_generation_settings\":{\"n_ctx\":" + std::to_string(params.n_ctx)
            + "},\"cache_type_k\":\"" + ggml_type_name(params.cache_type_k)
            + "\",\"cache_type_v\":\"" + ggml_type_name(params.cache_type_v)
            + "\",\"model_path\":\"" + json_escape(params.model) + "\",\"build_info\":\"" LLAMA_BUILD_TAG "\"}");
    } else if (path == "/tokenize" && method == "POST") {
        std::string content = json_string(body, "content");
        int n = llama_tokenize(ctx, content.c_str(), nullptr, 0);
        std::string toks = "[";
        for (int i = 0; i < n; i++) toks += (i ? "," : "") + std::to_string(i + 1);
        respond(fd, 200, "{\"tokens\":" + toks + "]}");
    } else if (path == "/completion" && method == "POST") {
        std::string prompt = json_string(body, "prompt");
        long n_predict = json_int(body, "n_predict", 16);
        if (n_predict < 0) n_predict = 16;
        static char out[1 << 16];
        llama_perf_context_data perf = {};
        if (json_bool(body, "stream")) {
            send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            stream_state st = {fd, true};
            llama_generate(ctx, prompt.c_str(), (int32_t) n_predict, out, sizeof(out), on_piece, &st, &perf);
            log_generated(out, perf);
            if (st.ok) {
                send_all(fd, "data: {\"content\":\"\",\"stop\":true,\"tokens_predicted\":" + std::to_string(perf.n_eval)
                    + ",\"tokens_evaluated\":" + std::to_string(perf.n_p_eval)
                    + ",\"timings\":" + timings_json(perf) + "}\n\n");
            }
        } else {
            llama_generate(ctx, prompt.c_str(), (int32_t) n_predict, out, sizeof(out), nullptr, nullptr, &perf);
            log_generated(out, perf);
            respond(fd, 200, "{\"content\":\"" + json_escape(out) + "\",\"stop\":true,\"tokens_predicted\":"
                + std::to_string(perf.n_eval) + ",\"tokens_evaluated\":" + std::to_string(perf.n_p_eval)
                + ",\"timings\":" + timings_json(perf) + "}");
        }
    } else {
        respond(fd, 404, "{\"error\":{\"code\":404,\"message\":\"File Not Found\",\"type\":\"not_found_error\"}}");
    }
}

int main(int argc, char ** argv) {
    common_params params;
    if (!common_params_parse(argc, argv, params)) {
        return 1;
    }
    if (params.usage) {
        common_params_print_usage(common_params_parser_init());
        return 0;
    }
    if (params.version) {
        printf("version: " LLAMA_BUILD_TAG " (sample)\n");
        return 0;
    }
    if (params.list_devices) {
        printf("Available devices:\n");
        for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
            ggml_backend_dev_props props;
            ggml_backend_dev_get_props(ggml_backend_dev_get(i), &props);
            printf("  %s: %s (%zu MiB, %zu MiB free)\n", props.name, props.description,
                   props.memory_total / 1024 / 1024, props.memory_free / 1024 / 1024);
        }
        return 0;
    }
    fprintf(stderr, "build: " LLAMA_BUILD_TAG " (sample)\n");
    if (params.model.empty()) {
        fprintf(stderr, "error: --model is required\n");
        return 1;
    }
    llama_backend_init();
    fprintf(stderr, "system info: n_threads = %d | %s\n", params.n_threads, llama_print_system_info());
    fprintf(stderr, "load_backend: using device CPU - Sample CPU backend\n");
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = params.n_gpu_layers;
    mparams.use_mmap = params.use_mmap;
    mparams.use_mlock = params.use_mlock;
    llama_model * model = llama_model_load_from_file(params.model.c_str(), mparams);
    if (!model) {
        fprintf(stderr, "srv    load_model: failed to load model, '%s'\n", params.model.c_str());
        return 1;
    }
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t) params.n_ctx;
    cparams.n_batch = (uint32_t) params.n_batch;
    cparams.n_ubatch = (uint32_t) params.n_ubatch;
    cparams.n_seq_max = (uint32_t) params.n_parallel;
    cparams.n_threads = params.n_threads;
    cparams.type_k = params.cache_type_k;
    cparams.type_v = params.cache_type_v;
    cparams.flash_attn_type = params.flash_attn == "on" ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                            : params.flash_attn == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                            : LLAMA_FLASH_ATTN_TYPE_AUTO;
KV_UNIFIED    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        fprintf(stderr, "srv    load_model: failed to create context with model '%s'\n", params.model.c_str());
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t) params.port);
    if (inet_pton(AF_INET, params.hostname.c_str(), &addr.sin_addr) != 1) {
        fprintf(stderr, "srv    init: invalid host address '%s'\n", params.hostname.c_str());
        return 1;
    }
    if (bind(srv, (sockaddr *) &addr, sizeof(addr)) != 0 || listen(srv, 64) != 0) {
        fprintf(stderr, "srv    init: couldn't bind HTTP server socket, hostname: %s, port: %d\n",
                params.hostname.c_str(), params.port);
        return 1;
    }
    fprintf(stderr, "main: model loaded\n");
    fprintf(stderr, "main: server is listening on http://%s:%d - starting the main loop\n",
            params.hostname.c_str(), params.port);
    fflush(stderr);
    for (;;) {
        int fd = accept(srv, nullptr, nullptr);
        if (fd < 0) continue;
        handle(fd, ctx, params);
        close(fd);
    }
}
""".replace("HEALTH_LITERAL", health_json(fl)).replace("KV_UNIFIED", kv_unified)


def cmakelists(fl: Flavour) -> str:
    return """cmake_minimum_required(VERSION 3.14)
project("llama.cpp" C CXX)

# Miniature llama.cpp build (ollama-turbo sample world).

set(CMAKE_C_STANDARD 11)
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)

option(LLAMA_BUILD_SERVER "llama: build the server" ON)
option(LLAMA_BUILD_TESTS  "llama: build tests" OFF)
option(LLAMA_CURL         "llama: use libcurl to download models" OFF)
option(GGML_NATIVE        "ggml: optimize for the build machine" OFF)
option(GGML_METAL         "ggml: use Metal" OFF)
option(GGML_CUDA          "ggml: use CUDA" OFF)

add_library(ggml STATIC ggml/src/ggml.c ggml/src/ggml-backend.c)
target_include_directories(ggml PUBLIC ggml/include PRIVATE ggml/src)

add_library(llama STATIC src/llama.c src/llama-model-loader.c)
target_include_directories(llama PUBLIC include)
target_link_libraries(llama PUBLIC ggml)

add_library(common STATIC common/arg.cpp)
target_include_directories(common PUBLIC common)
target_link_libraries(common PUBLIC llama)

if (LLAMA_BUILD_SERVER)
    add_executable(llama-server tools/server/server.cpp)
    target_link_libraries(llama-server PRIVATE common llama)
endif()

add_executable(llama-perplexity tools/perplexity/perplexity.cpp)
target_link_libraries(llama-perplexity PRIVATE common llama)
"""
