// Shared helpers for the model tests: small random configs and a straightforward float64 reference decoder.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/llama.h"

namespace qlora::test {

inline io::LlamaConfig small_config(bool tied = false) {
  io::LlamaConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;  // GQA: 2 query heads per kv head
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = tied;
  c.max_position_embeddings = 128;
  return c;
}

inline model::LlamaModel random_model(const io::LlamaConfig& c, torch::ScalarType dtype = torch::kFloat32,
                                      uint64_t seed = 7, double stddev = 0.2) {
  torch::manual_seed(seed);
  model::LlamaModel m(c, dtype);
  m->init_weights(stddev);
  return m;
}

inline std::vector<double> to_vec(const torch::Tensor& t) {
  torch::Tensor d = t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// Float64 reference of one sequence, written with plain loops. allowed(i, j): query i may see key j.
struct RefDecoder {
  io::LlamaConfig c;
  std::map<std::string, std::vector<double>> w;  // HF tensor name -> row-major values
  std::vector<double> inv_freq;                  // (d/2); default: 1 / theta^(2i/d)

  explicit RefDecoder(model::LlamaModelImpl& m) : c(m.config()) {
    for (auto& [name, t] : m.named_dense_tensors()) w[name] = to_vec(t);
    for (auto& [name, lin] : m.named_linears()) w[name + ".weight"] = to_vec(lin->dense_weight(torch::kFloat64));
    const int64_t d = c.head_dim;
    for (int64_t i = 0; i < d / 2; ++i) inv_freq.push_back(1.0 / std::pow(c.rope_theta, 2.0 * i / d));
  }

  // y (n x out) = x (n x in) W^T, W (out x in)
  static std::vector<double> matmul_t(const std::vector<double>& x, const std::vector<double>& W, int64_t n, int64_t in,
                                      int64_t out) {
    std::vector<double> y(n * out, 0.0);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t o = 0; o < out; ++o) {
        double s = 0;
        for (int64_t i = 0; i < in; ++i) s += x[r * in + i] * W[o * in + i];
        y[r * out + o] = s;
      }
    return y;
  }

  std::vector<double> rmsnorm(const std::vector<double>& x, const std::vector<double>& g, int64_t n) const {
    const int64_t h = c.hidden_size;
    std::vector<double> y(x.size());
    for (int64_t r = 0; r < n; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < h; ++i) ss += x[r * h + i] * x[r * h + i];
      const double inv = 1.0 / std::sqrt(ss / h + c.rms_norm_eps);
      for (int64_t i = 0; i < h; ++i) y[r * h + i] = x[r * h + i] * inv * g[i];
    }
    return y;
  }

  // Rotates each head's vector at its position: first half x1 cos - x2 sin, second half x2 cos + x1 sin.
  void rope(std::vector<double>& x, int64_t n, int64_t heads, const std::vector<int64_t>& pos) const {
    const int64_t d = c.head_dim, half = d / 2;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t hh = 0; hh < heads; ++hh) {
        double* v = &x[(r * heads + hh) * d];
        for (int64_t i = 0; i < half; ++i) {
          const double a = static_cast<double>(pos[r]) * inv_freq[i];
          const double x1 = v[i], x2 = v[i + half];
          v[i] = x1 * std::cos(a) - x2 * std::sin(a);
          v[i + half] = x2 * std::cos(a) + x1 * std::sin(a);
        }
      }
  }

  // ids (n) -> logits (n x V)
  std::vector<double> logits(const std::vector<int64_t>& ids, const std::vector<int64_t>& pos,
                             const std::function<bool(int64_t, int64_t)>& allowed) const {
    const int64_t n = static_cast<int64_t>(ids.size()), h = c.hidden_size, d = c.head_dim;
    const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, im = c.intermediate_size;
    const auto& emb = w.at("model.embed_tokens.weight");
    std::vector<double> x(n * h);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < h; ++i) x[r * h + i] = emb[ids[r] * h + i];
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      auto nrm = rmsnorm(x, w.at(p + "input_layernorm.weight"), n);
      auto q = matmul_t(nrm, w.at(p + "self_attn.q_proj.weight"), n, h, nh * d);
      auto k = matmul_t(nrm, w.at(p + "self_attn.k_proj.weight"), n, h, nkv * d);
      auto v = matmul_t(nrm, w.at(p + "self_attn.v_proj.weight"), n, h, nkv * d);
      rope(q, n, nh, pos);
      rope(k, n, nkv, pos);
      std::vector<double> att(n * nh * d, 0.0);
      for (int64_t hh = 0; hh < nh; ++hh) {
        const int64_t kvh = hh / (nh / nkv);
        for (int64_t i = 0; i < n; ++i) {
          std::vector<double> s(n, -INFINITY);
          double mx = -INFINITY;
          for (int64_t j = 0; j < n; ++j) {
            if (!allowed(i, j)) continue;
            double dot = 0;
            for (int64_t e = 0; e < d; ++e) dot += q[(i * nh + hh) * d + e] * k[(j * nkv + kvh) * d + e];
            s[j] = dot / std::sqrt(static_cast<double>(d));
            mx = std::max(mx, s[j]);
          }
          double z = 0;
          for (int64_t j = 0; j < n; ++j) z += std::isinf(s[j]) ? 0.0 : std::exp(s[j] - mx);
          for (int64_t j = 0; j < n; ++j) {
            if (std::isinf(s[j])) continue;
            const double pj = std::exp(s[j] - mx) / z;
            for (int64_t e = 0; e < d; ++e) att[(i * nh + hh) * d + e] += pj * v[(j * nkv + kvh) * d + e];
          }
        }
      }
      auto o = matmul_t(att, w.at(p + "self_attn.o_proj.weight"), n, nh * d, h);
      for (int64_t i = 0; i < n * h; ++i) x[i] += o[i];
      auto m2 = rmsnorm(x, w.at(p + "post_attention_layernorm.weight"), n);
      auto g = matmul_t(m2, w.at(p + "mlp.gate_proj.weight"), n, h, im);
      auto u = matmul_t(m2, w.at(p + "mlp.up_proj.weight"), n, h, im);
      for (int64_t i = 0; i < n * im; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      auto dn = matmul_t(g, w.at(p + "mlp.down_proj.weight"), n, im, h);
      for (int64_t i = 0; i < n * h; ++i) x[i] += dn[i];
    }
    auto fin = rmsnorm(x, w.at("model.norm.weight"), n);
    const auto& head = c.tie_word_embeddings ? emb : w.at("lm_head.weight");
    return matmul_t(fin, head, n, h, c.vocab_size);
  }

  std::vector<double> causal_logits(const std::vector<int64_t>& ids) const {
    std::vector<int64_t> pos(ids.size());
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int64_t>(i);
    return logits(ids, pos, [](int64_t i, int64_t j) { return j <= i; });
  }
};

// max |a - b| / max |b|
inline double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / std::max(den, 1e-30);
}

inline torch::Tensor ids_tensor(const std::vector<std::vector<int64_t>>& rows) {
  const int64_t b = static_cast<int64_t>(rows.size()), t = static_cast<int64_t>(rows[0].size());
  torch::Tensor out = torch::empty({b, t}, torch::kInt64);
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < t; ++j) out[i][j] = rows[i][j];
  return out;
}

}  // namespace qlora::test
