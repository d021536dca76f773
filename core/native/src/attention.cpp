// Blocked ("flash-style") attention for fp32 CPU tensors on libtorch builds without a fused CPU kernel (< 2.1).
//
// softmax(q kᵀ · scale) v composed from whole-tensor ops materialises the [N, L, S] score matrix several times
// (scores, softmax output, and for training the saved probabilities and their gradient): 1 GiB per call for SD1.5 at
// 512 px (N = 2·8 heads, L = S = 4096), far more than the caches, so those passes run at memory speed and the saved
// probabilities dominate a training step's memory. Here the queries are taken in blocks of rows whose score block
// (rows × S) fits in the core's cache: scores, the row maximum, exp, the row sum and the product with v are computed
// block by block, and only the output and the per-row log-sum-exp (N × L) are kept. The backward pass recomputes each
// block's probabilities from the log-sum-exp (FlashAttention's backward, Dao et al. 2022, Algorithm 4 without the
// on-chip tiling of K/V):
//   P = exp(q kᵀ·scale − lse),  dV += Pᵀ dO,  dP = dO vᵀ,  dS = P ∘ (dP − rowsum(dO ∘ O)),
//   dQ = dS k · scale,  dK += dSᵀ q · scale.
// Heavy lifting stays in libtorch's GEMM (BLAS) and vectorised element-wise kernels.
#include <torch/csrc/autograd/custom_function.h>
#include "attention.h"
#include <atomic>
#include <limits>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows per query block: a score block of about 4 MiB (fp32). Measured on a 2-core AMD EPYC (1 MiB L2 per core,
// 32 MiB L3) for N = 16, L = S = 4096, d = 40, forward+backward: 64 Ki elements 3.42 s, 256 Ki 1.94 s, 1 Mi 1.81 s,
// 4 Mi 1.87 s (composed: 1.65 s, with 3.4 GB more peak memory).
std::atomic<int64_t> g_min_bytes{512ll << 20};

int64_t block_rows(int64_t L, int64_t S) {
  constexpr int64_t kBlockElems = 1024 * 1024;
  return std::max<int64_t>(1, std::min<int64_t>(L, kBlockElems / std::max<int64_t>(S, 1)));
}

// The 2-D [rows, cols] matrices of a [..., rows, cols] tensor, as views (no copies), leading dims flattened in order.
std::vector<at::Tensor> matrices(const at::Tensor& t) {
  std::vector<at::Tensor> out{t};
  while (out.front().dim() > 2) {
    std::vector<at::Tensor> next;
    next.reserve(out.size() * out.front().size(0));
    for (auto& m : out)
      for (int64_t i = 0; i < m.size(0); ++i) next.push_back(m.select(0, i));
    out = std::move(next);
  }
  return out;
}

// An output [..., L, E] laid out like the query: for a [B, h, L, d] view of a [B, L, h·d] projection the result is a
// [B, h, L, E] view of [B, L, h, E] memory, so the caller's transpose(1, 2).reshape(B, L, h·E) is free.
at::Tensor empty_like_query(const at::Tensor& q, int64_t E) {
  if (q.dim() == 4 && q.stride(1) < q.stride(2)) {
    return at::empty({q.size(0), q.size(2), q.size(1), E}, q.options()).transpose(1, 2);
  }
  auto sizes = q.sizes().vec();
  sizes.back() = E;
  return at::empty(sizes, q.options());
}

at::Tensor forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, at::Tensor* lse_out) {
  const int64_t L = q.size(-2), S = k.size(-2), E = v.size(-1);
  auto out = empty_like_query(q, E);
  auto qs = q.mul(scale);
  auto Q = matrices(qs), K = matrices(k), V = matrices(v), O = matrices(out);
  at::Tensor lse;
  std::vector<at::Tensor> LSE;
  if (lse_out) {
    auto lsizes = q.sizes().vec();
    lsizes.pop_back();
    lse = at::empty(lsizes, q.options());
    LSE = matrices(lse.unsqueeze(-1));
  }
  const int64_t R = block_rows(L, S);
  auto buf = at::empty({R, S}, q.options());
  for (size_t n = 0; n < Q.size(); ++n) {
    auto kT = K[n].t();
    for (int64_t i0 = 0; i0 < L; i0 += R) {
      const int64_t rows = std::min(R, L - i0);
      auto s = buf.narrow(0, 0, rows);
      at::mm_out(s, Q[n].narrow(0, i0, rows), kT);
      auto m = at::amax(s, {-1}, /*keepdim=*/true);
      s.sub_(m).exp_();
      auto l = s.sum(-1, /*keepdim=*/true);
      auto o = O[n].narrow(0, i0, rows);
      at::mm_out(o, s, V[n]);
      o.div_(l);
      if (lse_out) LSE[n].narrow(0, i0, rows).copy_(m.add_(l.log_()));
    }
  }
  if (lse_out) *lse_out = lse;
  return out;
}

struct BlockedAttention : public torch::autograd::Function<BlockedAttention> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
    const bool needs_grad = q.requires_grad() || k.requires_grad() || v.requires_grad();
    at::Tensor lse;
    auto out = forward_impl(q, k, v, scale, needs_grad ? &lse : nullptr);
    if (needs_grad) ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["scale"] = scale;
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const double scale = ctx->saved_data["scale"].toDouble();
    auto dout = grads[0];
    const int64_t L = q.size(-2), S = k.size(-2);
    auto dq = at::empty_like(q);
    auto dk = at::zeros_like(k);
    auto dv = at::zeros_like(v);
    auto delta = (dout * out).sum(-1, /*keepdim=*/true);  // rowsum(dO ∘ O), [..., L, 1]
    auto qs = q.mul(scale);
    auto Q = matrices(qs), K = matrices(k), V = matrices(v), dO = matrices(dout);
    auto dQ = matrices(dq), dK = matrices(dk), dV = matrices(dv);
    auto LSE = matrices(lse.unsqueeze(-1)), D = matrices(delta);
    const int64_t R = block_rows(L, S);
    auto pbuf = at::empty({R, S}, q.options());
    auto gbuf = at::empty({R, S}, q.options());
    for (size_t n = 0; n < Q.size(); ++n) {
      auto kT = K[n].t();
      auto vT = V[n].t();
      for (int64_t i0 = 0; i0 < L; i0 += R) {
        const int64_t rows = std::min(R, L - i0);
        auto qb = Q[n].narrow(0, i0, rows);
        auto dob = dO[n].narrow(0, i0, rows);
        auto p = pbuf.narrow(0, 0, rows);
        at::mm_out(p, qb, kT);
        p.sub_(LSE[n].narrow(0, i0, rows)).exp_();
        dV[n].addmm_(p.t(), dob);
        auto ds = gbuf.narrow(0, 0, rows);
        at::mm_out(ds, dob, vT);
        ds.sub_(D[n].narrow(0, i0, rows)).mul_(p);
        auto dqb = dQ[n].narrow(0, i0, rows);
        at::mm_out(dqb, ds, K[n]);
        dqb.mul_(scale);
        dK[n].addmm_(ds.t(), qb);
      }
    }
    return {dq, dk, dv, at::Tensor()};
  }
};

}  // namespace

namespace sudo {

SdpaMode sdpa_mode() {
  static const SdpaMode mode = [] {
    const char* e = std::getenv("SUDO_SDPA");
    return !e ? SdpaMode::Default : std::string(e) == "math" ? SdpaMode::Math : std::string(e) == "blocked" ? SdpaMode::Blocked : SdpaMode::Default;
  }();
  return mode;
}

bool blocked_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const SdpaMode mode = sdpa_mode();
  if (mode == SdpaMode::Math) return false;
  if (!q.device().is_cpu() || !k.device().is_cpu() || !v.device().is_cpu()) return false;
  if (q.scalar_type() != at::kFloat || k.scalar_type() != at::kFloat || v.scalar_type() != at::kFloat) return false;
  if (q.dim() < 3 || k.dim() != q.dim() || v.dim() != q.dim()) return false;
  for (int64_t d = 0; d < q.dim() - 2; ++d)
    if (k.size(d) != q.size(d) || v.size(d) != q.size(d)) return false;  // no broadcasting over leading dims
  if (k.size(-1) != q.size(-1) || v.size(-2) != k.size(-2) || q.size(-2) == 0 || k.size(-2) == 0) return false;
  // Only where the scores would be large: below that the composed ops are as fast or faster and their memory small.
  // Without gradients (sampling, a frozen reference, the first pass of a checkpointed block) the composed ops keep
  // nothing for backward, so the bound is twice as high: SD1.5's 4096-token self-attention at 512 px runs composed at
  // batch 1 (512 MiB of scores) and blocked at batch 2 (1 GiB). Forward alone, batch 1 (8 heads, d = 40, one thread;
  // bench/attention.fsx), blocked/composed took 1.79/0.92 s and 1.12/0.87 s with AVX-512 kernels, 1.90/1.46 s and
  // 0.97/1.20 s with AVX2-only kernels on a noisy 2-core Intel Xeon @ 2.00 GHz VM; 0.59 s either way for N = 16 on the
  // 2-core AMD EPYC above. A 4x bound (batch 2 composed too) cost 1.9 GB of full-size peak RSS there and no measurable
  // time (docs/performance.md). With gradients the blocked kernel is as fast and keeps no probabilities for backward
  // (3.4 GB at N = 16).
  const int64_t scores = q.numel() / q.size(-1) * k.size(-2);
  const bool grad = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  const int64_t min = g_min_bytes.load();
  const int64_t bound = grad || min > std::numeric_limits<int64_t>::max() / 2 ? min : 2 * min;
  return mode == SdpaMode::Blocked || scores * static_cast<int64_t>(sizeof(float)) >= bound;
}

int64_t blocked_attention_min_bytes(int64_t set) {
  if (set >= 0) g_min_bytes.store(set);
  return g_min_bytes.load();
}

at::Tensor blocked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  return BlockedAttention::apply(q, k, v, scale)[0];
}

}  // namespace sudo
