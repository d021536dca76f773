// Blocked fp32 CPU attention (attention.cpp) for libtorch builds without a fused CPU kernel.
#pragma once
#include <ATen/ATen.h>

namespace sudo {
// SUDO_SDPA, read once: unset (default: fused kernel on libtorch ≥ 2.1, else blocked for large fp32 CPU attention),
// "math" (the composed ops always), "blocked" (the blocked kernel whenever it applies, whatever the size).
enum class SdpaMode { Default, Math, Blocked };
SdpaMode sdpa_mode();
// q [..., L, E], k [..., S, E], v [..., S, Ev] with equal leading dims, fp32 on the CPU.
bool blocked_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
// Score-matrix size (N·L·S·4 bytes) from which the blocked kernel is used (default 512 MiB); set < 0 only reads.
int64_t blocked_attention_min_bytes(int64_t set);
// softmax(q kᵀ · scale) v, differentiable in q, k and v.
at::Tensor blocked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);
}  // namespace sudo
