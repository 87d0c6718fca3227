"""The sample llama.cpp's ``llama-perplexity``: llama.cpp's flags and output format, a stand-in
model of what a compressed KV cache does to the token distribution, written for ollama-turbo.

``--kl-divergence-base FILE`` runs with the f16 cache (or whatever is given) and saves the base
token probabilities; ``--kl-divergence`` with another cache type reads them back and prints the
perplexity, KL divergence and token probability statistics in llama.cpp's format. The damage per
cache type follows from the quantization error of that type's own quantizer (the sample fork's
centroid tables for turbo types, block quantizers like llama.cpp's for the others), measured here on
Gaussian values and scaled by one sensitivity of the stand-in model; longer contexts add more. The
base file records the model and context so a mismatched baseline is refused, as llama.cpp refuses one.
"""

from __future__ import annotations

import functools

import numpy as np

from .turbo_quant import CENTROIDS

SENSITIVITY = 1.0  # nats of mean KL divergence per unit of relative quantization MSE (the stand-in model's)
BLOCK = 32  # values per block of llama.cpp's q4_0 ... q8_0 formats


def _table_mse(half: list[float]) -> float:
    """Relative MSE of nearest-centroid quantization of N(0, 1/128) with a symmetric table (numeric
    integration on a fine grid: the sample's own, not verify-fork's closed form)."""
    sigma = 128 ** -0.5
    c = np.array(sorted([-x for x in half] + half))
    x = np.linspace(-10 * sigma, 10 * sigma, 400_001)
    pdf = np.exp(-0.5 * (x / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    nearest = c[np.abs(x[:, None] - c[None, :]).argmin(axis=1)]
    err = float(np.sum((x - nearest) ** 2 * pdf) * (x[1] - x[0]))
    return float(err / sigma ** 2)


def _block_mse(bits: int, affine: bool) -> float:
    """Relative MSE of a llama.cpp-style block quantizer (32 values, one scale; ``affine``: a minimum too)
    on Gaussian values, by simulation with a fixed seed."""
    rng = np.random.default_rng(20261201)
    v = rng.standard_normal((4096, BLOCK))
    levels = 2 ** bits - 1
    if affine:
        lo, hi = v.min(axis=1, keepdims=True), v.max(axis=1, keepdims=True)
        d = (hi - lo) / levels
        q = np.clip(np.round((v - lo) / d), 0, levels) * d + lo
    else:
        amax = np.abs(v).max(axis=1, keepdims=True)
        d = amax / (2 ** (bits - 1) - 1 if bits == 8 else 2 ** (bits - 1))
        q = np.clip(np.round(v / d), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * d
    return float(np.mean((v - q) ** 2))


@functools.cache
def damage_table() -> dict[str, float]:
    """Mean KL divergence per cache type at a 4096 context, from its quantizer's relative MSE."""
    rel = {"f32": 0.0, "f16": 0.0, "bf16": 2.0 ** -18 / 3,  # bf16: 8 significant bits, rounding error
           "q8_0": _block_mse(8, False), "q5_0": _block_mse(5, False), "q5_1": _block_mse(5, True),
           "q4_0": _block_mse(4, False), "q4_1": _block_mse(4, True), "iq4_nl": _block_mse(4, False)}
    rel.update({f"turbo{bits}": _table_mse(half) for bits, half in CENTROIDS.items()})
    return {name: SENSITIVITY * r for name, r in rel.items()}


def perplexity_cpp() -> str:
    rows = [f'        {{"{name}", {kld:.6g}}},' for name, kld in damage_table().items()]
    return PERPLEXITY_TEMPLATE.replace("DAMAGE_TABLE", "\n".join(rows))

PERPLEXITY_TEMPLATE = r"""// Miniature llama-perplexity (ollama-turbo sample world).
#include "arg.h"
#include "llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// Damage per cache type: the mean KL divergence it adds per token at a 4096 context, the relative
// mean squared error of the type's own quantizer on Gaussian values (SENSITIVITY nats per unit).
static double damage(const char * t) {
    static const struct { const char * name; double kld; } table[] = {
DAMAGE_TABLE
    };
    for (const auto & e : table) if (strcmp(e.name, t) == 0) return e.kld;
    return 0.05;
}

static double unit(uint32_t h) {  // a deterministic number in [0, 1)
    h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
    return (h & 0xffffff) / 16777216.0;
}

static double stderr_of(const std::vector<double> & v, double mean) {
    double s = 0;
    for (double x : v) s += (x - mean) * (x - mean);
    return v.size() > 1 ? std::sqrt(s / (v.size() - 1) / v.size()) : 0.0;
}

static double percentile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[std::min(v.size() - 1, (size_t) (q * (v.size() - 1) + 0.5))];
}

int main(int argc, char ** argv) {
    common_params params;
    if (!common_params_parse(argc, argv, params)) return 1;
    if (params.prompt_file.empty()) {
        fprintf(stderr, "error: --file is required\n");
        return 1;
    }
    std::ifstream in(params.prompt_file);
    if (!in) {
        fprintf(stderr, "error: failed to open file '%s'\n", params.prompt_file.c_str());
        return 1;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();

    llama_model_params mparams = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(params.model.c_str(), mparams);
    if (!model) {
        fprintf(stderr, "main: error: unable to load model\n");
        return 1;
    }
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t) params.n_ctx;
    cparams.type_k = params.cache_type_k;
    cparams.type_v = params.cache_type_v;
    cparams.flash_attn_type = params.flash_attn == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_ENABLED;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        fprintf(stderr, "main: error: failed to create context\n");
        return 1;
    }
    const int n_ctx = params.n_ctx;
    const int n_tokens = llama_tokenize(ctx, text.c_str(), nullptr, 0);
    fprintf(stderr, "perplexity: tokenizing the input ..\n");
    fprintf(stderr, "perplexity: have %d tokens. Calculation chunk = %d\n", n_tokens, n_ctx);
    if (n_tokens < 2 * n_ctx) {
        fprintf(stderr, "perplexity: you need at least %d tokens to evaluate perplexity with a context of %d\n",
                2 * n_ctx, n_ctx);
        fprintf(stderr, "perplexity: the data file you provided tokenizes to only %d tokens\n", n_tokens);
        return 1;
    }
    int n_chunk = n_tokens / n_ctx;
    if (params.n_chunks > 0) n_chunk = std::min(n_chunk, params.n_chunks);
    fprintf(stderr, "perplexity: calculating perplexity over %d chunks, n_ctx=%d, batch_size=2048, n_seq=1\n",
            n_chunk, n_ctx);
    const int n_eval = n_chunk * (n_ctx / 2);  // the second half of every chunk is scored, as llama.cpp does
    const std::string model_name = params.model.substr(params.model.find_last_of('/') + 1);

    // base log-probabilities: the same for the same model and text
    std::vector<double> base(n_eval);
    for (int i = 0; i < n_eval; i++) base[i] = std::log(0.08 + 0.85 * unit(0x9e37u * (uint32_t) i + 17u));

    if (!params.kl_divergence) {
        if (params.logits_file.empty()) {
            fprintf(stderr, "error: give --kl-divergence-base FILE\n");
            return 1;
        }
        std::ofstream out(params.logits_file);
        out << "SAMPLEKLD1 " << model_name << " " << n_ctx << " " << n_eval << "\n";
        double nll = 0;
        for (int i = 0; i < n_eval; i++) { out << base[i] << "\n"; nll -= base[i]; }
        fprintf(stderr, "perplexity: saving all logits to %s\n", params.logits_file.c_str());
        printf("Final estimate: PPL = %.4f +/- %.5f\n", std::exp(nll / n_eval), 0.01);
        return 0;
    }
    std::ifstream bf(params.logits_file);
    std::string magic, base_model;
    int base_ctx = 0, base_n = 0;
    if (!(bf >> magic >> base_model >> base_ctx >> base_n) || magic != "SAMPLEKLD1") {
        fprintf(stderr, "kl_divergence: failed to read %s: not a base logits file\n", params.logits_file.c_str());
        return 1;
    }
    if (base_model != model_name || base_n != n_eval || base_ctx != n_ctx) {
        fprintf(stderr, "kl_divergence: inconsistent base logits: made with %s at n_ctx=%d over %d tokens, "
                        "this run is %s at n_ctx=%d over %d tokens\n",
                base_model.c_str(), base_ctx, base_n, model_name.c_str(), n_ctx, n_eval);
        return 1;
    }
    const double d = 0.5 * (damage(ggml_type_name(cparams.type_k)) + damage(ggml_type_name(cparams.type_v)))
                   * (0.6 + 0.4 * n_ctx / 4096.0);
    std::vector<double> kld(n_eval), lnratio(n_eval), dp(n_eval);
    double same_top = 0, nll_q = 0, nll_b = 0;
    for (int i = 0; i < n_eval; i++) {
        const double u = unit(0x85ebu * (uint32_t) i + 101u);
        kld[i] = d * 2.0 * u * u * 1.5;
        const double q = base[i] - std::sqrt(2.0 * kld[i]) * (0.35 + u);
        lnratio[i] = base[i] - q;
        dp[i] = std::exp(q) - std::exp(base[i]);
        same_top += unit(0x27d4u * (uint32_t) i + 7u) > 6.0 * kld[i] ? 1 : 0;
        nll_q -= q;
        nll_b -= base[i];
    }
    auto mean = [](const std::vector<double> & v) { double s = 0; for (double x : v) s += x; return s / v.size(); };
    const double ppl_q = std::exp(nll_q / n_eval), ppl_b = std::exp(nll_b / n_eval);
    const double m_kld = mean(kld), m_ln = mean(lnratio), m_dp = mean(dp);
    const double e_ln = stderr_of(lnratio, m_ln);
    same_top /= n_eval;
    printf("====== Perplexity statistics ======\n");
    printf("Mean PPL(Q)                   : %10.6f ± %10.6f\n", ppl_q, ppl_q * e_ln);
    printf("Mean PPL(base)                : %10.6f ± %10.6f\n", ppl_b, ppl_b * 0.002);
    printf("Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", 100.0 * (1.0 - m_kld));
    printf("Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", m_ln, e_ln);
    printf("Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", ppl_q / ppl_b, ppl_q / ppl_b * e_ln);
    printf("Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f\n", ppl_q - ppl_b, ppl_q * e_ln);
    printf("\n====== KL divergence statistics ======\n");
    printf("Mean    KLD: %10.6f ± %10.6f\n", m_kld, stderr_of(kld, m_kld));
    printf("Maximum KLD: %10.6f\n", percentile(kld, 1.0));
    printf("99.9%%   KLD: %10.6f\n", percentile(kld, 0.999));
    printf("99.0%%   KLD: %10.6f\n", percentile(kld, 0.99));
    printf("95.0%%   KLD: %10.6f\n", percentile(kld, 0.95));
    printf("90.0%%   KLD: %10.6f\n", percentile(kld, 0.90));
    printf("Median  KLD: %10.6f\n", percentile(kld, 0.5));
    printf("Minimum KLD: %10.6f\n", percentile(kld, 0.0));
    printf("\n====== Token probability statistics ======\n");
    printf("Mean    Δp: %6.3f ± %5.3f %%\n", 100.0 * m_dp, 100.0 * stderr_of(dp, m_dp));
    printf("Same top p: %6.3f ± %5.3f %%\n", 100.0 * same_top, 100.0 * std::sqrt(same_top * (1 - same_top) / (n_eval - 1)));
    return 0;
}
"""

PERPLEXITY_ARGS = """    add_opt(common_arg(
        {"-f", "--file"}, "FNAME",
        "a file containing the prompt (perplexity: the text to evaluate)",
        [](common_params & params, const std::string & value) {
            params.prompt_file = value;
        }
    ));
    add_opt(common_arg(
        {"--kl-divergence-base"}, "FNAME",
        "set logits file",
        [](common_params & params, const std::string & value) {
            params.logits_file = value;
        }
    ));
    add_opt(common_arg(
        {"--kl-divergence"},
        "computes KL-divergence to logits provided via --kl-divergence-base",
        [](common_params & params) {
            params.kl_divergence = true;
        }
    ));
    add_opt(common_arg(
        {"--chunks"}, "N",
        "max. number of chunks to process (default: -1, -1 = all)",
        [](common_params & params, int value) {
            params.n_chunks = value;
        }
    ));
"""
