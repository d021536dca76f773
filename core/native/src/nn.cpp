// nn.functional: layers' math, losses, resampling and attention.
#include "common.h"
#include "attention.h"
#include <torch/version.h>
#include <cmath>

using namespace sudo;

#define SUDO_TORCH_AT_LEAST(maj, min) \
  (TORCH_VERSION_MAJOR > (maj) || (TORCH_VERSION_MAJOR == (maj) && TORCH_VERSION_MINOR >= (min)))

extern "C" {

sudo_tensor sudo_linear(sudo_tensor x, sudo_tensor w, sudo_tensor b) {
  TRY_T(return wrap(at::linear(T(x), T(w), b ? c10::optional<at::Tensor>(T(b)) : c10::nullopt));)
}
sudo_tensor sudo_conv2d(sudo_tensor x, sudo_tensor w, sudo_tensor b, const int64_t* stride, const int64_t* padding,
                        const int64_t* dilation, int64_t groups) {
  TRY_T(return wrap(at::conv2d(T(x), T(w), b ? c10::optional<at::Tensor>(T(b)) : c10::nullopt, ints(stride, 2),
                               ints(padding, 2), ints(dilation, 2), groups));)
}
sudo_tensor sudo_group_norm(sudo_tensor x, int64_t groups, sudo_tensor w, sudo_tensor b, double eps) {
  TRY_T(return wrap(at::group_norm(T(x), groups, opt(w), opt(b), eps));)
}
sudo_tensor sudo_layer_norm(sudo_tensor x, const int64_t* shape, int32_t ndim, sudo_tensor w, sudo_tensor b, double eps) {
  TRY_T(return wrap(at::layer_norm(T(x), ints(shape, ndim), opt(w), opt(b), eps));)
}
sudo_tensor sudo_dropout(sudo_tensor x, double p, int32_t train) { TRY_T(return wrap(at::dropout(T(x), p, train != 0));) }

sudo_tensor sudo_interpolate(sudo_tensor x, int32_t mode, int64_t out_h, int64_t out_w, double scale_h, double scale_w,
                             int32_t align_corners, int32_t antialias) {
  TRY_T(
    auto& in = T(x);
    if (in.dim() != 4) throw std::invalid_argument("interpolate expects a 4-D NCHW tensor, got " + std::to_string(in.dim()) + "-D");
    bool by_size = out_h > 0 && out_w > 0;
    // Output size as torch.nn.functional.interpolate computes it from a scale factor: floor(in * scale).
    int64_t oh = by_size ? out_h : static_cast<int64_t>(std::floor(in.size(2) * scale_h));
    int64_t ow = by_size ? out_w : static_cast<int64_t>(std::floor(in.size(3) * scale_w));
    c10::optional<double> sh = by_size ? c10::nullopt : c10::optional<double>(scale_h);
    c10::optional<double> sw = by_size ? c10::nullopt : c10::optional<double>(scale_w);
    std::vector<int64_t> size{oh, ow};
    bool ac = align_corners > 0;
    if ((mode == 0 || mode == 3) && (align_corners >= 0 || antialias))
      throw std::invalid_argument("align_corners and antialias apply only to bilinear and bicubic modes");
    switch (mode) {
      case 0: return wrap(at::upsample_nearest2d(in, size, sh, sw));
      case 3: return wrap(at::_upsample_nearest_exact2d(in, size, sh, sw));
      case 1: return wrap(antialias ? at::_upsample_bilinear2d_aa(in, size, ac, sh, sw) : at::upsample_bilinear2d(in, size, ac, sh, sw));
      case 2: return wrap(antialias ? at::_upsample_bicubic2d_aa(in, size, ac, sh, sw) : at::upsample_bicubic2d(in, size, ac, sh, sw));
      default: throw std::invalid_argument("unknown interpolate mode " + std::to_string(mode));
    })
}
sudo_tensor sudo_avg_pool2d(sudo_tensor x, const int64_t* kernel, const int64_t* stride, const int64_t* padding,
                            int32_t ceil_mode, int32_t count_include_pad) {
  TRY_T(return wrap(at::avg_pool2d(T(x), ints(kernel, 2), ints(stride, 2), ints(padding, 2), ceil_mode != 0, count_include_pad != 0));)
}
sudo_tensor sudo_max_pool2d(sudo_tensor x, const int64_t* kernel, const int64_t* stride, const int64_t* padding, int32_t ceil_mode) {
  TRY_T(return wrap(at::max_pool2d(T(x), ints(kernel, 2), ints(stride, 2), ints(padding, 2), {1, 1}, ceil_mode != 0));)
}
sudo_tensor sudo_mse_loss(sudo_tensor a, sudo_tensor b, int32_t reduction) { TRY_T(return wrap(at::mse_loss(T(a), T(b), reduction));) }
sudo_tensor sudo_cross_entropy(sudo_tensor logits, sudo_tensor target, sudo_tensor weight, int32_t reduction,
                               int64_t ignore_index, double label_smoothing) {
  TRY_T(return wrap(at::cross_entropy_loss(T(logits), T(target), weight ? c10::optional<at::Tensor>(T(weight)) : c10::nullopt,
                                           reduction, ignore_index, label_smoothing));)
}
sudo_tensor sudo_embedding(sudo_tensor weight, sudo_tensor idx) { TRY_T(return wrap(at::embedding(T(weight), T(idx)));) }

int64_t sudo_sdpa_blocked_min_bytes(int64_t set) { return blocked_attention_min_bytes(set); }

int32_t sudo_sdpa_fused_available(void) { return SUDO_TORCH_AT_LEAST(2, 1) ? 1 : 0; }

// softmax(q kᵀ · scale + mask) v. On libtorch ≥ 2.1 the fused kernel (flash / memory-efficient / math
// chosen by libtorch); before, fp32 CPU attention without a mask runs the blocked kernel of attention.cpp and the
// rest is composed with matmul, which matched the private 1.13 kernel to 5e-7. SUDO_SDPA=math: composed always.
// A bool mask marks the positions that take part (torch semantics); a float mask is added.
sudo_tensor sudo_sdpa(sudo_tensor q, sudo_tensor k, sudo_tensor v, sudo_tensor mask, double dropout, int32_t is_causal, double scale) {
  TRY_T(
    auto& Q = T(q); auto& K = T(k); auto& V = T(v);
    if (Q.dim() < 2 || K.dim() < 2 || V.dim() < 2) throw std::invalid_argument("q, k, v need at least 2 dims [..., L, E]");
    if (mask && is_causal) throw std::invalid_argument("give either an attention mask or is_causal, not both");
#if SUDO_TORCH_AT_LEAST(2, 1)
    if (sdpa_mode() != SdpaMode::Math) {
      c10::optional<double> sc = scale > 0 ? c10::optional<double>(scale) : c10::nullopt;
      return wrap(at::scaled_dot_product_attention(Q, K, V, mask ? c10::optional<at::Tensor>(T(mask)) : c10::nullopt,
                                                   dropout, is_causal != 0, sc));
    }
#endif
    {
    double s = scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(Q.size(-1)));
    // fp32 on the CPU without a mask: the blocked kernel (attention.cpp), which never holds the [.., L, S] scores.
    if (!mask && !is_causal && dropout == 0 && blocked_attention_applies(Q, K, V)) return wrap(blocked_attention(Q, K, V, s));
    // Scaling q ([.., L, E]) instead of the scores ([.., L, S]) saves a pass over the larger tensor.
    auto attn = at::matmul(Q.mul(s), K.transpose(-2, -1));
    if (is_causal) {
      auto L = Q.size(-2), S = K.size(-2);
      auto keep = at::ones({L, S}, Q.options().dtype(at::kBool)).tril();
      attn = attn.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
    }
    if (mask) {
      auto& M = T(mask);
      if (M.scalar_type() == at::kBool) attn = attn.masked_fill(M.logical_not(), -std::numeric_limits<double>::infinity());
      else attn = attn.add(M);
    }
    // Reduced-precision scores are normalised in fp32, as CUDA autocast does for softmax.
    bool low = attn.scalar_type() == at::kBFloat16 || attn.scalar_type() == at::kHalf;
    auto p = low ? at::softmax(attn, -1, at::kFloat).to(attn.scalar_type()) : at::softmax(attn, -1);
    if (dropout > 0) p = at::dropout(p, dropout, true);
    return wrap(at::matmul(p, V));
    }
  )
}

}  // extern "C"
